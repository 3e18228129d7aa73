//! The columns formulation on flex as fused loops over its CPU storage, tiled as flex tiles its
//! own convolution.
//!
//! Written with tensor operations, the formulation makes several passes over column-sized
//! tensors (`kh·kw` times the input) and runs its matrix products with one output channel per
//! row of a very wide matrix. Here each task takes a few samples (one, or on small images as
//! many as fill a tile) and walks their output positions tile by tile (at most [`TILE`]
//! positions, fewer for wide layers: [`TILE_COLUMNS`]). For each tile it writes the scaled
//! columns into a buffer that stays in cache, multiplies them by the base weight with a
//! single-threaded gemm, and scales the result into the output. The backward pass does the same
//! per tile: the column gradient by one gemm, then one pass that sums it onto the input (col2im
//! times the scale) and, against the input, into the factors' gradients; the weight gradient by
//! a gemm that accumulates over the tiles. Nothing column-sized is ever allocated.
//!
//! [`forward`] and [`backward`] answer `None` unless the backend is flex (`B = Flex`, the inner
//! backend of `Autodiff<Flex>` included) and the operands are float32 or float64 alike; the
//! caller then takes the tensor operations of the composition.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::Tensor;
use rayon::prelude::*;

mod matrix;
mod plan;

use matrix::{matmul_into, Matrix};
use plan::Plan;

use super::{dot, storage, tensor, Real, LANES};
use crate::paths::columns::{ColumnsForward, Sizes};
use crate::paths::{ConvLayout, OperandGradients, Operands};

/// The operands' storage.
struct Storage {
    /// `[B, in, H, W]`.
    x: FlexTensor,
    /// `a_in` `[B, r, in/g]`, `a_out` `[B, r, out]`, `a_k` `[B, r, kh·kw]`.
    input: FlexTensor,
    output: FlexTensor,
    kernel: FlexTensor,
    /// `[out, in/g, kh, kw]`.
    weight: FlexTensor,
}

impl Storage {
    fn new(operands: &Operands<Flex>) -> Option<Self> {
        Some(Self {
            x: storage(&operands.x),
            input: storage(&operands.factors.input),
            output: storage(&operands.factors.output),
            kernel: storage(&operands.factors.kernel),
            weight: storage(&operands.weight),
        })
    }

    /// The values, when every operand holds `T`s.
    fn values<T: Real>(&self) -> Option<Values<'_, T>> {
        Some(Values {
            x: self.x.as_slice()?,
            input: self.input.as_slice()?,
            output: self.output.as_slice()?,
            kernel: self.kernel.as_slice()?,
            weight: self.weight.as_slice()?,
        })
    }
}

/// The operands' values, in the layouts of [`Storage`].
struct Values<'a, T> {
    x: &'a [T],
    input: &'a [T],
    output: &'a [T],
    kernel: &'a [T],
    weight: &'a [T],
}

/// The output `[B, out, Ho, Wo]` and, when `keep` asks for it, `per_term`, batch first:
/// `W · (im2col(x ⊙ a_in) ⊙ a_k)` as `[N, out, Ho, Wo]`.
pub(super) fn forward(
    operands: &Operands<Flex>,
    layout: &ConvLayout,
    keep: bool,
) -> Option<ColumnsForward<Flex>> {
    let storage = Storage::new(operands)?;
    let sizes = Sizes::new(operands, layout);
    forward_of::<f32>(&storage, layout, &sizes, keep)
        .or_else(|| forward_of::<f64>(&storage, layout, &sizes, keep))
}

fn forward_of<T: Real>(
    storage: &Storage,
    layout: &ConvLayout,
    sizes: &Sizes,
    keep: bool,
) -> Option<ColumnsForward<Flex>> {
    let values = storage.values::<T>()?;
    let plan = Plan::new(sizes, layout);
    let (rank, channels_out, pixels) = (sizes.rank, sizes.channels_out, plan.pixels());
    let (group_rows, group_out) = (sizes.group_rows(), plan.group_out());
    let samples = plan.task_samples;
    let mut output = vec![T::default(); sizes.batch * channels_out * pixels];
    let mut per_term = keep.then(|| vec![T::default(); sizes.terms() * channels_out * pixels]);
    // Each task's share of per_term, where it is kept.
    let mut task_terms: Vec<Option<&mut [T]>> = match per_term.as_mut() {
        Some(per_term) => per_term
            .chunks_mut(samples * rank * channels_out * pixels)
            .map(Some)
            .collect(),
        None => (0..sizes.batch.div_ceil(samples)).map(|_| None).collect(),
    };
    output
        .par_chunks_mut(samples * channels_out * pixels)
        .zip(task_terms.par_iter_mut())
        .enumerate()
        .for_each(|(task, (output, terms))| {
            let first = task * samples;
            let mut columns = vec![T::default(); group_rows * plan.max_len()];
            let mut result = vec![T::default(); group_out * plan.max_len()];
            for tile in plan.tiles(first) {
                let len = plan.len(&tile);
                for g in 0..sizes.groups {
                    plan.fill_columns(&mut columns, &values, g, &tile);
                    matmul_into(
                        &mut result,
                        len,
                        plan.weight(&values, g),
                        Matrix::row_major(&columns, 0, group_rows, len),
                        false,
                        plan.parallelism,
                    );
                    // Each segment's result into its term's per_term and, scaled by a_out,
                    // into its sample's output.
                    for (segment, offset, positions) in plan.placed(&tile) {
                        let t = segment.term;
                        let sample = &mut output[(t / rank - first) * channels_out * pixels..];
                        for (o, result) in result.chunks_exact(len).take(group_out).enumerate() {
                            let channel = g * group_out + o;
                            let factor = values.output[t * channels_out + channel];
                            let source = &result[offset..][..positions.len()];
                            let at = channel * pixels + positions.start;
                            if let Some(terms) = terms {
                                let term = (t - first * rank) * channels_out * pixels + at;
                                terms[term..][..positions.len()].copy_from_slice(source);
                            }
                            for (y, &v) in sample[at..][..positions.len()].iter_mut().zip(source) {
                                *y += factor * v;
                            }
                        }
                    }
                }
            }
        });
    let [ho, wo] = sizes.output_size;
    Some(ColumnsForward {
        output: tensor(output, [sizes.batch, channels_out, ho, wo]),
        per_term: per_term.map(|per_term| tensor(per_term, [sizes.terms(), channels_out, ho, wo])),
    })
}

/// The gradients of every operand from the output's gradient `[B, out, Ho, Wo]`, given the
/// `per_term` of [`forward`] (without it, the output factor's gradient is zero).
pub(super) fn backward(
    operands: &Operands<Flex>,
    per_term: Option<&Tensor<Flex, 4>>,
    layout: &ConvLayout,
    grad: &Tensor<Flex, 4>,
) -> Option<OperandGradients<Flex>> {
    let storage = Storage::new(operands)?;
    let per_term = per_term.map(|per_term| storage_as(per_term, operands));
    let grad = storage_as(grad, operands);
    let sizes = Sizes::new(operands, layout);
    let per_term = per_term.as_ref();
    backward_of::<f32>(&storage, per_term, &grad, layout, &sizes)
        .or_else(|| backward_of::<f64>(&storage, per_term, &grad, layout, &sizes))
}

/// [`storage`] of `tensor` in the dtype of the operands' input.
fn storage_as(tensor: &Tensor<Flex, 4>, operands: &Operands<Flex>) -> FlexTensor {
    let dtype = operands.x.dtype();
    if tensor.dtype() == dtype {
        storage(tensor)
    } else {
        storage(&tensor.clone().cast(dtype))
    }
}

fn backward_of<T: Real>(
    storage: &Storage,
    per_term: Option<&FlexTensor>,
    grad: &FlexTensor,
    layout: &ConvLayout,
    sizes: &Sizes,
) -> Option<OperandGradients<Flex>> {
    let values = storage.values::<T>()?;
    let per_term = match per_term {
        Some(per_term) => Some(per_term.as_slice::<T>()?),
        None => None,
    };
    let grad = grad.as_slice::<T>()?;
    let plan = Plan::new(sizes, layout);
    let (batch, rank, terms, taps) = (sizes.batch, sizes.rank, sizes.terms(), sizes.taps());
    let (channels_in, channels_out, pixels) =
        (sizes.channels_in, sizes.channels_out, plan.pixels());
    let (group_in, group_out, group_rows) = (plan.group_in(), plan.group_out(), sizes.group_rows());
    let [height, width] = sizes.input_size;
    let samples = plan.task_samples;
    let weight_size = channels_out * group_rows;
    let mut grad_x = vec![T::default(); batch * channels_in * height * width];
    let mut grad_input = vec![T::default(); terms * group_in];
    let mut grad_output = vec![T::default(); terms * channels_out];
    let mut grad_kernel = vec![T::default(); terms * taps];
    // Each task owns its samples' input and factor gradients; the weight's is summed over the
    // tasks, one partial sum per thread's run of tasks.
    let tasks = batch.div_ceil(samples);
    let grad_weight = grad_x
        .par_chunks_mut(samples * channels_in * height * width)
        .zip(grad_input.par_chunks_mut(samples * rank * group_in))
        .zip(grad_output.par_chunks_mut(samples * rank * channels_out))
        .zip(grad_kernel.par_chunks_mut(samples * rank * taps))
        .enumerate()
        .with_min_len(tasks.div_ceil(rayon::current_num_threads()))
        .fold(
            || vec![T::default(); weight_size],
            |mut grad_weight, (task, (((grad_x, grad_input), grad_output), grad_kernel))| {
                let first = task * samples;
                // y = Σ_i a_out ⊙ per_term, per term and output channel (zero where a_out
                // needs no gradient and per_term was not kept).
                if let Some(per_term) = per_term {
                    for (local, grad_output) in
                        grad_output.chunks_exact_mut(channels_out).enumerate()
                    {
                        let t = first * rank + local;
                        let upstream = &grad[t / rank * channels_out * pixels..];
                        let term = &per_term[t * channels_out * pixels..];
                        for (o, g) in grad_output.iter_mut().enumerate() {
                            let at = o * pixels;
                            *g = dot(&upstream[at..][..pixels], &term[at..][..pixels]);
                        }
                    }
                }
                // The column gradient, then (once spread) the recomputed columns.
                let mut columns = vec![T::default(); group_rows * plan.max_len()];
                let mut grad_tile = vec![T::default(); group_out * plan.max_len()];
                for tile in plan.tiles(first) {
                    let len = plan.len(&tile);
                    for g in 0..sizes.groups {
                        // The gradient of the tile's per_term, [out/g, len].
                        for (o, row) in grad_tile.chunks_exact_mut(len).take(group_out).enumerate()
                        {
                            let channel = g * group_out + o;
                            for (segment, offset, positions) in plan.placed(&tile) {
                                let t = segment.term;
                                let factor = values.output[t * channels_out + channel];
                                let source = &grad[(t / rank * channels_out + channel) * pixels
                                    + positions.start..][..positions.len()];
                                for (d, &u) in row[offset..].iter_mut().zip(source) {
                                    *d = factor * u;
                                }
                            }
                        }
                        let weight = plan.weight(&values, g);
                        let grad_rows = Matrix::row_major(&grad_tile, 0, group_out, len);
                        // per_term = W · columns.
                        matmul_into(
                            &mut columns,
                            len,
                            weight.transposed(),
                            grad_rows,
                            false,
                            plan.parallelism,
                        );
                        plan.spread_columns(
                            &columns,
                            &values,
                            g,
                            &tile,
                            first,
                            grad_x,
                            grad_input,
                            grad_kernel,
                        );
                        plan.fill_columns(&mut columns, &values, g, &tile);
                        matmul_into(
                            &mut grad_weight[g * group_out * group_rows..],
                            group_rows,
                            grad_rows,
                            Matrix::row_major(&columns, 0, group_rows, len).transposed(),
                            true,
                            plan.parallelism,
                        );
                    }
                }
                grad_weight
            },
        )
        .reduce_with(|mut sum, part| {
            for (s, p) in sum.iter_mut().zip(part) {
                *s += p;
            }
            sum
        })
        .unwrap_or_else(|| vec![T::default(); weight_size]);
    let [kh, kw] = sizes.kernel_size;
    Some(OperandGradients {
        x: tensor(grad_x, [batch, channels_in, height, width]),
        input: tensor(grad_input, [batch, rank, group_in]),
        output: tensor(grad_output, [batch, rank, channels_out]),
        kernel: tensor(grad_kernel, [batch, rank, taps]),
        weight: tensor(grad_weight, [channels_out, group_in, kh, kw]),
    })
}

/// `Σ g·x` over `g`'s length, while adding `scale · g` to `target`: the two uses of one
/// column gradient, in one pass.
fn dot_and_scaled_add<T: Real>(g: &[T], x: &[T], target: &mut [T], scale: T) -> T {
    let n = g.len();
    let (x, target) = (&x[..n], &mut target[..n]);
    let mut lanes = [T::default(); LANES];
    for ((g, x), target) in g
        .chunks_exact(LANES)
        .zip(x.chunks_exact(LANES))
        .zip(target.chunks_exact_mut(LANES))
    {
        for lane in 0..LANES {
            lanes[lane] += g[lane] * x[lane];
            target[lane] += scale * g[lane];
        }
    }
    let tail = n - n % LANES;
    let mut sum = lanes.into_iter().fold(T::default(), |s, v| s + v);
    for ((&g, &x), target) in g[tail..].iter().zip(&x[tail..]).zip(&mut target[tail..]) {
        sum += g * x;
        *target += scale * g;
    }
    sum
}
