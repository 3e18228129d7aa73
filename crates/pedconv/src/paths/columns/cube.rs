//! The columns formulation on the CubeCL backends (wgpu, CUDA) as CubeCL kernels around burn's
//! matrix product.
//!
//! Written with tensor operations, the formulation runs some twenty passes per layer (padding,
//! one slice per kernel row and column, concatenations, transposes, broadcasts), each a kernel
//! launch and a tensor the size of the columns or of the output. Here the forward pass is three
//! launches: [`scaled_columns`] writes `im2col(x ⊙ a_in) ⊙ a_k` with both scalings fused into
//! the gather, burn's matrix product contracts it with the base weight, and [`output`] scales
//! by `a_out`, sums the rank terms and transposes to batch first in one pass. The backward pass
//! fuses likewise: the output's gradient scaled and transposed in one pass, the factors'
//! gradients reduced straight from the column gradient and the input (no column-sized product),
//! and a gather-form col2im that sums every input pixel's taps with their scales. Gradients that
//! no tracked operand needs (a static convolution's unit factors) are not computed.
//!
//! Each kernel is written once for any float type (the operands' own, float32 sums in the
//! reductions) and runs on every CubeCL runtime: the same code serves wgpu and CUDA.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::StorageType;
use cubecl::{CubeCount, CubeDim};

use kernels::*;

use super::super::{cast, ConvLayout, Gradients, Needed, Operands};
use super::Sizes;

/// The kernels and their launch argument (CubeCL's `Tensor`, apart from burn's).
mod kernels {
    use cubecl::prelude::*;

    use super::super::super::ConvLayout;
    use super::super::Sizes;

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
                    value =
                        x[plane + pixel] * scale * kernel_factor[n * taps + u * sizes.kernel_w + v];
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
                            if column >= reach_w
                                && (column - reach_w).is_multiple_of(sizes.stride_w)
                            {
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
}

/// The CubeCL backends whose columns formulation runs as these kernels, with burn's default
/// element types (the backends' float type does not limit the operands': the kernels take the
/// operands' own).
#[cfg(feature = "wgpu")]
type WgpuCube = burn::backend::Wgpu;
#[cfg(feature = "cuda")]
type CudaCube = burn::backend::Cuda;

/// The output and, when `keep` asks for it, `per_term` channels first `[out, N, Ho, Wo]` (as
/// the tensor operations keep it); `None` unless `B` is wgpu or CUDA.
pub(super) fn forward<B: Backend>(
    operands: &Operands<B>,
    layout: &ConvLayout,
    keep: bool,
) -> Option<OutputAndKept<B>> {
    #[cfg(feature = "wgpu")]
    if let Some(operands) = cast::<_, Operands<WgpuCube>>(operands.clone()) {
        return cast(forward_on(&operands, layout, keep));
    }
    #[cfg(feature = "cuda")]
    if let Some(operands) = cast::<_, Operands<CudaCube>>(operands.clone()) {
        return cast(forward_on(&operands, layout, keep));
    }
    let _ = (operands, layout, keep);
    None
}

/// The gradients that `needed` asks for (zeros for the others); `None` unless `B` is wgpu or
/// CUDA.
pub(super) fn backward<B: Backend>(
    operands: &Operands<B>,
    per_term: Option<&Tensor<B, 4>>,
    layout: &ConvLayout,
    grad: &Tensor<B, 4>,
    needed: Needed,
) -> Option<Gradients<B>> {
    #[cfg(feature = "wgpu")]
    if let Some(operands) = cast::<_, Operands<WgpuCube>>(operands.clone()) {
        let per_term = per_term.map(|t| cast(t.clone()).expect("the operands' backend"));
        let grad = cast(grad.clone()).expect("the operands' backend");
        return cast(backward_on(&operands, per_term, layout, grad, needed));
    }
    #[cfg(feature = "cuda")]
    if let Some(operands) = cast::<_, Operands<CudaCube>>(operands.clone()) {
        let per_term = per_term.map(|t| cast(t.clone()).expect("the operands' backend"));
        let grad = cast(grad.clone()).expect("the operands' backend");
        return cast(backward_on(&operands, per_term, layout, grad, needed));
    }
    let _ = (operands, per_term, layout, grad, needed);
    None
}

/// A CubeCL backend, as the kernels' wrappers take it.
type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// The forward's output and what it keeps for the backward pass.
type OutputAndKept<B> = (Tensor<B, 4>, Option<Tensor<B, 4>>);

/// A tensor's contiguous CubeCL primitive, in `dtype`.
fn primitive<R, F, I, BT, const D: usize>(
    tensor: Tensor<Cube<R, F, I, BT>, D>,
    dtype: DType,
) -> CubeTensor<R>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let tensor = if tensor.dtype() == dtype {
        tensor
    } else {
        tensor.cast(dtype)
    };
    into_contiguous(tensor.into_primitive().tensor())
}

fn wrap<R, F, I, BT, const D: usize>(tensor: CubeTensor<R>) -> Tensor<Cube<R, F, I, BT>, D>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

/// The operands' primitives, all in the input's dtype.
struct Primitives<R: CubeRuntime> {
    x: CubeTensor<R>,
    input: CubeTensor<R>,
    output: CubeTensor<R>,
    kernel: CubeTensor<R>,
}

impl<R: CubeRuntime> Primitives<R> {
    fn new<F: FloatElement, I: IntElement, BT: BoolElement>(
        operands: &Operands<Cube<R, F, I, BT>>,
    ) -> Self {
        let dtype = operands.x.dtype();
        let factors = &operands.factors;
        Self {
            x: primitive(operands.x.clone(), dtype),
            input: primitive(factors.input.clone(), dtype),
            output: primitive(factors.output.clone(), dtype),
            kernel: primitive(factors.kernel.clone(), dtype),
        }
    }

    fn empty(&self, shape: Vec<usize>) -> CubeTensor<R> {
        crate::cube::empty(&self.x, shape.into())
    }

    /// One thread per element of `threads`: the launch's cube count and dimension.
    fn grid(&self, threads: usize) -> (CubeCount, CubeDim) {
        crate::cube::grid(&self.x.client, threads)
    }

    fn dtype(&self) -> StorageType {
        self.x.dtype.into()
    }

    /// `im2col(x ⊙ a_in) ⊙ a_k` as `[in·kh·kw, N·Ho·Wo]`.
    fn scaled_columns(&self, sizes: &Sizes, args: ColumnSizes) -> CubeTensor<R> {
        let columns = self.empty(vec![sizes.channels_in * sizes.taps(), sizes.positions()]);
        let (count, dim) = self.grid(sizes.channels_in * sizes.positions());
        scaled_columns_kernel::launch::<R>(
            &self.x.client,
            count,
            dim,
            self.x.clone().into_tensor_arg(),
            self.input.clone().into_tensor_arg(),
            self.kernel.clone().into_tensor_arg(),
            columns.clone().into_tensor_arg(),
            args.launch(),
            self.dtype(),
        );
        columns
    }
}

fn forward_on<R, F, I, BT>(
    operands: &Operands<Cube<R, F, I, BT>>,
    layout: &ConvLayout,
    keep: bool,
) -> OutputAndKept<Cube<R, F, I, BT>>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let sizes = Sizes::new(operands, layout);
    let args = ColumnSizes::new(&sizes, layout);
    let parts = Primitives::new(operands);
    let columns = wrap::<R, F, I, BT, 3>(parts.scaled_columns(&sizes, args)).reshape([
        sizes.groups,
        sizes.group_rows(),
        sizes.positions(),
    ]);
    let weight = sizes.weight_matrices(operands.weight.clone().cast(operands.x.dtype()));
    let [ho, wo] = sizes.output_size;
    let per_term = weight
        .matmul(columns)
        .reshape([sizes.channels_out, sizes.terms(), ho, wo]);
    let per_term_primitive = primitive(per_term.clone(), operands.x.dtype());
    let output = parts.empty(vec![sizes.batch, sizes.channels_out, ho, wo]);
    let (count, dim) = parts.grid(sizes.batch * sizes.channels_out * ho * wo);
    output_kernel::launch::<R>(
        &parts.x.client,
        count,
        dim,
        per_term_primitive.into_tensor_arg(),
        parts.output.clone().into_tensor_arg(),
        output.clone().into_tensor_arg(),
        args.launch(),
        parts.dtype(),
    );
    (wrap(output), keep.then_some(per_term))
}

fn backward_on<R, F, I, BT>(
    operands: &Operands<Cube<R, F, I, BT>>,
    per_term: Option<Tensor<Cube<R, F, I, BT>, 4>>,
    layout: &ConvLayout,
    grad: Tensor<Cube<R, F, I, BT>, 4>,
    needed: Needed,
) -> Gradients<Cube<R, F, I, BT>>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let sizes = Sizes::new(operands, layout);
    let args = ColumnSizes::new(&sizes, layout);
    let parts = Primitives::new(operands);
    let dtype = operands.x.dtype();
    let grad = primitive(grad, dtype);
    let client = &parts.x.client;
    let (batch, rank, terms) = (sizes.batch, sizes.rank, sizes.terms());
    let (channels_in, channels_out) = (sizes.channels_in, sizes.channels_out);
    let [height, width] = sizes.input_size;
    let zeros = |shape: [usize; 3]| Tensor::zeros(shape, (&operands.x.device(), dtype));

    // y = Σ_r per_term ⊙ a_out.
    let grad_output = match per_term.filter(|_| needed.output) {
        Some(per_term) => {
            let result = parts.empty(vec![batch, rank, channels_out]);
            let (count, dim) = parts.grid(terms * channels_out);
            output_factor_grad_kernel::launch::<R>(
                client,
                count,
                dim,
                grad.clone().into_tensor_arg(),
                primitive(per_term, dtype).into_tensor_arg(),
                result.clone().into_tensor_arg(),
                args.launch(),
                parts.dtype(),
            );
            wrap(result)
        }
        None => zeros([batch, rank, channels_out]),
    };
    let grad_per_term = parts.empty(vec![
        sizes.groups,
        channels_out / sizes.groups,
        sizes.positions(),
    ]);
    let (count, dim) = parts.grid(channels_out * sizes.positions());
    output_grad_kernel::launch::<R>(
        client,
        count,
        dim,
        grad.into_tensor_arg(),
        parts.output.clone().into_tensor_arg(),
        grad_per_term.clone().into_tensor_arg(),
        args.launch(),
        parts.dtype(),
    );
    let grad_per_term = wrap::<R, F, I, BT, 3>(grad_per_term);

    // per_term = W · columns.
    let weight = operands.weight.clone().cast(dtype);
    let grad_weight = if needed.weight {
        let columns = wrap::<R, F, I, BT, 3>(parts.scaled_columns(&sizes, args)).reshape([
            sizes.groups,
            sizes.group_rows(),
            sizes.positions(),
        ]);
        grad_per_term
            .clone()
            .matmul(columns.swap_dims(1, 2))
            .reshape(operands.weight.dims())
    } else {
        Tensor::zeros(operands.weight.dims(), (&operands.x.device(), dtype))
    };
    let grad_columns = sizes
        .weight_matrices(weight)
        .swap_dims(1, 2)
        .matmul(grad_per_term);
    let grad_columns = primitive(grad_columns, dtype);

    // columns = im2col(x ⊙ a_in) ⊙ a_k.
    let grad_kernel = if needed.kernel {
        let partial = parts.empty(vec![terms, sizes.taps(), channels_in]);
        let (count, dim) = parts.grid(terms * sizes.taps() * channels_in);
        kernel_factor_grad_kernel::launch::<R>(
            client,
            count,
            dim,
            grad_columns.clone().into_tensor_arg(),
            parts.x.clone().into_tensor_arg(),
            parts.input.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            args.launch(),
            parts.dtype(),
        );
        wrap::<R, F, I, BT, 3>(partial)
            .sum_dim(2)
            .reshape([batch, rank, sizes.taps()])
    } else {
        zeros([batch, rank, sizes.taps()])
    };
    let grad_x = parts.empty(vec![batch, channels_in, height, width]);
    let products = if needed.input {
        parts.empty(vec![terms, channels_in, height, width])
    } else {
        parts.empty(vec![1])
    };
    let (count, dim) = parts.grid(batch * channels_in * height * width);
    input_grad_kernel::launch::<R>(
        client,
        count,
        dim,
        grad_columns.into_tensor_arg(),
        parts.x.clone().into_tensor_arg(),
        parts.input.clone().into_tensor_arg(),
        parts.kernel.clone().into_tensor_arg(),
        grad_x.clone().into_tensor_arg(),
        products.clone().into_tensor_arg(),
        args.launch(),
        needed.input,
        parts.dtype(),
    );
    let group_in = channels_in / sizes.groups;
    let grad_input = if needed.input {
        wrap::<R, F, I, BT, 4>(products)
            .reshape([terms, sizes.groups, group_in, height * width])
            .sum_dim(3)
            .sum_dim(1)
            .reshape([batch, rank, group_in])
    } else {
        zeros([batch, rank, group_in])
    };
    Gradients {
        x: wrap(grad_x),
        input: grad_input,
        output: grad_output,
        kernel: grad_kernel,
        weight: grad_weight,
    }
}

/// The kernels on the GPU backend under test (wgpu or CUDA) against the fused loops on flex,
/// through the autodiff operation both run in training: output and every gradient, float32,
/// random operands, for every kernel size, stride and padding of the ResNets and beyond
/// (groups, rank 2, dilation, asymmetric padding). The two sum in different orders in float32
/// (at most `in/g·kh·kw` = 147 terms here): 1e-5 of the largest value, about 100 ulps, still
/// fails on any wrong term; with CUDA's TF32 products, see
/// [`gpu_products_tolerance`](crate::testing::gpu_products_tolerance).
#[cfg(all(
    test,
    any(feature = "test-wgpu", feature = "test-cuda"),
    feature = "flex"
))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{Distribution, Tensor, TensorData};

    use crate::attention::AttentionFactors;
    use crate::geometry::ConvGeometry;
    use crate::paths::recompute::tracked_forward;
    use crate::paths::{BackendClass, ConvLayout, Engine, Formulation, Operands};
    use crate::testing::{gpu_products_tolerance, GpuBackend};

    /// The operands' values, drawn once and loaded on both backends.
    struct Values {
        x: TensorData,
        input: TensorData,
        output: TensorData,
        kernel: TensorData,
        weight: TensorData,
        probe: TensorData,
    }

    fn draw<const D: usize>(shape: [usize; D], sigmoid: bool) -> TensorData {
        let values =
            Tensor::<Flex, D>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default());
        if sigmoid {
            burn::tensor::activation::sigmoid(values).into_data()
        } else {
            values.into_data()
        }
    }

    /// The output and the gradients of x, a_in, a_out, a_k and W on `B`, by the columns
    /// formulation of `B`'s engine.
    fn evaluate<I: burn::tensor::backend::Backend>(
        values: &Values,
        layout: ConvLayout,
    ) -> Vec<TensorData> {
        type C = burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
        let device = Default::default();
        let load = |data: &TensorData| {
            Tensor::<Autodiff<I>, 4>::from_data(data.clone(), &device).require_grad()
        };
        let load3 = |data: &TensorData| {
            Tensor::<Autodiff<I>, 3>::from_data(data.clone(), &device).require_grad()
        };
        let operands = Operands {
            x: load(&values.x),
            factors: AttentionFactors {
                input: load3(&values.input),
                output: load3(&values.output),
                kernel: load3(&values.kernel),
            },
            weight: load(&values.weight),
        };
        let formulation = Formulation::columns::<I>(layout);
        let output = tracked_forward::<I, C>(&formulation, operands.clone());
        let probe = Tensor::<Autodiff<I>, 4>::from_data(values.probe.clone(), &device);
        let grads = (output.clone() * probe).sum().backward();
        let factors = &operands.factors;
        vec![
            output.into_data(),
            operands.x.grad(&grads).expect("x's gradient").into_data(),
            factors
                .input
                .grad(&grads)
                .expect("a_in's gradient")
                .into_data(),
            factors
                .output
                .grad(&grads)
                .expect("a_out's gradient")
                .into_data(),
            factors
                .kernel
                .grad(&grads)
                .expect("a_k's gradient")
                .into_data(),
            operands
                .weight
                .grad(&grads)
                .expect("W's gradient")
                .into_data(),
        ]
    }

    #[test]
    fn kernels_on_the_gpu_equal_the_fused_loops_on_flex() {
        assert_eq!(
            BackendClass::of::<GpuBackend>().engine(),
            Engine::CubeKernels
        );
        assert_eq!(BackendClass::of::<Flex>().engine(), Engine::FlexLoops);
        let pad = |p| PaddingConfig2d::Explicit(p, p, p, p);
        // (channels [in, out], kernel, stride, dilation, padding, groups, rank, [batch, H, W])
        let cases = [
            ([3, 8], [7, 7], [2, 2], [1, 1], pad(3), 1, 1, [2, 19, 18]),
            ([8, 8], [3, 3], [1, 1], [1, 1], pad(1), 1, 1, [2, 9, 8]),
            ([8, 16], [3, 3], [2, 2], [1, 1], pad(1), 1, 1, [3, 9, 9]),
            ([8, 16], [1, 1], [2, 2], [1, 1], pad(0), 1, 1, [2, 9, 8]),
            ([16, 8], [1, 1], [1, 1], [1, 1], pad(0), 1, 1, [2, 7, 7]),
            ([6, 6], [3, 3], [1, 1], [2, 2], pad(2), 2, 2, [2, 8, 7]),
            (
                [4, 6],
                [3, 2],
                [2, 1],
                [1, 1],
                PaddingConfig2d::Explicit(2, 0, 1, 1),
                2,
                2,
                [3, 9, 6],
            ),
        ];
        for (channels, kernel_size, stride, dilation, padding, groups, rank, [batch, h, w]) in cases
        {
            let geometry = ConvGeometry::new([h, w], kernel_size, stride, dilation, &padding)
                .expect("a valid case");
            let layout = ConvLayout {
                stride,
                dilation,
                groups,
                geometry,
            };
            let [cin, cout] = channels;
            let [ho, wo] = geometry.output_size;
            let values = Values {
                x: draw([batch, cin, h, w], false),
                input: draw([batch, rank, cin / groups], true),
                output: draw([batch, rank, cout], true),
                kernel: draw([batch, rank, kernel_size[0] * kernel_size[1]], true),
                weight: draw([cout, cin / groups, kernel_size[0], kernel_size[1]], false),
                probe: draw([batch, cout, ho, wo], false),
            };
            let expected = evaluate::<Flex>(&values, layout);
            let actual = evaluate::<GpuBackend>(&values, layout);
            let name = format!("{channels:?} {kernel_size:?} stride {stride:?} dilation {dilation:?} groups {groups} rank {rank}");
            for (what, (actual, expected)) in ["output", "x", "a_in", "a_out", "a_k", "W"]
                .iter()
                .zip(actual.iter().zip(&expected))
            {
                let tolerance = gpu_products_tolerance(1e-5);
                crate::testing::assert_close(
                    &format!("{name}: {what}"),
                    actual,
                    expected,
                    tolerance,
                );
            }
        }
    }
}
