//! The experiment configuration (a burn `Config`, saved as JSON in every run directory).

mod fine_tune;

use std::path::Path;

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Tensor};
use pedconv::optim::MomentumSgd;
use pedconv::resnet::{ResNetConfig, ResNetDepth};
use serde::{Deserialize, Serialize};

use crate::backend::without_panic;
use crate::data::builtin::CLASSES;
use crate::data::{DataConfig, DataSource};

pub use fine_tune::{FineTuneConfig, StartedFrom, TrainOnly};

/// How the learning rate falls after the warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrDecay {
    /// Half a cosine from the peak to 0 at the end of training.
    Cosine,
    /// A straight line from the peak to 0 at the end of training.
    Linear,
    /// The peak times `gamma` for every milestone (an epoch number) passed.
    Step { milestones: Vec<usize>, gamma: f64 },
}

/// Everything a training run needs. Defaults are the paper's recipe where it applies
/// (SGD momentum 0.875, lr 0.512 per 512 images, cosine decay, label smoothing 0.1, mixup 0.2,
/// weight decay 3.0517578125e-05 without decay on batch-norm parameters, info-max weight 0.001).
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// The network.
    pub model: ResNetConfig,
    /// The data.
    pub data: DataConfig,
    /// Training epochs.
    #[config(default = 8)]
    pub epochs: usize,
    /// Images per forward and backward pass on each device.
    #[config(default = 64)]
    pub batch_size: usize,
    /// Data-parallel devices (GPUs, or workers on a CPU backend), each with its own copy of the
    /// model and its own shard of every epoch; `devices × batch_size` images make the global
    /// batch of one pass. `pedconv train --devices` sets it.
    #[config(default = 1)]
    pub devices: usize,
    /// Images per optimizer step, a multiple of the global batch (`devices × batch_size`): the
    /// gradients of `optimizer_batch_size / (devices × batch_size)` passes are averaged before
    /// each step. `None`: one pass.
    #[config(default = "None")]
    pub optimizer_batch_size: Option<usize>,
    /// The peak learning rate for `lr_reference_batch` images; the run's peak is scaled linearly to
    /// the optimizer batch size.
    #[config(default = 0.512)]
    pub lr: f64,
    /// The batch size `lr` is given for.
    #[config(default = 512)]
    pub lr_reference_batch: usize,
    /// Linear warm-up epochs before the decay.
    #[config(default = 8)]
    pub warmup_epochs: usize,
    /// The decay after the warm-up (the rate changes every iteration).
    #[config(default = "LrDecay::Cosine")]
    pub decay: LrDecay,
    /// SGD momentum (without dampening, as PyTorch's).
    #[config(default = 0.875)]
    pub momentum: f64,
    /// Nesterov momentum.
    #[config(default = false)]
    pub nesterov: bool,
    /// Weight decay of every parameter but the batch norms'.
    #[config(default = 3.0517578125e-05)]
    pub weight_decay: f64,
    /// Label smoothing of the cross-entropy.
    #[config(default = 0.1)]
    pub label_smoothing: f64,
    /// The Beta parameter of mixup; 0 turns mixup off.
    #[config(default = 0.2)]
    pub mixup: f64,
    /// Weight of the summed information-maximisation losses in the training loss.
    #[config(default = 0.001)]
    pub info_max_weight: f64,
    /// Checkpoints kept besides the best one (by validation top-1).
    #[config(default = 2)]
    pub keep_checkpoints: usize,
    /// Seed of the initialisation, the noise, the data order and the augmentations.
    #[config(default = 42)]
    pub seed: u64,
    /// Take `model.num_classes` from the data (a folder's class folders) instead of checking it
    /// against them; `--num-classes` turns it off.
    #[config(default = false)]
    pub classes_from_data: bool,
    /// The float type the network computes in; parameters, optimizer state, batch norms and
    /// losses stay in float32.
    #[config(default = "Precision::F32")]
    pub precision: Precision,
    /// Start from pretrained weights rather than a random initialisation (`--weights`).
    #[config(default = "None")]
    pub fine_tune: Option<FineTuneConfig>,
}

/// The float type of a network's computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout.
    F32,
    /// bfloat16 (8 significant bits, float32's range).
    Bf16,
    /// float16 (11 significant bits, a range to 65504), with dynamic loss scaling in training.
    F16,
}

impl Precision {
    /// burn's type of it.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// The name on the command line and in configurations.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// Checks that `B` computes in this type on `device` (burn's CPU ndarray backend has no half
    /// types; a GPU may lack float16), naming the backend.
    pub fn check<B: Backend>(self, backend: &str, device: &B::Device) -> Result<(), String> {
        let dtype = self.dtype();
        let probe = || {
            let ones = Tensor::<B, 1>::ones([4], (device, dtype));
            let kept = ones.dtype();
            (
                kept,
                ones.sum().cast(DType::F32).into_scalar().elem::<f32>(),
            )
        };
        match without_panic(probe) {
            Ok((kept, sum)) if kept == dtype && sum == 4.0 => Ok(()),
            Ok(_) => Err(format!(
                "the {backend} backend cannot compute in {}: it keeps its tensors in another type",
                self.name()
            )),
            Err(message) => Err(format!(
                "the {backend} backend cannot compute in {}: {message}",
                self.name()
            )),
        }
    }
}

impl TrainConfig {
    /// The configuration in the JSON file at `path`. A file without `model` leaves the network
    /// open: it is `open_model` (the architecture of the weights a run starts from), and an
    /// error naming the missing field without one.
    pub fn read(path: &Path, open_model: Option<&ResNetConfig>) -> Result<Self, String> {
        let cannot = |e: &dyn std::fmt::Display| {
            format!("cannot read the configuration {}: {e}", path.display())
        };
        if !path.is_file() {
            return Err(format!(
                "the configuration {} does not exist",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| cannot(&e))?;
        let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| cannot(&e))?;
        if let Some(fields) = json.as_object_mut() {
            if !fields.contains_key("model") {
                let Some(model) = open_model else {
                    return Err(format!(
                        "the configuration {} has no model: one without takes the network of \
                         the pretrained weights given with --weights FILE",
                        path.display()
                    ));
                };
                let model = serde_json::to_value(model).map_err(|e| cannot(&e))?;
                fields.insert("model".to_string(), model);
            }
        }
        serde_json::from_value(json).map_err(|e| cannot(&e))
    }

    /// The built-in default: a PEDConv ResNet-18 at width 1/8 on the generated 32×32 images,
    /// a minute or two on a CPU (one warm-up epoch, no mixup: the run is short).
    pub fn builtin() -> Self {
        let model = ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.125)
            .with_num_classes(CLASSES)
            .dynamic();
        let data = DataConfig::new(DataSource::Builtin {
            train_images: 3072,
            valid_images: 768,
        })
        .with_train_crop(32)
        .with_val_resize(32)
        .with_val_crop(32)
        .with_workers(Some(2));
        Self::new(model, data)
            .with_warmup_epochs(1)
            .with_mixup(0.0)
            .with_classes_from_data(true)
    }

    /// The recipe's optimizer: SGD with momentum, without dampening (as PyTorch's; burn's
    /// default dampens), one kernel per parameter on the GPU backends.
    pub fn optimizer(&self) -> MomentumSgd {
        MomentumSgd {
            momentum: self.momentum,
            nesterov: self.nesterov,
        }
    }

    /// Images per optimizer step.
    pub fn optimizer_batch(&self) -> usize {
        self.optimizer_batch_size.unwrap_or(self.global_batch())
    }

    /// Images of one pass over all devices.
    pub fn global_batch(&self) -> usize {
        self.devices * self.batch_size
    }

    /// Forward and backward passes (of every device) per optimizer step.
    pub fn accumulation(&self) -> usize {
        self.optimizer_batch() / self.global_batch()
    }

    /// The peak learning rate of this run.
    pub fn peak_lr(&self) -> f64 {
        self.lr * self.optimizer_batch() as f64 / self.lr_reference_batch as f64
    }

    /// Checks the values, naming the first wrong one.
    pub fn validate(&self) -> Result<(), String> {
        self.model
            .validate()
            .map_err(|error| format!("model: {error}"))?;
        self.data.validate()?;
        let positive = [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("devices", self.devices),
            ("lr_reference_batch", self.lr_reference_batch),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive, got 0"));
        }
        if let Some(optimizer_batch) = self.optimizer_batch_size {
            if optimizer_batch == 0 || optimizer_batch % self.global_batch() != 0 {
                return Err(format!(
                    "optimizer_batch_size ({optimizer_batch}) must be a positive multiple of \
                     the global batch, devices ({}) × batch_size ({}) = {}",
                    self.devices,
                    self.batch_size,
                    self.global_batch()
                ));
            }
        }
        if self.warmup_epochs > self.epochs {
            return Err(format!(
                "warmup_epochs ({}) must not exceed epochs ({})",
                self.warmup_epochs, self.epochs
            ));
        }
        for (name, value) in [
            ("lr", self.lr),
            ("momentum", self.momentum),
            ("weight_decay", self.weight_decay),
            ("info_max_weight", self.info_max_weight),
            ("mixup", self.mixup),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!(
                    "{name} must be finite and non-negative, got {value}"
                ));
            }
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if let Some(fine_tune) = &self.fine_tune {
            fine_tune.validate()?;
        }
        if let LrDecay::Step { milestones, gamma } = &self.decay {
            if !(gamma.is_finite() && *gamma > 0.0) {
                return Err(format!("decay.gamma must be positive, got {gamma}"));
            }
            if milestones.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!(
                    "decay.milestones must be increasing epochs, got {milestones:?}"
                ));
            }
        }
        Ok(())
    }

    /// Checks the model against the data's number of classes, and the optimizer batch against
    /// its number of training images.
    pub fn check_data(&self, classes: usize, train_images: usize) -> Result<(), String> {
        if self.model.num_classes != classes {
            return Err(format!(
                "model.num_classes is {}, the data has {classes} classes; pass --num-classes \
                 {classes} (or set model.num_classes in the configuration)",
                self.model.num_classes
            ));
        }
        if self.optimizer_batch() > train_images {
            return Err(format!(
                "the optimizer batch ({} images: {} devices × batch_size {} × {} passes) is \
                 larger than the {train_images} training images; lower batch_size or \
                 optimizer_batch_size",
                self.optimizer_batch(),
                self.devices,
                self.batch_size,
                self.accumulation()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
