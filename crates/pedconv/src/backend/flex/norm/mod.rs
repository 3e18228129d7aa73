//! [`batch_norm`](super::batch_norm) on flex, as fused loops over flex's storage, parallel over
//! channels for the statistics and over `H·W` planes for everything element-wise: in training
//! one autodiff operation, in inference (and for the epilogue of a folded batch norm) one pass.
//!
//! With `x̂ = (x − μ_c)·s_c`, `s_c = 1/√(σ²_c + ε)` (batch statistics, biased variance, as burn's
//! `BatchNorm`) and `g = ∂L/∂y` masked by the ReLU (`y > 0`), over the `M = N·H·W` values of a
//! channel:
//!
//! ```text
//! y      = relu(γ_c·x̂ + β_c + r)
//! ∂L/∂β  = Σ g            ∂L/∂γ = Σ g·x̂            ∂L/∂r = g
//! ∂L/∂x  = γ_c·s_c·(g − (Σ g)/M − x̂·(Σ g·x̂)/M)
//! ```

use core::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::BatchNorm;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::{contiguous, flex_tensor, real, storage, sum_of, Real};
use crate::norm::Epilogue;

type Ad<C> = Autodiff<Flex, C>;

/// A flex tensor of `output`.
fn from_flex(output: FlexTensor) -> Tensor<Flex, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// Inference: `relu(bn(x) + residual)` normalised by the running statistics, in one pass;
/// `None` unless every operand holds float32, or every one float64.
pub(super) fn inference(
    bn: &BatchNorm<Flex>,
    x: &Tensor<Flex, 4>,
    epilogue: &Epilogue<Flex>,
) -> Option<Tensor<Flex, 4>> {
    let inputs = Inputs::new(
        storage(x),
        epilogue.residual.as_ref().map(storage),
        epilogue.relu,
    )?;
    let [gamma, beta, mean, variance] = [
        bn.gamma.val(),
        bn.beta.val(),
        bn.running_mean.value(),
        bn.running_var.value(),
    ]
    .map(|tensor| storage(&tensor));
    let statistics = [&gamma, &beta, &mean, &variance];
    let output = inputs
        .running::<f32>(statistics, bn.epsilon)
        .or_else(|| inputs.running::<f64>(statistics, bn.epsilon))?;
    Some(from_flex(output))
}

/// The epilogue alone, `relu(y + residual)` (inference, the batch norm folded into the
/// convolution): one parallel pass, where burn's addition and ReLU are one single-threaded pass
/// each. `None` where there is nothing to do.
pub(super) fn epilogue(y: &Tensor<Flex, 4>, epilogue: &Epilogue<Flex>) -> Option<Tensor<Flex, 4>> {
    if epilogue.residual.is_none() && !epilogue.relu {
        return None;
    }
    let inputs = Inputs::new(
        storage(y),
        epilogue.residual.as_ref().map(storage),
        epilogue.relu,
    )?;
    Some(from_flex(
        inputs
            .identity::<f32>()
            .or_else(|| inputs.identity::<f64>())?,
    ))
}

/// Training on `Autodiff<Flex, C>`: normalised by the batch statistics, which update the
/// running ones, as one autodiff operation.
pub(super) fn training<C: CheckpointStrategy>(
    bn: &BatchNorm<Ad<C>>,
    x: &Tensor<Ad<C>, 4>,
    epilogue: &Epilogue<Ad<C>>,
) -> Option<Tensor<Ad<C>, 4>> {
    tracked::<C, f32>(bn, x, epilogue).or_else(|| tracked::<C, f64>(bn, x, epilogue))
}

/// [`training`] for `T` operands; `None` unless every operand holds `T`s.
fn tracked<C: CheckpointStrategy, T: Real>(
    bn: &BatchNorm<Ad<C>>,
    x: &Tensor<Ad<C>, 4>,
    epilogue: &Epilogue<Ad<C>>,
) -> Option<Tensor<Ad<C>, 4>> {
    let x = x.clone().into_primitive().tensor();
    let gamma = bn.gamma.val().into_primitive().tensor();
    let beta = bn.beta.val().into_primitive().tensor();
    let residual = epilogue
        .residual
        .clone()
        .map(|r| r.into_primitive().tensor());
    let inputs = Inputs::new(
        contiguous(x.primitive.clone()),
        residual.as_ref().map(|r| contiguous(r.primitive.clone())),
        epilogue.relu,
    )?;
    let gamma_values = contiguous(gamma.primitive.clone());
    let beta_values = contiguous(beta.primitive.clone());
    let (gamma_slice, beta_slice) = (gamma_values.as_slice::<T>()?, beta_values.as_slice::<T>()?);
    let statistics = Statistics::<T>::of(inputs.x.as_slice()?, inputs.shape(), bn.epsilon);
    let affine = affine(
        gamma_slice,
        beta_slice,
        &statistics.mean,
        &statistics.inverse_std,
    );
    let output = inputs.normalise(&affine)?;
    update_running_statistics(bn, &statistics);
    let state = NormState {
        x: inputs.x.clone(),
        output: output.clone(),
        gamma: gamma_values,
        mean: statistics.mean,
        inverse_std: statistics.inverse_std,
        relu: epilogue.relu,
        shape: inputs.shape(),
        dims: inputs.dims,
    };
    let tensor = match residual {
        None => finish::<C, T, 3>([x, gamma, beta], state, output),
        Some(residual) => finish::<C, T, 4>([x, gamma, beta, residual], state, output),
    };
    Some(Tensor::from_primitive(TensorPrimitive::Float(tensor)))
}

/// `output` as the result of the operation on `parents` (`x`, `γ`, `β` and the residual).
fn finish<C: CheckpointStrategy, T: Real, const N: usize>(
    parents: [FloatTensor<Ad<C>>; N],
    state: NormState<T>,
    output: FlexTensor,
) -> FloatTensor<Ad<C>> {
    let nodes = parents.map(|parent| parent.node);
    match NormBackward::<T>(PhantomData)
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// The input, the residual and the ReLU, contiguous.
struct Inputs {
    x: FlexTensor,
    residual: Option<FlexTensor>,
    relu: bool,
    /// `[N, C, H, W]`.
    dims: [usize; 4],
}

impl Inputs {
    /// The operands, when the residual has x's shape and element type.
    fn new(x: FlexTensor, residual: Option<FlexTensor>, relu: bool) -> Option<Self> {
        let dims: [usize; 4] = x.layout().shape().as_slice().try_into().ok()?;
        let matches = residual
            .as_ref()
            .is_none_or(|r| r.dtype() == x.dtype() && r.layout().shape().as_slice() == dims);
        matches.then_some(Self {
            x,
            residual,
            relu,
            dims,
        })
    }

    fn shape(&self) -> Shape {
        let [batch, channels, height, width] = self.dims;
        Shape {
            batch,
            channels,
            plane: height * width,
        }
    }

    /// `relu(x·scale + shift + r)` with each channel's `(scale, shift)`, when the operands
    /// hold `T`s.
    fn normalise<T: Real>(&self, affine: &[(T, T)]) -> Option<FlexTensor> {
        let residual = match &self.residual {
            Some(residual) => Some(residual.as_slice()?),
            None => None,
        };
        let output = normalise(
            self.x.as_slice()?,
            affine,
            residual,
            self.relu,
            self.shape(),
        );
        Some(flex_tensor(output, &self.dims))
    }

    /// Normalised by a batch norm's `γ`, `β` and running mean and variance.
    fn running<T: Real>(
        &self,
        [gamma, beta, mean, variance]: [&FlexTensor; 4],
        epsilon: f64,
    ) -> Option<FlexTensor> {
        let inverse_std: Vec<T> = variance
            .as_slice::<T>()?
            .iter()
            .map(|&v| real(1.0 / (v.elem::<f64>() + epsilon).sqrt()))
            .collect();
        let affine = affine(
            gamma.as_slice()?,
            beta.as_slice()?,
            mean.as_slice()?,
            &inverse_std,
        );
        self.normalise(&affine)
    }

    /// The epilogue alone: scale one, shift zero.
    fn identity<T: Real>(&self) -> Option<FlexTensor> {
        self.normalise(&vec![(T::ONE, T::default()); self.dims[1]])
    }
}

/// Each channel's `(scale, shift)` with which `γ·x̂ + β = x·scale + shift`:
/// `scale = γ·s`, `shift = β − μ·scale`.
fn affine<T: Real>(gamma: &[T], beta: &[T], mean: &[T], inverse_std: &[T]) -> Vec<(T, T)> {
    gamma
        .iter()
        .zip(beta)
        .zip(mean.iter().zip(inverse_std))
        .map(|((&gamma, &beta), (&mean, &inverse_std))| {
            let scale = gamma * inverse_std;
            (scale, beta - mean * scale)
        })
        .collect()
}

/// `running ← (1 − momentum)·running + momentum·batch`, for the mean and the (biased) variance,
/// with burn's `BatchNorm` operations in burn's order.
fn update_running_statistics<C: CheckpointStrategy, T: Real>(
    bn: &BatchNorm<Ad<C>>,
    statistics: &Statistics<T>,
) {
    let momentum = bn.momentum;
    let tensor = |values: &[T]| {
        let inner = flex_tensor(values.to_vec(), &[values.len()]);
        Tensor::<Ad<C>, 1>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(inner)))
    };
    let running_mean = bn
        .running_mean
        .value_sync()
        .mul_scalar(1.0 - momentum)
        .add(tensor(&statistics.mean).mul_scalar(momentum));
    let running_var = bn
        .running_var
        .value_sync()
        .mul_scalar(1.0 - momentum)
        .add(tensor(&statistics.variance).mul_scalar(momentum));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}

/// The sizes of a `[N, C, H, W]` input.
#[derive(Debug, Clone, Copy)]
struct Shape {
    batch: usize,
    channels: usize,
    /// `H·W`.
    plane: usize,
}

impl Shape {
    /// The values of one channel, `N·H·W`.
    fn per_channel(&self) -> usize {
        self.batch * self.plane
    }

    /// Channel `c`'s planes of `values`, one per sample.
    fn planes<'v, T>(&self, values: &'v [T], c: usize) -> impl Iterator<Item = &'v [T]> + 'v {
        let (channels, plane) = (self.channels, self.plane);
        (0..self.batch).map(move |n| &values[(n * channels + c) * plane..][..plane])
    }
}

/// The batch statistics of each channel.
struct Statistics<T> {
    mean: Vec<T>,
    /// Biased (divided by `M`), as burn's `BatchNorm` keeps it.
    variance: Vec<T>,
    /// `1/√(σ² + ε)`.
    inverse_std: Vec<T>,
}

impl<T: Real> Statistics<T> {
    /// Mean and variance in two passes over each channel, each plane's sums carried in float64.
    fn of(x: &[T], shape: Shape, epsilon: f64) -> Self {
        let count = shape.per_channel() as f64;
        let per_channel: Vec<(T, T, T)> = (0..shape.channels)
            .into_par_iter()
            .map(|c| {
                let sum: f64 = shape
                    .planes(x, c)
                    .map(|plane| sum_of(plane, plane, |v, _| v).elem::<f64>())
                    .sum();
                let mean = real::<T>(sum / count);
                let squares: f64 = shape
                    .planes(x, c)
                    .map(|plane| sum_of(plane, plane, |v, _| (v - mean) * (v - mean)).elem::<f64>())
                    .sum();
                let variance = squares / count;
                (
                    mean,
                    real(variance),
                    real(1.0 / (variance + epsilon).sqrt()),
                )
            })
            .collect();
        let mut statistics = Self {
            mean: Vec::with_capacity(shape.channels),
            variance: Vec::with_capacity(shape.channels),
            inverse_std: Vec::with_capacity(shape.channels),
        };
        for (mean, variance, inverse_std) in per_channel {
            statistics.mean.push(mean);
            statistics.variance.push(variance);
            statistics.inverse_std.push(inverse_std);
        }
        statistics
    }
}

/// `relu(x·scale + shift + r)`, each channel with its `(scale, shift)`, plane by plane in
/// parallel.
fn normalise<T: Real>(
    x: &[T],
    affine: &[(T, T)],
    residual: Option<&[T]>,
    relu: bool,
    shape: Shape,
) -> Vec<T> {
    let mut output = vec![T::default(); x.len()];
    output
        .par_chunks_mut(shape.plane)
        .zip(x.par_chunks(shape.plane))
        .enumerate()
        .for_each(|(index, (out, x))| {
            let (scale, shift) = affine[index % shape.channels];
            for (y, &x) in out.iter_mut().zip(x) {
                *y = x * scale + shift;
            }
            if let Some(residual) = residual {
                for (y, &r) in out.iter_mut().zip(&residual[index * shape.plane..]) {
                    *y += r;
                }
            }
            if relu {
                for y in out.iter_mut() {
                    *y = rectify(*y);
                }
            }
        });
    output
}

/// `max(v, 0)`, NaN kept, as burn's ReLU.
fn rectify<T: Real>(v: T) -> T {
    if v <= T::default() {
        T::default()
    } else {
        v
    }
}

/// What the backward pass needs: the input, the output (for the ReLU's mask), `γ`, and the
/// batch statistics.
#[derive(Debug, Clone)]
struct NormState<T> {
    x: FlexTensor,
    output: FlexTensor,
    gamma: FlexTensor,
    mean: Vec<T>,
    inverse_std: Vec<T>,
    relu: bool,
    shape: Shape,
    /// `[N, C, H, W]`.
    dims: [usize; 4],
}

#[derive(Debug)]
struct NormBackward<T>(PhantomData<T>);

impl<T: Real, const N: usize> Backward<Flex, N> for NormBackward<T> {
    type State = NormState<T>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let upstream = contiguous(grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let shape = state.shape;
        let upstream_values: &[T] = upstream.storage();
        // g: the upstream gradient through the ReLU's mask (itself without a ReLU).
        let masked = state.relu.then(|| {
            let mut masked = upstream_values.to_vec();
            masked
                .par_chunks_mut(shape.plane)
                .zip(state.output.storage::<T>().par_chunks(shape.plane))
                .for_each(|(g, y)| {
                    for (g, &y) in g.iter_mut().zip(y) {
                        if y <= T::default() {
                            *g = T::default();
                        }
                    }
                });
            flex_tensor(masked, &state.dims)
        });
        let g_tensor = masked.unwrap_or(upstream);
        let g: &[T] = g_tensor.storage();
        let x: &[T] = state.x.storage();
        let gamma: &[T] = state.gamma.storage();
        // Σ g and Σ g·(x − μ) per channel.
        let sums: Vec<(T, T)> = (0..shape.channels)
            .into_par_iter()
            .map(|c| {
                let mean = state.mean[c];
                let (mut sum, mut centred) = (0.0f64, 0.0f64);
                for (g, x) in shape.planes(g, c).zip(shape.planes(x, c)) {
                    sum += sum_of(g, g, |g, _| g).elem::<f64>();
                    centred += sum_of(g, x, |g, x| g * (x - mean)).elem::<f64>();
                }
                (real(sum), real(centred))
            })
            .collect();
        let inverse_count = real::<T>(1.0 / shape.per_channel() as f64);
        let mut grad_x = vec![T::default(); x.len()];
        grad_x
            .par_chunks_mut(shape.plane)
            .zip(g.par_chunks(shape.plane).zip(x.par_chunks(shape.plane)))
            .enumerate()
            .for_each(|(index, (dx, (g, x)))| {
                let c = index % shape.channels;
                let (sum, centred) = sums[c];
                let inverse_std = state.inverse_std[c];
                // ∂L/∂x = a·g + b·x + d, expanded from the formula above.
                let a = gamma[c] * inverse_std;
                let b = T::default() - a * inverse_std * inverse_std * centred * inverse_count;
                let d = T::default() - a * sum * inverse_count - b * state.mean[c];
                for ((dx, &g), &x) in dx.iter_mut().zip(g).zip(x) {
                    *dx = a * g + b * x + d;
                }
            });
        let grad_gamma: Vec<T> = sums
            .iter()
            .zip(&state.inverse_std)
            .map(|(&(_, centred), &s)| centred * s)
            .collect();
        let grad_beta: Vec<T> = sums.iter().map(|&(sum, _)| sum).collect();
        let channels = [shape.channels];
        let [x_node, gamma_node, beta_node] = [0, 1, 2].map(|i| ops.parents[i].clone());
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_x, &state.dims));
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_gamma, &channels));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_beta, &channels));
        }
        if let Some(Some(node)) = ops.parents.get(3) {
            grads.register::<Flex>(node.id, g_tensor);
        }
    }
}

#[cfg(test)]
mod tests;
