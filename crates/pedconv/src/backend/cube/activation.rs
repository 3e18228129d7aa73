//! The attention branch's sigmoid and ReLU as one kernel launch each way.
//!
//! Without fusion, burn 0.21's CubeCL backends compose a sigmoid from six element-wise kernels
//! (`exp(-log(exp(-x) + 1))`) and differentiate it by computing it again and then four more; a
//! ReLU is two kernels each way. The attention branch of every PEDConv layer runs three
//! sigmoids and two ReLUs on tensors of a few hundred values, where each launch costs far more
//! than its arithmetic: as one kernel each way (the backward pass reading the kept output),
//! they take 10 launches per layer instead of 56.

use burn::tensor::TensorMetadata;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{empty, grid, wrap};
use crate::activation::Activation;

/// `y = σ(x)` or `max(x, 0)`, in float32 whatever the element type; one thread per element.
#[cube(launch)]
fn forward_kernel<F: Float>(
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

/// The input's gradient from the output `y` and its gradient `g`: `g·y·(1 − y)` or `g` where
/// `y > 0`; one thread per element.
#[cube(launch)]
fn backward_kernel<F: Float>(
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

/// The activation of `x`.
pub(super) fn forward<R, F, I, BT>(
    x: burn::tensor::Tensor<CubeBackend<R, F, I, BT>, 1>,
    activation: Activation,
) -> burn::tensor::Tensor<CubeBackend<R, F, I, BT>, 1>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let x = into_contiguous(x.into_primitive().tensor());
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
    wrap(y)
}

/// The input's gradient from the output `y` and its gradient.
pub(super) fn backward<R, F, I, BT>(
    y: burn::tensor::Tensor<CubeBackend<R, F, I, BT>, 1>,
    grad: burn::tensor::Tensor<CubeBackend<R, F, I, BT>, 1>,
    activation: Activation,
) -> burn::tensor::Tensor<CubeBackend<R, F, I, BT>, 1>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let y = into_contiguous(y.into_primitive().tensor());
    let grad = into_contiguous(grad.into_primitive().tensor());
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
    wrap(grad_x)
}
