//! SGD with momentum as PyTorch runs it, in one kernel launch per parameter on the CubeCL
//! backends.
//!
//! A PEDConv layer brings twelve small parameter tensors (its attention MLP and decoder), a
//! ResNet-18 some two hundred; burn's `Sgd` updates each in five tensor operations (the
//! momentum's dampening factor, its decay, their sum, the learning rate, the subtraction), five
//! kernel launches of a few hundred values each on a GPU backend. [`MomentumSgd`] computes the
//! same update in one launch there, and in the same tensor operations less the dampening
//! elsewhere.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// SGD with momentum `μ` and no dampening (PyTorch's `torch.optim.SGD`): the velocity
/// `v ← μ·v + g` (the gradient itself at the first step) and `p ← p − lr·v`, or, with
/// Nesterov's momentum, `p ← p − lr·(g + μ·v)`. Weight decay is left to the gradients (the
/// recipe decays every parameter outside batch norms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MomentumSgd {
    /// `μ`.
    pub momentum: f64,
    /// Nesterov's momentum.
    pub nesterov: bool,
}

/// A parameter's velocity.
#[derive(Record, Clone)]
pub struct MomentumSgdState<B: Backend, const D: usize> {
    /// `v`, the parameter's shape.
    pub velocity: Tensor<B, D>,
}

impl MomentumSgd {
    /// The optimizer of a module, as burn's learner takes it.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }

    /// The step as tensor operations: the new parameter and velocity.
    fn compose<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        velocity: Option<Tensor<B, D>>,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        let velocity = match velocity {
            Some(velocity) => velocity.mul_scalar(self.momentum) + grad.clone(),
            None => grad.clone(),
        };
        let direction = if self.nesterov {
            velocity.clone().mul_scalar(self.momentum) + grad
        } else {
            velocity.clone()
        };
        (param - direction.mul_scalar(lr), velocity)
    }
}

impl<B: Backend> SimpleOptimizer<B> for MomentumSgd {
    type State<const D: usize> = MomentumSgdState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let velocity = state.map(|state| state.velocity);
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        let (param, velocity) = match cube::step(self, lr, &param, &grad, velocity.as_ref()) {
            Some(updated) => updated,
            None => self.compose(lr, param, grad, velocity),
        };
        #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
        let (param, velocity) = self.compose(lr, param, grad, velocity);
        (param, Some(MomentumSgdState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        MomentumSgdState {
            velocity: state.velocity.to_device(device),
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube {
    use burn::optim::LearningRate;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
    use burn_cubecl::kernel::into_contiguous;

    use super::MomentumSgd;
    use crate::cube::{empty, grid, CubeLike};
    use crate::paths::cast;
    use kernels::step_kernel;

    /// The kernel (CubeCL's `Tensor`, apart from burn's).
    mod kernels {
        use cubecl::prelude::*;

        /// `v' = μ·v + g` (`g` without a velocity), `p' = p − lr·v'` or, Nesterov's,
        /// `p' = p − lr·(g + μ·v')`; in float32 whatever the element type, one thread per
        /// element.
        #[cube(launch)]
        #[allow(clippy::too_many_arguments)]
        pub(super) fn step_kernel<F: Float>(
            param: &Tensor<F>,
            grad: &Tensor<F>,
            velocity: &Tensor<F>,
            new_param: &mut Tensor<F>,
            new_velocity: &mut Tensor<F>,
            lr: f32,
            momentum: f32,
            #[comptime] has_velocity: bool,
            #[comptime] nesterov: bool,
            #[define(F)] _dtype: StorageType,
        ) {
            if ABSOLUTE_POS >= new_param.len() {
                terminate!();
            }
            let g = f32::cast_from(grad[ABSOLUTE_POS]);
            let mut v = g;
            if has_velocity {
                v = f32::cast_from(velocity[ABSOLUTE_POS]) * momentum + g;
            }
            let mut direction = v;
            if nesterov {
                direction = v * momentum + g;
            }
            let p = f32::cast_from(param[ABSOLUTE_POS]);
            new_param[ABSOLUTE_POS] = F::cast_from(p - direction * lr);
            new_velocity[ABSOLUTE_POS] = F::cast_from(v);
        }
    }

    /// The new parameter and velocity by the kernel, when `B` is wgpu or CUDA and the three
    /// tensors share one float type; `None` otherwise.
    pub(super) fn step<B: Backend, const D: usize>(
        sgd: &MomentumSgd,
        lr: LearningRate,
        param: &Tensor<B, D>,
        grad: &Tensor<B, D>,
        velocity: Option<&Tensor<B, D>>,
    ) -> Option<(Tensor<B, D>, Tensor<B, D>)> {
        let dtype = param.dtype();
        if grad.dtype() != dtype || velocity.is_some_and(|v| v.dtype() != dtype) {
            return None;
        }
        #[cfg(feature = "wgpu")]
        if let Some(updated) = step_on::<B, burn::backend::Wgpu, D>(sgd, lr, param, grad, velocity)
        {
            return Some(updated);
        }
        #[cfg(feature = "cuda")]
        if let Some(updated) = step_on::<B, burn::backend::Cuda, D>(sgd, lr, param, grad, velocity)
        {
            return Some(updated);
        }
        None
    }

    /// [`step`] on the CubeCL backend `C`, when `B` is `C`.
    fn step_on<B: Backend, C: CubeLike, const D: usize>(
        sgd: &MomentumSgd,
        lr: LearningRate,
        param: &Tensor<B, D>,
        grad: &Tensor<B, D>,
        velocity: Option<&Tensor<B, D>>,
    ) -> Option<(Tensor<B, D>, Tensor<B, D>)> {
        let primitive = |tensor: &Tensor<B, D>| {
            cast::<_, Tensor<C, D>>(tensor.clone())
                .map(|tensor| into_contiguous(tensor.into_primitive().tensor()))
        };
        let (param, grad) = (primitive(param)?, primitive(grad)?);
        let velocity = match velocity {
            Some(velocity) => Some(primitive(velocity)?),
            None => None,
        };
        let (new_param, new_velocity) =
            (empty(&param, param.shape()), empty(&param, param.shape()));
        let (count, dim) = grid(&param.client, param.shape().num_elements());
        step_kernel::launch::<C::Runtime>(
            &param.client,
            count,
            dim,
            param.clone().into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            velocity.as_ref().unwrap_or(&grad).clone().into_tensor_arg(),
            new_param.clone().into_tensor_arg(),
            new_velocity.clone().into_tensor_arg(),
            lr as f32,
            sgd.momentum as f32,
            velocity.is_some(),
            sgd.nesterov,
            param.dtype.into(),
        );
        let wrap = |tensor| {
            cast::<_, Tensor<B, D>>(Tensor::<C, D>::from_primitive(TensorPrimitive::Float(
                tensor,
            )))
        };
        Some((wrap(new_param)?, wrap(new_velocity)?))
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::SgdConfig;
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    /// Three steps of `sgd` and of burn's `Sgd` with the same momentum and no dampening, from
    /// the same parameter and gradients on `B`: both parameters after each step.
    fn steps<B: Backend>(sgd: MomentumSgd) -> Vec<[TensorData; 2]> {
        let device = Default::default();
        let draw = || Tensor::<B, 2>::random([33, 70], Distribution::Normal(0.0, 1.0), &device);
        let burns = SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(sgd.momentum)
                    .with_dampening(0.0)
                    .with_nesterov(sgd.nesterov),
            ))
            .build::<B>();
        let (mut ours, mut theirs) = (draw(), None);
        let mut reference = ours.clone();
        let mut state = None;
        let mut after = Vec::new();
        for lr in [0.5, 0.25, 0.125] {
            let grad = draw();
            (ours, state) = sgd.step(lr, ours, grad.clone(), state);
            (reference, theirs) = burns.step(lr, reference, grad, theirs);
            after.push([ours.to_data(), reference.to_data()]);
        }
        after
    }

    /// On the CPU the step is burn's in the same operations less a multiplication by one:
    /// equal to the last bit.
    #[test]
    fn steps_equal_burns_sgd_without_dampening() {
        for nesterov in [false, true] {
            let sgd = MomentumSgd {
                momentum: 0.875,
                nesterov,
            };
            for [ours, reference] in steps::<burn::backend::Flex>(sgd) {
                ours.assert_eq(&reference, true);
            }
        }
    }

    /// On the GPU backend under test (wgpu or CUDA), the kernel; a GPU compiler may contract `μ·v + g` into one fused
    /// multiply-add, one rounding fewer: within 1e-5 on parameters of magnitude up to about 5
    /// (ulp 5e-7), a few roundings.
    #[cfg(any(feature = "test-wgpu", feature = "test-cuda"))]
    #[test]
    fn the_kernel_steps_as_burns_sgd_on_the_gpu() {
        use crate::testing::GpuBackend;
        use burn::tensor::Tolerance;

        let x = Tensor::<GpuBackend, 1>::ones([3], &Default::default());
        let sgd = MomentumSgd {
            momentum: 0.5,
            nesterov: false,
        };
        assert!(
            cube::step(&sgd, 0.1, &x, &x, None).is_some(),
            "the kernel runs"
        );
        for nesterov in [false, true] {
            let sgd = MomentumSgd {
                momentum: 0.875,
                nesterov,
            };
            for [ours, reference] in steps::<GpuBackend>(sgd) {
                ours.assert_approx_eq::<f32>(&reference, Tolerance::absolute(1e-5));
            }
        }
    }
}
