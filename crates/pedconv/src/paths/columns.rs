//! The factorized path's im2col formulation, written once over any backend's tensors:
//!
//! `y = Σ_r a_out ⊙ (W · (im2col(x ⊙ a_in) ⊙ a_k))`,
//!
//! the spatial factor scaling the columns of an im2col that a matrix product with the reshaped
//! base weight contracts. The rank terms are folded into the batch (`N = B·r` rows).
//! [`forward`] is what autodiff differentiates where the backend has no operation of its own;
//! [`backward`] is the hand-written gradient of the autodiff operation
//! ([`backend`](crate::backend)), which recomputes the columns (`kh·kw` times the input) instead
//! of keeping them. Both are the default of the backend layer, which flex and the CubeCL
//! backends override with fused loops and kernels.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::tensor_ops::{
    col2im, expand_terms, im2col, input_scale, scale_rows, sum_terms, swap_leading_dims,
};
use super::{ConvLayout, Needed, OperandGradients, Operands};

/// The output and the one intermediate the backward pass keeps.
pub(crate) struct ColumnsForward<B: Backend> {
    /// `[B, out, Ho, Wo]`.
    pub output: Tensor<B, 4>,
    /// `W · (im2col(x ⊙ a_in) ⊙ a_k)` before the output scaling, when asked for: channels
    /// first, `[out, N, Ho, Wo]`, from the tensor operations and the CubeCL kernels; batch
    /// first, `[N, out, Ho, Wo]`, from flex's loops (each backend's backward reads its own).
    pub per_term: Option<Tensor<B, 4>>,
}

/// The sizes the formulation's reshapes need.
pub(crate) struct Sizes {
    pub batch: usize,
    pub rank: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    pub groups: usize,
    pub kernel_size: [usize; 2],
    pub input_size: [usize; 2],
    pub output_size: [usize; 2],
}

impl Sizes {
    pub fn new<B: Backend>(operands: &Operands<B>, layout: &ConvLayout) -> Self {
        let [batch, channels_in, height, width] = operands.x.dims();
        let [channels_out, _, kh, kw] = operands.weight.dims();
        Self {
            batch,
            rank: operands.factors.input.dims()[1],
            channels_in,
            channels_out,
            groups: layout.groups,
            kernel_size: [kh, kw],
            input_size: [height, width],
            output_size: layout.geometry.output_size,
        }
    }

    pub fn terms(&self) -> usize {
        self.batch * self.rank
    }

    pub fn taps(&self) -> usize {
        self.kernel_size[0] * self.kernel_size[1]
    }

    /// Output positions of all terms, the columns' length.
    pub fn positions(&self) -> usize {
        self.terms() * self.output_size[0] * self.output_size[1]
    }

    /// Rows of one group's columns, `in/g · kh·kw`.
    pub fn group_rows(&self) -> usize {
        self.channels_in / self.groups * self.taps()
    }

    /// The base weight as one matrix per group, `[g, out/g, in/g·kh·kw]`.
    pub fn weight_matrices<B: Backend>(&self, weight: Tensor<B, 4>) -> Tensor<B, 3> {
        weight.reshape([
            self.groups,
            self.channels_out / self.groups,
            self.group_rows(),
        ])
    }
}

/// The columns of the scaled input before the spatial factor, `[in, kh·kw·N·Ho·Wo]`, and that
/// factor as the row `[1, kh·kw·N·Ho·Wo]` that multiplies every channel's columns.
fn raw_columns<B: Backend>(
    operands: &Operands<B>,
    layout: &ConvLayout,
    sizes: &Sizes,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let scaled = scale_rows(
        expand_terms(operands.x.clone(), sizes.rank),
        input_scale(&operands.factors.input, sizes.groups),
    );
    // Channels first, so that the columns are `[in·kh·kw, N·Ho·Wo]` without a transpose and the
    // contraction is one matrix product per group.
    let columns = im2col(swap_leading_dims(scaled), layout, sizes.kernel_size)
        .reshape([sizes.channels_in, sizes.taps() * sizes.positions()]);
    // The factor of tap t and term n repeated over the term's Ho·Wo output positions: a row
    // shared by every input channel, the broadcast that flex multiplies with SIMD (a factor
    // broadcast over the leading channel and the trailing pixel dimensions at once takes its
    // element-by-element path).
    let pixels = sizes.output_size[0] * sizes.output_size[1];
    let tap_row = swap_leading_dims(
        operands
            .factors
            .kernel
            .clone()
            .reshape([sizes.terms(), sizes.taps()]),
    )
    .reshape([sizes.taps() * sizes.terms(), 1])
    .expand([sizes.taps() * sizes.terms(), pixels])
    .reshape([1, sizes.taps() * sizes.positions()]);
    (columns, tap_row)
}

/// The output-channel factor as one scale per row of the channels-first `[out, N, Ho, Wo]`.
fn output_scale<B: Backend>(operands: &Operands<B>, sizes: &Sizes) -> Tensor<B, 4> {
    swap_leading_dims(
        operands
            .factors
            .output
            .clone()
            .reshape([sizes.terms(), sizes.channels_out]),
    )
    .reshape([sizes.channels_out, sizes.terms(), 1, 1])
}

/// The forward pass; `keep` asks for `per_term`.
pub(crate) fn forward<B: Backend>(
    operands: &Operands<B>,
    layout: &ConvLayout,
    keep: bool,
) -> ColumnsForward<B> {
    let sizes = Sizes::new(operands, layout);
    let (columns, tap_row) = raw_columns(operands, layout, &sizes);
    let columns =
        (columns * tap_row).reshape([sizes.groups, sizes.group_rows(), sizes.positions()]);
    let [ho, wo] = sizes.output_size;
    let per_term = sizes
        .weight_matrices(operands.weight.clone())
        .matmul(columns)
        .reshape([sizes.channels_out, sizes.terms(), ho, wo]);
    // Scaled channels first, where a_out is one scalar per row, then batch first. Kept 4-D: on
    // the CubeCL backends, a convolution's output reshaped to 5-D and then reduced gives wrong
    // sums in burn 0.21 (seen on wgpu).
    let output = swap_leading_dims(scale_rows(per_term.clone(), output_scale(operands, &sizes)));
    ColumnsForward {
        output: sum_terms(output, sizes.rank),
        per_term: keep.then_some(per_term),
    }
}

/// The gradients of every operand from the output's gradient `[B, out, Ho, Wo]`, given the
/// forward's `per_term` (without it, the output factor's gradient is zero); every gradient,
/// whatever `needed` asks for. The columns are
/// recomputed; each large intermediate is dropped as soon as it has been used, so that at most
/// three column-sized tensors live at once.
pub(crate) fn backward<B: Backend>(
    operands: Operands<B>,
    per_term: Option<Tensor<B, 4>>,
    layout: &ConvLayout,
    grad: Tensor<B, 4>,
    _needed: Needed,
) -> OperandGradients<B> {
    let sizes = Sizes::new(&operands, layout);
    let (batch, rank, terms) = (sizes.batch, sizes.rank, sizes.terms());
    let [ho, wo] = sizes.output_size;
    let [height, width] = sizes.input_size;
    let (channels_in, channels_out, groups) = (sizes.channels_in, sizes.channels_out, sizes.groups);

    // y = Σ_r per_term ⊙ a_out, per_term channels first.
    let grad_terms = swap_leading_dims(expand_terms(grad, rank));
    let grad_output = match per_term {
        Some(per_term) => {
            let per_channel = (grad_terms.clone() * per_term)
                .reshape([channels_out * terms, ho * wo])
                .sum_dim(1)
                .reshape([channels_out, terms]);
            swap_leading_dims(per_channel).reshape([batch, rank, channels_out])
        }
        None => Tensor::zeros(
            [batch, rank, channels_out],
            (&grad_terms.device(), grad_terms.dtype()),
        ),
    };
    let grad_per_term = scale_rows(grad_terms, output_scale(&operands, &sizes)).reshape([
        groups,
        channels_out / groups,
        sizes.positions(),
    ]);

    // per_term = W · (columns ⊙ tap_row).
    let (columns, tap_row) = raw_columns(&operands, layout, &sizes);
    let scaled_columns = (columns.clone() * tap_row.clone()).reshape([
        groups,
        sizes.group_rows(),
        sizes.positions(),
    ]);
    let grad_weight = grad_per_term
        .clone()
        .matmul(scaled_columns.swap_dims(1, 2))
        .reshape(operands.weight.dims());
    let grad_scaled_columns = sizes
        .weight_matrices(operands.weight.clone())
        .swap_dims(1, 2)
        .matmul(grad_per_term)
        .reshape([channels_in, sizes.taps() * sizes.positions()]);
    let grad_kernel = (grad_scaled_columns.clone() * columns)
        .reshape([channels_in, sizes.taps() * terms, ho * wo])
        .sum_dim(2)
        .sum_dim(0)
        .reshape([sizes.taps(), terms]);
    let grad_kernel = swap_leading_dims(grad_kernel).reshape([batch, rank, sizes.taps()]);

    // columns = im2col(x ⊙ a_in).
    let grad_columns =
        (grad_scaled_columns * tap_row).reshape([channels_in, sizes.taps(), terms, ho, wo]);
    let grad_scaled = swap_leading_dims(col2im(
        grad_columns,
        layout,
        sizes.kernel_size,
        sizes.input_size,
    ));
    let group_in = channels_in / groups;
    let grad_input = (grad_scaled.clone() * expand_terms(operands.x, rank))
        .reshape([terms, groups, group_in, height * width])
        .sum_dim(3)
        .sum_dim(1)
        .reshape([batch, rank, group_in]);
    let grad_x = sum_terms(
        scale_rows(grad_scaled, input_scale(&operands.factors.input, groups)),
        rank,
    );
    OperandGradients {
        x: grad_x,
        input: grad_input,
        output: grad_output,
        kernel: grad_kernel,
        weight: grad_weight,
    }
}
