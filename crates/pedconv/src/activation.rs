//! The attention branch's sigmoid and ReLU: on each backend as the backend layer runs them
//! (one kernel launch each way on the CubeCL backends without fusion, see
//! [`backend`](crate::backend)), burn's own elsewhere.

use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::backend::ops;

/// An activation whose gradient is a function of its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `1 / (1 + e^-x)`, gradient `y·(1 − y)`.
    Sigmoid,
    /// `max(x, 0)`, gradient `1` where `y > 0`.
    Relu,
}

impl Activation {
    /// burn's own.
    pub fn compose<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Sigmoid => activation::sigmoid(x),
            Activation::Relu => activation::relu(x),
        }
    }

    /// The input's gradient from the output `y` and its gradient, composed.
    pub fn compose_backward<B: Backend, const D: usize>(
        self,
        y: Tensor<B, D>,
        grad: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self {
            Activation::Sigmoid => grad * y.clone() * (y.neg() + 1.0),
            Activation::Relu => grad.mask_fill(y.lower_equal_elem(0.0), 0.0),
        }
    }
}

/// The logistic sigmoid of `x`.
pub(crate) fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    apply(x, Activation::Sigmoid)
}

/// `max(x, 0)`.
pub(crate) fn relu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    apply(x, Activation::Relu)
}

/// `activation` of `x`, flattened for the backend layer.
fn apply<B: Backend, const D: usize>(x: Tensor<B, D>, activation: Activation) -> Tensor<B, D> {
    let dims = x.dims();
    (ops::<B>().activation)(x.reshape([dims.iter().product::<usize>()]), activation).reshape(dims)
}

/// The kernels on the GPU backend under test (wgpu or CUDA) against burn's own activations on
/// the same backend: values and gradients, float32,
/// through autodiff, on more elements than one cube holds. burn's sigmoid, `exp(-log(e^-x + 1))`,
/// rounds differently from `1 / (1 + e^-x)`: values in (0, 1) within 1e-6 (about 16 ulps of
/// 1), gradients within 1e-6 of the largest; ReLU is exact.
#[cfg(all(test, feature = "cube"))]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    use super::*;
    use crate::backend::PedConvBackend;
    use crate::testing::GpuBackend;

    type B = Autodiff<GpuBackend>;

    #[test]
    fn kernels_equal_burns_activations_with_their_gradients_on_the_gpu() {
        assert!(GpuBackend::activation_kernels(), "the kernels run");
        assert!(
            crate::backend::BackendClass::of::<B>().columns_native(),
            "the bridge finds autodiff over the backend"
        );
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
