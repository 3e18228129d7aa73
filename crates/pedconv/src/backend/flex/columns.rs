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
//! caller then takes the tensor operations of [`super`].

use core::ops::Range;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

use super::{dot, storage, tensor, Real, LANES};
use crate::paths::columns::{ColumnsForward, Sizes};
use crate::paths::{ConvLayout, OperandGradients, Operands};

/// Output positions per tile, at most; flex's own convolution tiles by 512.
const TILE: usize = 512;

/// Elements of a tile's columns (`in/g·kh·kw` rows), at most: 512 Ki, 2 MiB of float32. Wide
/// layers take narrower tiles, so that the buffers of the tasks running at once stay small
/// next to the activations a training step keeps.
const TILE_COLUMNS: usize = 1 << 19;

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

/// The output positions `o < output` whose input index `o·stride + offset` lies in
/// `0..input`: the positions where a tap at `offset` (its dilated position less the padding)
/// reads the input rather than the zero padding.
fn in_range(offset: isize, stride: usize, input: usize, output: usize) -> Range<usize> {
    let start = if offset >= 0 {
        0
    } else {
        offset.unsigned_abs().div_ceil(stride)
    };
    let end = if offset >= input as isize {
        0
    } else {
        ((input as isize - offset) as usize)
            .div_ceil(stride)
            .min(output)
    };
    start.min(end)..end
}

/// Where one kernel position's tap meets the input.
struct Tap {
    /// Output rows and columns that read the input (the others read zero padding).
    rows: Range<usize>,
    columns: Range<usize>,
    /// Input row and column read at output position `(0, 0)`, padding subtracted.
    row_offset: isize,
    column_offset: isize,
}

impl Tap {
    /// The taps of every kernel position, row-major (tap `u·kw + v`).
    fn all(layout: &ConvLayout, sizes: &Sizes) -> Vec<Self> {
        let [kh, kw] = sizes.kernel_size;
        let offset = |axis: usize, position: usize| {
            (position * layout.dilation[axis]) as isize
                - layout.geometry.padding_start[axis] as isize
        };
        (0..kh * kw)
            .map(|tap| {
                let (row_offset, column_offset) = (offset(0, tap / kw), offset(1, tap % kw));
                let [height, width] = sizes.input_size;
                let [ho, wo] = sizes.output_size;
                Self {
                    rows: in_range(row_offset, layout.stride[0], height, ho),
                    columns: in_range(column_offset, layout.stride[1], width, wo),
                    row_offset,
                    column_offset,
                }
            })
            .collect()
    }

    /// The input row read at output row `oh` (in `rows`).
    fn input_row(&self, stride: usize, oh: usize) -> usize {
        (oh as isize * stride as isize + self.row_offset) as usize
    }

    /// The input column read at output column `ow` (in `columns`).
    fn input_column(&self, stride: usize, ow: usize) -> usize {
        (ow as isize * stride as isize + self.column_offset) as usize
    }
}

/// A run of output positions of one term: its output rows `rows`, all columns.
struct Segment {
    term: usize,
    rows: Range<usize>,
}

/// What every task shares: the sizes, where each tap reads, and how work is split.
struct Plan<'a> {
    sizes: &'a Sizes,
    layout: &'a ConvLayout,
    taps: Vec<Tap>,
    /// Output positions per tile, at most.
    tile: usize,
    /// Output rows per segment: all of them, or as many as fill a tile.
    segment_rows: usize,
    /// Samples per task: one, or for small images about as many as fill a tile, in a number of
    /// tasks that is a multiple of the threads where the batch allows.
    task_samples: usize,
    /// Whether each gemm runs on all threads (fewer tasks than threads) or on its task's one.
    parallelism: Parallelism,
}

impl<'a> Plan<'a> {
    fn new(sizes: &'a Sizes, layout: &'a ConvLayout) -> Self {
        let [ho, wo] = sizes.output_size;
        let threads = rayon::current_num_threads();
        let term_len = (ho * wo * sizes.rank).max(1);
        let tile = (TILE_COLUMNS / sizes.group_rows().max(1)).clamp(1, TILE);
        // As few tasks as fill the tiles, but a multiple of the threads, so that they finish
        // together.
        let batch = sizes.batch.max(1);
        let fewest = batch.div_ceil((tile / term_len).max(1));
        let tasks = fewest.max(threads).next_multiple_of(threads).min(batch);
        let task_samples = batch.div_ceil(tasks);
        Self {
            sizes,
            layout,
            taps: Tap::all(layout, sizes),
            tile,
            segment_rows: (tile / wo.max(1)).clamp(1, ho.max(1)),
            task_samples,
            parallelism: if sizes.batch.div_ceil(task_samples) >= threads {
                Parallelism::None
            } else {
                Parallelism::Rayon(0)
            },
        }
    }

    /// The tiles of the task whose first sample is `first`: the output positions of its terms,
    /// split into segments and packed, in order, into tiles of at most `self.tile` positions (or
    /// one segment, where a segment is longer).
    fn tiles(&self, first: usize) -> Vec<Vec<Segment>> {
        let sizes = self.sizes;
        let [ho, wo] = sizes.output_size;
        let last = sizes.batch.min(first + self.task_samples);
        let mut tiles = Vec::new();
        let mut tile: Vec<Segment> = Vec::new();
        let mut len = 0;
        for term in first * sizes.rank..last * sizes.rank {
            for start in (0..ho).step_by(self.segment_rows) {
                let rows = start..ho.min(start + self.segment_rows);
                let positions = rows.len() * wo;
                if len + positions > self.tile && !tile.is_empty() {
                    tiles.push(core::mem::take(&mut tile));
                    len = 0;
                }
                tile.push(Segment { term, rows });
                len += positions;
            }
        }
        if !tile.is_empty() {
            tiles.push(tile);
        }
        tiles
    }

    /// The positions of a tile.
    fn len(&self, tile: &[Segment]) -> usize {
        tile.iter().map(|segment| segment.rows.len()).sum::<usize>() * self.sizes.output_size[1]
    }

    /// The most positions a tile has.
    fn max_len(&self) -> usize {
        let wo = self.sizes.output_size[1];
        self.tile.max(self.segment_rows * wo)
    }

    /// Group `g`'s rows of the base weight, `[out/g, in/g·kh·kw]`.
    fn weight<'v, T>(&self, values: &Values<'v, T>, g: usize) -> Matrix<'v, T> {
        let (group_out, group_rows) = (self.group_out(), self.sizes.group_rows());
        Matrix::row_major(
            values.weight,
            g * group_out * group_rows,
            group_out,
            group_rows,
        )
    }

    fn pixels(&self) -> usize {
        self.sizes.output_size[0] * self.sizes.output_size[1]
    }

    fn group_in(&self) -> usize {
        self.sizes.channels_in / self.sizes.groups
    }

    fn group_out(&self) -> usize {
        self.sizes.channels_out / self.sizes.groups
    }

    /// Each segment of `tile` with its first column in the tile's matrices and its positions
    /// in its term's output plane.
    fn placed<'t>(
        &self,
        tile: &'t [Segment],
    ) -> impl Iterator<Item = (&'t Segment, usize, Range<usize>)> + 't {
        let wo = self.sizes.output_size[1];
        tile.iter().scan(0, move |offset, segment| {
            let start = *offset;
            *offset += segment.rows.len() * wo;
            Some((
                segment,
                start,
                segment.rows.start * wo..segment.rows.end * wo,
            ))
        })
    }

    /// Every tap of every channel of group `g` in every segment of `tile` that reads the
    /// input somewhere: the walk [`fill_columns`](Self::fill_columns) and its adjoint share.
    fn tap_runs<'p>(
        &'p self,
        g: usize,
        tile: &'p [Segment],
    ) -> impl Iterator<Item = TapRun<'p>> + 'p {
        let (taps, group_in) = (self.sizes.taps(), self.group_in());
        let len = self.len(tile);
        self.placed(tile).flat_map(move |(segment, offset, _)| {
            (0..group_in).flat_map(move |c| {
                self.taps
                    .iter()
                    .enumerate()
                    .filter(|(_, tap)| !tap.columns.is_empty())
                    .map(move |(k, tap)| TapRun {
                        term: segment.term,
                        channel: g * group_in + c,
                        factor_index: c,
                        k,
                        tap,
                        start: (c * taps + k) * len + offset,
                        first_row: segment.rows.start,
                        rows: tap.rows.start.max(segment.rows.start)
                            ..tap.rows.end.min(segment.rows.end),
                    })
            })
        })
    }

    /// The scaled columns of group `g` on `tile`: `[in/g·kh·kw, len]` with `len` the tile's
    /// positions, row `c·kh·kw + k` holding `a_in[t, c] · a_k[t, k] · x[b, g·in/g + c]` at the
    /// pixels tap `k` reads, for each segment's term `t` of sample `b`.
    fn fill_columns<T: Real>(
        &self,
        columns: &mut [T],
        values: &Values<T>,
        g: usize,
        tile: &[Segment],
    ) {
        let sizes = self.sizes;
        let (taps, group_in) = (sizes.taps(), self.group_in());
        let [height, width] = sizes.input_size;
        let wo = sizes.output_size[1];
        let [sh, sw] = self.layout.stride;
        columns[..group_in * taps * self.len(tile)].fill(T::default());
        for run in self.tap_runs(g, tile) {
            let (t, tap) = (run.term, run.tap);
            let sample = t / sizes.rank;
            let plane = &values.x[(sample * sizes.channels_in + run.channel) * height * width..]
                [..height * width];
            let scale =
                values.input[t * group_in + run.factor_index] * values.kernel[t * taps + run.k];
            let row = &mut columns[run.start..];
            for oh in run.rows.clone() {
                let line = &plane[tap.input_row(sh, oh) * width..][..width];
                let out = &mut row[(oh - run.first_row) * wo..][..wo];
                if sw == 1 {
                    let first = tap.input_column(1, tap.columns.start);
                    for (o, &v) in out[tap.columns.clone()].iter_mut().zip(&line[first..]) {
                        *o = scale * v;
                    }
                } else {
                    for ow in tap.columns.clone() {
                        out[ow] = scale * line[tap.input_column(sw, ow)];
                    }
                }
            }
        }
    }

    /// The adjoint of [`fill_columns`](Self::fill_columns) for the column gradient
    /// `grad_columns` of group `g` on `tile`, in a task whose first sample is `first`: adds
    /// `scale · grad` onto the input pixels of `grad_x` (the task's `[samples, in, H, W]`) and
    /// `Σ grad · x` times the other factor into `grad_input` and `grad_kernel` (the task's
    /// `[terms, in/g]` and `[terms, kh·kw]`).
    #[allow(clippy::too_many_arguments)]
    fn spread_columns<T: Real>(
        &self,
        grad_columns: &[T],
        values: &Values<T>,
        g: usize,
        tile: &[Segment],
        first: usize,
        grad_x: &mut [T],
        grad_input: &mut [T],
        grad_kernel: &mut [T],
    ) {
        let sizes = self.sizes;
        let (taps, group_in) = (sizes.taps(), self.group_in());
        let [height, width] = sizes.input_size;
        let plane_size = height * width;
        let wo = sizes.output_size[1];
        let [sh, sw] = self.layout.stride;
        for run in self.tap_runs(g, tile) {
            let (t, tap) = (run.term, run.tap);
            // The plane's index among the task's samples, and the term's among its terms.
            let plane_index = (t / sizes.rank - first) * sizes.channels_in + run.channel;
            let local_term = t - first * sizes.rank;
            let plane =
                &values.x[(first * sizes.channels_in + plane_index) * plane_size..][..plane_size];
            let grad_plane = &mut grad_x[plane_index * plane_size..][..plane_size];
            let input_factor = values.input[t * group_in + run.factor_index];
            let kernel_factor = values.kernel[t * taps + run.k];
            let scale = input_factor * kernel_factor;
            let row = &grad_columns[run.start..];
            let mut grad_scale = T::default();
            for oh in run.rows.clone() {
                let start = tap.input_row(sh, oh) * width;
                let line = &plane[start..][..width];
                let grad_line = &mut grad_plane[start..][..width];
                let upstream = &row[(oh - run.first_row) * wo..][..wo];
                if sw == 1 {
                    let first = tap.input_column(1, tap.columns.start);
                    grad_scale += dot_and_scaled_add(
                        &upstream[tap.columns.clone()],
                        &line[first..],
                        &mut grad_line[first..],
                        scale,
                    );
                } else {
                    for ow in tap.columns.clone() {
                        let iw = tap.input_column(sw, ow);
                        grad_scale += upstream[ow] * line[iw];
                        grad_line[iw] += scale * upstream[ow];
                    }
                }
            }
            grad_input[local_term * group_in + run.factor_index] += kernel_factor * grad_scale;
            grad_kernel[local_term * taps + run.k] += input_factor * grad_scale;
        }
    }
}

/// One tap of one input channel in one segment of a tile (see [`Plan::tap_runs`]).
struct TapRun<'p> {
    term: usize,
    /// The input channel, and its index in the group (that of its input factor).
    channel: usize,
    factor_index: usize,
    k: usize,
    tap: &'p Tap,
    /// Where the segment's positions start in this channel and tap's row of the tile's columns.
    start: usize,
    /// The segment's first output row.
    first_row: usize,
    /// The segment's output rows at which the tap reads the input.
    rows: Range<usize>,
}

/// A matrix in a slice: element `(i, j)` at `offset + i·row_stride + j·column_stride`.
#[derive(Clone, Copy)]
struct Matrix<'a, T> {
    data: &'a [T],
    offset: usize,
    rows: usize,
    columns: usize,
    row_stride: usize,
    column_stride: usize,
}

impl<'a, T> Matrix<'a, T> {
    /// Rows `offset / row_stride ..` of a row-major matrix of `columns` columns.
    fn row_major(data: &'a [T], offset: usize, rows: usize, columns: usize) -> Self {
        Self {
            data,
            offset,
            rows,
            columns,
            row_stride: columns,
            column_stride: 1,
        }
    }

    fn transposed(self) -> Self {
        Self {
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
            ..self
        }
    }

    /// Panics unless every element lies in `data`.
    fn check(&self, what: &str, len: usize) {
        if self.rows > 0 && self.columns > 0 {
            let last = self.offset
                + (self.rows - 1) * self.row_stride
                + (self.columns - 1) * self.column_stride;
            assert!(last < len, "{what} matrix out of its buffer");
        }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`; `dst` is row-major with rows
/// `dst_row_stride` apart.
fn matmul_into<T: Real>(
    dst: &mut [T],
    dst_row_stride: usize,
    lhs: Matrix<T>,
    rhs: Matrix<T>,
    accumulate: bool,
    parallelism: Parallelism,
) {
    assert_eq!(lhs.columns, rhs.rows, "matmul: inner dimensions differ");
    let out = Matrix {
        data: &*dst,
        offset: 0,
        rows: lhs.rows,
        columns: rhs.columns,
        row_stride: dst_row_stride,
        column_stride: 1,
    };
    out.check("output", dst.len());
    lhs.check("left", lhs.data.len());
    rhs.check("right", rhs.data.len());
    // SAFETY: the three checks above keep every element gemm reads or writes inside its slice,
    // and `dst`, borrowed mutably, overlaps neither operand.
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.columns,
            lhs.columns,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.column_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.column_stride as isize,
            rhs.row_stride as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
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

#[cfg(test)]
mod tests {
    use super::in_range;

    /// Brute force: the positions whose input index is in range.
    fn expected(offset: isize, stride: usize, input: usize, output: usize) -> Vec<usize> {
        (0..output)
            .filter(|&o| {
                let i = o as isize * stride as isize + offset;
                (0..input as isize).contains(&i)
            })
            .collect()
    }

    #[test]
    fn in_range_is_the_positions_that_read_the_input() {
        for offset in -4..6 {
            for stride in 1..4 {
                for input in 1..7 {
                    for output in 0..8 {
                        let range: Vec<usize> = in_range(offset, stride, input, output).collect();
                        assert_eq!(
                            range,
                            expected(offset, stride, input, output),
                            "offset {offset}, stride {stride}, input {input}, output {output}"
                        );
                    }
                }
            }
        }
    }
}
