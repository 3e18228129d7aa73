//! [`PedConvBackend`] for every CubeCL backend, `CubeBackend<R, F, I, BT>` (wgpu, CUDA, any
//! element types): the factorized path's kernels ([`columns`]), one-launch activations
//! ([`activation`]) and the optimizer step in one launch ([`sgd`]); the kernels take the
//! operands' own float type, whatever the backend's default.

mod activation;
mod columns;
mod sgd;

use core::any::TypeId;

use burn::optim::LearningRate;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::{ComputeClient, CubeCount};
use cubecl::{calculate_cube_count_elemwise, CubeDim};

use super::{BackendClass, GpuRuntime, PedConvBackend};
use crate::activation::Activation;
use crate::optim::MomentumSgd;
use crate::paths::columns::ColumnsForward;
use crate::paths::{ConvLayout, Needed, OperandGradients, Operands};

/// burn's wgpu backend without fusion, with the element types of burn's `Wgpu`.
#[cfg(feature = "wgpu")]
pub(crate) type Wgpu = CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;
/// burn's CUDA backend without fusion, with the element types of burn's `Cuda`.
#[cfg(feature = "cuda")]
pub(crate) type Cuda = CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

impl<R, F, I, BT> PedConvBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn class() -> BackendClass {
        BackendClass::CubeCl {
            runtime: GpuRuntime::of::<R>(),
            autodiff: false,
        }
    }

    fn columns_forward(
        operands: &Operands<Self>,
        layout: &ConvLayout,
        keep: bool,
    ) -> ColumnsForward<Self> {
        columns::forward(operands, layout, keep)
    }

    fn columns_backward(
        operands: Operands<Self>,
        per_term: Option<Tensor<Self, 4>>,
        layout: &ConvLayout,
        grad: Tensor<Self, 4>,
        needed: Needed,
    ) -> OperandGradients<Self> {
        columns::backward(&operands, per_term, layout, grad, needed)
    }

    fn activation_kernels() -> bool {
        true
    }

    fn activation(x: Tensor<Self, 1>, activation: Activation) -> Tensor<Self, 1> {
        activation::forward(x, activation)
    }

    fn activation_backward(
        y: Tensor<Self, 1>,
        grad: Tensor<Self, 1>,
        activation: Activation,
    ) -> Tensor<Self, 1> {
        activation::backward(y, grad, activation)
    }

    fn momentum_sgd_step(
        sgd: &MomentumSgd,
        lr: LearningRate,
        param: Tensor<Self, 1>,
        grad: Tensor<Self, 1>,
        velocity: Option<Tensor<Self, 1>>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        let dtype = param.dtype();
        if grad.dtype() != dtype || velocity.as_ref().is_some_and(|v| v.dtype() != dtype) {
            return sgd.compose(lr, param, grad, velocity);
        }
        sgd::step(sgd, lr, param, grad, velocity)
    }
}

impl GpuRuntime {
    /// The runtime `R`, among those whose routes have been measured.
    fn of<R: CubeRuntime>() -> Self {
        let runtime = TypeId::of::<R>();
        #[cfg(feature = "wgpu")]
        if runtime == TypeId::of::<burn::backend::wgpu::WgpuRuntime>() {
            return Self::Wgpu;
        }
        #[cfg(feature = "cuda")]
        if runtime == TypeId::of::<cubecl::cuda::CudaRuntime>() {
            return Self::Cuda;
        }
        let _ = runtime;
        Self::Other
    }
}

/// A tensor of a CubeCL backend's primitive.
fn wrap<R, F, I, BT, const D: usize>(tensor: CubeTensor<R>) -> Tensor<CubeBackend<R, F, I, BT>, D>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(tensor))
}

/// An uninitialised tensor of `shape`, with `like`'s type and device.
fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape, like.dtype)
}

/// One thread per element of `threads` elements: the launch's cube count and dimension.
fn grid<R: CubeRuntime>(client: &ComputeClient<R>, threads: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, threads);
    (calculate_cube_count_elemwise(client, threads, dim), dim)
}
