//! The model of `eval`, `predict` and `export`, from any source: a PyTorch checkpoint (the
//! paper's, or a bare `state_dict`), or a burn record of a training run (its final model or a
//! checkpoint) with its configuration; and the inference inputs and logits they share.

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::record::DefaultRecorder;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use pedconv::import::PytorchCheckpoint;
use pedconv::precision::cast_to;
use pedconv::resnet::{ImportMode, ResNet, ResNetConfig};
use rayon::prelude::*;

use crate::config::{Precision, TrainConfig};
use crate::train::{Classifier, GradientReduction};

/// Whether `path` names a PyTorch checkpoint (by its extension).
pub fn is_pytorch(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".pth")
        || name.ends_with(".pt")
        || name.ends_with(".tar")
        || name.ends_with(".bin")
}

/// A `ResNetConfig`, or the `model` of a training run's `config.json`.
fn read_model_config(path: &Path) -> Result<ResNetConfig, String> {
    ResNetConfig::load(path)
        .or_else(|model_error| {
            TrainConfig::load(path)
                .map(|run| run.model)
                .map_err(|_| model_error)
        })
        .map_err(|e| format!("cannot read the model config {}: {e}", path.display()))
}

/// The model described by `--weights` (and `--config`).
fn load_model<B: Backend>(
    weights: &Path,
    config: Option<&Path>,
    device: &B::Device,
) -> Result<(ResNetConfig, ResNet<B>), String> {
    let config = match config {
        Some(path) => Some(read_model_config(path)?),
        None => None,
    };
    if is_pytorch(weights) {
        let checkpoint = PytorchCheckpoint::read(weights).map_err(|e| e.to_string())?;
        let config = match config {
            Some(config) => config,
            None => ResNetConfig::from_state_dict(&checkpoint).map_err(|e| e.to_string())?,
        };
        let model = config
            .init(device)
            .load_pytorch(&checkpoint, ImportMode::Exact)
            .map_err(|e| e.to_string())?;
        Ok((config, model))
    } else {
        let config = config.ok_or_else(|| {
            format!(
                "{} is not a PyTorch checkpoint (.pth, .pt, .tar): a burn record needs --config \
                 with the model's ResNetConfig JSON or the run's config.json",
                weights.display()
            )
        })?;
        let model = config.init(device);
        let model = match model.clone().load_record(weights, device) {
            Ok(model) => model,
            // A training checkpoint (`checkpoint/model-N.mpk`) holds the network inside the
            // record of its training objective.
            Err(error) => Classifier::new(model, &TrainConfig::builtin(), GradientReduction::Sum)
                .load_file(weights.to_path_buf(), &DefaultRecorder::new(), device)
                .map(|classifier| classifier.net)
                .map_err(|_| error.to_string())?,
        };
        Ok((config, model))
    }
}

/// The model of `eval`, `predict` and `export`: `--weights`, `--config`, `--no-fold`.
pub struct ModelSource {
    /// A PyTorch checkpoint, or a burn record (a run's model or checkpoint) with `config`.
    pub weights: PathBuf,
    /// The model's `ResNetConfig` JSON or a training run's `config.json`.
    pub config: Option<PathBuf>,
    /// Fold the batch norms into the convolutions (the same logits, faster).
    pub fold: bool,
}

impl ModelSource {
    /// The model's configuration and the model, its batch norms folded if asked.
    pub fn load<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(ResNetConfig, ResNet<B>), String> {
        let (config, model) = load_model(&self.weights, self.config.as_deref(), device)?;
        let model = if self.fold {
            model.fold_batch_norms()
        } else {
            model
        };
        Ok((config, model))
    }
}

/// The evaluation inputs of `count` images, made in parallel by `input(position)` (normalised
/// `[3, crop, crop]` values) and stacked on `device` (`None` if none could be made), with the
/// positions of those that could; each error is reported on stderr.
pub fn decode_batch<B: Backend>(
    count: usize,
    crop: u32,
    device: &B::Device,
    input: impl Fn(usize) -> Result<Vec<f32>, String> + Sync,
) -> (Option<Tensor<B, 4>>, Vec<usize>) {
    let decoded: Vec<Result<Vec<f32>, String>> = (0..count).into_par_iter().map(&input).collect();
    let mut pixels = Vec::with_capacity(count * 3 * (crop * crop) as usize);
    let mut read = Vec::with_capacity(count);
    for (position, item) in decoded.into_iter().enumerate() {
        match item {
            Ok(values) => {
                pixels.extend(values);
                read.push(position);
            }
            Err(message) => eprintln!("warning: skipped an unreadable image: {message}"),
        }
    }
    if read.is_empty() {
        return (None, read);
    }
    let shape = [read.len(), 3, crop as usize, crop as usize];
    let input = Tensor::from_data(TensorData::new(pixels, shape), device);
    (Some(input), read)
}

/// The model's logits for `input`, computed in `precision`, row-major `[batch, classes]` in f32.
pub fn logits_of<B: Backend>(
    model: &ResNet<B>,
    input: Tensor<B, 4>,
    precision: Precision,
) -> Result<Vec<f32>, String> {
    model
        .forward(cast_to(input, precision.dtype()))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))
}
