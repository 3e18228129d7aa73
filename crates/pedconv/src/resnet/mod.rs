//! ResNet-18/34/50/101/152 and ResNet-50d, static or with PEDConv where the paper's code puts it.

mod config;
mod fold;
mod model;
mod plan;
mod pytorch;

pub use config::{ConvInit, PedConvSettings, ResNetConfig, ResNetDepth, ResNetVariant};
pub use model::{Block, ConvLayer, Downsample, ResNet, ResNetOutput};
pub use plan::ConvLayerShape;
pub use pytorch::ImportMode;
