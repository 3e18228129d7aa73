//! `pedconv eval`: top-1, top-5 and loss of a ResNet on the validation split of an image folder
//! or a packed dataset.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::{dispatch, BackendJob, JobBackend};
use crate::config::Precision;
use crate::data::folder::ImageFolder;
use crate::data::pack::PackedSplit;
use crate::data::rng::Rng;
use crate::data::sources::{FolderImages, ImageSource, ImageTransform, PackedImages, Pixels};
use crate::data::transform::{normalise, StageTimes};
use crate::data::DataSource;
use crate::model::{decode_batch, logits_of, ModelSource};

use super::shared::{DeviceArgs, InputArgs, ModelArgs};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The data: a folder with a `val/` split, the split folder itself (one sub-folder per
    /// class), or a packed dataset (`pedconv pack`; its validation split).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    on: DeviceArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Stop when more than this fraction of the images cannot be read (they are skipped and
    /// counted otherwise).
    #[arg(long, default_value_t = 0.01)]
    max_bad_fraction: f64,
    /// Print the result as one JSON object `{"top1", "top5", "loss", "images"}` (percentages).
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<(), String> {
    let input = args.input.validate()?;
    let transform = ImageTransform::Eval {
        resize: input.resize,
        crop: input.crop,
    };
    let images: Arc<dyn ImageSource> = match DataSource::at(args.data.clone()) {
        DataSource::Packed { path } => Arc::new(PackedImages {
            split: PackedSplit::open(&path, "val")?,
            transform,
        }),
        _ => {
            let split = args.data.join("val");
            let split = if split.is_dir() {
                split
            } else {
                args.data.clone()
            };
            Arc::new(FolderImages {
                folder: ImageFolder::open(&split)?,
                transform,
            })
        }
    };
    let report = dispatch(
        args.on.backend,
        args.on.device,
        Evaluation {
            model: args.model.into(),
            images,
            input,
            max_bad_fraction: args.max_bad_fraction,
            progress: !args.json,
            precision: args.on.precision,
            backend: args.on.backend.name().to_string(),
        },
    )?;
    if args.json {
        let json = serde_json::json!({
            "top1": report.top1,
            "top5": report.top5,
            "loss": report.loss,
            "images": report.images,
        });
        println!("{json}");
    } else {
        println!(
            "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  on {} images{}",
            report.top1,
            report.top5,
            report.loss,
            report.images,
            if report.skipped > 0 {
                format!(" ({} unreadable, skipped)", report.skipped)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// What `eval` measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct EvalReport {
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
struct Evaluation {
    pub model: ModelSource,
    pub images: Arc<dyn ImageSource>,
    pub input: InputArgs,
    /// Stop when more than this fraction of the images cannot be read.
    pub max_bad_fraction: f64,
    pub progress: bool,
    /// The float type the network computes in, on the backend of this name.
    pub precision: Precision,
    pub backend: String,
}

impl BackendJob for Evaluation {
    type Output = EvalReport;

    fn run<B: JobBackend>(self, device: B::Device) -> Result<EvalReport, String> {
        self.precision.check::<B>(&self.backend, &device)?;
        let (config, model) = self.model.load::<B>(&device)?;
        let total = self.images.len();
        let classes = (0..total)
            .map(|i| self.images.label(i))
            .max()
            .map_or(0, |c| c + 1);
        if classes > config.num_classes {
            return Err(format!(
                "the data has {classes} classes, the model only {}",
                config.num_classes
            ));
        }
        let (mut top1, mut top5, mut loss, mut images, mut skipped) =
            (0usize, 0usize, 0.0f64, 0usize, 0usize);
        let indices: Vec<usize> = (0..total).collect();
        for (index, chunk) in indices.chunks(self.input.batch_size as usize).enumerate() {
            let (input, read) = decode_batch::<B>(chunk.len(), self.input.crop, &device, |i| {
                let mut times = StageTimes::default();
                let pixels = self.images.pixels(chunk[i], &mut Rng::new(0), &mut times)?;
                Ok(match pixels {
                    Pixels::Rgb8(image) => normalise(&image),
                    Pixels::Float(values) => values,
                })
            });
            skipped += chunk.len() - read.len();
            let labels: Vec<usize> = read.iter().map(|&i| self.images.label(chunk[i])).collect();
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
