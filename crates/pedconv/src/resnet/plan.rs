//! The layer plan of a ResNet: every convolution's shape, in order. Building the model and
//! counting its parameters and multiply-accumulates both read it, so they cannot disagree.

use super::config::{ResNetConfig, ResNetVariant};
use crate::accounting::{MacCounts, ParameterCounts};
use crate::config::PedConv2dConfig;

/// One convolution of the network (no bias; padding `kernel / 2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvSpec {
    pub channels: [usize; 2],
    pub kernel: usize,
    pub stride: usize,
    /// PEDConv rather than a static convolution.
    pub dynamic: bool,
}

/// One residual block: its main-path convolutions (2 or 3) and its shortcut convolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockPlan {
    pub convs: Vec<ConvSpec>,
    pub shortcut: Option<ConvSpec>,
    /// The block's stride (in its 3×3 convolution, and in its shortcut).
    pub stride: usize,
}

/// The whole network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub stem: Vec<ConvSpec>,
    pub stages: Vec<Vec<BlockPlan>>,
    /// Classifier `[in, classes]`.
    pub classifier: [usize; 2],
}

impl ResNetConfig {
    pub(crate) fn plan(&self) -> Plan {
        let dynamic = self.pedconv.is_some();
        let conv = |channels, kernel, stride, dynamic| ConvSpec {
            channels,
            kernel,
            stride,
            dynamic,
        };
        let stem_width = self.scaled(64);
        let stem = match self.variant {
            ResNetVariant::Classic => vec![conv([3, stem_width], 7, 2, false)],
            ResNetVariant::D => {
                let half = self.scaled(32);
                vec![
                    conv([3, half], 3, 2, false),
                    conv([half, half], 3, 1, false),
                    conv([half, stem_width], 3, 1, false),
                ]
            }
        };
        let expansion = self.depth.expansion();
        let mut channels = stem_width;
        let mut stages = Vec::with_capacity(4);
        for (stage, blocks) in self.depth.blocks().into_iter().enumerate() {
            let planes = self.scaled(64 << stage);
            let out = planes * expansion;
            let mut plans = Vec::with_capacity(blocks);
            for index in 0..blocks {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                let convs = if self.depth.bottleneck() {
                    vec![
                        conv([channels, planes], 1, 1, dynamic),
                        conv([planes, planes], 3, stride, dynamic),
                        conv([planes, out], 1, 1, dynamic),
                    ]
                } else {
                    vec![
                        conv([channels, planes], 3, stride, dynamic),
                        conv([planes, out], 3, 1, dynamic),
                    ]
                };
                let shortcut_stride = match self.variant {
                    ResNetVariant::Classic => stride,
                    ResNetVariant::D => 1,
                };
                let shortcut = (stride != 1 || channels != out)
                    .then(|| conv([channels, out], 1, shortcut_stride, false));
                plans.push(BlockPlan {
                    convs,
                    shortcut,
                    stride,
                });
                channels = out;
            }
            stages.push(plans);
        }
        Plan {
            stem,
            stages,
            classifier: [channels, self.num_classes],
        }
    }

    /// The configuration of one convolution of the plan, static or dynamic.
    pub(crate) fn conv_config(&self, spec: ConvSpec) -> PedConv2dConfig {
        let settings = match (&self.pedconv, spec.dynamic) {
            (Some(settings), true) => settings.clone(),
            // A static convolution has the same geometry and base weight; its counts keep only those.
            _ => super::config::PedConvSettings::new(),
        };
        settings.layer(spec.channels, spec.kernel, spec.stride, self.conv_init)
    }

    /// Parameters of the network, split as for a layer; the static parts (stem, shortcuts,
    /// batch norms, classifier) count as `base`.
    pub fn parameter_counts(&self) -> ParameterCounts {
        let plan = self.plan();
        let mut counts = ParameterCounts::default();
        let mut add_conv = |spec: ConvSpec| {
            let layer = self.conv_config(spec).parameter_counts();
            counts = counts
                + if spec.dynamic { layer } else { layer.static_part() }
                // The batch norm after every convolution: scale and shift.
                + ParameterCounts {
                    base: 2 * spec.channels[1],
                    ..Default::default()
                };
        };
        plan.stem.iter().copied().for_each(&mut add_conv);
        for block in plan.stages.iter().flatten() {
            block.convs.iter().copied().for_each(&mut add_conv);
            block.shortcut.into_iter().for_each(&mut add_conv);
        }
        let [features, classes] = plan.classifier;
        counts
            + ParameterCounts {
                base: features * classes + classes,
                ..Default::default()
            }
    }

    /// Multiply-accumulates of one forward for one `[H, W]` image; the static convolutions and
    /// the classifier count as `conv`.
    pub fn macs(&self, input_size: [usize; 2]) -> MacCounts {
        let total = self
            .conv_layers(input_size)
            .iter()
            .map(|layer| {
                let macs = layer.config.macs(layer.input_size);
                if layer.dynamic {
                    macs
                } else {
                    macs.static_part()
                }
            })
            .fold(MacCounts::default(), |sum, macs| sum + macs);
        let [features, classes] = self.plan().classifier;
        total
            + MacCounts {
                conv: (features * classes) as u64,
                ..Default::default()
            }
    }

    /// Every convolution of the network, in order (stem, then each block's main path and
    /// shortcut), with the input size it sees for one `[H, W]` image.
    pub fn conv_layers(&self, input_size: [usize; 2]) -> Vec<ConvLayerShape> {
        let plan = self.plan();
        let mut layers = Vec::new();
        let mut run = |spec: ConvSpec, size: [usize; 2]| -> [usize; 2] {
            let config = self.conv_config(spec);
            let output = config_output(&config, size);
            layers.push(ConvLayerShape {
                config,
                input_size: size,
                dynamic: spec.dynamic,
            });
            output
        };
        let mut size = input_size;
        for spec in &plan.stem {
            size = run(*spec, size);
        }
        // The 3×3 stride-2 max pool (padding 1).
        size = size.map(|s| (s + 2 - 3) / 2 + 1);
        for block in plan.stages.iter().flatten() {
            let input = size;
            for spec in &block.convs {
                size = run(*spec, size);
            }
            if let Some(shortcut) = block.shortcut {
                // The "d" shortcut pools with the stride (ceil mode) before its 1×1 convolution.
                let pooled = if shortcut.stride == block.stride {
                    input
                } else {
                    input.map(|s| s.div_ceil(block.stride))
                };
                run(shortcut, pooled);
            }
        }
        layers
    }
}

/// One convolution of a ResNet.
#[derive(Debug, Clone)]
pub struct ConvLayerShape {
    /// Its configuration (for a static convolution, that of a PEDConv of the same geometry,
    /// whose base weight it is).
    pub config: PedConv2dConfig,
    /// The `[H, W]` of its input.
    pub input_size: [usize; 2],
    /// If it is a PEDConv.
    pub dynamic: bool,
}

fn config_output(config: &PedConv2dConfig, size: [usize; 2]) -> [usize; 2] {
    crate::geometry::ConvGeometry::new(
        size,
        config.kernel_size,
        config.stride,
        config.dilation,
        &config.padding,
    )
    .unwrap_or_else(|error| panic!("ResNet plan: {error}"))
    .output_size
}
