//! The attention branch's sigmoid and ReLU, one kernel launch each way on the CubeCL backends.
//!
//! Without burn's `fusion`, burn 0.21's CubeCL backends compose a sigmoid from six elementwise
//! kernels (`exp(-log(exp(-x) + 1))`: three functions, two negations, an addition) and
//! differentiate it by computing it again and then four more; a ReLU is two kernels each way. The attention branch
//! of every PEDConv layer runs three sigmoids and two ReLUs on tensors of a few hundred values,
//! where each launch costs far more than its arithmetic: as a kernel each way (the backward
//! pass reading the kept output), they run in 10 launches per layer instead of 56. Every other
//! backend, and every other use, takes burn's own activations.

use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// An activation whose gradient is a function of its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `1 / (1 + e^-x)`, gradient `y·(1 − y)`.
    Sigmoid,
    /// `max(x, 0)`, gradient `1` where `y > 0`.
    Relu,
}

/// The logistic sigmoid of `x`.
pub(crate) fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    apply(x, Activation::Sigmoid)
}

/// `max(x, 0)`.
pub(crate) fn relu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    apply(x, Activation::Relu)
}

fn apply<B: Backend, const D: usize>(x: Tensor<B, D>, activation: Activation) -> Tensor<B, D> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(y) = cube::apply(&x, activation) {
        return y;
    }
    match activation {
        Activation::Sigmoid => activation::sigmoid(x),
        Activation::Relu => activation::relu(x),
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::{
        BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
    };
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::Autodiff;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeRuntime;

    use kernels::{backward_kernel, forward_kernel};

    use super::Activation;
    use crate::cube::{empty, grid, CubeLike};
    use crate::paths::cast;

    /// The kernels (CubeCL's `Tensor`, apart from burn's).
    mod kernels {
        use cubecl::prelude::*;

        /// `y = σ(x)` or `max(x, 0)`, in float32 whatever the element type; one thread per element.
        #[cube(launch)]
        pub(super) fn forward_kernel<F: Float>(
            x: &Tensor<F>,
            y: &mut Tensor<F>,
            #[comptime] sigmoid: bool,
            #[define(F)] _dtype: StorageType,
        ) {
            if ABSOLUTE_POS >= y.len() {
                terminate!();
            }
            let value = f32::cast_from(x[ABSOLUTE_POS]);
            let mut result = value;
            if sigmoid {
                result = f32::new(1.0) / (f32::new(1.0) + Exp::exp(-value));
            } else if value <= f32::new(0.0) {
                result = f32::new(0.0);
            }
            y[ABSOLUTE_POS] = F::cast_from(result);
        }

        /// The input's gradient from the output `y` and its gradient `g`: `g·y·(1 − y)` or
        /// `g` where `y > 0`; one thread per element.
        #[cube(launch)]
        pub(super) fn backward_kernel<F: Float>(
            y: &Tensor<F>,
            grad: &Tensor<F>,
            grad_x: &mut Tensor<F>,
            #[comptime] sigmoid: bool,
            #[define(F)] _dtype: StorageType,
        ) {
            if ABSOLUTE_POS >= grad_x.len() {
                terminate!();
            }
            let output = f32::cast_from(y[ABSOLUTE_POS]);
            let mut result = f32::cast_from(grad[ABSOLUTE_POS]);
            if sigmoid {
                result *= output * (f32::new(1.0) - output);
            } else if output <= f32::new(0.0) {
                result = f32::new(0.0);
            }
            grad_x[ABSOLUTE_POS] = F::cast_from(result);
        }
    }

    /// The activation on a CubeCL backend, or with its own backward pass on autodiff over one,
    /// when `B` is wgpu or CUDA (inference or training, either checkpointing strategy of burn);
    /// `None` otherwise.
    pub(super) fn apply<B: Backend, const D: usize>(
        x: &Tensor<B, D>,
        activation: Activation,
    ) -> Option<Tensor<B, D>> {
        #[cfg(feature = "wgpu")]
        if let Some(y) = on_runtime::<B, burn::backend::Wgpu, D>(x, activation) {
            return Some(y);
        }
        #[cfg(feature = "cuda")]
        if let Some(y) = on_runtime::<B, burn::backend::Cuda, D>(x, activation) {
            return Some(y);
        }
        None
    }

    /// [`apply`] on the CubeCL backend `C`: `B` is `C`, or autodiff over it.
    fn on_runtime<B, C, const D: usize>(
        x: &Tensor<B, D>,
        activation: Activation,
    ) -> Option<Tensor<B, D>>
    where
        B: Backend,
        C: CubeLike,
    {
        if let Some(x) = cast::<_, Tensor<C, D>>(x.clone()) {
            return cast(Tensor::<C, D>::from_primitive(TensorPrimitive::Float(
                launch_forward(x.into_primitive().tensor(), activation),
            )));
        }
        if let Some(x) = cast::<_, Tensor<Autodiff<C, NoCheckpointing>, D>>(x.clone()) {
            return cast(tracked(x, activation));
        }
        if let Some(x) = cast::<_, Tensor<Autodiff<C, BalancedCheckpointing>, D>>(x.clone()) {
            return cast(tracked(x, activation));
        }
        None
    }

    /// The activation as one autodiff operation that keeps its output for the backward pass.
    fn tracked<C: CubeLike, S: CheckpointStrategy, const D: usize>(
        x: Tensor<Autodiff<C, S>, D>,
        activation: Activation,
    ) -> Tensor<Autodiff<C, S>, D> {
        let x = x.into_primitive().tensor();
        let y = launch_forward(x.primitive.clone(), activation);
        let y = match ActivationBackward(activation)
            .prepare::<S>([x.node])
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

    impl<C: CubeLike> Backward<C, 1> for ActivationBackward {
        type State = CubeTensor<C::Runtime>;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<C>(&ops.node);
            let [parent] = ops.parents;
            if let Some(parent) = parent {
                grads.register::<C>(parent.id, launch_backward(ops.state, grad, self.0));
            }
        }
    }

    fn launch_forward<R: CubeRuntime>(x: CubeTensor<R>, activation: Activation) -> CubeTensor<R> {
        let x = into_contiguous(x);
        let (count, dim) = grid(&x.client, x.shape().num_elements());
        let y = empty(&x, x.shape());
        forward_kernel::launch::<R>(
            &x.client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            y.clone().into_tensor_arg(),
            activation == Activation::Sigmoid,
            x.dtype.into(),
        );
        y
    }

    fn launch_backward<R: CubeRuntime>(
        y: CubeTensor<R>,
        grad: CubeTensor<R>,
        activation: Activation,
    ) -> CubeTensor<R> {
        let grad = into_contiguous(grad);
        let (count, dim) = grid(&grad.client, grad.shape().num_elements());
        let grad_x = empty(&grad, grad.shape());
        backward_kernel::launch::<R>(
            &grad.client,
            count,
            dim,
            y.into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            grad_x.clone().into_tensor_arg(),
            activation == Activation::Sigmoid,
            grad.dtype.into(),
        );
        grad_x
    }
}

/// The kernels on the GPU backend under test (wgpu or CUDA) against burn's own activations on
/// the same backend: values and gradients, float32,
/// through autodiff, on more elements than one cube holds. burn's sigmoid, `exp(-log(e^-x + 1))`,
/// rounds differently from `1 / (1 + e^-x)`: values in (0, 1) within 1e-6 (about 16 ulps of
/// 1), gradients within 1e-6 of the largest; ReLU is exact.
#[cfg(all(test, any(feature = "test-wgpu", feature = "test-cuda")))]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    use super::*;
    use crate::testing::GpuBackend;

    type B = Autodiff<GpuBackend>;

    #[test]
    fn the_cubecl_backends_take_the_kernels() {
        let x = Tensor::<B, 2>::zeros([2, 3], &Default::default());
        assert!(cube::apply(&x, Activation::Sigmoid).is_some());
        assert!(cube::apply(&x.inner(), Activation::Relu).is_some());
        let x = Tensor::<burn::backend::Flex, 2>::zeros([2, 3], &Default::default());
        assert!(cube::apply(&x, Activation::Sigmoid).is_none());
    }

    #[test]
    fn kernels_equal_burns_activations_with_their_gradients() {
        let device = Default::default();
        let draw = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 4.0), &device).into_data()
        };
        let (x, probe) = (draw([37, 301]), draw([37, 301]));
        let run = |activation: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>| -> [TensorData; 2] {
            let x = Tensor::<B, 2>::from_data(x.clone(), &device).require_grad();
            let y = activation(x.clone());
            let grads = (y.clone() * Tensor::from_data(probe.clone(), &device))
                .sum()
                .backward();
            let grad = x.grad(&grads).expect("the input's gradient");
            [y.into_data(), grad.into_data()]
        };
        let tolerance = Tolerance::absolute(1e-6);
        let [y, grad] = run(&sigmoid);
        let [expected_y, expected_grad] = run(&activation::sigmoid);
        y.assert_approx_eq::<f32>(&expected_y, tolerance);
        let scale = expected_grad
            .iter::<f32>()
            .fold(0f32, |m, v| m.max(v.abs()));
        grad.assert_approx_eq::<f32>(&expected_grad, Tolerance::absolute(1e-6 * scale));

        let [y, grad] = run(&relu);
        let [expected_y, expected_grad] = run(&activation::relu);
        y.assert_eq(&expected_y, true);
        grad.assert_eq(&expected_grad, true);
    }
}
