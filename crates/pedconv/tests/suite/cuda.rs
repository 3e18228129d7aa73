//! The integration tests of `main.rs` on CUDA, in float32 with TF32 matrix products, with
//! burn's fusion (burn's default `Cuda`): run by the GPU check (`docs/gpu-check.md`).

/// The backend under test.
pub type TestBackend =
    burn_fusion::Fusion<burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>>;
const SUITE: common::Suite = common::Suite::Cuda;

mod common;

mod config_and_accounting;
mod fold;
mod golden_parity;
mod paths_and_identities;
mod resnet;
mod resnet_import;
