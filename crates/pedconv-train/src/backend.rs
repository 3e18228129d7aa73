//! The compute backend, chosen at run time by `--backend`, among those compiled in.

use std::panic::{catch_unwind, AssertUnwindSafe};

#[cfg(feature = "ddp")]
use burn::tensor::backend::distributed::DistributedBackend;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clap::ValueEnum;

/// A backend named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// burn's pure-Rust CPU backend (the default).
    Flex,
    /// The ndarray CPU backend.
    Ndarray,
    /// wgpu: any GPU through the platform's preferred API (Vulkan, Metal or DirectX).
    Wgpu,
    /// wgpu through Vulkan only (also Mesa's software driver, lavapipe).
    Vulkan,
    /// NVIDIA GPUs through CUDA.
    Cuda,
}

impl BackendChoice {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Vulkan => "vulkan",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this build has it.
    pub fn compiled(self) -> bool {
        match self {
            Self::Flex => cfg!(feature = "flex"),
            Self::Ndarray => cfg!(feature = "ndarray"),
            Self::Wgpu | Self::Vulkan => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The cargo feature that compiles it in.
    fn feature(self) -> &'static str {
        match self {
            Self::Vulkan => "wgpu",
            other => other.name(),
        }
    }
}

/// The backends the jobs run on: every backend, but with the `ddp` feature (burn's
/// `distributed`, under which autodiff needs a backend with collective operations) only those.
#[cfg(not(feature = "ddp"))]
pub trait JobBackend: Backend {}
#[cfg(not(feature = "ddp"))]
impl<B: Backend> JobBackend for B {}
#[cfg(feature = "ddp")]
pub trait JobBackend: DistributedBackend {}
#[cfg(feature = "ddp")]
impl<B: DistributedBackend> JobBackend for B {}

/// Work to run on one device of whichever backend was chosen.
pub trait BackendJob {
    type Output;
    fn run<B: JobBackend>(self, device: B::Device) -> Result<Self::Output, String>;
}

/// Work to run on several devices of the chosen backend at once (training).
pub trait ParallelJob {
    type Output;
    /// Runs on `devices`, the first the main one (on a CPU backend, one worker per entry on
    /// its one device).
    fn run<B: JobBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output, String>;
    /// Runs on several GPUs of a backend with collective operations (distributed data
    /// parallel).
    #[cfg(feature = "ddp")]
    fn run_distributed<B: DistributedBackend>(
        self,
        devices: Vec<B::Device>,
    ) -> Result<Self::Output, String>;
}

/// A one-device job as a parallel job of one device.
struct OnOneDevice<J>(J);

impl<J: BackendJob> ParallelJob for OnOneDevice<J> {
    type Output = J::Output;

    fn run<B: JobBackend>(self, devices: Vec<B::Device>) -> Result<J::Output, String> {
        let device = devices.into_iter().next().expect("one device");
        self.0.run::<B>(device)
    }

    #[cfg(feature = "ddp")]
    fn run_distributed<B: DistributedBackend>(
        self,
        devices: Vec<B::Device>,
    ) -> Result<J::Output, String> {
        self.run::<B>(devices)
    }
}

/// Runs `attempt`, turning a panic (how burn's GPU runtimes report a missing driver or adapter)
/// into an error message, without printing the panic.
pub fn without_panic<T>(attempt: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(attempt));
    std::panic::set_hook(hook);
    result.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown error".into())
    })
}

/// Checks that every device works (GPU backends start their runtime on first use).
fn check_devices<B: Backend>(
    choice: BackendChoice,
    indices: &[usize],
    devices: &[B::Device],
) -> Result<(), String> {
    for (index, device) in indices.iter().zip(devices) {
        without_panic(|| Tensor::<B, 1>::zeros([1], device).into_data()).map_err(|message| {
            format!(
                "the {} backend has no usable device {index}: {message}",
                choice.name()
            )
        })?;
    }
    Ok(())
}

/// Runs `job` on the chosen backend and device (`device` indexes GPUs; CPU backends ignore it).
pub fn dispatch<J: BackendJob>(
    choice: BackendChoice,
    device: usize,
    job: J,
) -> Result<J::Output, String> {
    dispatch_parallel(choice, &[device], OnOneDevice(job))
}

/// Runs `job` on the chosen backend's devices of the given indices: GPUs, or on a CPU backend as
/// many workers on its one device. In a build with the `ddp` feature, CUDA devices run
/// distributed data parallel, one device too (burn-train's DDP strategy with its all-reduce,
/// over one GPU), so that the strategy runs wherever the build does.
pub fn dispatch_parallel<J: ParallelJob>(
    choice: BackendChoice,
    indices: &[usize],
    job: J,
) -> Result<J::Output, String> {
    if let Some(index) = indices
        .iter()
        .enumerate()
        .find_map(|(i, index)| indices[..i].contains(index).then_some(index))
    {
        return Err(format!("device {index} is listed twice"));
    }
    match choice {
        #[cfg(feature = "flex")]
        BackendChoice::Flex => {
            job.run::<burn::backend::Flex>(vec![Default::default(); indices.len()])
        }
        #[cfg(feature = "ndarray")]
        BackendChoice::Ndarray => {
            job.run::<burn::backend::NdArray>(vec![Default::default(); indices.len()])
        }
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu | BackendChoice::Vulkan => {
            use burn::backend::wgpu::{graphics, init_setup, WgpuDevice};
            // One device is the platform's default GPU for index 0; several are always
            // numbered, so that 0 and 1 are two adapters.
            let gpu = |index: usize| match index {
                0 if indices.len() == 1 => WgpuDevice::DefaultDevice,
                index => WgpuDevice::DiscreteGpu(index),
            };
            let gpus: Vec<WgpuDevice> = indices.iter().map(|&index| gpu(index)).collect();
            if choice == BackendChoice::Vulkan {
                for (index, gpu) in indices.iter().zip(&gpus) {
                    without_panic(|| init_setup::<graphics::Vulkan>(gpu, Default::default()))
                        .map_err(|message| {
                            format!("no Vulkan adapter for device {index}: {message}")
                        })?;
                }
            }
            check_devices::<burn::backend::Wgpu>(choice, indices, &gpus)?;
            job.run::<burn::backend::Wgpu>(gpus)
        }
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => {
            use burn::backend::cuda::CudaDevice;
            let gpus: Vec<CudaDevice> = indices.iter().map(|&i| CudaDevice::new(i)).collect();
            check_devices::<burn::backend::Cuda>(choice, indices, &gpus)?;
            #[cfg(feature = "ddp")]
            return job.run_distributed::<burn::backend::Cuda>(gpus);
            #[cfg(not(feature = "ddp"))]
            job.run::<burn::backend::Cuda>(gpus)
        }
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "the `{}` backend is not compiled into this build: rebuild with `--features {}`",
            other.name(),
            other.feature()
        )),
    }
}
