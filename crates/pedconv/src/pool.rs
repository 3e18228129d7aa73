//! Max-pooling: burn's `MaxPool2d`, and on flex (float32 and float64) fused loops (see
//! [`backend`](crate::backend)):
//! one parallel pass over the planes that keeps the index of each window's maximum as a `u32`
//! (burn keeps an `i64` tensor) and, in training, one autodiff operation whose backward pass
//! adds each output's gradient onto that input. burn's flex runs its three-dimensional pooling
//! for this, with a bounds check per tap.

use burn::nn::pool::MaxPool2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::backend::ops;

/// `pool(x)`, through the fused loops where they run.
pub(crate) fn max_pool<B: Backend>(pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    (ops::<B>().max_pool)(pool, x)
}
