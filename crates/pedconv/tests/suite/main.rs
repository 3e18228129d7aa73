//! The `pedconv` crate's integration tests on flex, burn's CPU backend, in float64: one binary,
//! so that burn's backends are compiled and linked into it once rather than once per file.
//! `wgpu.rs` and `cuda.rs` run the same tests on the GPU backends.

/// The backend under test.
pub type TestBackend = burn::backend::Flex;
const SUITE: common::Suite = common::Suite::Flex;

mod common;

mod config_and_accounting;
mod fold;
mod golden_parity;
mod paths_and_identities;
mod resnet;
mod resnet_import;
