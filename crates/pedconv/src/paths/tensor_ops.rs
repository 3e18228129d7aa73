//! Tensor operations the paths share: per-row scalings, the rank terms folded into the batch,
//! a materialised transpose, and im2col with its adjoint, written for the way burn 0.21's
//! backends run them (two-dimensional views, which flex copies at memory speed).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::ConvLayout;

/// `x ⊙ scale` for a `scale` of one value per row `[A, B, 1, 1]` of `x` `[A, B, H, W]`, as the
/// two-dimensional product that flex runs with SIMD (it runs the four-dimensional broadcast
/// element by element).
pub(super) fn scale_rows<B: Backend>(x: Tensor<B, 4>, scale: Tensor<B, 4>) -> Tensor<B, 4> {
    let [a, b, h, w] = x.dims();
    (x.reshape([a * b, h * w]) * scale.reshape([a * b, 1])).reshape([a, b, h, w])
}

/// The input-channel factor `[B, r, in/g]` as one scale per row of `[N, in, H, W]`: entry `i`
/// scales channel `i` of every group alike. (An `expand`, not a `repeat_dim`: burn 0.21's
/// autodiff gives `repeat_dim` a wrong gradient.)
pub(super) fn input_scale<B: Backend>(input: &Tensor<B, 3>, groups: usize) -> Tensor<B, 4> {
    let [batch, rank, group_in] = input.dims();
    input
        .clone()
        .unsqueeze_dim::<4>(2)
        .expand([batch, rank, groups, group_in])
        .reshape([batch * rank, groups * group_in, 1, 1])
}

/// `[B, …]` repeated for each of the `rank` terms, `[B·r, …]` (sample-major).
pub(super) fn expand_terms<B: Backend>(x: Tensor<B, 4>, rank: usize) -> Tensor<B, 4> {
    if rank == 1 {
        return x;
    }
    let [batch, channels, height, width] = x.dims();
    x.unsqueeze_dim::<5>(1)
        .expand([batch, rank, channels, height, width])
        .reshape([batch * rank, channels, height, width])
}

/// The sum over the `rank` terms of `[B·r, …]`, `[B, …]`: the adjoint of [`expand_terms`].
pub(super) fn sum_terms<B: Backend>(x: Tensor<B, 4>, rank: usize) -> Tensor<B, 4> {
    if rank == 1 {
        return x;
    }
    let [terms, channels, height, width] = x.dims();
    x.reshape([terms / rank, rank, channels * height * width])
        .sum_dim(1)
        .reshape([terms / rank, channels, height, width])
}

/// Swaps the first two dimensions, materialised.
///
/// A large tensor is copied as one contiguous block per entry of the first dimension (a
/// concatenation): flex copies a permuted view of more than two dimensions element by element,
/// ten times slower. Where one of the two dimensions has size 1 this is a reshape: the CubeCL
/// backends of burn 0.21 compute wrong results on the strided views that `swap_dims` gives
/// there (seen on wgpu with batch 1).
pub(super) fn swap_leading_dims<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    /// Below this many elements a strided copy costs less than one copy per leading entry.
    const SMALL: usize = 1 << 14;
    let mut dims = x.dims();
    let leading = dims[0];
    dims.swap(0, 1);
    if leading == 1 || dims[0] == 1 {
        return x.reshape(dims);
    }
    if D == 2 || x.shape().num_elements() < SMALL {
        return x.swap_dims(0, 1);
    }
    let mut part = dims;
    part[1] = 1;
    let parts = (0..leading)
        .map(|i| x.clone().narrow(0, i, 1).reshape(part))
        .collect();
    Tensor::cat(parts, 1)
}

/// The rows and columns an im2col pads its `[H, W]` input to: the layer's padding plus what
/// every tap's window of `stride · out` rows and columns needs to stay in range.
fn padded_size(input_size: [usize; 2], layout: &ConvLayout, kernel_size: [usize; 2]) -> [usize; 2] {
    let geometry = &layout.geometry;
    std::array::from_fn(|axis| {
        let padded = input_size[axis] + geometry.padding_start[axis] + geometry.padding_end[axis];
        let reach = (kernel_size[axis] - 1) * layout.dilation[axis]
            + layout.stride[axis] * geometry.output_size[axis];
        padded.max(reach)
    })
}

/// The kernel-tap view of a convolution's input: `[A, kh·kw, N, Ho, Wo]` for an `[A, N, H, W]`
/// input, tap `u·kw + v` holding the input pixels that kernel position `(u, v)` meets at each
/// output position.
///
/// Built in two steps, the kernel rows then the kernel columns, so that every copy reads a
/// view that is two-dimensional (rows of a fixed stride): flex copies those at memory speed,
/// and a window of rows *and* columns element by element, ten times slower. Strides are taken
/// by a reshape and a narrow rather than a stepped slice, whose backward burn 0.21 does not
/// support.
pub(super) fn im2col<B: Backend>(
    x: Tensor<B, 4>,
    layout: &ConvLayout,
    kernel_size: [usize; 2],
) -> Tensor<B, 5> {
    let [a, n, height, width] = x.dims();
    let [kh, kw] = kernel_size;
    let [ho, wo] = layout.geometry.output_size;
    let [sh, sw] = layout.stride;
    let [dh, dw] = layout.dilation;
    let start = layout.geometry.padding_start;
    let [hp, wp] = padded_size([height, width], layout, kernel_size);
    let x = pad_zeros(
        x,
        [start[0], hp - height - start[0]],
        [start[1], wp - width - start[1]],
    );
    // Kernel row u: padded rows u·dh + sh·i, i < Ho, as [A, 1, N, Ho·Wp].
    let rows = (0..kh)
        .map(|u| {
            let window = x.clone().narrow(2, u * dh, sh * ho);
            let window = if sh > 1 {
                window.reshape([a * n * ho, sh * wp]).narrow(1, 0, wp)
            } else {
                window.reshape([a * n * ho, wp])
            };
            window.reshape([a, 1, n, ho * wp])
        })
        .collect();
    let rows = Tensor::cat(rows, 1).reshape([a * kh * n * ho, wp]);
    // Kernel column v: columns v·dw + sw·j, j < Wo, as [A·kh, 1, N·Ho·Wo].
    let taps = (0..kw)
        .map(|v| {
            let window = rows.clone().narrow(1, v * dw, sw * wo);
            let window = if sw > 1 {
                window.reshape([a * kh * n * ho * wo, sw]).narrow(1, 0, 1)
            } else {
                window
            };
            window.reshape([a * kh, 1, n * ho * wo])
        })
        .collect();
    Tensor::cat(taps, 1).reshape([a, kh * kw, n, ho, wo])
}

/// The adjoint of [`im2col`]: sums the tap view `[A, kh·kw, N, Ho, Wo]` back onto the input
/// pixels each tap was read from, `[A, N, H, W]` for an `[H, W]` input. The same two steps in
/// reverse, each tap spread onto the strided grid it came from and zero-padded into place: every
/// step copies two-dimensional views or sums element-wise.
pub(super) fn col2im<B: Backend>(
    taps: Tensor<B, 5>,
    layout: &ConvLayout,
    kernel_size: [usize; 2],
    input_size: [usize; 2],
) -> Tensor<B, 4> {
    let [a, _, n, ho, wo] = taps.dims();
    let [kh, kw] = kernel_size;
    let [sh, sw] = layout.stride;
    let [dh, dw] = layout.dilation;
    let [hp, wp] = padded_size(input_size, layout, kernel_size);
    let taps = taps.reshape([a, kh * kw, n * ho * wo]);
    let padded = (0..kh)
        .map(|u| {
            // Kernel row u's taps placed on the padded columns, [1, 1, A·N·Ho, Wp].
            let row = (0..kw)
                .map(|v| {
                    let tap = taps.clone().narrow(1, u * kw + v, 1);
                    let spread = if sw > 1 {
                        pad_axis(tap.reshape([1, a * n * ho * wo, 1, 1]), 3, [0, sw - 1])
                    } else {
                        tap.reshape([1, 1, 1, a * n * ho * wo])
                    };
                    pad_axis(
                        spread.reshape([1, 1, a * n * ho, sw * wo]),
                        3,
                        [v * dw, wp - v * dw - sw * wo],
                    )
                })
                .reduce(|sum, placed| sum + placed)
                .expect("a kernel has at least one column");
            let spread = if sh > 1 {
                pad_axis(row.reshape([1, a * n * ho, 1, wp]), 2, [0, sh - 1])
            } else {
                row
            };
            pad_axis(
                spread.reshape([a, n, sh * ho, wp]),
                2,
                [u * dh, hp - u * dh - sh * ho],
            )
        })
        .reduce(|sum, placed| sum + placed)
        .expect("a kernel has at least one row");
    let start = layout.geometry.padding_start;
    padded
        .narrow(2, start[0], input_size[0])
        .narrow(3, start[1], input_size[1])
}

/// Zero-pads the last two dimensions by `[before, after]` rows and columns.
pub(super) fn pad_zeros<B: Backend>(
    x: Tensor<B, 4>,
    rows: [usize; 2],
    columns: [usize; 2],
) -> Tensor<B, 4> {
    pad_axis(pad_axis(x, 2, rows), 3, columns)
}

/// Zero-pads dimension `axis` by `[before, after]` entries, in the input's dtype (burn 0.21's
/// `Tensor::pad` creates its zeros in the default float dtype, which fails on a float64 input).
fn pad_axis<B: Backend>(x: Tensor<B, 4>, axis: usize, [before, after]: [usize; 2]) -> Tensor<B, 4> {
    if before == 0 && after == 0 {
        return x;
    }
    let zeros = |amount: usize| {
        let mut shape = x.dims();
        shape[axis] = amount;
        Tensor::<B, 4>::zeros(shape, (&x.device(), x.dtype()))
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(zeros(before));
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(zeros(after));
    }
    Tensor::cat(parts, axis)
}
