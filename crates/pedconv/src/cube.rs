//! What the elementwise CubeCL kernels of this crate share (the activations, the optimizer
//! step): the backends they run on and their launch grid.

use burn::tensor::backend::Backend;
use burn::tensor::TensorMetadata;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::CubeCount;
use cubecl::{calculate_cube_count_elemwise, CubeDim};

/// A CubeCL backend: burn's `CubeBackend` over some runtime and element types.
pub(crate) trait CubeLike:
    Backend<FloatTensorPrimitive = CubeTensor<Self::Runtime>>
{
    type Runtime: CubeRuntime;
}

impl<R, F, I, BT> CubeLike for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type Runtime = R;
}

/// An uninitialised tensor of `like`'s shape, type and device.
pub(crate) fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>) -> CubeTensor<R> {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        like.shape(),
        like.dtype,
    )
}

/// One thread per element of `tensor`: the launch's cube count and dimension.
pub(crate) fn elementwise_grid<R: CubeRuntime>(tensor: &CubeTensor<R>) -> (CubeCount, CubeDim) {
    let elements = tensor.shape().num_elements();
    let dim = CubeDim::new(&tensor.client, elements);
    (
        calculate_cube_count_elemwise(&tensor.client, elements, dim),
        dim,
    )
}
