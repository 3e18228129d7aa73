//! The compute backend, chosen at run time by `--backend`, among those compiled in.

use std::panic::{catch_unwind, AssertUnwindSafe};

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

    /// The cargo feature that compiles it in.
    fn feature(self) -> &'static str {
        match self {
            Self::Vulkan => "wgpu",
            other => other.name(),
        }
    }
}

/// Work to run on whichever backend was chosen.
pub trait BackendJob {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output, String>;
}

/// Runs `attempt`, turning a panic (how burn's GPU runtimes report a missing driver or adapter)
/// into an error message, without printing the panic.
fn without_panic<T>(attempt: impl FnOnce() -> T) -> Result<T, String> {
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

/// Checks that `device` works (GPU backends start their runtime on first use), then runs `job`.
fn run_checked<B: Backend, J: BackendJob>(
    choice: BackendChoice,
    index: usize,
    device: B::Device,
    job: J,
) -> Result<J::Output, String> {
    without_panic(|| Tensor::<B, 1>::zeros([1], &device).into_data()).map_err(|message| {
        format!(
            "the {} backend has no usable device {index}: {message}",
            choice.name()
        )
    })?;
    job.run::<B>(device)
}

/// Runs `job` on the chosen backend and device (`device` indexes GPUs; CPU backends ignore it).
pub fn dispatch<J: BackendJob>(
    choice: BackendChoice,
    device: usize,
    job: J,
) -> Result<J::Output, String> {
    match choice {
        #[cfg(feature = "flex")]
        BackendChoice::Flex => job.run::<burn::backend::Flex>(Default::default()),
        #[cfg(feature = "ndarray")]
        BackendChoice::Ndarray => job.run::<burn::backend::NdArray>(Default::default()),
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu | BackendChoice::Vulkan => {
            use burn::backend::wgpu::{graphics, init_setup, WgpuDevice};
            let gpu = if device == 0 {
                WgpuDevice::DefaultDevice
            } else {
                WgpuDevice::DiscreteGpu(device)
            };
            if choice == BackendChoice::Vulkan {
                without_panic(|| init_setup::<graphics::Vulkan>(&gpu, Default::default()))
                    .map_err(|message| {
                        format!("no Vulkan adapter for device {device}: {message}")
                    })?;
            }
            run_checked::<burn::backend::Wgpu, J>(choice, device, gpu, job)
        }
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => run_checked::<burn::backend::Cuda, J>(
            choice,
            device,
            burn::backend::cuda::CudaDevice::new(device),
            job,
        ),
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "the `{}` backend is not compiled into this build: rebuild with `--features {}`",
            other.name(),
            other.feature()
        )),
    }
}
