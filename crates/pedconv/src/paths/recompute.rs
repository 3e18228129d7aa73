//! The compute paths as autodiff operations with hand-written backward passes
//! ([`Formulation::backward`]): each keeps its operands (the layer input, which the previous
//! layer keeps anyway, the small factors and the weight), and the columns formulation one
//! output-sized tensor more, and recomputes its large intermediates in the backward pass.
//! Derived by autodiff, the same computations keep them: two column-sized tensors (`2·kh·kw`
//! times the input) per layer for the columns, the kernels and the modulation (each
//! `B·out·in/g·kh·kw`) for the per-sample kernels.
//!
//! `PedConv2d` is generic over any [`Backend`]; these operations exist for burn's `Autodiff`
//! over the backends enabled by this crate's features (`flex`, `ndarray`, `wgpu`, `cuda`), with
//! or without burn's balanced checkpointing. [`forward`] recognises those backend types at run
//! time and answers `None` for any other, where autodiff differentiates the composition itself
//! (the same values, more memory).

use core::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{cast, float_tensor, Formulation, Needed, Operands};
use crate::attention::AttentionFactors;

/// The output of `formulation` through its memory-saving operation, when `B` is one of the
/// autodiff backends it is built for; `None` otherwise.
pub(crate) fn forward<B: Backend>(
    formulation: &Formulation,
    operands: &Operands<B>,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    if let Some(output) = on_inner::<B, burn::backend::Flex>(formulation, operands) {
        return Some(output);
    }
    #[cfg(feature = "ndarray")]
    if let Some(output) = on_inner::<B, burn::backend::NdArray>(formulation, operands) {
        return Some(output);
    }
    #[cfg(feature = "wgpu")]
    if let Some(output) = on_inner::<B, burn::backend::Wgpu>(formulation, operands) {
        return Some(output);
    }
    #[cfg(feature = "cuda")]
    if let Some(output) = on_inner::<B, burn::backend::Cuda>(formulation, operands) {
        return Some(output);
    }
    let _ = (formulation, operands);
    None
}

/// [`forward`] for `B = Autodiff<I, C>` with either checkpointing strategy of burn.
#[allow(dead_code)] // unused when no backend feature is enabled
fn on_inner<B: Backend, I: Backend>(
    formulation: &Formulation,
    operands: &Operands<B>,
) -> Option<Tensor<B, 4>> {
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
    on_autodiff::<B, I, NoCheckpointing>(formulation, operands)
        .or_else(|| on_autodiff::<B, I, BalancedCheckpointing>(formulation, operands))
}

#[allow(dead_code)] // unused when no backend feature is enabled
fn on_autodiff<B: Backend, I: Backend, C: CheckpointStrategy>(
    formulation: &Formulation,
    operands: &Operands<B>,
) -> Option<Tensor<B, 4>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<I, C>>() {
        return None;
    }
    let operands = cast::<_, Operands<Autodiff<I, C>>>(operands.clone())?;
    cast(tracked_forward::<I, C>(formulation, operands))
}

/// The forward on the inner backend, registered in the autodiff graph with [`RecomputeBackward`].
pub(crate) fn tracked_forward<I: Backend, C: CheckpointStrategy>(
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
    let (result, kept) = formulation.forward(&inner, keep);
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

impl<I: Backend> Backward<I, 5> for RecomputeBackward {
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
        let gradients = state
            .formulation
            .backward(state.operands, state.kept, grad, needed);
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
            let mut formulations = vec![Formulation::columns::<Flex>(layout)];
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
                let expected = evaluate(formulation.forward(&operands, false).0);
                let actual = evaluate(tracked_forward(&formulation, operands.clone()));
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
