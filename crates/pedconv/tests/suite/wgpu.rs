//! The integration tests of `main.rs` on wgpu, in float32, with burn's fusion (burn's default
//! `Wgpu`). Without a GPU they run on Mesa's software Vulkan driver (lavapipe); where no wgpu
//! adapter exists at all, every test fails with wgpu's message.

/// The backend under test.
pub type TestBackend =
    burn_fusion::Fusion<burn_cubecl::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>>;
const SUITE: common::Suite = common::Suite::Wgpu;

mod common;

mod config_and_accounting;
mod fold;
mod golden_parity;
mod paths_and_identities;
mod resnet;
mod resnet_import;
