#![warn(missing_docs)]
//! # pedconv
//!
//! PEDConv, the parameter-efficient dynamic convolution of Hou & Kung (BMVC 2021), as burn
//! modules generic over the [`Backend`](burn::tensor::backend::Backend).
//!
//! [`PedConv2d`] replaces a convolution's fixed kernel with a per-sample one: the base weight `W`
//! rescaled element by element by a rank-1 (CP) product of three sigmoid attentions, over the
//! output channels, the input channels and the kernel taps, computed from the globally pooled
//! input by a small bottleneck MLP. In training, the attention logits get Gaussian noise and a
//! small decoder reconstructs the pooled input from them; its loss (the layer's
//! "information-maximisation" loss) is returned by [`PedConv2d::forward_train`].
//!
//! ```
//! use burn::backend::Flex;
//! use burn::nn::PaddingConfig2d;
//! use burn::tensor::Tensor;
//! use pedconv::PedConv2dConfig;
//!
//! let device = Default::default();
//! let conv = PedConv2dConfig::new([16, 32], [3, 3])
//!     .with_stride([2, 2])
//!     .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
//!     .init::<Flex>(&device);
//! let y = conv.forward(Tensor::<Flex, 4>::ones([2, 16, 8, 8], &device));
//! assert_eq!(y.dims(), [2, 32, 4, 4]);
//! ```
//!
//! The cargo features `flex` (on by default), `ndarray`, `wgpu` and `cuda` build the compute
//! paths' memory-saving autodiff operations for `Autodiff` over those backends (see
//! [`ComputePath`]); on any other backend autodiff differentiates the same computation. `flex`
//! also builds fused CPU loops for burn's flex backend: the factorized path's, which the
//! ResNets' static convolutions take too ([`static_conv2d`]), and those of their batch norms
//! (with the residual addition and ReLU that follow) and max-pooling. `wgpu` and `cuda` build
//! CubeCL kernels for the factorized path (the same code on both), which static convolutions
//! take in training on wgpu, and one-launch kernels for the attention branch's activations and
//! for the step of [`optim::MomentumSgd`], the training recipe's optimizer. They serve burn's
//! `Wgpu` and `Cuda` with or without burn's `fusion` feature (on by default in burn): under
//! fusion the factorized path's kernels run as custom operations of its stream, and fusion
//! merges the element-wise work itself.
//!
//! Layers compute in their input's float type: a half-precision (`f16`, `bf16`) input runs
//! [`PedConv2d`] and the ResNets in that type, their float32 parameters cast to it by burn's
//! differentiable cast (mixed precision with float32 master weights); batch norms and the
//! information-maximisation loss compute in float32. The fused CPU loops run float32 and
//! float64; half types take the composition of burn's operations.
//!
//! [`resnet`] builds the paper's ResNets, static or with PEDConv; with the `onnx` feature, `onnx`
//! exports them as ONNX models (opset 17) for other runtimes. The crate's `examples/` show a
//! model of one's own that swaps a `Conv2d` for a `PedConv2d`.

mod accounting;
mod activation;
mod attention;
mod backend;
mod config;
mod error;
mod geometry;
pub mod import;
mod norm;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod optim;
mod paths;
mod pedconv2d;
mod pool;
pub mod precision;
pub mod resnet;
#[cfg(test)]
mod testing;

pub use accounting::{MacCounts, ParameterCounts};
pub use attention::{Attention, AttentionFactors, AttentionNoise, AttentionSizes, InfoMaxDecoder};
pub use config::{ComputePath, PedConv2dConfig};
pub use error::Error;
pub use geometry::ConvGeometry;
pub use pedconv2d::{PedConv2d, PedConvOutput};

/// A static convolution with burn's [`Conv2d`](burn::nn::conv::Conv2d) parameters and options,
/// `conv2d(x, W) + bias`, by the fastest route measured on `B`: the factorized path's fused
/// loops on flex, its CubeCL kernels in training on wgpu (with unit factors: a static
/// convolution is PEDConv with every attention one), burn's convolution elsewhere. The ResNets'
/// static convolutions run through it; the module stays burn's `Conv2d`, so its parameters and
/// checkpoints are unchanged.
pub fn static_conv2d<B: burn::tensor::backend::Backend>(
    conv: &burn::nn::conv::Conv2d<B>,
    x: burn::tensor::Tensor<B, 4>,
) -> burn::tensor::Tensor<B, 4> {
    paths::static_convolution(conv, x)
}
