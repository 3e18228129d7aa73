//! The ResNet modules. Field names equal the reference's `state_dict` names (`conv1`, `bn1`,
//! `layer1.0.conv2`, `fc`, …), so that importing its weights needs only a few renames.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, AvgPool2d, AvgPool2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::record::DefaultRecorder;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::config::{ResNetConfig, ResNetVariant};
use super::plan::{BlockPlan, ConvSpec};
use crate::norm::{batch_norm, Epilogue};
use crate::paths::static_convolution;
use crate::pedconv2d::PedConv2d;
use crate::pool::max_pool;
use crate::precision::linear;
use crate::Error;

/// Where a training forward collects the info-max losses of the dynamic convolutions; `None`
/// for an inference forward.
type Losses<'a, B> = Option<&'a mut Vec<Tensor<B, 1>>>;

/// Reads every parameter, which creates those not yet created.
struct Initialise;

impl<B: Backend> ModuleVisitor<B> for Initialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        param.val();
    }
}

/// `relu(bn(x) + residual)` as `epilogue` asks, or the epilogue alone where the batch norm has
/// been folded into the convolution before it.
fn normalise<B: Backend>(
    bn: &Option<BatchNorm<B>>,
    x: Tensor<B, 4>,
    epilogue: Epilogue<B>,
) -> Tensor<B, 4> {
    match bn {
        Some(bn) => batch_norm(bn, x, epilogue),
        None => epilogue.apply(x),
    }
}

/// A block convolution: static, or PEDConv.
// A layer is built once and held by the model: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ConvLayer<B: Backend> {
    /// burn's `Conv2d`.
    Static(Conv2d<B>),
    /// A PEDConv layer.
    Dynamic(PedConv2d<B>),
}

impl<B: Backend> ConvLayer<B> {
    fn forward(&self, x: Tensor<B, 4>, losses: Losses<'_, B>) -> Tensor<B, 4> {
        match (self, losses) {
            (ConvLayer::Static(conv), _) => static_convolution(conv, x),
            (ConvLayer::Dynamic(conv), Some(losses)) => {
                let out = conv.forward_train(x);
                losses.extend(out.info_max_loss);
                out.output
            }
            (ConvLayer::Dynamic(conv), None) => conv.forward(x),
        }
    }
}

/// The shortcut of a block that changes shape: (average pool,) 1×1 convolution, batch norm.
/// The reference's `downsample.0/1` (classic) or `downsample.1/2` after a pool (the "d" variant).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// The "d" variant's average pool over `stride × stride` windows (ceil mode, padding not counted).
    pub pool: Option<AvgPool2d>,
    /// The 1×1 convolution.
    pub conv: Conv2d<B>,
    /// Its batch norm (`None` once folded into the convolution).
    pub bn: Option<BatchNorm<B>>,
}

impl<B: Backend> Downsample<B> {
    /// `bn(conv(pool(x)))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        normalise(&self.bn, self.convolve(x), Epilogue::none())
    }

    /// `conv(pool(x))`.
    pub fn convolve(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = match &self.pool {
            Some(pool) => pool.forward(x),
            None => x,
        };
        static_convolution(&self.conv, x)
    }
}

/// A residual block: `relu(bn_n(conv_n(… relu(bn1(conv1(x))) …)) + shortcut(x))`, two
/// convolutions for a basic block, three for a bottleneck.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// First convolution.
    pub conv1: ConvLayer<B>,
    /// Its batch norm (`None` once folded, as every batch norm here).
    pub bn1: Option<BatchNorm<B>>,
    /// Second convolution.
    pub conv2: ConvLayer<B>,
    /// Its batch norm.
    pub bn2: Option<BatchNorm<B>>,
    /// The bottleneck's third convolution.
    pub conv3: Option<ConvLayer<B>>,
    /// Its batch norm.
    pub bn3: Option<BatchNorm<B>>,
    /// The shortcut when the block changes shape; the identity otherwise.
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 4>, mut losses: Losses<'_, B>) -> Tensor<B, 4> {
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward(x.clone()),
            None => x.clone(),
        };
        let y = normalise(
            &self.bn1,
            self.conv1.forward(x, losses.as_deref_mut()),
            Epilogue::relu(),
        );
        let y = self.conv2.forward(y, losses.as_deref_mut());
        match &self.conv3 {
            None => normalise(&self.bn2, y, Epilogue::residual_relu(shortcut)),
            Some(conv3) => {
                let y = normalise(&self.bn2, y, Epilogue::relu());
                normalise(
                    &self.bn3,
                    conv3.forward(y, losses),
                    Epilogue::residual_relu(shortcut),
                )
            }
        }
    }
}

/// A ResNet, static or with PEDConv, built by [`ResNetConfig::init`].
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// Stem convolution (7×7, or the first 3×3 of the "d" stem).
    pub conv1: Conv2d<B>,
    /// Its batch norm (`None` once folded, as every batch norm here: see
    /// [`fold_batch_norms`](Self::fold_batch_norms)).
    pub bn1: Option<BatchNorm<B>>,
    /// The "d" stem's second convolution.
    pub conv2: Option<Conv2d<B>>,
    /// Its batch norm.
    pub bn2: Option<BatchNorm<B>>,
    /// The "d" stem's third convolution.
    pub conv3: Option<Conv2d<B>>,
    /// Its batch norm.
    pub bn3: Option<BatchNorm<B>>,
    /// The 3×3 stride-2 max pool after the stem.
    pub maxpool: MaxPool2d,
    /// Stage 1 (stride 4 from the input).
    pub layer1: Vec<Block<B>>,
    /// Stage 2 (stride 8).
    pub layer2: Vec<Block<B>>,
    /// Stage 3 (stride 16).
    pub layer3: Vec<Block<B>>,
    /// Stage 4 (stride 32).
    pub layer4: Vec<Block<B>>,
    /// Global average pool (the reference's `AvgPool2d(7)` at 224×224).
    pub avgpool: AdaptiveAvgPool2d,
    /// Classifier.
    pub fc: Linear<B>,
}

/// The result of a training forward.
#[derive(Debug, Clone)]
pub struct ResNetOutput<B: Backend> {
    /// `[batch, classes]`.
    pub logits: Tensor<B, 2>,
    /// The sum of the dynamic convolutions' information-maximisation losses (`[1]`); `None` for a
    /// static network or without decoders. The paper adds `0.001 ·` this to the loss.
    pub info_max_loss: Option<Tensor<B, 1>>,
}

impl<B: Backend> ResNet<B> {
    /// The logits. On an autodiff backend the dynamic convolutions add their training noise.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, H, W]`
    /// - output: `[batch, classes]`
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.run(images, None)
    }

    /// The training forward: logits and the summed information-maximisation loss.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, H, W]`
    /// - `logits`: `[batch, classes]`; `info_max_loss`: `[1]`
    pub fn forward_train(&self, images: Tensor<B, 4>) -> ResNetOutput<B> {
        let mut losses = Vec::new();
        let logits = self.run(images, Some(&mut losses));
        ResNetOutput {
            logits,
            info_max_loss: losses.into_iter().reduce(|a, b| a + b),
        }
    }

    /// The stem and shortcut style, as built: the "d" variant has a three-convolution stem.
    pub fn variant(&self) -> ResNetVariant {
        if self.conv3.is_some() {
            ResNetVariant::D
        } else {
            ResNetVariant::Classic
        }
    }

    /// Saves the weights and batch-norm statistics in burn's record format at full precision
    /// (`DefaultRecorder`; the file gets the `.mpk` extension).
    pub fn save_record(&self, path: impl Into<std::path::PathBuf>) -> Result<(), Error> {
        let path = path.into();
        // burn creates parameters when first read, and a clone of an unread one draws its own
        // values: read them all first, so that the file holds this model's.
        self.visit(&mut Initialise);
        self.clone()
            .save_file(path.clone(), &DefaultRecorder::new())
            .map_err(|error| Error::io(path.with_extension("mpk"), error))
    }

    /// Loads weights saved by [`save_record`](Self::save_record) into this model, which must have
    /// the same architecture.
    pub fn load_record(
        self,
        path: impl Into<std::path::PathBuf>,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let path = path.into();
        self.load_file(path.clone(), &DefaultRecorder::new(), device)
            .map_err(|error| Error::io(path, error))
    }

    fn run(&self, images: Tensor<B, 4>, mut losses: Losses<'_, B>) -> Tensor<B, 2> {
        let stem = |bn, conv, x| normalise(bn, static_convolution(conv, x), Epilogue::relu());
        let mut x = stem(&self.bn1, &self.conv1, images);
        if let (Some(conv2), Some(conv3)) = (&self.conv2, &self.conv3) {
            x = stem(&self.bn2, conv2, x);
            x = stem(&self.bn3, conv3, x);
        }
        x = max_pool(&self.maxpool, x);
        for block in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
        {
            x = block.forward(x, losses.as_deref_mut());
        }
        let features = self.avgpool.forward(x).flatten(1, 3);
        linear(&self.fc, features)
    }
}

impl ResNetConfig {
    /// Builds the network.
    ///
    /// # Panics
    /// When the configuration is invalid, with the message of [`try_init`](Self::try_init).
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        self.try_init(device)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Builds the network, or says which value of the configuration is invalid (see
    /// [`validate`](Self::validate)).
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<ResNet<B>, Error> {
        self.validate()?;
        let plan = self.plan();
        let stem: Vec<(Conv2d<B>, BatchNorm<B>)> = plan
            .stem
            .iter()
            .map(|spec| {
                (
                    self.static_conv(*spec, device),
                    self.batch_norm(spec.channels[1], false, device),
                )
            })
            .collect();
        let mut stem = stem.into_iter();
        let (conv1, bn1) = stem.next().expect("a stem convolution");
        let (conv2, bn2) = stem.next().unzip();
        let (conv3, bn3) = stem.next().unzip();
        let mut stages = plan.stages.iter().map(|blocks| {
            blocks
                .iter()
                .map(|block| self.block(block, device))
                .collect()
        });
        let mut stage = || stages.next().expect("four stages");
        let [features, classes] = plan.classifier;
        Ok(ResNet {
            conv1,
            bn1: Some(bn1),
            conv2,
            bn2,
            conv3,
            bn3,
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: stage(),
            layer2: stage(),
            layer3: stage(),
            layer4: stage(),
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(features, classes).init(device),
        })
    }

    fn static_conv<B: Backend>(&self, spec: ConvSpec, device: &B::Device) -> Conv2d<B> {
        let padding = spec.kernel / 2;
        Conv2dConfig::new(spec.channels, [spec.kernel, spec.kernel])
            .with_stride([spec.stride, spec.stride])
            .with_padding(PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .with_bias(false)
            .with_initializer(self.conv_init.initializer())
            .init(device)
    }

    fn conv_layer<B: Backend>(&self, spec: ConvSpec, device: &B::Device) -> ConvLayer<B> {
        if spec.dynamic {
            ConvLayer::Dynamic(self.conv_config(spec).init(device))
        } else {
            ConvLayer::Static(self.static_conv(spec, device))
        }
    }

    /// A batch norm whose scale starts at `bn_scale_init`, or at zero for the last batch norm of
    /// a block when `zero_init_last_bn` is set.
    fn batch_norm<B: Backend>(
        &self,
        channels: usize,
        last: bool,
        device: &B::Device,
    ) -> BatchNorm<B> {
        let mut bn = BatchNormConfig::new(channels).init(device);
        let scale = if last && self.zero_init_last_bn {
            0.0
        } else {
            self.bn_scale_init
        };
        bn.gamma = Param::from_tensor(Tensor::full([channels], scale, device));
        bn
    }

    fn block<B: Backend>(&self, plan: &BlockPlan, device: &B::Device) -> Block<B> {
        let count = plan.convs.len();
        let mut layers = plan.convs.iter().enumerate().map(|(index, spec)| {
            (
                self.conv_layer(*spec, device),
                self.batch_norm(spec.channels[1], index + 1 == count, device),
            )
        });
        let (conv1, bn1) = layers.next().expect("two block convolutions");
        let (conv2, bn2) = layers.next().expect("two block convolutions");
        let (conv3, bn3) = layers.next().unzip();
        let downsample = plan.shortcut.map(|spec| Downsample {
            pool: (self.variant == ResNetVariant::D && plan.stride > 1).then(|| {
                AvgPool2dConfig::new([plan.stride, plan.stride])
                    .with_ceil_mode(true)
                    .with_count_include_pad(false)
                    .init()
            }),
            conv: self.static_conv(spec, device),
            bn: Some(self.batch_norm(spec.channels[1], false, device)),
        });
        Block {
            conv1,
            bn1: Some(bn1),
            conv2,
            bn2: Some(bn2),
            conv3,
            bn3,
            downsample,
        }
    }
}
