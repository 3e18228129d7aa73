//! `pedconv export`: a model as an ONNX file, for onnxruntime and other runtimes.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use pedconv::onnx::export_onnx;

use crate::backend::BackendJob;
use crate::eval::load_model;

/// An export job: load the weights, fold the batch norms (unless told not to), write the file.
pub struct Export {
    pub weights: PathBuf,
    pub config: Option<PathBuf>,
    pub onnx: PathBuf,
    /// Fold the batch norms into the convolutions (the same function, fewer nodes).
    pub fold: bool,
}

/// What was written.
pub struct Exported {
    pub nodes: usize,
    pub bytes: usize,
}

impl BackendJob for Export {
    type Output = Exported;

    fn run<B: Backend>(self, device: B::Device) -> Result<Exported, String> {
        let (_, model) = load_model::<B>(&self.weights, self.config.as_deref(), &device)?;
        let model = if self.fold {
            model.fold_batch_norms()
        } else {
            model
        };
        let (onnx, bytes) = export_onnx(&model, &self.onnx).map_err(|error| error.to_string())?;
        Ok(Exported {
            nodes: onnx.node_count(),
            bytes,
        })
    }
}
