//! What the CubeCL kernels of this crate share (the factorized path's, the activations', the
//! optimizer step's): the backends they run on, their output allocation and launch grid.

use burn::tensor::backend::Backend;
use burn::tensor::Shape;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::{ComputeClient, CubeCount};
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

/// An uninitialised tensor of `shape`, with `like`'s type and device.
pub(crate) fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape, like.dtype)
}

/// One thread per element of `threads` elements: the launch's cube count and dimension.
pub(crate) fn grid<R: CubeRuntime>(
    client: &ComputeClient<R>,
    threads: usize,
) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, threads);
    (calculate_cube_count_elemwise(client, threads, dim), dim)
}
