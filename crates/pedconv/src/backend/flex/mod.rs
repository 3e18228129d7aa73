//! [`PedConvBackend`] for flex, burn's CPU backend: fused loops over flex's storage for the
//! factorized path ([`columns`]), batch norms with their residual and ReLU ([`norm`]) and
//! max-pooling ([`pool`]), float32 and float64 (other float types take the composition); and
//! what those loops share: the element types they are written for, reading a tensor's values,
//! making a tensor of values, and the vector loops.

mod columns;
mod norm;
mod pool;

use core::ops::{Add, AddAssign, Mul, Sub};

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::pool::MaxPool2d;
use burn::nn::BatchNorm;
use burn::tensor::{Element, ElementConversion, Tensor, TensorData, TensorPrimitive};

use super::{BackendClass, PedConvBackend};
use crate::norm::Epilogue;
use crate::paths::columns::ColumnsForward;
use crate::paths::{ConvLayout, Needed, OperandGradients, Operands};

impl PedConvBackend for Flex {
    fn class() -> BackendClass {
        BackendClass::Flex
    }

    fn columns_forward(
        operands: &Operands<Self>,
        layout: &ConvLayout,
        keep: bool,
    ) -> ColumnsForward<Self> {
        columns::forward(operands, layout, keep)
            .unwrap_or_else(|| crate::paths::columns::forward(operands, layout, keep))
    }

    fn columns_backward(
        operands: Operands<Self>,
        per_term: Option<Tensor<Self, 4>>,
        layout: &ConvLayout,
        grad: Tensor<Self, 4>,
        needed: Needed,
    ) -> OperandGradients<Self> {
        columns::backward(&operands, per_term.as_ref(), layout, &grad).unwrap_or_else(|| {
            crate::paths::columns::backward(operands, per_term, layout, grad, needed)
        })
    }

    fn batch_norm(
        bn: &BatchNorm<Self>,
        x: Tensor<Self, 4>,
        epilogue: Epilogue<Self>,
    ) -> Tensor<Self, 4> {
        norm::inference(bn, &x, &epilogue).unwrap_or_else(|| epilogue.compose(bn.forward(x)))
    }

    fn epilogue(y: Tensor<Self, 4>, epilogue: Epilogue<Self>) -> Tensor<Self, 4> {
        norm::epilogue(&y, &epilogue).unwrap_or_else(|| epilogue.compose(y))
    }

    fn max_pool(pool: &MaxPool2d, x: Tensor<Self, 4>) -> Tensor<Self, 4> {
        pool::inference(pool, &x).unwrap_or_else(|| pool.forward(x))
    }

    fn tracked_batch_norm<C: CheckpointStrategy>(
        bn: &BatchNorm<Autodiff<Self, C>>,
        x: Tensor<Autodiff<Self, C>, 4>,
        epilogue: Epilogue<Autodiff<Self, C>>,
    ) -> Tensor<Autodiff<Self, C>, 4> {
        norm::training(bn, &x, &epilogue).unwrap_or_else(|| epilogue.compose(bn.forward(x)))
    }

    fn tracked_max_pool<C: CheckpointStrategy>(
        pool: &MaxPool2d,
        x: Tensor<Autodiff<Self, C>, 4>,
    ) -> Tensor<Autodiff<Self, C>, 4> {
        pool::training(pool, &x).unwrap_or_else(|| pool.forward(x))
    }
}

/// The element types the loops are written for: float32 and float64.
pub(crate) trait Real:
    Element
    + bytemuck::Pod
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + AddAssign
    + PartialOrd
{
    const ONE: Self;
}

impl Real for f32 {
    const ONE: Self = 1.0;
}

impl Real for f64 {
    const ONE: Self = 1.0;
}

/// `value` as a `T`.
pub(crate) fn real<T: Real>(value: f64) -> T {
    value.elem()
}

/// `tensor`'s contiguous storage.
pub(crate) fn storage<const D: usize>(tensor: &Tensor<Flex, D>) -> FlexTensor {
    contiguous(tensor.clone().into_primitive().tensor())
}

/// `tensor`, laid out contiguously.
pub(crate) fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.is_contiguous() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// A flex tensor of `values`.
pub(crate) fn flex_tensor<T: Real>(values: Vec<T>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// A tensor of `values`.
pub(crate) fn tensor<T: Real, const D: usize>(
    values: Vec<T>,
    shape: [usize; D],
) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(flex_tensor(values, &shape)))
}

/// Lanes of the unrolled loops: independent partial sums that the compiler keeps in one
/// vector register.
pub(crate) const LANES: usize = 8;

/// `Σ f(a, b)` over the common length, in [`LANES`] partial sums.
pub(crate) fn sum_of<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [T::default(); LANES];
    for (a, b) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for lane in 0..LANES {
            lanes[lane] += f(a[lane], b[lane]);
        }
    }
    let tail = n - n % LANES;
    let mut sum = lanes.into_iter().fold(T::default(), |s, v| s + v);
    for (&a, &b) in a[tail..].iter().zip(&b[tail..]) {
        sum += f(a, b);
    }
    sum
}

/// `Σ a·b` over the common length.
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    sum_of(a, b, |a, b| a * b)
}
