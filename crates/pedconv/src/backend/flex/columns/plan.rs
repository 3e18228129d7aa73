//! How the fused loops split the work: tiles of output positions, the segments of terms and rows
//! in a tile, and where each kernel tap reads the input.

use core::ops::Range;

use gemm::Parallelism;

use super::matrix::Matrix;
use super::{dot_and_scaled_add, Real, Values};
use crate::paths::columns::Sizes;
use crate::paths::ConvLayout;

/// Output positions per tile, at most; flex's own convolution tiles by 512.
pub(super) const TILE: usize = 512;

/// Elements of a tile's columns (`in/g·kh·kw` rows), at most: 512 Ki, 2 MiB of float32. Wide
/// layers take narrower tiles, so that the buffers of the tasks running at once stay small
/// next to the activations a training step keeps.
pub(super) const TILE_COLUMNS: usize = 1 << 19;

/// The output positions `o < output` whose input index `o·stride + offset` lies in
/// `0..input`: the positions where a tap at `offset` (its dilated position less the padding)
/// reads the input rather than the zero padding.
pub(super) fn in_range(offset: isize, stride: usize, input: usize, output: usize) -> Range<usize> {
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
pub(super) struct Tap {
    /// Output rows and columns that read the input (the others read zero padding).
    pub(super) rows: Range<usize>,
    pub(super) columns: Range<usize>,
    /// Input row and column read at output position `(0, 0)`, padding subtracted.
    pub(super) row_offset: isize,
    pub(super) column_offset: isize,
}

impl Tap {
    /// The taps of every kernel position, row-major (tap `u·kw + v`).
    pub(super) fn all(layout: &ConvLayout, sizes: &Sizes) -> Vec<Self> {
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
    pub(super) fn input_row(&self, stride: usize, oh: usize) -> usize {
        (oh as isize * stride as isize + self.row_offset) as usize
    }

    /// The input column read at output column `ow` (in `columns`).
    pub(super) fn input_column(&self, stride: usize, ow: usize) -> usize {
        (ow as isize * stride as isize + self.column_offset) as usize
    }
}

/// A run of output positions of one term: its output rows `rows`, all columns.
pub(super) struct Segment {
    pub(super) term: usize,
    pub(super) rows: Range<usize>,
}

/// What every task shares: the sizes, where each tap reads, and how work is split.
pub(super) struct Plan<'a> {
    pub(super) sizes: &'a Sizes,
    pub(super) layout: &'a ConvLayout,
    pub(super) taps: Vec<Tap>,
    /// Output positions per tile, at most.
    pub(super) tile: usize,
    /// Output rows per segment: all of them, or as many as fill a tile.
    pub(super) segment_rows: usize,
    /// Samples per task: one, or for small images about as many as fill a tile, in a number of
    /// tasks that is a multiple of the threads where the batch allows.
    pub(super) task_samples: usize,
    /// Whether each gemm runs on all threads (fewer tasks than threads) or on its task's one.
    pub(super) parallelism: Parallelism,
}

impl<'a> Plan<'a> {
    pub(super) fn new(sizes: &'a Sizes, layout: &'a ConvLayout) -> Self {
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
    pub(super) fn tiles(&self, first: usize) -> Vec<Vec<Segment>> {
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
    pub(super) fn len(&self, tile: &[Segment]) -> usize {
        tile.iter().map(|segment| segment.rows.len()).sum::<usize>() * self.sizes.output_size[1]
    }

    /// The most positions a tile has.
    pub(super) fn max_len(&self) -> usize {
        let wo = self.sizes.output_size[1];
        self.tile.max(self.segment_rows * wo)
    }

    /// Group `g`'s rows of the base weight, `[out/g, in/g·kh·kw]`.
    pub(super) fn weight<'v, T>(&self, values: &Values<'v, T>, g: usize) -> Matrix<'v, T> {
        let (group_out, group_rows) = (self.group_out(), self.sizes.group_rows());
        Matrix::row_major(
            values.weight,
            g * group_out * group_rows,
            group_out,
            group_rows,
        )
    }

    pub(super) fn pixels(&self) -> usize {
        self.sizes.output_size[0] * self.sizes.output_size[1]
    }

    pub(super) fn group_in(&self) -> usize {
        self.sizes.channels_in / self.sizes.groups
    }

    pub(super) fn group_out(&self) -> usize {
        self.sizes.channels_out / self.sizes.groups
    }

    /// Each segment of `tile` with its first column in the tile's matrices and its positions
    /// in its term's output plane.
    pub(super) fn placed<'t>(
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
    pub(super) fn tap_runs<'p>(
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
    pub(super) fn fill_columns<T: Real>(
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
    pub(super) fn spread_columns<T: Real>(
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
pub(super) struct TapRun<'p> {
    pub(super) term: usize,
    /// The input channel, and its index in the group (that of its input factor).
    pub(super) channel: usize,
    pub(super) factor_index: usize,
    pub(super) k: usize,
    pub(super) tap: &'p Tap,
    /// Where the segment's positions start in this channel and tap's row of the tile's columns.
    pub(super) start: usize,
    /// The segment's first output row.
    pub(super) first_row: usize,
    /// The segment's output rows at which the tap reads the input.
    pub(super) rows: Range<usize>,
}

#[cfg(test)]
mod tests {
    use super::in_range;

    /// Brute force: the positions whose input index is in range.
    pub(super) fn expected(
        offset: isize,
        stride: usize,
        input: usize,
        output: usize,
    ) -> Vec<usize> {
        (0..output)
            .filter(|&o| {
                let i = o as isize * stride as isize + offset;
                (0..input as isize).contains(&i)
            })
            .collect()
    }

    #[test]
    pub(super) fn in_range_is_the_positions_that_read_the_input() {
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
