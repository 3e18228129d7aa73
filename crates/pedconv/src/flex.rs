//! flex's CPU storage as slices, for the fused loops of the factorized path
//! ([`paths`](crate::paths)) and of batch normalisation ([`norm`](crate::norm)): the element
//! types they are written for, reading a tensor's values, making a tensor of values, and the
//! vector loops they share.

use core::any::TypeId;
use core::ops::{Add, AddAssign, Mul, Sub};

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Element, ElementConversion, Tensor, TensorData, TensorPrimitive};

use crate::paths::cast;

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

/// Whether `B` is flex or `Autodiff` over it (either checkpointing strategy).
pub(crate) fn runs_on<B: Backend>() -> bool {
    let backend = TypeId::of::<B>();
    backend == TypeId::of::<Flex>()
        || backend == TypeId::of::<Autodiff<Flex>>()
        || backend == TypeId::of::<Autodiff<Flex, BalancedCheckpointing>>()
}

/// `tensor`'s contiguous storage on flex, when `B` is flex.
pub(crate) fn storage<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Option<FlexTensor> {
    let tensor = cast::<_, Tensor<Flex, D>>(tensor.clone())?
        .into_primitive()
        .tensor();
    Some(contiguous(tensor))
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

/// A `B` tensor of `values`, when `B` is flex.
pub(crate) fn tensor<B: Backend, T: Real, const D: usize>(
    values: Vec<T>,
    shape: [usize; D],
) -> Option<Tensor<B, D>> {
    let primitive = flex_tensor(values, &shape);
    cast(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(
        primitive,
    )))
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
