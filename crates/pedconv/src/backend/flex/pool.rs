//! [`max_pool`](super::max_pool) on flex: for a window of explicit symmetric padding, without
//! ceil mode, on float32 or float64 input. The first maximum of a window in row-major order wins,
//! as in burn's flex.

use core::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::pool::MaxPool2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::{contiguous, flex_tensor, storage, Real};

/// The pooling `pool` applies to an `[N, C, H, W]` input.
#[derive(Debug, Clone, Copy)]
struct Window {
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    /// `[N·C, H, W]` in, `[Ho, Wo]` out.
    planes: usize,
    input: [usize; 2],
    output: [usize; 2],
}

impl Window {
    /// The window, when the loops cover `pool` on this input.
    fn new(pool: &MaxPool2d, [n, c, h, w]: [usize; 4]) -> Option<Self> {
        let PaddingConfig2d::Explicit(top, left, bottom, right) = pool.padding else {
            return None;
        };
        if pool.ceil_mode || top != bottom || left != right {
            return None;
        }
        let padding = [top, left];
        let input = [h, w];
        let mut output = [0; 2];
        for axis in 0..2 {
            let extent = pool.dilation[axis] * (pool.kernel_size[axis] - 1) + 1;
            let padded = input[axis] + 2 * padding[axis];
            // A window must reach the input: padding below the kernel's extent.
            if extent > padded || padding[axis] >= extent || pool.stride[axis] == 0 {
                return None;
            }
            output[axis] = (padded - extent) / pool.stride[axis] + 1;
        }
        Some(Self {
            kernel: pool.kernel_size,
            stride: pool.stride,
            padding,
            dilation: pool.dilation,
            planes: n * c,
            input,
            output,
        })
    }

    /// The input rows (or columns) the window of output `o` reads along `axis`.
    fn taps(&self, axis: usize, o: usize) -> impl Iterator<Item = usize> {
        let start = (o * self.stride[axis]) as isize - self.padding[axis] as isize;
        let (dilation, size) = (self.dilation[axis] as isize, self.input[axis] as isize);
        (0..self.kernel[axis] as isize)
            .map(move |k| start + k * dilation)
            .filter(move |&i| (0..size).contains(&i))
            .map(|i| i as usize)
    }

    /// The maxima of every window, and each one's index in its plane.
    fn forward<T: Real>(&self, x: &[T]) -> (Vec<T>, Vec<u32>) {
        let [height, width] = self.input;
        let [ho, wo] = self.output;
        let mut output = vec![T::default(); self.planes * ho * wo];
        let mut indices = vec![0u32; output.len()];
        output
            .par_chunks_mut(ho * wo)
            .zip(indices.par_chunks_mut(ho * wo))
            .zip(x.par_chunks(height * width))
            .for_each(|((output, indices), plane)| {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut best: Option<(T, usize)> = None;
                        for ih in self.taps(0, oh) {
                            for iw in self.taps(1, ow) {
                                let at = ih * width + iw;
                                if best.is_none_or(|(max, _)| plane[at] > max) {
                                    best = Some((plane[at], at));
                                }
                            }
                        }
                        // Every window reaches the input (checked in `new`).
                        let (max, at) = best.unwrap_or_default();
                        output[oh * wo + ow] = max;
                        indices[oh * wo + ow] = at as u32;
                    }
                }
            });
        (output, indices)
    }
}

/// The window and output shape of `pool` on `x`, where the loops take it.
fn window_of(pool: &MaxPool2d, dims: [usize; 4]) -> Option<(Window, [usize; 4])> {
    let window = Window::new(pool, dims)?;
    if window.input[0] * window.input[1] > u32::MAX as usize {
        return None;
    }
    let [n, c, _, _] = dims;
    Some((window, [n, c, window.output[0], window.output[1]]))
}

/// `pool(x)` by the loops in inference; `None` unless `x` holds float32 or float64.
pub(super) fn inference(pool: &MaxPool2d, x: &Tensor<Flex, 4>) -> Option<Tensor<Flex, 4>> {
    let (window, shape) = window_of(pool, x.dims())?;
    let x = storage(x);
    let output = pooled::<f32>(&window, &x, shape).or_else(|| pooled::<f64>(&window, &x, shape))?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(output.0)))
}

/// The pooled output and the indices of the maxima, when `x` holds `T`s.
fn pooled<T: Real>(
    window: &Window,
    x: &FlexTensor,
    shape: [usize; 4],
) -> Option<(FlexTensor, Vec<u32>)> {
    let (output, indices) = window.forward(x.as_slice::<T>()?);
    Some((flex_tensor(output, &shape), indices))
}

/// `pool(x)` in training on `Autodiff<Flex, C>`, as one autodiff operation; `None` unless `x`
/// holds float32 or float64.
pub(super) fn training<C: CheckpointStrategy>(
    pool: &MaxPool2d,
    x: &Tensor<Autodiff<Flex, C>, 4>,
) -> Option<Tensor<Autodiff<Flex, C>, 4>> {
    let (window, shape) = window_of(pool, x.dims())?;
    tracked::<C, f32>(&window, x, shape).or_else(|| tracked::<C, f64>(&window, x, shape))
}

/// [`training`] for a `T` input; `None` unless `x` holds `T`s.
fn tracked<C: CheckpointStrategy, T: Real>(
    window: &Window,
    x: &Tensor<Autodiff<Flex, C>, 4>,
    shape: [usize; 4],
) -> Option<Tensor<Autodiff<Flex, C>, 4>> {
    let x = x.clone().into_primitive().tensor();
    let values = contiguous(x.primitive.clone());
    let (output, indices) = pooled::<T>(window, &values, shape)?;
    let state = PoolState {
        window: *window,
        indices,
        input_dims: values.layout().shape().as_slice().try_into().ok()?,
    };
    let tensor = match PoolBackward::<T>(PhantomData)
        .prepare::<C>([x.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive(TensorPrimitive::Float(tensor)))
}

/// The indices of the maxima and the input's shape.
#[derive(Debug, Clone)]
struct PoolState {
    window: Window,
    indices: Vec<u32>,
    input_dims: [usize; 4],
}

#[derive(Debug)]
struct PoolBackward<T>(PhantomData<T>);

impl<T: Real> Backward<Flex, 1> for PoolBackward<T> {
    type State = PoolState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = contiguous(grads.consume::<Flex>(&ops.node));
        let [Some(node)] = ops.parents else {
            return;
        };
        let state = ops.state;
        let [height, width] = state.window.input;
        let [ho, wo] = state.window.output;
        let upstream: &[T] = upstream.storage();
        let mut grad_x = vec![T::default(); state.window.planes * height * width];
        grad_x
            .par_chunks_mut(height * width)
            .zip(upstream.par_chunks(ho * wo))
            .zip(state.indices.par_chunks(ho * wo))
            .for_each(|((grad_x, upstream), indices)| {
                for (&g, &at) in upstream.iter().zip(indices) {
                    grad_x[at as usize] += g;
                }
            });
        grads.register::<Flex>(node.id, flex_tensor(grad_x, &state.input_dims));
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::pool::MaxPool2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::activation::relu;
    use burn::tensor::{DType, Tensor};

    use super::{inference, training};
    use crate::testing::assert_close;

    type B = Autodiff<Flex>;

    /// The loops against burn's `MaxPool2d` differentiated by autodiff, on ReLU outputs (ties
    /// of zeros, where the first maximum must win as in burn), in float32 and float64, for the
    /// ResNet stem's 3×3/2 pool with padding 1 and others; and the inference route. The output
    /// is a copy (exact); an input's gradient sums the gradients of the windows it wins, in
    /// another order: 1e-12 of the largest value in float64, 1e-6 in float32.
    #[test]
    fn equals_burns_max_pool_and_its_gradient() {
        // (kernel, stride, padding, dilation, [H, W])
        let cases = [
            (3, 2, 1, 1, [7, 9]),
            (3, 2, 1, 1, [8, 8]),
            (2, 2, 0, 1, [6, 5]),
            (3, 1, 1, 2, [5, 6]),
        ];
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            for (kernel, stride, padding, dilation, [h, w]) in cases {
                let pool = MaxPool2dConfig::new([kernel, kernel])
                    .with_strides([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(
                        padding, padding, padding, padding,
                    ))
                    .with_dilation([dilation, dilation])
                    .init();
                let name = format!(
                    "{dtype:?} {kernel}×{kernel}/{stride} pad {padding} dilation {dilation}"
                );
                let random = |shape| crate::testing::normal::<B, 4>(shape, dtype, [0.0, 1.0]);
                let x = relu(random([2, 3, h, w])).detach().require_grad();
                let fused = training(&pool, &x).expect("the fused pooling");
                let probe = random(fused.dims());
                let evaluate = |output: Tensor<B, 4>| {
                    let grads = (output.clone() * probe.clone()).sum().backward();
                    [
                        output.into_data(),
                        x.grad(&grads).expect("x's gradient").into_data(),
                    ]
                };
                let [output, grad] = evaluate(fused);
                let [expected_output, expected_grad] = evaluate(pool.forward(x.clone()));
                assert_close(&format!("{name}: output"), &output, &expected_output, 0.0);
                assert_close(&format!("{name}: x"), &grad, &expected_grad, tolerance);
                let inner = x.clone().inner();
                let inferred = inference(&pool, &inner).expect("the fused pooling");
                assert_close(
                    &format!("{name}: inference"),
                    &inferred.into_data(),
                    &pool.forward(inner).into_data(),
                    0.0,
                );
            }
        }
    }
}
