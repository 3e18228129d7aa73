//! The per-sample kernel path, written once over any backend's tensors: the kernels
//! `W_b = W ⊙ Σ_r a_out ⊗ a_in ⊗ a_k` (`[B·out, in/g, kh, kw]`) and one convolution with `B·g`
//! groups over the batch folded into the channels. [`forward`] is what autodiff differentiates
//! on backends without the memory-saving operation of [`recompute`](super::recompute);
//! [`backward`] is that operation's hand-written gradient, which rebuilds the kernels (a cheap
//! element-wise product) instead of keeping them and the modulation (each `B·out·in/g·kh·kw`).

use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;

use super::{float_tensor, OperandGradients, Operands};
use crate::attention::AttentionFactors;

/// The modulation `Σ_r a_out ⊗ (a_in ⊗ a_k)`, `[B, out·in/g·kh·kw]`, and the factor product
/// `a_in ⊗ a_k`, `[B, r, in/g·kh·kw]`, it is made of.
fn modulation<B: Backend>(factors: &AttentionFactors<B>) -> (Tensor<B, 2>, Tensor<B, 3>) {
    let [batch, rank, group_in] = factors.input.dims();
    let [_, _, channels_out] = factors.output.dims();
    let [_, _, taps] = factors.kernel.dims();
    let input_taps = (factors.input.clone().unsqueeze_dim::<4>(3)
        * factors.kernel.clone().unsqueeze_dim::<4>(2))
    .reshape([batch, rank, group_in * taps]);
    // [B, out, r] @ [B, r, in/g·kh·kw].
    let modulation = factors
        .output
        .clone()
        .swap_dims(1, 2)
        .matmul(input_taps.clone())
        .reshape([batch, channels_out * group_in * taps]);
    (modulation, input_taps)
}

/// The per-sample kernels `[B·out, in/g, kh, kw]` from the modulation `[B, out·in/g·kh·kw]`.
fn kernels<B: Backend>(modulation: Tensor<B, 2>, weight: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, size] = modulation.dims();
    let [channels_out, group_in, kh, kw] = weight.dims();
    // 2-D, the modulation first and the weight a shared row: the shape flex multiplies with SIMD
    // (a broadcast over a middle dimension takes its element-by-element path).
    modulation.mul(weight.clone().reshape([1, size])).reshape([
        batch * channels_out,
        group_in,
        kh,
        kw,
    ])
}

/// The grouped convolution's options: the layer's, with one group set per sample.
fn folded_options(options: &ConvOptions<2>, batch: usize) -> ConvOptions<2> {
    ConvOptions::new(
        options.stride,
        options.padding,
        options.dilation,
        options.groups * batch,
    )
}

/// The forward pass, `[B, out, Ho, Wo]`, for an input already padded or sampled as `options`
/// expect (see `StaticConv::prepare`).
pub(crate) fn forward<B: Backend>(
    operands: &Operands<B>,
    options: &ConvOptions<2>,
) -> Tensor<B, 4> {
    let [batch, channels_in, height, width] = operands.x.dims();
    let (modulation, _) = modulation(&operands.factors);
    let output = conv2d(
        operands
            .x
            .clone()
            .reshape([1, batch * channels_in, height, width]),
        kernels(modulation, &operands.weight),
        None,
        folded_options(options, batch),
    );
    let [_, folded, ho, wo] = output.dims();
    output.reshape([batch, folded / batch, ho, wo])
}

/// The gradients of every operand from the output's gradient `[B, out, Ho, Wo]`: the backend's
/// own convolution backward for the input and the kernels, then the kernels' gradient taken
/// back through the modulation to the factors and the base weight.
pub(crate) fn backward<B: Backend>(
    operands: Operands<B>,
    options: &ConvOptions<2>,
    grad: Tensor<B, 4>,
) -> OperandGradients<B> {
    let [batch, channels_in, height, width] = operands.x.dims();
    let [_, channels_out, ho, wo] = grad.dims();
    let [_, rank, group_in] = operands.factors.input.dims();
    let [_, _, taps] = operands.factors.kernel.dims();
    let (modulation, input_taps) = modulation(&operands.factors);
    let kernels = kernels(modulation.clone(), &operands.weight);

    let options = folded_options(options, batch);
    let x = operands
        .x
        .reshape([1, batch * channels_in, height, width])
        .into_primitive()
        .tensor();
    let grad = grad
        .reshape([1, batch * channels_out, ho, wo])
        .into_primitive()
        .tensor();
    let kernels = kernels.into_primitive().tensor();
    let grad_x = float_tensor::<B, 4>(B::conv2d_x_backward(
        x.clone(),
        kernels.clone(),
        grad.clone(),
        options.clone(),
    ))
    .reshape([batch, channels_in, height, width]);
    let size = channels_out * group_in * taps;
    let grad_kernels = float_tensor::<B, 4>(B::conv2d_weight_backward(x, kernels, grad, options))
        .reshape([batch, size]);

    // kernels = modulation ⊙ W.
    let weight_row = operands.weight.clone().reshape([1, size]);
    let grad_weight = (grad_kernels.clone() * modulation)
        .sum_dim(0)
        .reshape(operands.weight.dims());
    let grad_modulation =
        (grad_kernels * weight_row).reshape([batch, channels_out, group_in * taps]);

    // modulation = a_outᵀ · (a_in ⊗ a_k).
    let grad_output = input_taps
        .matmul(grad_modulation.clone().swap_dims(1, 2))
        .reshape([batch, rank, channels_out]);
    let grad_input_taps = operands
        .factors
        .output
        .clone()
        .matmul(grad_modulation)
        .reshape([batch, rank, group_in, taps]);
    let grad_input = (grad_input_taps.clone()
        * operands.factors.kernel.clone().unsqueeze_dim::<4>(2))
    .sum_dim(3)
    .reshape([batch, rank, group_in]);
    let grad_kernel = (grad_input_taps * operands.factors.input.clone().unsqueeze_dim::<4>(3))
        .sum_dim(2)
        .reshape([batch, rank, taps]);
    OperandGradients {
        x: grad_x,
        input: grad_input,
        output: grad_output,
        kernel: grad_kernel,
        weight: grad_weight,
    }
}
