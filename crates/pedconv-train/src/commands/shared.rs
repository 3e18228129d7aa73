//! Argument groups that several commands take, each validated in one place.

use std::path::PathBuf;

use crate::backend::BackendChoice;
use crate::config::Precision;
use crate::model::ModelSource;

/// Where a one-device command computes: `--backend`, `--device`, `--precision`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// The compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Flex)]
    pub backend: BackendChoice,
    /// The GPU index, for GPU backends.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// The float type the network computes in.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// The batches of an inference command (`eval`, `predict`), and how their images are sized:
/// torchvision's `Resize(resize)` then `CenterCrop(crop)`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct InputArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// The shorter side is resized to this before the centre crop.
    #[arg(long, default_value_t = 256)]
    pub resize: u32,
    /// The centre crop's side.
    #[arg(long, default_value_t = 224)]
    pub crop: u32,
}

impl InputArgs {
    /// `--crop` positive and `--resize` at least `--crop`.
    pub fn validate(self) -> Result<Self, String> {
        if self.crop == 0 || self.resize < self.crop {
            return Err(format!(
                "--crop must be positive and --resize ({}) at least --crop ({})",
                self.resize, self.crop
            ));
        }
        Ok(self)
    }
}

/// The model of `eval`, `predict` and `export`.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The weights: a PyTorch checkpoint (.pth, .pth.tar, .pt; the paper's or a bare state_dict,
    /// whose architecture is read off its keys) or a burn record (.mpk: a run's model.mpk or a
    /// checkpoint/model-N.mpk, with --config).
    #[arg(long)]
    pub weights: PathBuf,
    /// The model's ResNetConfig (JSON) or a training run's config.json; needed for burn records,
    /// optional for PyTorch files.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep the batch norms (by default they are folded into the convolutions: the same
    /// logits up to rounding, faster; for `export`, fewer nodes).
    #[arg(long)]
    pub no_fold: bool,
}

impl From<ModelArgs> for ModelSource {
    fn from(args: ModelArgs) -> Self {
        ModelSource {
            weights: args.weights,
            config: args.config,
            fold: !args.no_fold,
        }
    }
}
