//! SGD with momentum as PyTorch runs it, in one kernel launch per parameter on the CubeCL
//! backends without fusion.
//!
//! A PEDConv layer brings twelve small parameter tensors (its attention MLP and decoder), a
//! ResNet-18 some two hundred; burn's `Sgd` updates each in five tensor operations (the
//! momentum's dampening factor, its decay, their sum, the learning rate, the subtraction), five
//! kernel launches of a few hundred values each on a GPU backend. [`MomentumSgd`] computes the
//! same update in one launch there, in the same tensor operations less the dampening elsewhere
//! (which burn's fusion merges into one kernel).

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use crate::backend::ops;

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
    pub(crate) fn compose<B: Backend, const D: usize>(
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
        let dims = param.dims();
        let flat = |tensor: Tensor<B, D>| tensor.reshape([dims.iter().product::<usize>()]);
        let velocity = state.map(|state| flat(state.velocity));
        let (param, velocity) =
            (ops::<B>().momentum_sgd_step)(self, lr, flat(param), flat(grad), velocity);
        let velocity = velocity.reshape(dims);
        (param.reshape(dims), Some(MomentumSgdState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        MomentumSgdState {
            velocity: state.velocity.to_device(device),
        }
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
        let _drawing = crate::testing::drawing();
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
    #[cfg(feature = "cube")]
    #[test]
    fn the_kernel_steps_as_burns_sgd_on_the_gpu() {
        use crate::testing::GpuBackend;
        use burn::tensor::Tolerance;

        assert!(
            crate::backend::BackendClass::of::<GpuBackend>().columns_native(),
            "the bridge finds the backend's kernel"
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
