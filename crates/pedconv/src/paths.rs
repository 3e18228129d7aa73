//! The compute paths of [`ComputePath`](crate::ComputePath): two ways of computing
//! `y_b = conv2d(x_b, W ⊙ Σ_r a_out[b,r] ⊗ a_in[b,r] ⊗ a_k[b,r])` for every sample `b`.
//! Both are compositions of burn tensor operations, so autodiff derives their backward passes.

use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;

use crate::attention::AttentionFactors;
use crate::geometry::ConvGeometry;

/// The static part of a layer that every path needs.
pub(crate) struct StaticConv<'a, B: Backend> {
    /// Base weight `[out, in/groups, kh, kw]`.
    pub weight: Tensor<B, 4>,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub geometry: &'a ConvGeometry,
}

impl<B: Backend> StaticConv<'_, B> {
    /// `conv2d(x, weight)` with this layer's stride, dilation and padding, and `groups` groups.
    ///
    /// Two cases are computed by other means, to avoid faults of burn 0.21: asymmetric padding
    /// is applied here, in the input's dtype (burn pads with zeros of the default float dtype,
    /// which fails on a float64 input); a strided or padded 1×1 convolution samples its input
    /// first and runs at stride 1 (burn's wgpu backend computes a wrong input gradient for
    /// strided 1×1 convolutions).
    fn conv(&self, x: Tensor<B, 4>, weight: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
        let (start, end) = (self.geometry.padding_start, self.geometry.padding_end);
        let [_, _, kh, kw] = weight.dims();
        let (x, stride, padding) =
            if kh * kw == 1 && (self.stride != [1, 1] || start != end || start != [0, 0]) {
                let [n, c, _, _] = x.dims();
                let [ho, wo] = self.geometry.output_size;
                (
                    im2col(x, self, [1, 1]).reshape([n, c, ho, wo]),
                    [1, 1],
                    [0, 0],
                )
            } else if start != end {
                (
                    pad_zeros(x, [start[0], end[0]], [start[1], end[1]]),
                    self.stride,
                    [0, 0],
                )
            } else {
                (x, self.stride, start)
            };
        conv2d(
            x,
            weight,
            None,
            ConvOptions::new(stride, padding, self.dilation, groups),
        )
    }
}

/// The reference path: per-sample kernels `[B·out, in/g, kh, kw]` and one convolution with
/// `B·groups` groups over the batch folded into the channels.
pub(crate) fn per_sample_kernel<B: Backend>(
    x: Tensor<B, 4>,
    factors: &AttentionFactors<B>,
    conv: &StaticConv<'_, B>,
) -> Tensor<B, 4> {
    let [batch, channels_in, height, width] = x.dims();
    let [channels_out, group_in, kh, kw] = conv.weight.dims();
    let [ho, wo] = conv.geometry.output_size;
    // Σ_r a_out ⊗ (a_in ⊗ a_k): [B, out, r] @ [B, r, in/g·kh·kw].
    let [_, rank, _] = factors.input.dims();
    let input_taps = (factors.input.clone().unsqueeze_dim::<4>(3)
        * factors.kernel.clone().unsqueeze_dim::<4>(2))
    .reshape([batch, rank, group_in * kh * kw]);
    let modulation = factors.output.clone().swap_dims(1, 2).matmul(input_taps);
    // 2-D, the modulation first and the weight a shared row: the shape flex multiplies with SIMD
    // (a broadcast over a middle dimension takes its element-by-element path).
    let kernel_size = channels_out * group_in * kh * kw;
    let kernels = modulation
        .reshape([batch, kernel_size])
        .mul(conv.weight.clone().reshape([1, kernel_size]))
        .reshape([batch * channels_out, group_in, kh, kw]);
    conv.conv(
        x.reshape([1, batch * channels_in, height, width]),
        kernels,
        batch * conv.groups,
    )
    .reshape([batch, channels_out, ho, wo])
}

/// The factorized path: `y = Σ_r a_out ⊙ conv(x ⊙ a_in, W ⊙ a_k)` without per-sample kernels.
/// The rank terms are folded into the batch. For 1×1 kernels `a_k` is a scalar per sample and
/// joins the output scaling; otherwise it scales the columns of an im2col of the scaled input,
/// contracted with the reshaped base weight by a 1×1 (grouped) convolution.
pub(crate) fn factorized<B: Backend>(
    x: Tensor<B, 4>,
    factors: &AttentionFactors<B>,
    conv: &StaticConv<'_, B>,
) -> Tensor<B, 4> {
    let [batch, channels_in, height, width] = x.dims();
    let [channels_out, group_in, kh, kw] = conv.weight.dims();
    let [ho, wo] = conv.geometry.output_size;
    let [_, rank, _] = factors.input.dims();
    let taps = kh * kw;
    // a_in has in/g entries and scales channel i of every group alike. (An `expand`, not a
    // `repeat_dim`: burn 0.21's autodiff gives `repeat_dim` a wrong gradient.)
    let input_scale = factors
        .input
        .clone()
        .unsqueeze_dim::<4>(2)
        .expand([batch, rank, conv.groups, group_in])
        .reshape([batch * rank, channels_in, 1, 1]);
    let scaled = x
        .unsqueeze_dim::<5>(1)
        .expand([batch, rank, channels_in, height, width])
        .reshape([batch * rank, channels_in, height, width])
        * input_scale;

    let (per_term, output_scale) = if taps == 1 {
        (
            conv.conv(scaled, conv.weight.clone(), conv.groups),
            factors.output.clone() * factors.kernel.clone(),
        )
    } else {
        // Channels first, so that the columns are `[in·kh·kw, B·r·Ho·Wo]` without a transpose
        // and the contraction is one GEMM per group.
        let positions = batch * rank * ho * wo;
        // The factor of tap t and sample b, repeated over the sample's Ho·Wo output positions:
        // one row `[1, taps·B·r·Ho·Wo]` shared by every input channel's columns, the broadcast
        // that flex multiplies with SIMD (a factor broadcast over the leading channel dimension
        // and the trailing pixel dimensions at once takes its element-by-element path, which
        // made this product the largest cost of the path).
        let spatial = swap_leading_dims(factors.kernel.clone().reshape([batch * rank, taps]))
            .reshape([taps * batch * rank, 1])
            .expand([taps * batch * rank, ho * wo])
            .reshape([1, taps * positions]);
        let columns = (im2col(swap_leading_dims(scaled), conv, [kh, kw])
            .reshape([channels_in, taps * positions])
            * spatial)
            .reshape([conv.groups, group_in * taps, positions]);
        let weight =
            conv.weight
                .clone()
                .reshape([conv.groups, channels_out / conv.groups, group_in * taps]);
        let per_term =
            swap_leading_dims(
                weight
                    .matmul(columns)
                    .reshape([channels_out, batch * rank, ho, wo]),
            );
        (per_term, factors.output.clone())
    };
    // Kept 4-D: on the CubeCL backends, a convolution's output reshaped to 5-D and then reduced
    // gives wrong sums in burn 0.21 (seen on wgpu).
    let per_term = per_term * output_scale.reshape([batch * rank, channels_out, 1, 1]);
    if rank == 1 {
        return per_term;
    }
    per_term
        .reshape([batch, rank, channels_out * ho * wo])
        .sum_dim(1)
        .reshape([batch, channels_out, ho, wo])
}

/// Swaps the first two dimensions. Where one of them has size 1 this is a reshape: the CubeCL
/// backends of burn 0.21 compute wrong results on the strided views that `swap_dims` gives
/// there (seen on wgpu with batch 1).
fn swap_leading_dims<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let mut dims = x.dims();
    if dims[0] == 1 || dims[1] == 1 {
        dims.swap(0, 1);
        x.reshape(dims)
    } else {
        x.swap_dims(0, 1)
    }
}

/// The kernel-tap view of a convolution's input: `[A, kh·kw, N, Ho, Wo]` for an `[A, N, H, W]`
/// input, tap `u·kw + v` holding the input pixels that kernel position `(u, v)` meets at each
/// output position. Strides are taken by a reshape rather than a stepped slice, whose backward
/// burn does not support.
fn im2col<B: Backend>(
    x: Tensor<B, 4>,
    conv: &StaticConv<'_, B>,
    kernel_size: [usize; 2],
) -> Tensor<B, 5> {
    let [_, _, height, width] = x.dims();
    let geometry = conv.geometry;
    let [ho, wo] = geometry.output_size;
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    // Pad so that every tap's window of `stride · out` rows and columns is in range.
    let padded = [
        height + geometry.padding_start[0] + geometry.padding_end[0],
        width + geometry.padding_start[1] + geometry.padding_end[1],
    ];
    let extra_h = ((kernel_size[0] - 1) * dh + sh * ho).saturating_sub(padded[0]);
    let extra_w = ((kernel_size[1] - 1) * dw + sw * wo).saturating_sub(padded[1]);
    let x = pad_zeros(
        x,
        [geometry.padding_start[0], geometry.padding_end[0] + extra_h],
        [geometry.padding_start[1], geometry.padding_end[1] + extra_w],
    );
    let mut taps = Vec::with_capacity(kernel_size[0] * kernel_size[1]);
    for u in 0..kernel_size[0] {
        for v in 0..kernel_size[1] {
            let window = x
                .clone()
                .narrow(2, u * dh, sh * ho)
                .narrow(3, v * dw, sw * wo);
            taps.push(subsample(window, conv.stride));
        }
    }
    Tensor::stack(taps, 1)
}

/// Every `stride`-th row and column from the first: `[n, c, ⌈h/sh⌉, ⌈w/sw⌉]` of `[n, c, h, w]`,
/// by a reshape rather than a stepped slice, whose backward burn 0.21 does not support.
pub(crate) fn subsample<B: Backend>(x: Tensor<B, 4>, [sh, sw]: [usize; 2]) -> Tensor<B, 4> {
    if sh == 1 && sw == 1 {
        return x;
    }
    let [n, c, h, w] = x.dims();
    let (ho, wo) = (h.div_ceil(sh), w.div_ceil(sw));
    pad_zeros(x, [0, ho * sh - h], [0, wo * sw - w])
        .reshape([n, c, ho, sh, wo, sw])
        .narrow(3, 0, 1)
        .narrow(5, 0, 1)
        .reshape([n, c, ho, wo])
}

/// Zero-pads the last two dimensions by `[before, after]` rows and columns, in the input's dtype
/// (burn 0.21's `Tensor::pad` creates its zeros in the default float dtype, which fails on a
/// float64 input).
fn pad_zeros<B: Backend>(x: Tensor<B, 4>, rows: [usize; 2], columns: [usize; 2]) -> Tensor<B, 4> {
    let zeros = |shape: [usize; 4], like: &Tensor<B, 4>| {
        Tensor::<B, 4>::zeros(shape, (&like.device(), like.dtype()))
    };
    let pad_axis = |x: Tensor<B, 4>, axis: usize, [before, after]: [usize; 2]| {
        if before == 0 && after == 0 {
            return x;
        }
        let mut parts = Vec::with_capacity(3);
        for (amount, is_input) in [(before, false), (0, true), (after, false)] {
            if is_input {
                parts.push(x.clone());
            } else if amount > 0 {
                let mut shape = x.dims();
                shape[axis] = amount;
                parts.push(zeros(shape, &x));
            }
        }
        Tensor::cat(parts, axis)
    };
    pad_axis(pad_axis(x, 2, rows), 3, columns)
}
