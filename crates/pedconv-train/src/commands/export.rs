//! `pedconv export`: a model as an ONNX file, for onnxruntime and other runtimes.

use std::path::PathBuf;

use pedconv::onnx::export_onnx;

use crate::backend::{dispatch, BackendChoice, BackendJob, JobBackend};
use crate::model::ModelSource;

use super::shared::ModelArgs;

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The ONNX file to write.
    #[arg(long)]
    onnx: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<(), String> {
    let job = Export {
        model: args.model.into(),
        onnx: args.onnx.clone(),
    };
    let exported = dispatch(BackendChoice::Flex, 0, job)?;
    println!(
        "wrote {} ({} nodes, {:.1} MB)",
        args.onnx.display(),
        exported.nodes,
        exported.bytes as f64 / 1e6
    );
    Ok(())
}

/// An export job: load the model (its batch norms folded unless told not to: the same function,
/// fewer nodes), write the file.
struct Export {
    pub model: ModelSource,
    pub onnx: PathBuf,
}

/// What was written.
struct Exported {
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
