//! The experiment configuration (a burn `Config`, saved as JSON in every run directory).

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Tensor};
use pedconv::optim::MomentumSgd;
use pedconv::resnet::{ResNetConfig, ResNetDepth};
use serde::{Deserialize, Serialize};

use crate::backend::without_panic;
use crate::data::builtin::CLASSES;
use crate::data::{DataConfig, DataSource};

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
        .with_workers(2);
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
mod tests {
    use super::*;
    use crate::data::transform::TrainCrop;

    fn error_of(edit: impl FnOnce(&mut TrainConfig)) -> String {
        let mut config = TrainConfig::builtin();
        edit(&mut config);
        config.validate().unwrap_err()
    }

    #[test]
    fn the_builtin_config_is_valid_and_round_trips_through_json() {
        let config = TrainConfig::builtin();
        config.validate().unwrap();
        let json = config.to_string();
        let back = TrainConfig::load_binary(json.as_bytes()).unwrap();
        assert_eq!(back.to_string(), json);
        assert_eq!(back.data.source, config.data.source);
        assert!(json.contains(r#""kind": "builtin""#), "{json}");
    }

    #[test]
    fn recipes_parse_with_tagged_sources_and_decays() {
        let mut config = TrainConfig::builtin();
        config.data.source = DataSource::Folder {
            path: "/data/imagenet".into(),
        };
        config.decay = LrDecay::Step {
            milestones: vec![30, 60, 80],
            gamma: 0.1,
        };
        config.optimizer_batch_size = Some(256);
        let back = TrainConfig::load_binary(config.to_string().as_bytes()).unwrap();
        assert_eq!(back.decay, config.decay);
        assert_eq!(back.data.source, config.data.source);
        assert_eq!(back.accumulation(), 4);
        assert!((back.peak_lr() - 0.256).abs() < 1e-12);
    }

    /// Every file in `configs/` parses and is valid; `builtin.json` is the built-in default; the
    /// ImageNet recipes hold the reference's command (see `configs/README.md`).
    #[test]
    fn the_shipped_configs_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut recipes = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let config =
                TrainConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_name().unwrap().to_string_lossy();
            if name == "builtin.json" {
                assert_eq!(config.to_string(), TrainConfig::builtin().to_string());
            }
            if name.ends_with("-imagenet.json") {
                recipes += 1;
                assert_eq!(config.epochs, 250, "{name}");
                assert_eq!(config.warmup_epochs, 8, "{name}");
                assert_eq!(config.decay, LrDecay::Cosine, "{name}");
                assert_eq!((config.momentum, config.mixup), (0.875, 0.2), "{name}");
                // 8 GPUs × 64 images = 512 per step at lr 0.512, without accumulation
                // (`--devices 0` trains the same steps on one device in 8 passes of 64).
                assert_eq!((config.devices, config.batch_size), (8, 64), "{name}");
                assert_eq!(config.accumulation(), 1, "{name}");
                assert_eq!(config.optimizer_batch(), 512, "{name}");
                assert_eq!(config.peak_lr(), 0.512, "{name}");
                assert_eq!(config.weight_decay, 3.0517578125e-05, "{name}");
                assert_eq!(config.label_smoothing, 0.1, "{name}");
                assert_eq!(config.model.num_classes, 1000, "{name}");
                assert!(!config.classes_from_data, "{name}");
                assert_eq!(
                    config.model.pedconv.is_some(),
                    name.starts_with("pedconv-"),
                    "{name}"
                );
                let data = &config.data;
                assert_eq!(
                    (data.train_crop, data.val_resize, data.val_crop),
                    (224, 256, 224)
                );
                let augmentation = &data.augmentation;
                assert_eq!(augmentation.crop, TrainCrop::random_resized(), "{name}");
                assert!(augmentation.flip && augmentation.auto_augment, "{name}");
            }
        }
        assert_eq!(recipes, 4);
    }

    #[test]
    fn invalid_values_are_named() {
        assert!(error_of(|c| c.epochs = 0).contains("epochs"));
        assert!(error_of(|c| c.optimizer_batch_size = Some(100)).contains("optimizer_batch_size"));
        let two_devices = |c: &mut TrainConfig| {
            c.devices = 2;
            c.optimizer_batch_size = Some(3 * c.batch_size);
        };
        assert!(error_of(two_devices).contains("devices (2) × batch_size"));
        assert!(error_of(|c| c.devices = 0).contains("devices must be positive"));
        assert!(error_of(|c| c.label_smoothing = 1.0).contains("label_smoothing"));
        assert!(error_of(|c| c.mixup = -0.1).contains("mixup"));
        assert!(error_of(|c| c.warmup_epochs = 9).contains("warmup_epochs"));
        assert!(error_of(|c| c.data.val_resize = 8).contains("data.val_resize"));
        assert!(error_of(|c| c.data.max_bad_fraction = 2.0).contains("data.max_bad_fraction"));
        let step = |c: &mut TrainConfig| {
            c.decay = LrDecay::Step {
                milestones: vec![5, 3],
                gamma: 0.1,
            }
        };
        assert!(error_of(step).contains("decay.milestones"));
        let mut config = TrainConfig::builtin();
        config.model.num_classes = 10;
        let classes = config.check_data(12, 1000).unwrap_err();
        assert!(
            classes.contains("model.num_classes is 10, the data has 12")
                && classes.contains("--num-classes 12"),
            "{classes}"
        );
        let config = TrainConfig::builtin().with_batch_size(1_000_000_000);
        let batch = config.check_data(12, 3072).unwrap_err();
        assert!(
            batch.contains("1000000000 images") && batch.contains("3072 training images"),
            "{batch}"
        );
        assert!(TrainConfig::builtin().check_data(12, 3072).is_ok());
    }
}
