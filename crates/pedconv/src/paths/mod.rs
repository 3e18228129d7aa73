//! The compute paths of [`ComputePath`](crate::ComputePath): two ways of computing
//! `y_b = conv2d(x_b, W ⊙ Σ_r a_out[b,r] ⊗ a_in[b,r] ⊗ a_k[b,r])` for every sample `b`.
//!
//! Each path is a [`Formulation`] written once over any backend's tensors ([`kernels`]: the
//! per-sample kernels; [`columns`]: the factorized path's im2col), with a hand-written backward
//! pass. The backend layer ([`backend`](crate::backend)) runs it: its columns formulation as
//! fused loops on flex and CubeCL kernels on the GPU backends, and in training as one autodiff
//! operation that recomputes its large intermediates in the backward pass. Where the backend
//! has no columns of its own, the 1×1 factorized path is a static convolution between two
//! channel scalings, left to autodiff.

pub(crate) mod columns;
mod kernels;
mod static_conv;
mod tensor_ops;

use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorPrimitive};

pub(crate) use static_conv::{add_channel_bias, static_convolution};
use tensor_ops::{expand_terms, im2col, input_scale, pad_zeros, scale_rows, sum_terms};

use crate::attention::AttentionFactors;
use crate::backend::{ops, BackendClass, Columns};
use crate::geometry::ConvGeometry;

/// Everything but the weight that fixes how a convolution maps its input: what the columns
/// formulation needs to rebuild its im2col in the backward pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvLayout {
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    /// Padding and output size for the input at hand.
    pub geometry: ConvGeometry,
}

/// The static part of a layer that every path needs.
pub(crate) struct StaticConv<B: Backend> {
    /// Base weight `[out, in/groups, kh, kw]`.
    pub weight: Tensor<B, 4>,
    pub layout: ConvLayout,
}

impl<B: Backend> StaticConv<B> {
    /// The input as the convolution of `kernel_size` kernels will read it, and that
    /// convolution's options (with this layer's `groups`).
    ///
    /// Two cases are prepared here, to avoid faults of burn 0.21: asymmetric padding is applied
    /// to the input, in its dtype (burn pads with zeros of the default float dtype, which fails
    /// on a float64 input); a strided or padded 1×1 convolution samples its input and runs at
    /// stride 1 (burn's wgpu backend computes a wrong input gradient for strided 1×1
    /// convolutions).
    fn prepare(&self, x: Tensor<B, 4>, kernel_size: [usize; 2]) -> (Tensor<B, 4>, ConvOptions<2>) {
        let layout = &self.layout;
        let (start, end) = (layout.geometry.padding_start, layout.geometry.padding_end);
        let (x, stride, padding) = if kernel_size == [1, 1]
            && (layout.stride != [1, 1] || start != end || start != [0, 0])
        {
            let [n, c, _, _] = x.dims();
            let [ho, wo] = layout.geometry.output_size;
            (
                im2col(x, layout, [1, 1]).reshape([n, c, ho, wo]),
                [1, 1],
                [0, 0],
            )
        } else if start != end {
            (
                pad_zeros(x, [start[0], end[0]], [start[1], end[1]]),
                layout.stride,
                [0, 0],
            )
        } else {
            (x, layout.stride, start)
        };
        let options = ConvOptions::new(stride, padding, layout.dilation, layout.groups);
        (x, options)
    }
}

/// The inputs of a path.
#[derive(Debug, Clone)]
pub(crate) struct Operands<B: Backend> {
    /// `[B, in, H, W]`.
    pub x: Tensor<B, 4>,
    pub factors: AttentionFactors<B>,
    /// `[out, in/g, kh, kw]`.
    pub weight: Tensor<B, 4>,
}

/// Which operands' gradients a backward pass must compute: those of the operands the autodiff
/// graph tracks (a static convolution's unit factors are not).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cube"), allow(dead_code))] // read by the CubeCL kernels
pub(crate) struct Needed {
    pub input: bool,
    pub output: bool,
    pub kernel: bool,
    pub weight: bool,
}

/// The gradients of the loss with respect to each operand, in the operands' shapes.
pub(crate) struct OperandGradients<B: Backend> {
    pub x: Tensor<B, 4>,
    pub input: Tensor<B, 3>,
    pub output: Tensor<B, 3>,
    pub kernel: Tensor<B, 3>,
    pub weight: Tensor<B, 4>,
}

/// A path's computation, with what it needs besides its operands.
#[derive(Debug, Clone)]
pub(crate) enum Formulation {
    /// Per-sample kernels and a grouped convolution with these options (the layer's groups),
    /// on an input prepared by [`StaticConv::prepare`].
    Kernels(ConvOptions<2>),
    /// The factorized path's im2col formulation, computed as the backend computes it.
    Columns(ConvLayout),
}

impl Formulation {
    /// The output `[B, out, Ho, Wo]`, and, where `keep` asks for it, the intermediate from which
    /// the backward pass computes the output factor's gradient.
    pub fn forward<B: Backend>(
        &self,
        operands: &Operands<B>,
        keep: bool,
        columns: &Columns<B>,
    ) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
        match self {
            Formulation::Kernels(options) => (kernels::forward(operands, options), None),
            Formulation::Columns(layout) => {
                let forward = (columns.forward)(operands, layout, keep);
                (forward.output, forward.per_term)
            }
        }
    }

    /// The gradients from the output's gradient, given what [`forward`](Self::forward) kept
    /// (without it, the output factor's gradient is zero: a factor that needs none); those that
    /// `needed` leaves out may be zero.
    pub fn backward<B: Backend>(
        &self,
        operands: Operands<B>,
        kept: Option<Tensor<B, 4>>,
        grad: Tensor<B, 4>,
        needed: Needed,
        columns: &Columns<B>,
    ) -> OperandGradients<B> {
        match self {
            Formulation::Kernels(options) => kernels::backward(operands, options, grad),
            Formulation::Columns(layout) => {
                (columns.backward)(operands, kept, layout, grad, needed)
            }
        }
    }

    /// The output, as the backend runs the path (in training, one autodiff operation).
    fn apply<B: Backend>(&self, operands: Operands<B>) -> Tensor<B, 4> {
        (ops::<B>().path_output)(self, operands)
    }
}

/// The reference path: per-sample kernels `[B·out, in/g, kh, kw]` and one convolution with
/// `B·groups` groups over the batch folded into the channels.
pub(crate) fn per_sample_kernel<B: Backend>(
    x: Tensor<B, 4>,
    factors: &AttentionFactors<B>,
    conv: &StaticConv<B>,
) -> Tensor<B, 4> {
    let [_, _, kh, kw] = conv.weight.dims();
    let (x, options) = conv.prepare(x, [kh, kw]);
    Formulation::Kernels(options).apply(Operands {
        x,
        factors: factors.clone(),
        weight: conv.weight.clone(),
    })
}

/// The factorized path: `y = Σ_r a_out ⊙ conv(x ⊙ a_in, W ⊙ a_k)` without per-sample kernels.
/// Kernels larger than 1×1, and every kernel where the backend computes the columns itself
/// (flex, the CubeCL backends), take the im2col formulation of [`columns`]; otherwise, for 1×1
/// kernels, `a_k` is a scalar per sample and joins the output scaling around a static
/// convolution.
pub(crate) fn factorized<B: Backend>(
    x: Tensor<B, 4>,
    factors: &AttentionFactors<B>,
    conv: &StaticConv<B>,
) -> Tensor<B, 4> {
    let [_, _, kh, kw] = conv.weight.dims();
    if kh * kw > 1 || BackendClass::of::<B>().columns_native() {
        return Formulation::Columns(conv.layout).apply(Operands {
            x,
            factors: factors.clone(),
            weight: conv.weight.clone(),
        });
    }
    let [batch, _, _, _] = x.dims();
    let [_, rank, _] = factors.input.dims();
    let scaled = scale_rows(
        expand_terms(x, rank),
        input_scale(&factors.input, conv.layout.groups),
    );
    let (scaled, options) = conv.prepare(scaled, [1, 1]);
    let per_term = conv2d(scaled, conv.weight.clone(), None, options);
    let [_, channels_out, _, _] = per_term.dims();
    let output_scale = (factors.output.clone() * factors.kernel.clone()).reshape([
        batch * rank,
        channels_out,
        1,
        1,
    ]);
    sum_terms(scale_rows(per_term, output_scale), rank)
}

/// A float tensor of a backend's primitive.
pub(crate) fn float_tensor<B: Backend, const D: usize>(
    primitive: B::FloatTensorPrimitive,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}
