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

use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::StorageType;
use cubecl::{CubeCount, CubeDim};

use kernels::*;

use super::wrap;
use crate::paths::columns::{ColumnsForward, Sizes};
use crate::paths::{ConvLayout, Needed, OperandGradients, Operands};

mod kernels;

/// A CubeCL backend, as the kernels' wrappers take it.
type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

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
        super::empty(&self.x, shape.into())
    }

    /// One thread per element of `threads`: the launch's cube count and dimension.
    fn grid(&self, threads: usize) -> (CubeCount, CubeDim) {
        super::grid(&self.x.client, threads)
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

/// The output and, when `keep` asks for it, `per_term` channels first `[out, N, Ho, Wo]` (as
/// the tensor operations keep it).
pub(super) fn forward<R, F, I, BT>(
    operands: &Operands<Cube<R, F, I, BT>>,
    layout: &ConvLayout,
    keep: bool,
) -> ColumnsForward<Cube<R, F, I, BT>>
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
    ColumnsForward {
        output: wrap(output),
        per_term: keep.then_some(per_term),
    }
}

/// The gradients that `needed` asks for (zeros for the others).
pub(super) fn backward<R, F, I, BT>(
    operands: &Operands<Cube<R, F, I, BT>>,
    per_term: Option<Tensor<Cube<R, F, I, BT>, 4>>,
    layout: &ConvLayout,
    grad: Tensor<Cube<R, F, I, BT>, 4>,
    needed: Needed,
) -> OperandGradients<Cube<R, F, I, BT>>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let pass = BackwardPass::new(operands, layout);
    let grad = primitive(grad, pass.dtype);
    let sizes = &pass.sizes;
    let [batch, rank, taps] = [sizes.batch, sizes.rank, sizes.taps()];
    let group_in = sizes.channels_in / sizes.groups;

    // y = Σ_r per_term ⊙ a_out.
    let output = match per_term.filter(|_| needed.output) {
        Some(per_term) => pass.output_factor(&grad, per_term),
        None => pass.zeros([batch, rank, sizes.channels_out]),
    };
    let grad_per_term = pass.per_term(grad);
    // per_term = W · columns.
    let weight = if needed.weight {
        pass.weight(&grad_per_term)
    } else {
        Tensor::zeros(operands.weight.dims(), (&operands.x.device(), pass.dtype))
    };
    let grad_columns = pass.columns(grad_per_term);
    // columns = im2col(x ⊙ a_in) ⊙ a_k.
    let kernel = if needed.kernel {
        pass.kernel_factor(&grad_columns)
    } else {
        pass.zeros([batch, rank, taps])
    };
    let (x, input) = pass.input(grad_columns, needed.input);
    OperandGradients {
        x,
        input: input.unwrap_or_else(|| pass.zeros([batch, rank, group_in])),
        output,
        kernel,
        weight,
    }
}

/// `∂L/∂x` and, where asked for, `∂L/∂a_in`.
type InputGradients<R, F, I, BT> = (
    Tensor<Cube<R, F, I, BT>, 4>,
    Option<Tensor<Cube<R, F, I, BT>, 3>>,
);

/// What every gradient of the backward pass reads.
struct BackwardPass<'o, R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> {
    operands: &'o Operands<Cube<R, F, I, BT>>,
    sizes: Sizes,
    args: ColumnSizes,
    parts: Primitives<R>,
    dtype: DType,
}

impl<'o, R, F, I, BT> BackwardPass<'o, R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn new(operands: &'o Operands<Cube<R, F, I, BT>>, layout: &ConvLayout) -> Self {
        let sizes = Sizes::new(operands, layout);
        Self {
            operands,
            args: ColumnSizes::new(&sizes, layout),
            sizes,
            parts: Primitives::new(operands),
            dtype: operands.x.dtype(),
        }
    }

    fn zeros(&self, shape: [usize; 3]) -> Tensor<Cube<R, F, I, BT>, 3> {
        Tensor::zeros(shape, (&self.operands.x.device(), self.dtype))
    }

    /// `∂L/∂a_out`, `[B, r, out]`: the output's gradient against `per_term`, summed over the
    /// output positions.
    fn output_factor(
        &self,
        grad: &CubeTensor<R>,
        per_term: Tensor<Cube<R, F, I, BT>, 4>,
    ) -> Tensor<Cube<R, F, I, BT>, 3> {
        let sizes = &self.sizes;
        let result = self
            .parts
            .empty(vec![sizes.batch, sizes.rank, sizes.channels_out]);
        let (count, dim) = self.parts.grid(sizes.terms() * sizes.channels_out);
        output_factor_grad_kernel::launch::<R>(
            &self.parts.x.client,
            count,
            dim,
            grad.clone().into_tensor_arg(),
            primitive(per_term, self.dtype).into_tensor_arg(),
            result.clone().into_tensor_arg(),
            self.args.launch(),
            self.parts.dtype(),
        );
        wrap(result)
    }

    /// `∂L/∂per_term`, `[g, out/g, N·Ho·Wo]`: the output's gradient scaled by `a_out` and
    /// transposed to channels first.
    fn per_term(&self, grad: CubeTensor<R>) -> Tensor<Cube<R, F, I, BT>, 3> {
        let sizes = &self.sizes;
        let channels_out = sizes.channels_out;
        let result = self.parts.empty(vec![
            sizes.groups,
            channels_out / sizes.groups,
            sizes.positions(),
        ]);
        let (count, dim) = self.parts.grid(channels_out * sizes.positions());
        output_grad_kernel::launch::<R>(
            &self.parts.x.client,
            count,
            dim,
            grad.into_tensor_arg(),
            self.parts.output.clone().into_tensor_arg(),
            result.clone().into_tensor_arg(),
            self.args.launch(),
            self.parts.dtype(),
        );
        wrap(result)
    }

    /// `∂L/∂W`: the per-term gradient against the recomputed scaled columns.
    fn weight(&self, grad_per_term: &Tensor<Cube<R, F, I, BT>, 3>) -> Tensor<Cube<R, F, I, BT>, 4> {
        let sizes = &self.sizes;
        let columns = wrap::<R, F, I, BT, 3>(self.parts.scaled_columns(sizes, self.args))
            .reshape([sizes.groups, sizes.group_rows(), sizes.positions()]);
        grad_per_term
            .clone()
            .matmul(columns.swap_dims(1, 2))
            .reshape(self.operands.weight.dims())
    }

    /// `∂L/∂columns`, `[g, in/g·kh·kw, N·Ho·Wo]`: `Wᵀ` times the per-term gradient.
    fn columns(&self, grad_per_term: Tensor<Cube<R, F, I, BT>, 3>) -> CubeTensor<R> {
        let weight = self.operands.weight.clone().cast(self.dtype);
        let grad_columns = self
            .sizes
            .weight_matrices(weight)
            .swap_dims(1, 2)
            .matmul(grad_per_term);
        primitive(grad_columns, self.dtype)
    }

    /// `∂L/∂a_k`, `[B, r, kh·kw]`: the column gradient against the scaled input, reduced per
    /// tap without a column-sized product.
    fn kernel_factor(&self, grad_columns: &CubeTensor<R>) -> Tensor<Cube<R, F, I, BT>, 3> {
        let sizes = &self.sizes;
        let (terms, taps) = (sizes.terms(), sizes.taps());
        let partial = self.parts.empty(vec![terms, taps, sizes.channels_in]);
        let (count, dim) = self.parts.grid(terms * taps * sizes.channels_in);
        kernel_factor_grad_kernel::launch::<R>(
            &self.parts.x.client,
            count,
            dim,
            grad_columns.clone().into_tensor_arg(),
            self.parts.x.clone().into_tensor_arg(),
            self.parts.input.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            self.args.launch(),
            self.parts.dtype(),
        );
        wrap::<R, F, I, BT, 3>(partial)
            .sum_dim(2)
            .reshape([sizes.batch, sizes.rank, taps])
    }

    /// `∂L/∂x` by a gather-form col2im that sums every input pixel's taps with their scales,
    /// and, where `input` asks for it, `∂L/∂a_in` `[B, r, in/g]` from the same pass's products
    /// with the input.
    fn input(&self, grad_columns: CubeTensor<R>, input: bool) -> InputGradients<R, F, I, BT> {
        let sizes = &self.sizes;
        let (batch, channels_in, terms) = (sizes.batch, sizes.channels_in, sizes.terms());
        let [height, width] = sizes.input_size;
        let grad_x = self.parts.empty(vec![batch, channels_in, height, width]);
        let products = if input {
            self.parts.empty(vec![terms, channels_in, height, width])
        } else {
            self.parts.empty(vec![1])
        };
        let (count, dim) = self.parts.grid(batch * channels_in * height * width);
        input_grad_kernel::launch::<R>(
            &self.parts.x.client,
            count,
            dim,
            grad_columns.into_tensor_arg(),
            self.parts.x.clone().into_tensor_arg(),
            self.parts.input.clone().into_tensor_arg(),
            self.parts.kernel.clone().into_tensor_arg(),
            grad_x.clone().into_tensor_arg(),
            products.clone().into_tensor_arg(),
            self.args.launch(),
            input,
            self.parts.dtype(),
        );
        let group_in = channels_in / sizes.groups;
        let grad_input = input.then(|| {
            wrap::<R, F, I, BT, 4>(products)
                .reshape([terms, sizes.groups, group_in, height * width])
                .sum_dim(3)
                .sum_dim(1)
                .reshape([batch, sizes.rank, group_in])
        });
        (wrap(grad_x), grad_input)
    }
}

/// The kernels on the GPU backend under test (wgpu or CUDA) against the fused loops on flex,
/// through the autodiff operation both run in training: output and every gradient, float32,
/// random operands, for every kernel size, stride and padding of the ResNets and beyond
/// (groups, rank 2, dilation, asymmetric padding). The two sum in different orders in float32
/// (at most `in/g·kh·kw` = 147 terms here): 1e-5 of the largest value, about 100 ulps, still
/// fails on any wrong term; with CUDA's TF32 products, see
/// [`gpu_products_tolerance`](crate::testing::gpu_products_tolerance).
#[cfg(all(test, feature = "cube", feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{Distribution, Tensor, TensorData};

    use crate::attention::AttentionFactors;
    use crate::backend::{BackendClass, PedConvBackend};
    use crate::geometry::ConvGeometry;
    use crate::paths::{ConvLayout, Formulation, Operands};
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

    /// The output and the gradients of x, a_in, a_out, a_k and W by the columns formulation of
    /// `I`, in training (`Autodiff` over `I`).
    fn evaluate<I: PedConvBackend>(values: &Values, layout: ConvLayout) -> Vec<TensorData> {
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
        let formulation = Formulation::Columns(layout);
        let output = Autodiff::<I>::path_output(&formulation, operands.clone());
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

    /// The same through burn's fusion, where the kernels run as custom operations of the
    /// fusion stream: the same kernels on the same values, equal to the last bit.
    #[test]
    fn kernels_on_the_gpu_equal_the_fused_loops_on_flex() {
        assert_eq!(BackendClass::of::<Flex>(), BackendClass::Flex);
        assert!(BackendClass::of::<GpuBackend>().columns_native());
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
            let fused = evaluate::<burn_fusion::Fusion<GpuBackend>>(&values, layout);
            let name = format!("{channels:?} {kernel_size:?} stride {stride:?} dilation {dilation:?} groups {groups} rank {rank}");
            for (what, ((actual, expected), fused)) in ["output", "x", "a_in", "a_out", "a_k", "W"]
                .iter()
                .zip(actual.iter().zip(&expected).zip(&fused))
            {
                assert_eq!(fused, actual, "{name}: {what} through fusion");
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
