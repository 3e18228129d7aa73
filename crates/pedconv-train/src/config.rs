//! The experiment configuration (a burn `Config`, saved as JSON in every run directory).

use burn::config::Config;
use pedconv::resnet::{ResNetConfig, ResNetDepth};

use crate::builtin::CLASSES;

/// The data of a run. Only the built-in generated set is available so far.
#[derive(Config, Debug)]
pub struct DataConfig {
    /// Training images per epoch.
    #[config(default = 3072)]
    pub train_images: usize,
    /// Validation images.
    #[config(default = 768)]
    pub valid_images: usize,
    /// Image side, in pixels.
    #[config(default = 32)]
    pub image_size: usize,
    /// Worker threads that generate and batch the images.
    #[config(default = 2)]
    pub workers: usize,
}

/// Everything a training run needs. Defaults are the paper's recipe where it applies
/// (SGD momentum 0.875, lr 0.512 per 512 images, label smoothing 0.1, weight decay
/// 3.0517578125e-05 without decay on batch-norm parameters, info-max weight 0.001).
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// The network.
    pub model: ResNetConfig,
    /// The data.
    pub data: DataConfig,
    /// Training epochs.
    #[config(default = 8)]
    pub epochs: usize,
    /// Images per optimizer step.
    #[config(default = 64)]
    pub batch_size: usize,
    /// The peak learning rate for `lr_reference_batch` images; the run's peak is scaled linearly to
    /// `batch_size`.
    #[config(default = 0.512)]
    pub lr: f64,
    /// The batch size `lr` is given for.
    #[config(default = 512)]
    pub lr_reference_batch: usize,
    /// Linear warm-up epochs before the cosine decay.
    #[config(default = 1)]
    pub warmup_epochs: usize,
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
    /// Weight of the summed information-maximisation losses in the training loss.
    #[config(default = 0.001)]
    pub info_max_weight: f64,
    /// Seed of the backend's random numbers and of the data order.
    #[config(default = 42)]
    pub seed: u64,
}

impl TrainConfig {
    /// The built-in default: a PEDConv ResNet-18 at width 1/8 on the generated set, a few minutes
    /// on a CPU.
    pub fn builtin() -> Self {
        let model = ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.125)
            .with_num_classes(CLASSES)
            .dynamic();
        Self::new(model, DataConfig::new())
    }

    /// The peak learning rate of this run.
    pub fn peak_lr(&self) -> f64 {
        self.lr * self.batch_size as f64 / self.lr_reference_batch as f64
    }

    /// Checks the values, naming the first wrong one.
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        let positive = [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("lr_reference_batch", self.lr_reference_batch),
            ("data.train_images", self.data.train_images),
            ("data.valid_images", self.data.valid_images),
            ("data.image_size", self.data.image_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive, got 0"));
        }
        if self.model.num_classes != CLASSES {
            return Err(format!(
                "model.num_classes is {}, the built-in data has {CLASSES} classes",
                self.model.num_classes
            ));
        }
        for (name, value) in [
            ("lr", self.lr),
            ("momentum", self.momentum),
            ("weight_decay", self.weight_decay),
            ("info_max_weight", self.info_max_weight),
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
        Ok(())
    }
}
