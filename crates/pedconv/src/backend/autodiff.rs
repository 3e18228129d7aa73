//! [`PedConvBackend`] for `Autodiff<B, C>`, either checkpointing strategy: autodiff operations
//! with hand-written backward passes over `B`'s operations.
//!
//! - A compute path ([`Formulation`]) keeps its operands (the layer input, which the previous
//!   layer keeps anyway, the small factors and the weight), and the columns formulation one
//!   output-sized tensor more, and recomputes its large intermediates in the backward pass.
//!   Derived by autodiff, the same computations keep them: two column-sized tensors (`2·kh·kw`
//!   times the input) per layer for the columns, the kernels and the modulation (each
//!   `B·out·in/g·kh·kw`) for the per-sample kernels.
//! - Where `B`'s activations are kernels of their own, an activation keeps its output and runs
//!   `B`'s backward kernel; elsewhere autodiff differentiates the composition (which fusion
//!   merges).
//! - Batch norms and max-pooling take `B`'s tracked operations (flex's fused loops).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::nn::pool::MaxPool2d;
use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{BackendClass, Columns, PedConvBackend};
use crate::activation::Activation;
use crate::attention::AttentionFactors;
use crate::norm::Epilogue;
use crate::paths::{float_tensor, Formulation, Needed, Operands};

impl<B: PedConvBackend, C: CheckpointStrategy> PedConvBackend for Autodiff<B, C> {
    fn class() -> BackendClass {
        B::class().trained()
    }

    fn path_output(formulation: &Formulation, operands: Operands<Self>) -> Tensor<Self, 4> {
        tracked_path::<B, C>(formulation, operands)
    }

    fn activation(x: Tensor<Self, 1>, activation: Activation) -> Tensor<Self, 1> {
        if B::activation_kernels() {
            tracked_activation::<B, C>(x, activation)
        } else {
            activation.compose(x)
        }
    }

    fn batch_norm(
        bn: &BatchNorm<Self>,
        x: Tensor<Self, 4>,
        epilogue: Epilogue<Self>,
    ) -> Tensor<Self, 4> {
        B::tracked_batch_norm(bn, x, epilogue)
    }

    fn max_pool(pool: &MaxPool2d, x: Tensor<Self, 4>) -> Tensor<Self, 4> {
        B::tracked_max_pool(pool, x)
    }
}

/// The path's forward on the inner backend, registered in the autodiff graph with
/// [`RecomputeBackward`].
pub(crate) fn tracked_path<I: PedConvBackend, C: CheckpointStrategy>(
    formulation: &Formulation,
    operands: Operands<Autodiff<I, C>>,
) -> Tensor<Autodiff<I, C>, 4> {
    let x = operands.x.into_primitive().tensor();
    let input = operands.factors.input.into_primitive().tensor();
    let output = operands.factors.output.into_primitive().tensor();
    let kernel = operands.factors.kernel.into_primitive().tensor();
    let weight = operands.weight.into_primitive().tensor();
    // An output factor outside the graph (a static convolution's unit factors) needs no
    // gradient, and nothing kept for one.
    let keep = !output.node.requirement.is_none();
    let inner = Operands::<I> {
        x: float_tensor(x.primitive.clone()),
        factors: AttentionFactors {
            input: float_tensor(input.primitive.clone()),
            output: float_tensor(output.primitive.clone()),
            kernel: float_tensor(kernel.primitive.clone()),
        },
        weight: float_tensor(weight.primitive.clone()),
    };
    let (result, kept) = formulation.forward(&inner, keep, &Columns::<I>::native());
    let result = result.into_primitive().tensor();
    let nodes = [x.node, input.node, output.node, kernel.node, weight.node];
    let tensor = match RecomputeBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            RecomputeState {
                formulation: formulation.clone(),
                operands: inner,
                kept,
            },
            result,
        ),
        OpsKind::UnTracked(prep) => prep.finish(result),
    };
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

/// What the backward pass needs: the operands on the inner backend and what the forward keeps.
#[derive(Debug, Clone)]
struct RecomputeState<I: Backend> {
    formulation: Formulation,
    operands: Operands<I>,
    kept: Option<Tensor<I, 4>>,
}

#[derive(Debug)]
struct RecomputeBackward;

impl<I: PedConvBackend> Backward<I, 5> for RecomputeBackward {
    type State = RecomputeState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = float_tensor::<I, 4>(grads.consume::<I>(&ops.node));
        let state = ops.state;
        let [x, input, output, kernel, weight] = ops.parents;
        let needed = Needed {
            input: input.is_some(),
            output: output.is_some(),
            kernel: kernel.is_some(),
            weight: weight.is_some(),
        };
        let gradients = state.formulation.backward(
            state.operands,
            state.kept,
            grad,
            needed,
            &Columns::<I>::native(),
        );
        let parts = [
            (x, gradients.x.into_primitive().tensor()),
            (input, gradients.input.into_primitive().tensor()),
            (output, gradients.output.into_primitive().tensor()),
            (kernel, gradients.kernel.into_primitive().tensor()),
            (weight, gradients.weight.into_primitive().tensor()),
        ];
        for (node, gradient) in parts {
            if let Some(node) = node {
                grads.register::<I>(node.id, gradient);
            }
        }
    }
}

/// The activation as one autodiff operation that keeps its output for the backward pass.
fn tracked_activation<I: PedConvBackend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 1>,
    activation: Activation,
) -> Tensor<Autodiff<I, C>, 1> {
    let x = x.into_primitive().tensor();
    let y = I::activation(float_tensor(x.primitive.clone()), activation)
        .into_primitive()
        .tensor();
    let y = match ActivationBackward(activation)
        .prepare::<C>([x.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

#[derive(Debug)]
struct ActivationBackward(Activation);

impl<I: PedConvBackend> Backward<I, 1> for ActivationBackward {
    type State = I::FloatTensorPrimitive;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<I>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            let grad_x =
                I::activation_backward(float_tensor(ops.state), float_tensor(grad), self.0);
            grads.register::<I>(parent.id, grad_x.into_primitive().tensor());
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::PaddingConfig2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{DType, Distribution, Tensor, TensorData};

    use super::*;
    use crate::geometry::ConvGeometry;
    use crate::paths::ConvLayout;

    type B = Autodiff<Flex>;

    fn normal<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(
            shape,
            Distribution::Normal(0.0, 1.0),
            (&Default::default(), DType::F64),
        )
        .require_grad()
    }

    /// float64: the two sides differ only in summation order, a few ulps of the largest value;
    /// 1e-12 of it leaves a wide margin and still catches any wrong term.
    fn assert_close(name: &str, actual: &TensorData, expected: &TensorData) {
        crate::testing::assert_close(name, actual, expected, 1e-12);
    }

    /// Each operation's output and gradients equal those autodiff derives from the
    /// composition, for strides, dilation, groups, ranks, asymmetric padding and non-square
    /// kernels (the per-sample kernels where the padding is symmetric, as the layer prepares
    /// their input).
    #[test]
    fn gradients_equal_autodiff_of_the_composition() {
        let _drawing = crate::testing::drawing();
        let pad1 = PaddingConfig2d::Explicit(1, 1, 1, 1);
        // (channels [in, out], kernel, stride, dilation, padding, groups, rank, [batch, H, W])
        let cases = [
            (
                [4, 6],
                [3, 3],
                [1, 1],
                [1, 1],
                pad1.clone(),
                1,
                1,
                [2, 6, 5],
            ),
            (
                [4, 4],
                [3, 3],
                [2, 2],
                [1, 1],
                pad1.clone(),
                1,
                1,
                [2, 7, 8],
            ),
            (
                [4, 4],
                [3, 2],
                [2, 1],
                [2, 1],
                PaddingConfig2d::Explicit(2, 0, 1, 1),
                2,
                2,
                [3, 9, 6],
            ),
            (
                [6, 3],
                [2, 2],
                [1, 2],
                [1, 1],
                PaddingConfig2d::Same,
                3,
                3,
                [1, 5, 6],
            ),
            (
                [4, 6],
                [1, 1],
                [1, 1],
                [1, 1],
                PaddingConfig2d::Valid,
                2,
                2,
                [2, 3, 4],
            ),
            (
                [4, 6],
                [1, 1],
                [2, 2],
                [1, 1],
                PaddingConfig2d::Explicit(1, 0, 0, 1),
                1,
                1,
                [2, 5, 6],
            ),
            // Output rows wider than a tile of the flex loops: one tile per output row.
            (
                [4, 6],
                [3, 3],
                [2, 1],
                [1, 1],
                pad1.clone(),
                2,
                2,
                [2, 5, 520],
            ),
            (
                [3, 4],
                [3, 3],
                [1, 1],
                [1, 1],
                pad1.clone(),
                1,
                1,
                [1, 4, 600],
            ),
            // Large enough for the concatenating transposes of `swap_leading_dims`.
            (
                [16, 16],
                [3, 3],
                [1, 1],
                [1, 1],
                pad1.clone(),
                1,
                1,
                [4, 16, 16],
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
            let mut formulations = vec![Formulation::Columns(layout)];
            if geometry.padding_start == geometry.padding_end {
                formulations.push(Formulation::Kernels(ConvOptions::new(
                    stride,
                    geometry.padding_start,
                    dilation,
                    groups,
                )));
            }
            let [ho, wo] = geometry.output_size;
            let [channels_in, channels_out] = channels;
            let factor = |entries| {
                burn::tensor::activation::sigmoid(normal([batch, rank, entries]))
                    .detach()
                    .require_grad()
            };
            let operands = Operands {
                x: normal([batch, channels_in, h, w]),
                factors: AttentionFactors {
                    input: factor(channels_in / groups),
                    output: factor(channels_out),
                    kernel: factor(kernel_size[0] * kernel_size[1]),
                },
                weight: normal([
                    channels_out,
                    channels_in / groups,
                    kernel_size[0],
                    kernel_size[1],
                ]),
            };
            let probe = normal([batch, channels_out, ho, wo]).detach();
            // The output and the gradients of x, a_in, a_out, a_k and W.
            let evaluate = |output: Tensor<B, 4>| {
                let grads = (output.clone() * probe.clone()).sum().backward();
                let data = |grad: Option<Tensor<Flex, 4>>| grad.map(|g| g.into_data());
                let data3 = |grad: Option<Tensor<Flex, 3>>| grad.map(|g| g.into_data());
                let factors = &operands.factors;
                vec![
                    Some(output.into_data()),
                    data(operands.x.grad(&grads)),
                    data3(factors.input.grad(&grads)),
                    data3(factors.output.grad(&grads)),
                    data3(factors.kernel.grad(&grads)),
                    data(operands.weight.grad(&grads)),
                ]
            };
            for formulation in formulations {
                let name = format!(
                    "{formulation:?}, {channels:?} {kernel_size:?} stride {stride:?} groups {groups} rank {rank}"
                );
                let composed = Columns::composed();
                let expected = evaluate(formulation.forward(&operands, false, &composed).0);
                let actual = evaluate(tracked_path(&formulation, operands.clone()));
                for (what, (actual, expected)) in ["output", "x", "a_in", "a_out", "a_k", "W"]
                    .iter()
                    .zip(actual.iter().zip(&expected))
                {
                    let (Some(actual), Some(expected)) = (actual, expected) else {
                        panic!("{name}: the {what} gradient is missing");
                    };
                    assert_close(&format!("{name}, {what}"), actual, expected);
                }
            }
        }
    }
}
