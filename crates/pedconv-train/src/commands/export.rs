//! `pedconv export`: a model as an ONNX file, for onnxruntime and other runtimes.

use std::path::PathBuf;

use pedconv::onnx::export_onnx;

use crate::backend::{BackendJob, JobBackend};
use crate::eval::ModelSource;

/// An export job: load the model (its batch norms folded unless told not to: the same function,
/// fewer nodes), write the file.
pub struct Export {
    pub model: ModelSource,
    pub onnx: PathBuf,
}

/// What was written.
pub struct Exported {
    pub nodes: usize,
    pub bytes: usize,
}

impl BackendJob for Export {
    type Output = Exported;

    fn run<B: JobBackend>(self, device: B::Device) -> Result<Exported, String> {
        let (_, model) = self.model.load::<B>(&device)?;
        let (onnx, bytes) = export_onnx(&model, &self.onnx).map_err(|error| error.to_string())?;
        Ok(Exported {
            nodes: onnx.node_count(),
            bytes,
        })
    }
}
