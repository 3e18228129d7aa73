//! The compute backend, chosen at run time by `--backend`, among those compiled in.

use burn::tensor::backend::Backend;
use clap::ValueEnum;

/// A backend named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// burn's pure-Rust CPU backend (the default).
    Flex,
    /// The ndarray CPU backend.
    Ndarray,
    /// wgpu: any GPU through Vulkan, Metal or DirectX (or a software Vulkan driver).
    Wgpu,
    /// NVIDIA GPUs through CUDA.
    Cuda,
}

/// Work to run on whichever backend was chosen.
pub trait BackendJob {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output, String>;
}

fn not_compiled(name: &str) -> String {
    format!(
        "the `{name}` backend is not compiled into this build: rebuild with `--features {name}`"
    )
}

/// Runs `job` on the chosen backend and device (`device` indexes GPUs; CPU backends ignore it).
pub fn dispatch<J: BackendJob>(
    choice: BackendChoice,
    device: usize,
    job: J,
) -> Result<J::Output, String> {
    let _ = device; // unused when no GPU backend is compiled in
    match choice {
        #[cfg(feature = "flex")]
        BackendChoice::Flex => job.run::<burn::backend::Flex>(Default::default()),
        #[cfg(feature = "ndarray")]
        BackendChoice::Ndarray => job.run::<burn::backend::NdArray>(Default::default()),
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu => job.run::<burn::backend::Wgpu>(if device == 0 {
            burn::backend::wgpu::WgpuDevice::DefaultDevice
        } else {
            burn::backend::wgpu::WgpuDevice::DiscreteGpu(device)
        }),
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => {
            job.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(device))
        }
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(&format!("{other:?}").to_lowercase())),
    }
}
