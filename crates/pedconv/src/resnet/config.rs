//! [`ResNetConfig`]: architecture, width, classes, and where PEDConv replaces static convolutions.

use burn::config::Config;
use burn::module::Initializer;

use crate::config::{ComputePath, PedConv2dConfig};
use crate::Error;

/// The depth of a ResNet: basic blocks for 18 and 34, bottlenecks for 50, 101 and 152.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ResNetDepth {
    /// ResNet-18: basic blocks `[2, 2, 2, 2]`.
    R18,
    /// ResNet-34: basic blocks `[3, 4, 6, 3]`.
    R34,
    /// ResNet-50: bottlenecks `[3, 4, 6, 3]`.
    R50,
    /// ResNet-101: bottlenecks `[3, 4, 23, 3]`.
    R101,
    /// ResNet-152: bottlenecks `[3, 8, 36, 3]`.
    R152,
}

impl ResNetDepth {
    /// Blocks per stage.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            ResNetDepth::R18 => [2, 2, 2, 2],
            ResNetDepth::R34 | ResNetDepth::R50 => [3, 4, 6, 3],
            ResNetDepth::R101 => [3, 4, 23, 3],
            ResNetDepth::R152 => [3, 8, 36, 3],
        }
    }

    /// If the stages are made of bottlenecks (1×1, 3×3, 1×1, expansion 4).
    pub fn bottleneck(self) -> bool {
        !matches!(self, ResNetDepth::R18 | ResNetDepth::R34)
    }

    /// Output channels of a block over its width (`planes`): 1 for basic blocks, 4 for bottlenecks.
    pub fn expansion(self) -> usize {
        if self.bottleneck() {
            4
        } else {
            1
        }
    }
}

/// The stem and shortcut style.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ResNetVariant {
    /// A 7×7 stride-2 stem convolution; shortcuts are a strided 1×1 convolution and batch norm.
    Classic,
    /// The "d" variant: a stem of three 3×3 convolutions (the first with stride 2), and shortcuts
    /// that average-pool with the stride before a stride-1 1×1 convolution.
    D,
}

/// How convolution weights are initialised, as in the reference training script.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// Kaiming normal over the fan-out (`std = sqrt(2 / fan_out)`): the script's "classic".
    Classic,
    /// Kaiming normal over the fan-in (`std = sqrt(2 / fan_in)`): the script's "fanin".
    FanIn,
}

impl ConvInit {
    /// The burn initializer of this scheme.
    pub fn initializer(self) -> Initializer {
        Initializer::KaimingNormal {
            gain: 2.0f64.sqrt(),
            fan_out_only: self == ConvInit::Classic,
        }
    }
}

/// The settings of the dynamic convolutions of a PEDConv ResNet (everything but their shapes).
/// The defaults are the paper's.
#[derive(Config, Debug)]
pub struct PedConvSettings {
    /// The attention branch's hidden width is `max(1, in / reduction)`.
    #[config(default = 16)]
    pub reduction: usize,
    /// The number of rank-1 terms of the kernel modulation.
    #[config(default = 1)]
    pub rank: usize,
    /// Standard deviation of the training noise on the attention logits.
    #[config(default = 0.1)]
    pub noise_std: f64,
    /// If the information-maximisation decoders are built.
    #[config(default = true)]
    pub info_max_decoder: bool,
    /// The compute path of every dynamic convolution.
    #[config(default = "ComputePath::Auto")]
    pub compute_path: ComputePath,
}

impl PedConvSettings {
    /// The configuration of one dynamic convolution of the given shape.
    pub(crate) fn layer(
        &self,
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        init: ConvInit,
    ) -> PedConv2dConfig {
        let padding = kernel / 2;
        PedConv2dConfig::new(channels, [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(burn::nn::PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .with_reduction(self.reduction)
            .with_rank(self.rank)
            .with_noise_std(self.noise_std)
            .with_info_max_decoder(self.info_max_decoder)
            .with_compute_path(self.compute_path)
            .with_initializer(init.initializer())
    }
}

/// Configuration of a [`ResNet`](super::ResNet), static or with PEDConv.
///
/// Dynamic convolutions sit where the paper's code puts them: the 3×3 convolutions of basic
/// blocks and all three convolutions of bottlenecks; the stem, the shortcuts and the classifier
/// stay static. Bottlenecks stride in their 3×3 convolution (ResNet v1.5).
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// The depth (and block type).
    pub depth: ResNetDepth,
    /// The stem and shortcut style.
    #[config(default = "ResNetVariant::Classic")]
    pub variant: ResNetVariant,
    /// Width multiplier of every layer: a layer of `c` channels at width 1 has `floor(c · width)`.
    #[config(default = 1.0)]
    pub width: f64,
    /// The number of classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// `None` for a static ResNet; the dynamic convolutions' settings for a PEDConv ResNet.
    #[config(default = "None")]
    pub pedconv: Option<PedConvSettings>,
    /// Initialisation of every convolution weight.
    #[config(default = "ConvInit::Classic")]
    pub conv_init: ConvInit,
    /// The initial scale (`gamma`) of every batch norm; the reference uses 0.5.
    #[config(default = 0.5)]
    pub bn_scale_init: f64,
    /// If the last batch norm of each block starts with a zero scale, so that every residual
    /// block starts as the identity.
    #[config(default = false)]
    pub zero_init_last_bn: bool,
}

impl ResNetConfig {
    /// ResNet-18, static, 1000 classes.
    pub fn resnet18() -> Self {
        Self::new(ResNetDepth::R18)
    }

    /// ResNet-34, static, 1000 classes.
    pub fn resnet34() -> Self {
        Self::new(ResNetDepth::R34)
    }

    /// ResNet-50, static, 1000 classes.
    pub fn resnet50() -> Self {
        Self::new(ResNetDepth::R50)
    }

    /// ResNet-50d (deep stem, average-pool shortcuts), static, 1000 classes.
    pub fn resnet50d() -> Self {
        Self::new(ResNetDepth::R50).with_variant(ResNetVariant::D)
    }

    /// ResNet-101, static, 1000 classes.
    pub fn resnet101() -> Self {
        Self::new(ResNetDepth::R101)
    }

    /// ResNet-152, static, 1000 classes.
    pub fn resnet152() -> Self {
        Self::new(ResNetDepth::R152)
    }

    /// The same architecture with PEDConv (the paper's settings) in place of the block convolutions.
    pub fn dynamic(self) -> Self {
        self.with_pedconv(Some(PedConvSettings::new()))
    }

    /// `floor(channels · width)`, at least 1.
    pub fn scaled(&self, channels: usize) -> usize {
        ((channels as f64 * self.width) as usize).max(1)
    }

    /// Checks the values that do not depend on the input.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |message: String| {
            Err(Error::Config {
                config: "ResNetConfig",
                message,
            })
        };
        if !(self.width.is_finite() && self.width > 0.0) {
            return invalid(format!("width must be positive, got {}", self.width));
        }
        if self.num_classes == 0 {
            return invalid("num_classes must be positive, got 0".to_string());
        }
        if let Some(settings) = &self.pedconv {
            settings
                .layer([self.scaled(64); 2], 3, 1, self.conv_init)
                .validate()?;
        }
        Ok(())
    }
}
