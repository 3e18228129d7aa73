//! The step of [`MomentumSgd`] in one kernel launch per parameter, where burn's `Sgd` takes
//! five element-wise kernels.

use burn::optim::LearningRate;
use burn::tensor::TensorMetadata;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{empty, grid, wrap};
use crate::optim::MomentumSgd;

/// `v' = μ·v + g` (`g` without a velocity), `p' = p − lr·v'` or, Nesterov's,
/// `p' = p − lr·(g + μ·v')`; in float32 whatever the element type, one thread per element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn step_kernel<F: Float>(
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

/// A flattened parameter, gradient or velocity.
type Flat<R, F, I, BT> = burn::tensor::Tensor<CubeBackend<R, F, I, BT>, 1>;

/// The new parameter and velocity.
type Updated<R, F, I, BT> = (Flat<R, F, I, BT>, Flat<R, F, I, BT>);

/// The new parameter and velocity; the three tensors share one float type.
pub(super) fn step<R, F, I, BT>(
    sgd: &MomentumSgd,
    lr: LearningRate,
    param: Flat<R, F, I, BT>,
    grad: Flat<R, F, I, BT>,
    velocity: Option<Flat<R, F, I, BT>>,
) -> Updated<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let primitive = |tensor: Flat<R, F, I, BT>| into_contiguous(tensor.into_primitive().tensor());
    let (param, grad) = (primitive(param), primitive(grad));
    let velocity = velocity.map(primitive);
    let (new_param, new_velocity) = (empty(&param, param.shape()), empty(&param, param.shape()));
    let (count, dim) = grid(&param.client, param.shape().num_elements());
    step_kernel::launch::<R>(
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
    (wrap(new_param), wrap(new_velocity))
}
