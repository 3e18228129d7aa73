//! `pedconv eval`: top-1, top-5 and loss of a ResNet on the validation split of an image folder.

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

use crate::backend::{BackendJob, JobBackend};
use crate::config::{Precision, TrainConfig};
use crate::data::folder::ImageFolder;
use crate::data::transform::eval_image;
use crate::train::{Classifier, GradientReduction};

/// What `eval` measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalReport {
    /// Top-1 accuracy, in percent.
    pub top1: f64,
    /// Top-5 accuracy, in percent.
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Images evaluated.
    pub images: usize,
    /// Images skipped because they could not be read.
    pub skipped: usize,
}

/// How one prediction scores.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score {
    /// Cross-entropy: `log Σ exp(logits) - logits[label]`.
    loss: f64,
    /// How many classes have a strictly higher logit than the label's (0: a top-1 hit).
    rank: usize,
}

impl Score {
    fn of(logits: &[f32], label: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = max
            + logits
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        Self {
            loss: log_sum - logits[label] as f64,
            rank: logits.iter().filter(|&&v| v > logits[label]).count(),
        }
    }
}

/// An evaluation to run on a backend.
pub struct Evaluation {
    pub model: ModelSource,
    pub folder: ImageFolder,
    pub batch_size: usize,
    pub resize: u32,
    pub crop: u32,
    /// Stop when more than this fraction of the images cannot be read.
    pub max_bad_fraction: f64,
    pub progress: bool,
    /// The float type the network computes in, on the backend of this name.
    pub precision: Precision,
    pub backend: String,
}

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

/// The evaluation inputs of `paths`, decoded in parallel (torchvision's `Resize(resize)` +
/// `CenterCrop(crop)`, normalised) and stacked on `device` (`None` if none could be read), with
/// the positions of those that could; each unreadable image is reported on stderr.
pub fn decode_batch<'a, B: Backend>(
    paths: impl Iterator<Item = &'a Path>,
    resize: u32,
    crop: u32,
    device: &B::Device,
) -> (Option<Tensor<B, 4>>, Vec<usize>) {
    let paths: Vec<&Path> = paths.collect();
    let decoded: Vec<Result<Vec<f32>, String>> = paths
        .par_iter()
        .map(|path| eval_image(path, resize, crop))
        .collect();
    let mut pixels = Vec::with_capacity(paths.len() * 3 * (crop * crop) as usize);
    let mut read = Vec::with_capacity(paths.len());
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

impl BackendJob for Evaluation {
    type Output = EvalReport;

    fn run<B: JobBackend>(self, device: B::Device) -> Result<EvalReport, String> {
        self.precision.check::<B>(&self.backend, &device)?;
        let (config, model) = self.model.load::<B>(&device)?;
        let classes = self.folder.classes.len();
        if classes > config.num_classes {
            return Err(format!(
                "the data has {classes} classes, the model only {}",
                config.num_classes
            ));
        }
        let total = self.folder.items.len();
        let (mut top1, mut top5, mut loss, mut images, mut skipped) =
            (0usize, 0usize, 0.0f64, 0usize, 0usize);
        for (index, chunk) in self.folder.items.chunks(self.batch_size).enumerate() {
            let (input, read) = decode_batch::<B>(
                chunk.iter().map(|(path, _)| path.as_path()),
                self.resize,
                self.crop,
                &device,
            );
            skipped += chunk.len() - read.len();
            let labels: Vec<usize> = read.iter().map(|&i| chunk[i].1).collect();
            if skipped as f64 > self.max_bad_fraction * total as f64 {
                return Err(format!(
                    "{skipped} of {total} images could not be read, more than the allowed fraction {}",
                    self.max_bad_fraction
                ));
            }
            let Some(input) = input else {
                continue;
            };
            let batch = labels.len();
            let logits = logits_of(&model, input, self.precision)?;
            for (row, &label) in logits.chunks(config.num_classes).zip(&labels) {
                let score = Score::of(row, label);
                loss += score.loss;
                top1 += usize::from(score.rank < 1);
                top5 += usize::from(score.rank < 5);
            }
            images += batch;
            if self.progress {
                eprintln!(
                    "batch {}: {images}/{total} images, top-1 so far {:.2}%",
                    index + 1,
                    100.0 * top1 as f64 / images as f64
                );
            }
        }
        if images == 0 {
            return Err("no image could be evaluated".to_string());
        }
        let n = images as f64;
        Ok(EvalReport {
            top1: 100.0 * top1 as f64 / n,
            top5: 100.0 * top5 as f64 / n,
            loss: loss / n,
            images,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Score;

    #[test]
    fn scores_follow_the_definitions() {
        // softmax([0, ln 3, 0])[1] = 3 / 5.
        let score = Score::of(&[0.0, 3f32.ln(), 0.0], 1);
        assert!((score.loss - (5.0f64 / 3.0).ln()).abs() < 1e-6, "{score:?}");
        assert_eq!(score.rank, 0);
        let logits = [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.4];
        assert_eq!(Score::of(&logits, 5).rank, 4); // top-5, not top-1
        assert_eq!(Score::of(&logits, 6).rank, 5); // not top-5
    }
}
