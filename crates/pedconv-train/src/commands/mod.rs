//! The commands of `pedconv`, one module each with its arguments and its run (as cargo lays out
//! its own), and the argument groups they share.

pub mod bench;
pub mod eval;
pub mod export;
pub mod pack;
pub mod predict;
mod shared;
pub mod train;
