//! Loading PyTorch weights (the paper's checkpoints, torchvision's ResNets) into a [`ResNet`].

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot};

use super::config::{ResNetConfig, ResNetVariant};
use super::model::ResNet;
use crate::import::{ImportError, PytorchCheckpoint};

/// What a checkpoint must provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Every tensor of the model, and nothing else (`num_batches_tracked` aside).
    Exact,
    /// Every tensor but the PEDConv attention branches and decoders, which keep their fresh
    /// initialisation: a static ResNet's weights (torchvision's) as the base of a PEDConv ResNet.
    BaseWeights,
}

/// The module path of a `state_dict` key in our ResNet: without the distributed-training
/// `module.` prefix, with the shortcut's and the decoder's numbered children named, and batch
/// norms' `weight`/`bias` as `gamma`/`beta`.
fn burn_path(key: &str, variant: ResNetVariant) -> String {
    let key = key.strip_prefix("module.").unwrap_or(key);
    let (conv, bn) = match variant {
        ResNetVariant::Classic => ("downsample.0.", "downsample.1."),
        ResNetVariant::D => ("downsample.1.", "downsample.2."),
    };
    let path = key
        .replace(conv, "downsample.conv.")
        .replace(bn, "downsample.bn.")
        .replace("attn.decoder.0.", "attn.decoder.hidden.")
        .replace("attn.decoder.2.", "attn.decoder.output.");
    // Batch norms (`bn1`, `downsample.bn`, …) call their scale and shift `gamma` and `beta`.
    match path.rsplit_once('.') {
        Some((module, param))
            if module
                .rsplit('.')
                .next()
                .is_some_and(|m| m.starts_with("bn")) =>
        {
            match param {
                "weight" => format!("{module}.gamma"),
                "bias" => format!("{module}.beta"),
                _ => path,
            }
        }
        _ => path,
    }
}

/// The reference's key for a burn module path (for messages): the inverse of [`burn_path`], and
/// batch norms' `gamma`/`beta` as `weight`/`bias`.
fn reference_key(path: &str, variant: ResNetVariant) -> String {
    let (conv, bn) = match variant {
        ResNetVariant::Classic => ("downsample.0.", "downsample.1."),
        ResNetVariant::D => ("downsample.1.", "downsample.2."),
    };
    let path = path
        .replace("downsample.conv.", conv)
        .replace("downsample.bn.", bn)
        .replace("attn.decoder.hidden.", "attn.decoder.0.")
        .replace("attn.decoder.output.", "attn.decoder.2.");
    match path.rsplit_once('.') {
        Some((module, "gamma")) => format!("{module}.weight"),
        Some((module, "beta")) => format!("{module}.bias"),
        _ => path,
    }
}

fn is_attention(path: &str) -> bool {
    path.contains(".attn.")
}

impl<B: Backend> ResNet<B> {
    /// Replaces this model's weights (and batch-norm statistics) with a checkpoint's.
    ///
    /// `config` must be the one the model was built with (it tells the shortcut layout). On any
    /// mismatch the error lists every missing, unexpected and misshapen key, with the expected and
    /// found shapes, and no model is returned.
    pub fn load_pytorch(
        mut self,
        checkpoint: &PytorchCheckpoint,
        config: &ResNetConfig,
        mode: ImportMode,
    ) -> Result<Self, ImportError> {
        let variant = config.variant;
        let snapshots: Vec<TensorSnapshot> = checkpoint
            .tensors()
            .iter()
            .filter(|(key, _)| !key.ends_with("num_batches_tracked"))
            .map(|(key, data)| {
                let path = burn_path(key, variant);
                let stack = path.split('.').map(str::to_string).collect();
                TensorSnapshot::from_data(data.clone(), stack, Vec::new(), ParamId::new())
            })
            .collect();
        let result = self.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);
        let mut problems: Vec<String> = result
            .errors
            .iter()
            .map(|error| match error {
                burn_store::ApplyError::ShapeMismatch {
                    path,
                    expected,
                    found,
                } => format!(
                    "{}: the model expects shape {:?}, the file has {:?}",
                    reference_key(path, variant),
                    &expected[..],
                    &found[..]
                ),
                other => other.to_string(),
            })
            .collect();
        problems.extend(
            result
                .missing
                .iter()
                .filter(|(path, _)| !(mode == ImportMode::BaseWeights && is_attention(path)))
                .map(|(path, _)| {
                    format!("{}: missing from the file", reference_key(path, variant))
                }),
        );
        problems.extend(
            result
                .unused
                .iter()
                .map(|path| format!("{}: not in the model", reference_key(path, variant))),
        );
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ImportError::Mismatch {
                path: checkpoint.path().to_path_buf(),
                problems,
            })
        }
    }
}

impl ResNetConfig {
    /// Builds the model and loads a PyTorch checkpoint into it (see [`ResNet::load_pytorch`]).
    pub fn init_from_pytorch<B: Backend>(
        &self,
        path: impl AsRef<std::path::Path>,
        mode: ImportMode,
        device: &B::Device,
    ) -> Result<ResNet<B>, ImportError> {
        let checkpoint = PytorchCheckpoint::read(path)?;
        self.init(device).load_pytorch(&checkpoint, self, mode)
    }
}
