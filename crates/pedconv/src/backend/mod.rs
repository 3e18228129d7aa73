//! The backend layer: what each of burn's backends runs for the operations of this crate.
//!
//! [`PedConvBackend`] is the operations trait, as burn's own backend extensions are written: its
//! default methods compose burn's tensor operations, which is correct on any backend, and
//!
//! - [`flex`] overrides them for burn's CPU backend with fused loops (the factorized path, batch
//!   norms with their residual and ReLU, max-pooling);
//! - [`cube`] for every `CubeBackend<R, F, I, BT>` (wgpu, CUDA, any element types) with CubeCL
//!   kernels (the factorized path, the attention's activations, the optimizer step);
//! - [`fusion`] for `Fusion<B>` (what `burn::backend::Wgpu` and `Cuda` are with burn's default
//!   features) by registering `B`'s kernels as custom operations of the fusion stream, and leaving
//!   the element-wise work to fusion;
//! - [`autodiff`] for `Autodiff<B, C>`, either checkpointing strategy, with hand-written backward
//!   passes over `B`'s operations.
//!
//! The layers stay generic over any [`Backend`] (`PedConv2d<B: Backend>`, no extra bound for a
//! user to carry): [`ops`] is the one run-time bridge from such a `B` to the implementation for
//! it, among the backend types this crate is built for; any other backend takes the
//! composition.

pub(crate) mod autodiff;
#[cfg(feature = "cube")]
pub(crate) mod cube;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "cube")]
mod fusion;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::nn::pool::MaxPool2d;
use burn::nn::BatchNorm;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::activation::Activation;
use crate::norm::Epilogue;
use crate::optim::MomentumSgd;
use crate::paths::columns::{self, ColumnsForward};
use crate::paths::{ConvLayout, Formulation, Needed, OperandGradients, Operands};

/// The operations of this crate that a backend may run its own way. Each default method is the
/// composition of burn's tensor operations.
pub(crate) trait PedConvBackend: Backend {
    /// What `pedconv bench` has measured on this backend, from which
    /// [`ComputePath::Auto`](crate::ComputePath::Auto) and static convolutions choose.
    fn class() -> BackendClass {
        BackendClass::Unmeasured
    }

    /// A compute path's output, differentiable where `Self` is.
    fn path_output(formulation: &Formulation, operands: Operands<Self>) -> Tensor<Self, 4> {
        formulation
            .forward(&operands, false, &Columns::<Self>::native())
            .0
    }

    /// The factorized path's columns formulation, forward; `keep` asks for what the backward
    /// pass reads.
    fn columns_forward(
        operands: &Operands<Self>,
        layout: &ConvLayout,
        keep: bool,
    ) -> ColumnsForward<Self> {
        columns::forward(operands, layout, keep)
    }

    /// The columns formulation's gradients, given what [`columns_forward`](Self::columns_forward)
    /// kept.
    fn columns_backward(
        operands: Operands<Self>,
        per_term: Option<Tensor<Self, 4>>,
        layout: &ConvLayout,
        grad: Tensor<Self, 4>,
        needed: Needed,
    ) -> OperandGradients<Self> {
        columns::backward(operands, per_term, layout, grad, needed)
    }

    /// Whether [`activation`](Self::activation) is a kernel of its own, which autodiff then
    /// tracks as one operation with [`activation_backward`](Self::activation_backward).
    fn activation_kernels() -> bool {
        false
    }

    /// The attention branch's sigmoid or ReLU.
    fn activation(x: Tensor<Self, 1>, activation: Activation) -> Tensor<Self, 1> {
        activation.compose(x)
    }

    /// The activation's input gradient from its output `y` and the output's gradient.
    fn activation_backward(
        y: Tensor<Self, 1>,
        grad: Tensor<Self, 1>,
        activation: Activation,
    ) -> Tensor<Self, 1> {
        activation.compose_backward(y, grad)
    }

    /// One step of [`MomentumSgd`] on a flattened parameter: the new parameter and velocity.
    fn momentum_sgd_step(
        sgd: &MomentumSgd,
        lr: LearningRate,
        param: Tensor<Self, 1>,
        grad: Tensor<Self, 1>,
        velocity: Option<Tensor<Self, 1>>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        sgd.compose(lr, param, grad, velocity)
    }

    /// `relu(bn(x) + residual)`, each part as `epilogue` asks.
    fn batch_norm(
        bn: &BatchNorm<Self>,
        x: Tensor<Self, 4>,
        epilogue: Epilogue<Self>,
    ) -> Tensor<Self, 4> {
        epilogue.compose(bn.forward(x))
    }

    /// `relu(y + residual)` after a batch norm folded into its convolution.
    fn epilogue(y: Tensor<Self, 4>, epilogue: Epilogue<Self>) -> Tensor<Self, 4> {
        epilogue.compose(y)
    }

    /// Max-pooling.
    fn max_pool(pool: &MaxPool2d, x: Tensor<Self, 4>) -> Tensor<Self, 4> {
        pool.forward(x)
    }

    /// [`batch_norm`](Self::batch_norm) on `Autodiff` over `Self`: where `Self` has one, an
    /// autodiff operation of its own.
    fn tracked_batch_norm<C: CheckpointStrategy>(
        bn: &BatchNorm<Autodiff<Self, C>>,
        x: Tensor<Autodiff<Self, C>, 4>,
        epilogue: Epilogue<Autodiff<Self, C>>,
    ) -> Tensor<Autodiff<Self, C>, 4> {
        epilogue.compose(bn.forward(x))
    }

    /// [`max_pool`](Self::max_pool) on `Autodiff` over `Self`.
    fn tracked_max_pool<C: CheckpointStrategy>(
        pool: &MaxPool2d,
        x: Tensor<Autodiff<Self, C>, 4>,
    ) -> Tensor<Autodiff<Self, C>, 4> {
        pool.forward(x)
    }
}

#[cfg(feature = "ndarray")]
impl PedConvBackend for burn::backend::NdArray {}

/// Who computes the columns formulation on a backend: carried from a path's forward into its
/// backward pass, so that both run the same code and agree on what the forward keeps.
pub(crate) struct Columns<B: Backend> {
    pub forward: fn(&Operands<B>, &ConvLayout, bool) -> ColumnsForward<B>,
    pub backward: ColumnsBackward<B>,
}

/// [`PedConvBackend::columns_backward`] of a backend.
type ColumnsBackward<B> =
    fn(Operands<B>, Option<Tensor<B, 4>>, &ConvLayout, Tensor<B, 4>, Needed) -> OperandGradients<B>;

/// [`PedConvBackend::momentum_sgd_step`] of a backend.
type SgdStep<B> = fn(
    &MomentumSgd,
    LearningRate,
    Tensor<B, 1>,
    Tensor<B, 1>,
    Option<Tensor<B, 1>>,
) -> (Tensor<B, 1>, Tensor<B, 1>);

/// [`PedConvBackend::batch_norm`] of a backend.
type BatchNormOp<B> = fn(&BatchNorm<B>, Tensor<B, 4>, Epilogue<B>) -> Tensor<B, 4>;

impl<B: PedConvBackend> Columns<B> {
    /// `B`'s own.
    pub fn native() -> Self {
        Self {
            forward: B::columns_forward,
            backward: B::columns_backward,
        }
    }
}

impl<B: Backend> Columns<B> {
    /// The tensor operations, on any backend.
    fn composed() -> Self {
        Self {
            forward: columns::forward,
            backward: columns::backward,
        }
    }
}

/// A backend's operations, as [`ops`] finds them for a `B` known only as a [`Backend`].
pub(crate) struct Ops<B: Backend> {
    pub class: BackendClass,
    pub path_output: fn(&Formulation, Operands<B>) -> Tensor<B, 4>,
    pub activation: fn(Tensor<B, 1>, Activation) -> Tensor<B, 1>,
    pub momentum_sgd_step: SgdStep<B>,
    pub batch_norm: BatchNormOp<B>,
    pub epilogue: fn(Tensor<B, 4>, Epilogue<B>) -> Tensor<B, 4>,
    pub max_pool: fn(&MaxPool2d, Tensor<B, 4>) -> Tensor<B, 4>,
}

impl<B: PedConvBackend> Ops<B> {
    fn native() -> Self {
        Self {
            class: B::class(),
            path_output: B::path_output,
            activation: B::activation,
            momentum_sgd_step: B::momentum_sgd_step,
            batch_norm: B::batch_norm,
            epilogue: B::epilogue,
            max_pool: B::max_pool,
        }
    }
}

impl<B: Backend> Ops<B> {
    fn composed() -> Self {
        Self {
            class: BackendClass::Unmeasured,
            path_output: |formulation, operands| {
                formulation
                    .forward(&operands, false, &Columns::composed())
                    .0
            },
            activation: |x, activation| activation.compose(x),
            momentum_sgd_step: |sgd, lr, param, grad, velocity| {
                sgd.compose(lr, param, grad, velocity)
            },
            batch_norm: |bn, x, epilogue| epilogue.compose(bn.forward(x)),
            epilogue: |y, epilogue| epilogue.compose(y),
            max_pool: |pool, x| pool.forward(x),
        }
    }
}

/// The operations of `B`: the bridge from a backend known only as a [`Backend`] to its
/// [`PedConvBackend`] implementation. It recognises, by type, the backends this crate is built
/// for (flex, ndarray, the CubeCL backends with the element types of burn's `Wgpu` and `Cuda`,
/// with and without fusion) and `Autodiff` over each with either checkpointing strategy; any
/// other backend takes the composition of tensor operations.
pub(crate) fn ops<B: Backend>() -> Ops<B> {
    macro_rules! native {
        ($($backend:ty),* $(,)?) => {$(
            if let Some(ops) = same::<Ops<$backend>, Ops<B>>(Ops::<$backend>::native()) {
                return ops;
            }
            if let Some(ops) = same::<_, Ops<B>>(Ops::<Autodiff<$backend>>::native()) {
                return ops;
            }
            if let Some(ops) = same::<_, Ops<B>>(Ops::<Autodiff<$backend, Balanced>>::native()) {
                return ops;
            }
        )*};
    }
    #[allow(unused_imports)]
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing as Balanced;
    #[cfg(feature = "flex")]
    native!(burn::backend::Flex);
    #[cfg(feature = "ndarray")]
    native!(burn::backend::NdArray);
    #[cfg(feature = "wgpu")]
    native!(cube::Wgpu, burn_fusion::Fusion<cube::Wgpu>);
    #[cfg(feature = "cuda")]
    native!(cube::Cuda, burn_fusion::Fusion<cube::Cuda>);
    Ops::composed()
}

/// `value` as a `U`, when `T` is `U`.
fn same<T: 'static, U: 'static>(value: T) -> Option<U> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn core::any::Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
}

/// What `pedconv bench` has measured on a kind of backend, and so what
/// [`ComputePath::Auto`](crate::ComputePath::Auto) and static convolutions choose there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendClass {
    /// flex, where the factorized path runs as fused loops.
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    Flex,
    /// The CubeCL backends, where the factorized path runs as CubeCL kernels; `autodiff`:
    /// `Autodiff` over one, where layers train.
    CubeCl { runtime: GpuRuntime, autodiff: bool },
    /// Any other backend (ndarray among them): not measured.
    Unmeasured,
}

/// Which CubeCL runtime a [`BackendClass::CubeCl`] backend runs on: measured on wgpu (through
/// lavapipe), not yet on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GpuRuntime {
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    Wgpu,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda,
    /// Another CubeCL runtime (ROCm, a CPU runtime): its kernels are this crate's, but its
    /// routes are not measured.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    Other,
}

impl BackendClass {
    /// The class of `B`.
    pub fn of<B: Backend>() -> Self {
        ops::<B>().class
    }

    /// The class of `Autodiff` over a backend of this class.
    fn trained(self) -> Self {
        match self {
            Self::CubeCl { runtime, .. } => Self::CubeCl {
                runtime,
                autodiff: true,
            },
            other => other,
        }
    }

    /// Whether the factorized path's columns formulation runs as fused loops or kernels here,
    /// rather than as tensor operations.
    pub fn columns_native(self) -> bool {
        self != Self::Unmeasured
    }

    /// Whether a static convolution takes the columns formulation (with unit factors) rather
    /// than burn's convolution: on flex, whose fused loops train and infer faster than its
    /// convolution; in training on wgpu, where burn's convolution spends many times its
    /// forward in the backward pass. In inference there, burn's single convolution launch beats
    /// the kernels' three on small inputs. CUDA keeps burn's convolution (implicit GEMM on the
    /// tensor cores) until the GPU check's per-layer rows have been measured. The figures are in
    /// `docs/benchmarks.md`.
    pub fn static_by_columns(self) -> bool {
        matches!(
            self,
            Self::Flex
                | Self::CubeCl {
                    runtime: GpuRuntime::Wgpu,
                    autodiff: true
                }
        )
    }
}

/// The class of every backend this crate is built for, pinned with what follows from it (the
/// path `ComputePath::Auto` takes, the route of static convolutions): each follows what was
/// measured on that backend, and a backend that a burn upgrade wraps or renames would otherwise
/// take the unmeasured, slower route silently.
#[cfg(test)]
mod backend_classes {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Autodiff;
    use burn::tensor::backend::Backend;

    use super::{BackendClass, GpuRuntime};
    use crate::ComputePath;

    /// `I` has `class` and autodiff over it `trains` (either checkpointing strategy); `Auto`
    /// picks for the first stage of a ResNet at 224² (64 channels, 56 × 56 pixels) `infers` on
    /// `I` and `trains` on autodiff; static convolutions take the columns `[in inference, in
    /// training]`.
    #[allow(dead_code)] // unused without backend features
    fn pinned<I: Backend>(
        [inner, autodiff]: [BackendClass; 2],
        [infers, trains]: [ComputePath; 2],
        [static_infers, static_trains]: [bool; 2],
    ) {
        let check = |name: &str, of: BackendClass, class, auto, path, by_columns| {
            assert_eq!(of, class, "{name}");
            assert_eq!(auto, path, "{name}");
            assert_eq!(
                of.static_by_columns(),
                by_columns,
                "{name}: static convolutions"
            );
        };
        fn of<B: Backend>() -> (&'static str, BackendClass, ComputePath) {
            let auto = ComputePath::Auto.resolve::<B>(64, 56 * 56);
            (std::any::type_name::<B>(), BackendClass::of::<B>(), auto)
        }
        let (name, class, auto) = of::<I>();
        check(name, class, inner, auto, infers, static_infers);
        let (name, class, auto) = of::<Autodiff<I>>();
        check(name, class, autodiff, auto, trains, static_trains);
        let (name, class, auto) = of::<Autodiff<I, BalancedCheckpointing>>();
        check(name, class, autodiff, auto, trains, static_trains);
    }

    #[test]
    fn every_compiled_backend_has_its_measured_class() {
        use BackendClass::*;
        use ComputePath::*;
        #[cfg(feature = "flex")]
        pinned::<burn::backend::Flex>([Flex, Flex], [Factorized, Factorized], [true, true]);
        #[cfg(feature = "ndarray")]
        pinned::<burn::backend::NdArray>(
            [Unmeasured, Unmeasured],
            [PerSampleKernel; 2],
            [false, false],
        );
        let cubecl = |runtime| [false, true].map(|autodiff| CubeCl { runtime, autodiff });
        #[cfg(feature = "wgpu")]
        {
            let wgpu = || {
                (
                    cubecl(GpuRuntime::Wgpu),
                    [PerSampleKernel, Factorized],
                    [false, true],
                )
            };
            let (class, auto, by_columns) = wgpu();
            pinned::<super::cube::Wgpu>(class, auto, by_columns);
            let (class, auto, by_columns) = wgpu();
            pinned::<burn_fusion::Fusion<super::cube::Wgpu>>(class, auto, by_columns);
            // burn's alias, whichever of the two burn's `fusion` feature makes it.
            let (class, auto, by_columns) = wgpu();
            pinned::<burn::backend::Wgpu>(class, auto, by_columns);
        }
        #[cfg(feature = "cuda")]
        {
            let cuda = || {
                (
                    cubecl(GpuRuntime::Cuda),
                    [PerSampleKernel, Factorized],
                    [false, false],
                )
            };
            let (class, auto, by_columns) = cuda();
            pinned::<super::cube::Cuda>(class, auto, by_columns);
            let (class, auto, by_columns) = cuda();
            pinned::<burn_fusion::Fusion<super::cube::Cuda>>(class, auto, by_columns);
            let (class, auto, by_columns) = cuda();
            pinned::<burn::backend::Cuda>(class, auto, by_columns);
        }
        let _ = cubecl;
    }
}
