//! Batch normalisation with what follows it in a residual network, an optional residual
//! addition and a ReLU: `relu(bn(x) + residual)`.
//!
//! On flex (float32 or float64) this runs as fused loops, in training one autodiff operation
//! with a hand-written backward pass (see [`backend`](crate::backend)): one pass for the channel
//! statistics, one that writes the output, and two in the backward pass; it keeps its input and
//! its output (which the next layer keeps anyway). Composed from burn's `BatchNorm` and tensor
//! operations, the same step takes about ten passes forward and as many backward, several of
//! them through flex's element-by-element path for the `[1, C, 1, 1]` broadcasts. Elsewhere,
//! burn's `BatchNorm`, the addition and the ReLU, which autodiff differentiates: the same values
//! to rounding.

use burn::nn::BatchNorm;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::backend::ops;
use crate::precision::{at_least_f32, is_half};

/// What follows a batch norm: an optional residual to add, then an optional ReLU.
#[derive(Debug, Clone)]
pub(crate) struct Epilogue<B: Backend> {
    /// Added to the normalised values, `[B, C, H, W]` like them.
    pub residual: Option<Tensor<B, 4>>,
    /// Whether a ReLU follows (after the residual).
    pub relu: bool,
}

/// `relu(bn(x) + residual)`, each part as `epilogue` asks; `bn` updates its running statistics
/// in training as burn's `BatchNorm::forward` does. Half-precision inputs normalise in float32,
/// the output cast back to their type.
pub(crate) fn batch_norm<B: Backend>(
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    epilogue: Epilogue<B>,
) -> Tensor<B, 4> {
    let dtype = x.dtype();
    if is_half(dtype) {
        let epilogue = Epilogue {
            residual: epilogue.residual.map(at_least_f32),
            relu: epilogue.relu,
        };
        return batch_norm(bn, at_least_f32(x), epilogue).cast(dtype);
    }
    (ops::<B>().batch_norm)(bn, x, epilogue)
}

impl<B: Backend> Epilogue<B> {
    /// Nothing after the batch norm.
    pub fn none() -> Self {
        Self {
            residual: None,
            relu: false,
        }
    }

    /// A ReLU after the batch norm.
    pub fn relu() -> Self {
        Self {
            residual: None,
            relu: true,
        }
    }

    /// The residual added, then a ReLU.
    pub fn residual_relu(residual: Tensor<B, 4>) -> Self {
        Self {
            residual: Some(residual),
            relu: true,
        }
    }

    /// `relu(y + residual)`, each part as asked: on flex in inference (a batch norm folded into
    /// its convolution) one parallel pass of fused loops, elsewhere [`compose`](Self::compose).
    pub fn apply(self, y: Tensor<B, 4>) -> Tensor<B, 4> {
        (ops::<B>().epilogue)(y, self)
    }

    /// `relu(y + residual)`, each part as asked, composed from tensor operations.
    pub fn compose(self, y: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = match self.residual {
            Some(residual) => y + residual,
            None => y,
        };
        if self.relu {
            relu(y)
        } else {
            y
        }
    }
}
