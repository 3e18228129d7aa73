//! The weights of `eval`, `predict`, `export` and a fine-tuning `train`, from any source: a
//! PyTorch checkpoint (the paper's, or a bare `state_dict`), or a burn record of a training run
//! (its final model or a checkpoint) with its configuration; and the inference inputs and
//! logits the inference commands share.

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

/// The `config.json` of the run a burn record belongs to: beside a run's `model.mpk`, or one
/// folder up from a `checkpoint/model-N.mpk`.
fn run_config_of(record: &Path) -> Option<PathBuf> {
    record
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(crate::run_dir::CONFIG))
        .find(|config| config.is_file())
}

/// What a weights file holds.
#[derive(Clone)]
enum Contents {
    /// A PyTorch `state_dict` (the paper's checkpoint or a bare one).
    Pytorch(PytorchCheckpoint),
    /// A burn record: a run's final model or a training checkpoint.
    Record(PathBuf),
}

/// A weights file and the architecture it holds, read once; [`load`](Self::load) builds
/// networks from it.
#[derive(Clone)]
pub struct Weights {
    pub path: PathBuf,
    /// The network the file holds: read off a PyTorch file's keys and shapes, or given by the
    /// configuration of a burn record.
    pub architecture: ResNetConfig,
    contents: Contents,
}

impl Weights {
    /// Reads `path`: a PyTorch checkpoint (its architecture read off its keys unless `config`
    /// gives it) or a burn record with `config` (a `ResNetConfig` or a run's `config.json`;
    /// by default its run's `config.json`).
    pub fn read(path: &Path, config: Option<&Path>) -> Result<Self, String> {
        let config = match config {
            Some(config) => Some(read_model_config(config)?),
            None => None,
        };
        let (architecture, contents) = if is_pytorch(path) {
            let checkpoint = PytorchCheckpoint::read(path).map_err(|e| e.to_string())?;
            let architecture = match config {
                Some(config) => config,
                None => ResNetConfig::from_state_dict(&checkpoint).map_err(|e| e.to_string())?,
            };
            (architecture, Contents::Pytorch(checkpoint))
        } else {
            if !path.is_file() {
                return Err(format!("the weights {} do not exist", path.display()));
            }
            let architecture = match (config, run_config_of(path)) {
                (Some(config), _) => config,
                (None, Some(run_config)) => read_model_config(&run_config)?,
                (None, None) => {
                    return Err(format!(
                        "{} is not a PyTorch checkpoint (.pth, .pt, .tar) and no run's \
                         config.json is beside it: a burn record needs --config with the \
                         model's ResNetConfig JSON or the run's config.json",
                        path.display()
                    ))
                }
            };
            (architecture, Contents::Record(path.to_path_buf()))
        };
        Ok(Self {
            path: path.to_path_buf(),
            architecture,
            contents,
        })
    }

    /// The file's network, built as `architecture` (the file's, or the file's static network
    /// with PEDConv layers: then the file's weights are their base weights, and their attention
    /// branches keep `architecture`'s initialisation).
    pub fn load<B: Backend>(
        &self,
        architecture: &ResNetConfig,
        device: &B::Device,
    ) -> Result<ResNet<B>, String> {
        let model = architecture.try_init(device).map_err(|e| e.to_string())?;
        let base_weights = self.architecture.pedconv.is_none() && architecture.pedconv.is_some();
        match &self.contents {
            Contents::Pytorch(checkpoint) => {
                let mode = if base_weights {
                    ImportMode::BaseWeights
                } else {
                    ImportMode::Exact
                };
                model
                    .load_pytorch(checkpoint, mode)
                    .map_err(|e| e.to_string())
            }
            Contents::Record(_) if base_weights => Err(format!(
                "{} is a burn record of a static network: only PyTorch files load as the base \
                 weights of PEDConv layers",
                self.path.display()
            )),
            Contents::Record(path) => match model.clone().load_record(path, device) {
                Ok(model) => Ok(model),
                // A training checkpoint (`checkpoint/model-N.mpk`) holds the network inside the
                // record of its training objective.
                Err(error) => {
                    Classifier::new(model, &TrainConfig::builtin(), GradientReduction::Sum)
                        .load_file(path.clone(), &DefaultRecorder::new(), device)
                        .map(|classifier| classifier.net)
                        .map_err(|_| error.to_string())
                }
            },
        }
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
        let weights = Weights::read(&self.weights, self.config.as_deref())?;
        let model = weights.load(&weights.architecture, device)?;
        let model = if self.fold {
            model.fold_batch_norms()
        } else {
            model
        };
        Ok((weights.architecture, model))
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
