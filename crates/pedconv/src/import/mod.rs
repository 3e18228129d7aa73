//! Reading PyTorch checkpoints without Python.

mod checkpoint;
mod pickle;

pub use checkpoint::{ImportError, PytorchCheckpoint};
