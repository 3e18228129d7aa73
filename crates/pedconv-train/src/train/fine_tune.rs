//! Fine-tuning: a run's network built from pretrained weights (a new classifier when the
//! data's classes differ from the file's), and which parameters the optimizer steps in each
//! epoch, at what rate.

use std::io::Read;
use std::path::Path;

use burn::tensor::backend::Backend;
use pedconv::resnet::{ResNet, ResNetConfig};
use sha2::{Digest, Sha256};

use super::objective::seeded;
use crate::config::{FineTuneConfig, StartedFrom, TrainConfig, TrainOnly};
use crate::model::Weights;

/// Checks that the configuration's network `config` can start from the file's `file`: the same
/// depth, variant, channels and PEDConv settings (a static file may start a PEDConv network:
/// its weights become the base weights). The classes may differ: the classifier is then new.
pub fn check_architecture(
    config: &ResNetConfig,
    file: &ResNetConfig,
    path: &Path,
) -> Result<(), String> {
    let differs = |field: &str, ours: String, theirs: String| {
        Err(format!(
            "model.{field} is {ours} in the configuration, but the weights {} hold {theirs}; \
             change model.{field}, or leave model out of the configuration to take the file's",
            path.display()
        ))
    };
    if config.depth != file.depth {
        return differs(
            "depth",
            format!("{:?}", config.depth),
            format!("a {:?}", file.depth),
        );
    }
    if config.variant != file.variant {
        return differs(
            "variant",
            format!("{:?}", config.variant),
            format!("the {:?} variant", file.variant),
        );
    }
    let channels = |c: &ResNetConfig| [64, 128, 256, 512].map(|n| c.scaled(n));
    if channels(config) != channels(file) {
        return differs(
            "width",
            format!("{} (stage channels {:?})", config.width, channels(config)),
            format!("width {} (stage channels {:?})", file.width, channels(file)),
        );
    }
    match (&config.pedconv, &file.pedconv) {
        (None, Some(_)) => differs(
            "pedconv",
            "null (a static network)".to_string(),
            "a PEDConv network".to_string(),
        ),
        (Some(ours), Some(theirs)) if ours.rank != theirs.rank => differs(
            "pedconv.rank",
            ours.rank.to_string(),
            format!("rank {}", theirs.rank),
        ),
        (Some(ours), Some(theirs)) if ours.info_max_decoder != theirs.info_max_decoder => differs(
            "pedconv.info_max_decoder",
            ours.info_max_decoder.to_string(),
            format!("info_max_decoder {}", theirs.info_max_decoder),
        ),
        _ => Ok(()),
    }
}

/// What a run starting from `weights` with the network `config` finds in them, the file's
/// SHA-256 included.
pub fn started_from(weights: &Weights, config: &ResNetConfig) -> Result<StartedFrom, String> {
    Ok(StartedFrom {
        weights: weights.path.clone(),
        sha256: sha256_of(&weights.path)?,
        file_classes: weights.architecture.num_classes,
        new_head: weights.architecture.num_classes != config.num_classes,
        attention_from_file: weights.architecture.pedconv.is_some(),
    })
}

/// The SHA-256 of a file, in hexadecimal.
fn sha256_of(path: &Path) -> Result<String, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// The run's network at step 0: `weights` loaded into the configuration's network, with the
/// classifier of `fresh` (the run's random initialisation) when the head is new.
pub fn start_from<B: Backend>(
    weights: &Weights,
    fresh: ResNet<B>,
    config: &TrainConfig,
    started: &StartedFrom,
    device: &B::Device,
) -> Result<ResNet<B>, String> {
    let architecture = config.model.clone().with_num_classes(started.file_classes);
    // Attention branches that the file lacks take the run's initialisation.
    let mut net = seeded::<B, _>(device, config.seed, || weights.load(&architecture, device))?;
    if started.new_head {
        net.fc = fresh.fc;
    }
    Ok(net)
}

/// Where a parameter sits, which decides whether it trains while the backbone is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The classifier.
    Head,
    /// A PEDConv layer's attention branch or its decoder.
    Attention,
    /// Everything else: the convolutions (PEDConv base weights included) and batch norms.
    Backbone,
}

/// The training of each part in a fine-tuning run: frozen or not in an epoch, and the
/// multiplier of its gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartRates {
    train_only: Option<TrainOnly>,
    train_only_epochs: Option<usize>,
    /// Multiplies the gradients (weight decay included) of parameters loaded from the file:
    /// for SGD with momentum and without dampening, the same steps as multiplying their
    /// learning rate.
    pretrained_multiplier: f64,
    head_from_file: bool,
    attention_from_file: bool,
}

impl PartRates {
    /// The rates of a fine-tuning configuration (`None` when the run started from random
    /// weights, or has not yet read its file).
    pub fn of(fine_tune: &FineTuneConfig) -> Option<Self> {
        let started = fine_tune.started_from.as_ref()?;
        Some(Self {
            train_only: fine_tune.train_only,
            train_only_epochs: fine_tune.train_only_epochs,
            pretrained_multiplier: fine_tune.pretrained_lr_multiplier,
            head_from_file: !started.new_head,
            attention_from_file: started.attention_from_file,
        })
    }

    /// The gradient multiplier of `part` in `epoch` (from 1): `None` when it is frozen.
    pub fn multiplier(&self, part: Part, epoch: usize) -> Option<f64> {
        let train_only = match self.train_only_epochs {
            Some(epochs) if epoch > epochs => None,
            _ => self.train_only,
        };
        let trains = match (train_only, part) {
            (None, _) | (_, Part::Head) => true,
            (Some(TrainOnly::HeadAndAttention), Part::Attention) => true,
            (Some(_), _) => false,
        };
        let from_file = match part {
            Part::Head => self.head_from_file,
            Part::Attention => self.attention_from_file,
            Part::Backbone => true,
        };
        trains.then_some(if from_file {
            self.pretrained_multiplier
        } else {
            1.0
        })
    }
}

/// Tracks, during a visit of the training objective, the [`Part`] of the parameters visited
/// and whether they are inside a batch norm.
#[derive(Debug, Default)]
pub struct PartTracker {
    /// The names of the modules entered, from the objective's fields down.
    path: Vec<String>,
    /// How many of them are attention branches and batch norms.
    attention_depth: usize,
    norm_depth: usize,
}

impl PartTracker {
    pub fn enter(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.attention_depth += usize::from(container_type.ends_with(":Attention"));
        self.norm_depth += usize::from(container_type.ends_with(":BatchNorm"));
    }

    pub fn exit(&mut self, container_type: &str) {
        self.path.pop();
        self.attention_depth -= usize::from(container_type.ends_with(":Attention"));
        self.norm_depth -= usize::from(container_type.ends_with(":BatchNorm"));
    }

    /// The part of the parameters visited now.
    pub fn part(&self) -> Part {
        if self.path.len() >= 2 && self.path[..2] == ["net", "fc"] {
            Part::Head
        } else if self.attention_depth > 0 {
            Part::Attention
        } else {
            Part::Backbone
        }
    }

    /// Whether the parameters visited now belong to a batch norm.
    pub fn in_batch_norm(&self) -> bool {
        self.norm_depth > 0
    }
}

/// The parameters of each part of a network, flattened, in visiting order: what tests compare
/// before and after training.
#[cfg(test)]
pub fn parameters_by_part<B: Backend>(net: &super::Classifier<B>) -> Vec<(Part, String, Vec<f32>)> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Collect {
        tracker: PartTracker,
        found: Vec<(Part, String, Vec<f32>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.tracker.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            self.tracker.exit(container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f32>().to_vec().unwrap();
            let name = self.tracker.path.join(".");
            self.found.push((self.tracker.part(), name, values));
        }
    }
    let mut collect = Collect {
        tracker: PartTracker::default(),
        found: Vec::new(),
    };
    net.visit(&mut collect);
    collect.found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainOnly::{Head, HeadAndAttention};
    use burn::backend::Flex;
    use burn::tensor::Tensor;
    use pedconv::import::PytorchCheckpoint;
    use pedconv::resnet::{ConvLayer, ResNetDepth};

    #[test]
    fn frozen_parts_get_no_step_and_pretrained_ones_the_multiplier() {
        let rates = PartRates {
            train_only: Some(Head),
            train_only_epochs: Some(2),
            pretrained_multiplier: 0.1,
            head_from_file: false,
            attention_from_file: false,
        };
        assert_eq!(rates.multiplier(Part::Head, 1), Some(1.0));
        assert_eq!(rates.multiplier(Part::Attention, 2), None);
        assert_eq!(rates.multiplier(Part::Backbone, 2), None);
        assert_eq!(rates.multiplier(Part::Backbone, 3), Some(0.1));
        // Attention branches the file lacked start fresh: the run's rate.
        assert_eq!(rates.multiplier(Part::Attention, 3), Some(1.0));
        let throughout = PartRates {
            train_only: Some(HeadAndAttention),
            train_only_epochs: None,
            pretrained_multiplier: 0.5,
            head_from_file: true,
            attention_from_file: true,
        };
        assert_eq!(throughout.multiplier(Part::Head, 1), Some(0.5));
        assert_eq!(throughout.multiplier(Part::Attention, 100), Some(0.5));
        assert_eq!(throughout.multiplier(Part::Backbone, 100), None);
    }

    /// Of a PEDConv ResNet-18's parameters, the classifier's two are the head, and the 16
    /// PEDConv layers' attention branches (four linear layers and a decoder of two, weight and
    /// bias each) are the 192 of the attention part: those whose path names `attn`.
    #[test]
    fn the_parts_of_a_pedconv_resnet() {
        let net = ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.0625)
            .with_num_classes(3)
            .dynamic()
            .init::<Flex>(&Default::default());
        let classifier = super::super::Classifier::new(
            net,
            &TrainConfig::builtin(),
            super::super::GradientReduction::Sum,
        );
        let parts = parameters_by_part(&classifier);
        let count = |part| parts.iter().filter(|(p, ..)| *p == part).count();
        assert_eq!(count(Part::Head), 2);
        assert_eq!(count(Part::Attention), 192);
        for (part, name, _) in &parts {
            assert_eq!(*part == Part::Attention, name.contains(".attn."), "{name}");
            assert_eq!(*part == Part::Head, name.starts_with("net.fc."), "{name}");
        }
    }

    /// NIST's example: SHA-256("abc").
    #[test]
    fn sha256_of_a_file() {
        let path = std::env::temp_dir().join(format!("pedconv-sha-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let hash = sha256_of(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// torchvision's static ResNet-18 (a quarter of the channels, made by
    /// `tests/fixtures/torchvision/make_resnet18.py`) starts a PEDConv run: at step 0 every
    /// convolution weight, the PEDConv layers' base weights among them, is the file's, bit for
    /// bit, and so is the classifier when the classes agree.
    #[test]
    fn static_weights_become_the_base_weights_of_pedconv_layers() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/torchvision/resnet18_w0.25_c10_torchvision.pth");
        let weights = Weights::read(&path, None).unwrap();
        assert!(weights.architecture.pedconv.is_none());
        let mut config = TrainConfig::builtin();
        config.model = weights.architecture.clone().dynamic();
        check_architecture(&config.model, &weights.architecture, &path).unwrap();
        let started = started_from(&weights, &config.model).unwrap();
        assert!(!started.new_head && !started.attention_from_file);
        let device = Default::default();
        let fresh = config.model.init::<Flex>(&device);
        let net = start_from(&weights, fresh, &config, &started, &device).unwrap();
        let file = PytorchCheckpoint::read(&path).unwrap();
        let same = |key: &str, values: Vec<f32>| {
            let expected = file.tensors()[key].to_vec::<f32>().unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&values), bits(&expected), "{key}");
        };
        let values = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().unwrap();
        same("conv1.weight", values(net.conv1.weight.val()));
        let mut dynamic = 0;
        for (stage, blocks) in [&net.layer1, &net.layer2, &net.layer3, &net.layer4]
            .into_iter()
            .enumerate()
        {
            for (index, block) in blocks.iter().enumerate() {
                for (conv, layer) in [(1, &block.conv1), (2, &block.conv2)] {
                    let ConvLayer::Dynamic(layer) = layer else {
                        panic!("a static block convolution in a PEDConv network");
                    };
                    let key = format!("layer{}.{index}.conv{conv}.weight", stage + 1);
                    same(&key, values(layer.weight.val()));
                    dynamic += 1;
                }
            }
        }
        assert_eq!(dynamic, 16);
        let fc = net.fc.weight.val().transpose().into_data().to_vec::<f32>();
        same("fc.weight", fc.unwrap());
        same(
            "fc.bias",
            net.fc.bias.unwrap().val().into_data().to_vec().unwrap(),
        );
    }
}
