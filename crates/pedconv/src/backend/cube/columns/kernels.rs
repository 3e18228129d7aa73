//! The kernels and their launch argument (CubeCL's `Tensor`, apart from burn's).

use cubecl::prelude::*;

use crate::paths::columns::Sizes;
use crate::paths::ConvLayout;

/// The sizes every kernel reads, in one launch argument.
#[derive(CubeLaunch, CubeType, Clone, Copy)]
pub(super) struct ColumnSizes {
    channels_in: usize,
    channels_out: usize,
    group_in: usize,
    rank: usize,
    /// `B·r`: the rank terms folded into the batch.
    terms: usize,
    height: usize,
    width: usize,
    out_h: usize,
    out_w: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride_h: usize,
    stride_w: usize,
    dilation_h: usize,
    dilation_w: usize,
    /// Padding before the first row and column (the padding after follows from the sizes).
    pad_h: usize,
    pad_w: usize,
}

impl ColumnSizes {
    pub(super) fn new(sizes: &Sizes, layout: &ConvLayout) -> Self {
        let [height, width] = sizes.input_size;
        let [out_h, out_w] = sizes.output_size;
        let [kernel_h, kernel_w] = sizes.kernel_size;
        let start = layout.geometry.padding_start;
        Self {
            channels_in: sizes.channels_in,
            channels_out: sizes.channels_out,
            group_in: sizes.channels_in / sizes.groups,
            rank: sizes.rank,
            terms: sizes.terms(),
            height,
            width,
            out_h,
            out_w,
            kernel_h,
            kernel_w,
            stride_h: layout.stride[0],
            stride_w: layout.stride[1],
            dilation_h: layout.dilation[0],
            dilation_w: layout.dilation[1],
            pad_h: start[0],
            pad_w: start[1],
        }
    }

    pub(super) fn launch<R: Runtime>(self) -> ColumnSizesLaunch<R> {
        ColumnSizesLaunch::new(
            self.channels_in,
            self.channels_out,
            self.group_in,
            self.rank,
            self.terms,
            self.height,
            self.width,
            self.out_h,
            self.out_w,
            self.kernel_h,
            self.kernel_w,
            self.stride_h,
            self.stride_w,
            self.dilation_h,
            self.dilation_w,
            self.pad_h,
            self.pad_w,
        )
    }
}

/// `columns[(c·kh·kw + t)·N + n, i·Wo + j] = x[n / r, c, ih, iw] · a_in[n, c mod in/g] · a_k[n, t]`
/// for tap `t = u·kw + v` reading input pixel `(ih, iw) = (i·sh + u·dh − ph, j·sw + v·dw − pw)`
/// (zero outside the input); one thread per `(c, n, i, j)` writes its `kh·kw` taps.
#[cube(launch)]
pub(super) fn scaled_columns_kernel<F: Float>(
    x: &Tensor<F>,
    input_factor: &Tensor<F>,
    kernel_factor: &Tensor<F>,
    columns: &mut Tensor<F>,
    sizes: &ColumnSizes,
    #[define(F)] _dtype: StorageType,
) {
    let pixels = sizes.out_h * sizes.out_w;
    let threads = sizes.channels_in * sizes.terms * pixels;
    if ABSOLUTE_POS >= threads {
        terminate!();
    }
    let j = ABSOLUTE_POS % sizes.out_w;
    let i = ABSOLUTE_POS / sizes.out_w % sizes.out_h;
    let n = ABSOLUTE_POS / pixels % sizes.terms;
    let c = ABSOLUTE_POS / (pixels * sizes.terms);
    let taps = sizes.kernel_h * sizes.kernel_w;
    let sample = n / sizes.rank;
    let scale = input_factor[n * sizes.group_in + c % sizes.group_in];
    let plane = (sample * sizes.channels_in + c) * sizes.height * sizes.width;
    let position = n * pixels + i * sizes.out_w + j;
    let tap_stride = sizes.terms * pixels;
    let mut at = c * taps * tap_stride + position;
    for u in 0..sizes.kernel_h {
        let row = i * sizes.stride_h + u * sizes.dilation_h;
        for v in 0..sizes.kernel_w {
            let column = j * sizes.stride_w + v * sizes.dilation_w;
            let mut value = F::new(0.0);
            if row >= sizes.pad_h
                && row < sizes.height + sizes.pad_h
                && column >= sizes.pad_w
                && column < sizes.width + sizes.pad_w
            {
                let pixel = (row - sizes.pad_h) * sizes.width + column - sizes.pad_w;
                value = x[plane + pixel] * scale * kernel_factor[n * taps + u * sizes.kernel_w + v];
            }
            columns[at] = value;
            at += tap_stride;
        }
    }
}

/// `y[b, o, p] = Σ_r per_term[o, b·r + r, p] · a_out[b·r + r, o]`: the output scaling, the sum of
/// the rank terms and the transpose to batch first; one thread per output element.
#[cube(launch)]
pub(super) fn output_kernel<F: Float>(
    per_term: &Tensor<F>,
    output_factor: &Tensor<F>,
    output: &mut Tensor<F>,
    sizes: &ColumnSizes,
    #[define(F)] _dtype: StorageType,
) {
    let pixels = sizes.out_h * sizes.out_w;
    let batch = sizes.terms / sizes.rank;
    if ABSOLUTE_POS >= batch * sizes.channels_out * pixels {
        terminate!();
    }
    let p = ABSOLUTE_POS % pixels;
    let o = ABSOLUTE_POS / pixels % sizes.channels_out;
    let b = ABSOLUTE_POS / (pixels * sizes.channels_out);
    let mut sum = f32::new(0.0);
    for r in 0..sizes.rank {
        let n = b * sizes.rank + r;
        let term = per_term[(o * sizes.terms + n) * pixels + p];
        sum += f32::cast_from(term) * f32::cast_from(output_factor[n * sizes.channels_out + o]);
    }
    output[ABSOLUTE_POS] = F::cast_from(sum);
}

/// The adjoint of [`output_kernel`] with respect to `per_term`:
/// `g[o, n, p] = grad[n / r, o, p] · a_out[n, o]`, channels first; one thread per element.
#[cube(launch)]
pub(super) fn output_grad_kernel<F: Float>(
    grad: &Tensor<F>,
    output_factor: &Tensor<F>,
    grad_per_term: &mut Tensor<F>,
    sizes: &ColumnSizes,
    #[define(F)] _dtype: StorageType,
) {
    let pixels = sizes.out_h * sizes.out_w;
    if ABSOLUTE_POS >= sizes.channels_out * sizes.terms * pixels {
        terminate!();
    }
    let p = ABSOLUTE_POS % pixels;
    let n = ABSOLUTE_POS / pixels % sizes.terms;
    let o = ABSOLUTE_POS / (pixels * sizes.terms);
    let b = n / sizes.rank;
    let value = grad[(b * sizes.channels_out + o) * pixels + p];
    grad_per_term[ABSOLUTE_POS] = value * output_factor[n * sizes.channels_out + o];
}

/// `∂a_out[n, o] = Σ_p grad[n / r, o, p] · per_term[o, n, p]`; one thread per `(n, o)`.
#[cube(launch)]
pub(super) fn output_factor_grad_kernel<F: Float>(
    grad: &Tensor<F>,
    per_term: &Tensor<F>,
    grad_factor: &mut Tensor<F>,
    sizes: &ColumnSizes,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= sizes.terms * sizes.channels_out {
        terminate!();
    }
    let o = ABSOLUTE_POS % sizes.channels_out;
    let n = ABSOLUTE_POS / sizes.channels_out;
    let b = n / sizes.rank;
    let pixels = sizes.out_h * sizes.out_w;
    let grad_row = (b * sizes.channels_out + o) * pixels;
    let term_row = (o * sizes.terms + n) * pixels;
    let mut sum = f32::new(0.0);
    for p in 0..pixels {
        sum += f32::cast_from(grad[grad_row + p]) * f32::cast_from(per_term[term_row + p]);
    }
    grad_factor[ABSOLUTE_POS] = F::cast_from(sum);
}

/// The spatial factor's gradient per input channel,
/// `partial[n, t, c] = Σ_{i,j} ∂columns[(c·kh·kw + t)·N + n, i·Wo + j] · x[n / r, c, ih, iw] · a_in[n, c mod in/g]`
/// (the unscaled columns recomputed in registers); one thread per `(n, t, c)`.
#[cube(launch)]
pub(super) fn kernel_factor_grad_kernel<F: Float>(
    grad_columns: &Tensor<F>,
    x: &Tensor<F>,
    input_factor: &Tensor<F>,
    partial: &mut Tensor<F>,
    sizes: &ColumnSizes,
    #[define(F)] _dtype: StorageType,
) {
    let taps = sizes.kernel_h * sizes.kernel_w;
    if ABSOLUTE_POS >= sizes.terms * taps * sizes.channels_in {
        terminate!();
    }
    let c = ABSOLUTE_POS % sizes.channels_in;
    let t = ABSOLUTE_POS / sizes.channels_in % taps;
    let n = ABSOLUTE_POS / (sizes.channels_in * taps);
    let u = t / sizes.kernel_w;
    let v = t % sizes.kernel_w;
    let pixels = sizes.out_h * sizes.out_w;
    let plane = (n / sizes.rank * sizes.channels_in + c) * sizes.height * sizes.width;
    let grad_row = ((c * taps + t) * sizes.terms + n) * pixels;
    let mut sum = f32::new(0.0);
    for i in 0..sizes.out_h {
        let row = i * sizes.stride_h + u * sizes.dilation_h;
        if row >= sizes.pad_h && row < sizes.height + sizes.pad_h {
            let input_row = plane + (row - sizes.pad_h) * sizes.width;
            for j in 0..sizes.out_w {
                let column = j * sizes.stride_w + v * sizes.dilation_w;
                if column >= sizes.pad_w && column < sizes.width + sizes.pad_w {
                    let value = x[input_row + column - sizes.pad_w];
                    let g = grad_columns[grad_row + i * sizes.out_w + j];
                    sum += f32::cast_from(g) * f32::cast_from(value);
                }
            }
        }
    }
    let scale = f32::cast_from(input_factor[n * sizes.group_in + c % sizes.group_in]);
    partial[ABSOLUTE_POS] = F::cast_from(sum * scale);
}

/// col2im in gather form with the factors: for every input pixel `(b, c, ih, iw)` and term `n`,
/// `s_n = Σ_t ∂columns[(c·kh·kw + t)·N + n, i·Wo + j] · a_k[n, t]` over the taps `t` whose
/// output position `(i, j)` reads that pixel; `∂x = Σ_r s_n · a_in[n, c mod in/g]` and, when
/// `input_factor_grad`, `products[n, c, ih, iw] = s_n · x[b, c, ih, iw]` (summed into `∂a_in` by
/// the caller). One thread per input element.
#[cube(launch)]
pub(super) fn input_grad_kernel<F: Float>(
    grad_columns: &Tensor<F>,
    x: &Tensor<F>,
    input_factor: &Tensor<F>,
    kernel_factor: &Tensor<F>,
    grad_x: &mut Tensor<F>,
    products: &mut Tensor<F>,
    sizes: &ColumnSizes,
    #[comptime] input_factor_grad: bool,
    #[define(F)] _dtype: StorageType,
) {
    let plane = sizes.height * sizes.width;
    let batch = sizes.terms / sizes.rank;
    if ABSOLUTE_POS >= batch * sizes.channels_in * plane {
        terminate!();
    }
    let pixel = ABSOLUTE_POS % plane;
    let c = ABSOLUTE_POS / plane % sizes.channels_in;
    let b = ABSOLUTE_POS / (plane * sizes.channels_in);
    // Padded coordinates of the pixel.
    let row = pixel / sizes.width + sizes.pad_h;
    let column = pixel % sizes.width + sizes.pad_w;
    let taps = sizes.kernel_h * sizes.kernel_w;
    let pixels = sizes.out_h * sizes.out_w;
    let value = f32::cast_from(x[ABSOLUTE_POS]);
    let mut grad = f32::new(0.0);
    for r in 0..sizes.rank {
        let n = b * sizes.rank + r;
        let mut sum = f32::new(0.0);
        for u in 0..sizes.kernel_h {
            let reach_h = u * sizes.dilation_h;
            if row >= reach_h && (row - reach_h).is_multiple_of(sizes.stride_h) {
                let i = (row - reach_h) / sizes.stride_h;
                if i < sizes.out_h {
                    for v in 0..sizes.kernel_w {
                        let reach_w = v * sizes.dilation_w;
                        if column >= reach_w && (column - reach_w).is_multiple_of(sizes.stride_w) {
                            let j = (column - reach_w) / sizes.stride_w;
                            if j < sizes.out_w {
                                let t = u * sizes.kernel_w + v;
                                let at = ((c * taps + t) * sizes.terms + n) * pixels
                                    + i * sizes.out_w
                                    + j;
                                sum += f32::cast_from(grad_columns[at])
                                    * f32::cast_from(kernel_factor[n * taps + t]);
                            }
                        }
                    }
                }
            }
        }
        let scale = f32::cast_from(input_factor[n * sizes.group_in + c % sizes.group_in]);
        grad += sum * scale;
        if input_factor_grad {
            products[(n * sizes.channels_in + c) * plane + pixel] = F::cast_from(sum * value);
        }
    }
    grad_x[ABSOLUTE_POS] = F::cast_from(grad);
}
