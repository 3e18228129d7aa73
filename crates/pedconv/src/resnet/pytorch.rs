//! PyTorch interchange of a [`ResNet`]: loading the paper's checkpoints and torchvision's
//! weights, and exporting to safetensors with the reference's key names.

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot};

use super::config::{ResNetConfig, ResNetDepth, ResNetVariant};
use super::model::ResNet;
use crate::import::{ImportError, PytorchCheckpoint};
use crate::Error;

/// What a checkpoint must provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Every tensor of the model, and nothing else (`num_batches_tracked` aside).
    Exact,
    /// Every tensor but the PEDConv attention branches and decoders, which keep their fresh
    /// initialisation: a static ResNet's weights (torchvision's) as the base of a PEDConv ResNet.
    BaseWeights,
}

/// The reference's names of the modules that ours name differently: the shortcut's numbered
/// children (after the "d" variant's pool) and the decoder's layers. `(reference, ours)`.
fn renamed_modules(variant: ResNetVariant) -> [(&'static str, &'static str); 4] {
    let (conv, bn) = match variant {
        ResNetVariant::Classic => ("downsample.0.", "downsample.1."),
        ResNetVariant::D => ("downsample.1.", "downsample.2."),
    };
    [
        (conv, "downsample.conv."),
        (bn, "downsample.bn."),
        ("attn.decoder.0.", "attn.decoder.hidden."),
        ("attn.decoder.2.", "attn.decoder.output."),
    ]
}

/// If a module path ends in a batch norm's parameter (`bn1.weight`, `downsample.bn.gamma`, …).
fn batch_norm_param(path: &str) -> Option<(&str, &str)> {
    let (module, param) = path.rsplit_once('.')?;
    let name = module.rsplit('.').next()?;
    (name.starts_with("bn")).then_some((module, param))
}

/// The module path of a `state_dict` key in our ResNet: without the distributed-training
/// `module.` prefix, with [`renamed_modules`], and batch norms' `weight`/`bias` as
/// `gamma`/`beta`.
fn burn_path(key: &str, variant: ResNetVariant) -> String {
    let mut path = key.strip_prefix("module.").unwrap_or(key).to_string();
    for (reference, ours) in renamed_modules(variant) {
        path = path.replace(reference, ours);
    }
    match batch_norm_param(&path) {
        Some((module, "weight")) => format!("{module}.gamma"),
        Some((module, "bias")) => format!("{module}.beta"),
        _ => path,
    }
}

/// The reference's `state_dict` key (without `module.`) of one of our module paths: the inverse
/// of [`burn_path`].
fn reference_key(path: &str, variant: ResNetVariant) -> String {
    let mut key = path.to_string();
    for (reference, ours) in renamed_modules(variant) {
        key = key.replace(ours, reference);
    }
    match batch_norm_param(&key) {
        Some((module, "gamma")) => format!("{module}.weight"),
        Some((module, "beta")) => format!("{module}.bias"),
        _ => key,
    }
}

fn is_attention(path: &str) -> bool {
    path.contains(".attn.")
}

impl<B: Backend> ResNet<B> {
    /// Replaces this model's weights (and batch-norm statistics) with a checkpoint's.
    ///
    /// On any
    /// mismatch the error lists every missing, unexpected and misshapen key, with the expected and
    /// found shapes, and no model is returned.
    pub fn load_pytorch(
        mut self,
        checkpoint: &PytorchCheckpoint,
        mode: ImportMode,
    ) -> Result<Self, Error> {
        let variant = self.variant();
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
            Err(Error::Import(ImportError::Mismatch {
                path: checkpoint.path().to_path_buf(),
                problems,
            }))
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
    ) -> Result<ResNet<B>, Error> {
        let checkpoint = PytorchCheckpoint::read(path)?;
        self.try_init(device)?.load_pytorch(&checkpoint, mode)
    }
}

impl<B: Backend> ResNet<B> {
    /// Writes the model's tensors to a safetensors file in the reference's layout: its
    /// `state_dict` keys (without `module.`), PyTorch's `Linear` orientation, batch-norm running
    /// statistics included.
    pub fn export_safetensors(&self, path: impl AsRef<std::path::Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let fail = |message: String| Error::Io {
            path: path.to_path_buf(),
            source: message.into(),
        };
        let tensors: Vec<(String, burn::tensor::TensorData)> = self
            .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
            .into_iter()
            .map(|snapshot| {
                let key = reference_key(&snapshot.full_path(), self.variant());
                snapshot
                    .to_data()
                    .map(|data| (key.clone(), data))
                    .map_err(|error| fail(format!("tensor {key}: {error:?}")))
            })
            .collect::<Result<_, _>>()?;
        let views = tensors
            .iter()
            .map(|(key, data)| {
                let dtype = match data.dtype {
                    burn::tensor::DType::F32 => safetensors::Dtype::F32,
                    burn::tensor::DType::F64 => safetensors::Dtype::F64,
                    other => {
                        return Err(fail(format!("tensor {key}: unsupported dtype {other:?}")))
                    }
                };
                safetensors::tensor::TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
                    .map(|view| (key.clone(), view))
                    .map_err(|error| fail(format!("tensor {key}: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize_to_file(views, None, path).map_err(|error| Error::io(path, error))
    }
}

impl ResNetConfig {
    /// The architecture a ResNet `state_dict` describes, read off its keys and shapes: depth
    /// (blocks per stage, basic or bottleneck), variant (a three-convolution stem), width (the
    /// stem's channels over 64), classes (the classifier's rows), and PEDConv (attention
    /// branches present) with the paper's settings and `rank` read off the attention heads.
    pub fn from_state_dict(checkpoint: &PytorchCheckpoint) -> Result<Self, Error> {
        let invalid = |message: String| {
            Error::Import(ImportError::Format {
                path: checkpoint.path().to_path_buf(),
                message,
            })
        };
        let tensors: std::collections::BTreeMap<&str, &[usize]> = checkpoint
            .tensors()
            .iter()
            .map(|(k, v)| (k.strip_prefix("module.").unwrap_or(k), &v.shape[..]))
            .collect();
        let shape = |key: &str| {
            tensors
                .get(key)
                .copied()
                .ok_or_else(|| invalid(format!("no {key}: not a ResNet state_dict")))
        };
        let variant = if tensors.contains_key("conv3.weight") {
            ResNetVariant::D
        } else {
            ResNetVariant::Classic
        };
        let stem_out = match variant {
            ResNetVariant::Classic => shape("conv1.weight")?[0],
            ResNetVariant::D => shape("conv3.weight")?[0],
        };
        let blocks: Vec<usize> = (1..=4)
            .map(|stage| {
                let prefix = format!("layer{stage}.");
                tensors
                    .keys()
                    .filter_map(|k| k.strip_prefix(prefix.as_str()))
                    .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
                    .max()
                    .map_or(0, |last| last + 1)
            })
            .collect();
        let bottleneck = tensors.contains_key("layer1.0.conv3.weight");
        let depth = [
            ResNetDepth::R18,
            ResNetDepth::R34,
            ResNetDepth::R50,
            ResNetDepth::R101,
            ResNetDepth::R152,
        ]
        .into_iter()
        .find(|d| d.blocks()[..] == blocks[..] && d.bottleneck() == bottleneck)
        .ok_or_else(|| {
            invalid(format!(
                "{} blocks per stage {blocks:?} match no ResNet depth",
                if bottleneck { "bottleneck" } else { "basic" }
            ))
        })?;
        let [classes, _] = shape("fc.weight")?[..] else {
            return Err(invalid("fc.weight is not a matrix".to_string()));
        };
        let mut config = ResNetConfig::new(depth)
            .with_variant(variant)
            .with_width(stem_out as f64 / 64.0)
            .with_num_classes(classes);
        if tensors.contains_key("layer1.0.conv1.attn.fc_k.weight") {
            let rank = shape("layer1.0.conv1.attn.fc_k.weight")?[0]
                / shape("layer1.0.conv1.weight")?[2..]
                    .iter()
                    .product::<usize>();
            let decoder = tensors.contains_key("layer1.0.conv1.attn.decoder.0.weight");
            config = config.with_pedconv(Some(
                super::config::PedConvSettings::new()
                    .with_rank(rank)
                    .with_info_max_decoder(decoder),
            ));
        }
        Ok(config)
    }
}
