//! The `pedconv` crate's integration tests, in one binary: burn's backends are compiled and
//! linked into it once rather than once per file.

mod common;

mod config_and_accounting;
mod fold;
mod golden_parity;
mod paths_and_identities;
mod resnet;
mod resnet_import;
