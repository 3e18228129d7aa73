//! Batch norms folded into the convolutions before them, for inference.
//!
//! In inference a batch norm is the per-channel affine map `y = s ⊙ x + t` with
//! `s = γ / sqrt(var + ε)` and `t = β - s ⊙ mean`. After a convolution with weight `W` and bias
//! `b`, it equals the convolution with weight `s ⊙ W` (each output channel's kernel scaled) and
//! bias `s ⊙ b + t`. A PEDConv layer's output is `a_out ⊙ conv(x ⊙ a_in, W ⊙ a_k)`: its output
//! attention also acts per output channel, so scaling `W` per output channel commutes with it,
//! and the shift becomes the layer's bias, which it adds after the output attention.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::model::{Block, ConvLayer, Downsample, ResNet};
use crate::pedconv2d::PedConv2d;

/// The batch norm's inference map `(s, t)`, `[channels]` each.
fn affine<B: Backend>(bn: &BatchNorm<B>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let scale = bn.gamma.val() / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
    let shift = bn.beta.val() - scale.clone() * bn.running_mean.value();
    (scale, shift)
}

/// Folds `bn` into a convolution's weight `[out, …]` and optional bias `[out]`: `s ⊙ W` and
/// `s ⊙ b + t` (the bias `t` where there was none).
fn fold<B: Backend>(
    bn: Option<BatchNorm<B>>,
    weight: &mut Param<Tensor<B, 4>>,
    bias: &mut Option<Param<Tensor<B, 1>>>,
) {
    let Some(bn) = bn else { return };
    let (scale, shift) = affine(&bn);
    let out = scale.dims()[0];
    *weight = Param::from_tensor(weight.val() * scale.clone().reshape([out, 1, 1, 1]));
    let folded = match bias.take() {
        Some(bias) => bias.val() * scale + shift,
        None => shift,
    };
    *bias = Some(Param::from_tensor(folded));
}

fn fold_static<B: Backend>(mut conv: Conv2d<B>, bn: Option<BatchNorm<B>>) -> Conv2d<B> {
    fold(bn, &mut conv.weight, &mut conv.bias);
    conv
}

fn fold_dynamic<B: Backend>(mut conv: PedConv2d<B>, bn: Option<BatchNorm<B>>) -> PedConv2d<B> {
    fold(bn, &mut conv.weight, &mut conv.bias);
    conv
}

fn fold_layer<B: Backend>(layer: ConvLayer<B>, bn: Option<BatchNorm<B>>) -> ConvLayer<B> {
    match layer {
        ConvLayer::Static(conv) => ConvLayer::Static(fold_static(conv, bn)),
        ConvLayer::Dynamic(conv) => ConvLayer::Dynamic(fold_dynamic(conv, bn)),
    }
}

impl<B: Backend> Block<B> {
    fn fold_batch_norms(self) -> Self {
        Self {
            conv1: fold_layer(self.conv1, self.bn1),
            bn1: None,
            conv2: fold_layer(self.conv2, self.bn2),
            bn2: None,
            conv3: self.conv3.map(|conv| fold_layer(conv, self.bn3)),
            bn3: None,
            downsample: self.downsample.map(|downsample| Downsample {
                pool: downsample.pool,
                conv: fold_static(downsample.conv, downsample.bn),
                bn: None,
            }),
        }
    }
}

impl<B: Backend> ResNet<B> {
    /// The same network for inference with every batch norm folded into the convolution before
    /// it (see the module's documentation): its logits equal this network's in inference, up to
    /// rounding, with one pass less over every feature map. Training statistics are gone, so
    /// fold only to deploy (predict, evaluate, export).
    pub fn fold_batch_norms(self) -> Self {
        let blocks =
            |stage: Vec<Block<B>>| stage.into_iter().map(Block::fold_batch_norms).collect();
        Self {
            conv1: fold_static(self.conv1, self.bn1),
            bn1: None,
            conv2: self.conv2.map(|conv| fold_static(conv, self.bn2)),
            bn2: None,
            conv3: self.conv3.map(|conv| fold_static(conv, self.bn3)),
            bn3: None,
            maxpool: self.maxpool,
            layer1: blocks(self.layer1),
            layer2: blocks(self.layer2),
            layer3: blocks(self.layer3),
            layer4: blocks(self.layer4),
            avgpool: self.avgpool,
            fc: self.fc,
        }
    }
}
