//! The compute paths of [`ComputePath`](crate::ComputePath): two ways of computing
//! `y_b = conv2d(x_b, W ⊙ Σ_r a_out[b,r] ⊗ a_in[b,r] ⊗ a_k[b,r])` for every sample `b`.
//!
//! Each path is a [`Formulation`] written once over any backend's tensors ([`kernels`]: the
//! per-sample kernels; [`columns`]: the factorized path's im2col for kernels larger than 1×1),
//! with a hand-written backward pass. On the autodiff backends listed in [`recompute`] it runs as
//! one autodiff operation that recomputes its large intermediates in the backward pass; on any
//! other backend autodiff differentiates the composition. The 1×1 factorized path is a static
//! convolution between two channel scalings, left to autodiff.

mod columns;
mod kernels;
mod recompute;

use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorPrimitive};

pub(crate) use columns::Engine;

use crate::attention::AttentionFactors;
use crate::geometry::ConvGeometry;
use crate::precision::cast_to;

/// Everything but the weight that fixes how a convolution maps its input: what the columns
/// formulation needs to rebuild its im2col in the backward pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvLayout {
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    /// Padding and output size for the input at hand.
    pub geometry: ConvGeometry,
}

/// The static part of a layer that every path needs.
pub(crate) struct StaticConv<B: Backend> {
    /// Base weight `[out, in/groups, kh, kw]`.
    pub weight: Tensor<B, 4>,
    pub layout: ConvLayout,
}

impl<B: Backend> StaticConv<B> {
    /// The input as the convolution of `kernel_size` kernels will read it, and that
    /// convolution's options (with this layer's `groups`).
    ///
    /// Two cases are prepared here, to avoid faults of burn 0.21: asymmetric padding is applied
    /// to the input, in its dtype (burn pads with zeros of the default float dtype, which fails
    /// on a float64 input); a strided or padded 1×1 convolution samples its input and runs at
    /// stride 1 (burn's wgpu backend computes a wrong input gradient for strided 1×1
    /// convolutions).
    fn prepare(&self, x: Tensor<B, 4>, kernel_size: [usize; 2]) -> (Tensor<B, 4>, ConvOptions<2>) {
        let layout = &self.layout;
        let (start, end) = (layout.geometry.padding_start, layout.geometry.padding_end);
        let (x, stride, padding) = if kernel_size == [1, 1]
            && (layout.stride != [1, 1] || start != end || start != [0, 0])
        {
            let [n, c, _, _] = x.dims();
            let [ho, wo] = layout.geometry.output_size;
            (
                im2col(x, layout, [1, 1]).reshape([n, c, ho, wo]),
                [1, 1],
                [0, 0],
            )
        } else if start != end {
            (
                pad_zeros(x, [start[0], end[0]], [start[1], end[1]]),
                layout.stride,
                [0, 0],
            )
        } else {
            (x, layout.stride, start)
        };
        let options = ConvOptions::new(stride, padding, layout.dilation, layout.groups);
        (x, options)
    }
}

/// The inputs of a path.
#[derive(Debug, Clone)]
pub(crate) struct Operands<B: Backend> {
    /// `[B, in, H, W]`.
    pub x: Tensor<B, 4>,
    pub factors: AttentionFactors<B>,
    /// `[out, in/g, kh, kw]`.
    pub weight: Tensor<B, 4>,
}

/// Which operands' gradients a backward pass must compute: those of the operands the autodiff
/// graph tracks (a static convolution's unit factors are not).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needed {
    pub input: bool,
    pub output: bool,
    pub kernel: bool,
    pub weight: bool,
}

/// The gradients of the loss with respect to each operand, in the operands' shapes.
pub(crate) struct Gradients<B: Backend> {
    pub x: Tensor<B, 4>,
    pub input: Tensor<B, 3>,
    pub output: Tensor<B, 3>,
    pub kernel: Tensor<B, 3>,
    pub weight: Tensor<B, 4>,
}

/// A path's computation, with what it needs besides its operands.
#[derive(Debug, Clone)]
pub(crate) enum Formulation {
    /// Per-sample kernels and a grouped convolution with these options (the layer's groups),
    /// on an input prepared by [`StaticConv::prepare`].
    Kernels(ConvOptions<2>),
    /// The factorized path's im2col, computed by `engine`.
    Columns { layout: ConvLayout, engine: Engine },
}

impl Formulation {
    /// The output `[B, out, Ho, Wo]`, and, where `keep` asks for it, the intermediate from which
    /// the backward pass computes the output factor's gradient.
    fn forward<B: Backend>(
        &self,
        operands: &Operands<B>,
        keep: bool,
    ) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
        match self {
            Formulation::Kernels(options) => (kernels::forward(operands, options), None),
            Formulation::Columns { layout, engine } => {
                let forward = columns::forward(operands, layout, *engine, keep);
                (forward.output, forward.per_term)
            }
        }
    }

    /// The gradients from the output's gradient, given what [`forward`](Self::forward) kept
    /// (without it, the output factor's gradient is zero: a factor that needs none); those that
    /// `needed` leaves out may be zero.
    fn backward<B: Backend>(
        &self,
        operands: Operands<B>,
        kept: Option<Tensor<B, 4>>,
        grad: Tensor<B, 4>,
        needed: Needed,
    ) -> Gradients<B> {
        match self {
            Formulation::Kernels(options) => kernels::backward(operands, options, grad),
            Formulation::Columns { layout, engine } => {
                columns::backward(operands, kept, layout, *engine, grad, needed)
            }
        }
    }

    /// The columns formulation for `layout` on backend `B`.
    fn columns<B: Backend>(layout: ConvLayout) -> Self {
        Formulation::Columns {
            layout,
            engine: BackendClass::of::<B>().engine(),
        }
    }

    /// The output, through the memory-saving operation where the backend has it.
    fn apply<B: Backend>(&self, operands: Operands<B>) -> Tensor<B, 4> {
        recompute::forward(self, &operands).unwrap_or_else(|| self.forward(&operands, false).0)
    }
}

/// The reference path: per-sample kernels `[B·out, in/g, kh, kw]` and one convolution with
/// `B·groups` groups over the batch folded into the channels.
pub(crate) fn per_sample_kernel<B: Backend>(
    x: Tensor<B, 4>,
    factors: &AttentionFactors<B>,
    conv: &StaticConv<B>,
) -> Tensor<B, 4> {
    let [_, _, kh, kw] = conv.weight.dims();
    let (x, options) = conv.prepare(x, [kh, kw]);
    Formulation::Kernels(options).apply(Operands {
        x,
        factors: factors.clone(),
        weight: conv.weight.clone(),
    })
}

/// Whether the factorized path runs as the fused loops of [`columns`] on `B` (flex).
pub(crate) fn fused_columns<B: Backend>() -> bool {
    columns::fused::<B>()
}

/// The kinds of backend whose paths `pedconv bench` has measured, which
/// [`ComputePath::Auto`](crate::ComputePath::Auto) chooses for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendClass {
    /// flex, where the factorized path runs as fused loops.
    Flex,
    /// The CubeCL backends, wgpu and CUDA, where the factorized path runs as CubeCL kernels;
    /// `autodiff`: `Autodiff` over one, where layers train.
    CubeCl {
        runtime: CubeRuntime,
        autodiff: bool,
    },
    /// Any other backend (ndarray among them): not measured.
    Unmeasured,
}

/// Which CubeCL runtime a [`BackendClass::CubeCl`] backend runs on: measured on wgpu (through
/// lavapipe), not yet on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each is constructed where its backend's feature is built
pub(crate) enum CubeRuntime {
    Wgpu,
    Cuda,
}

impl BackendClass {
    /// The class of `B`, with or without autodiff (either checkpointing strategy), among the
    /// backends this crate is built for.
    pub fn of<B: Backend>() -> Self {
        if fused_columns::<B>() {
            return Self::Flex;
        }
        #[cfg(feature = "wgpu")]
        if let Some(autodiff) = over::<B, burn::backend::Wgpu>() {
            let runtime = CubeRuntime::Wgpu;
            return Self::CubeCl { runtime, autodiff };
        }
        #[cfg(feature = "cuda")]
        if let Some(autodiff) = over::<B, burn::backend::Cuda>() {
            let runtime = CubeRuntime::Cuda;
            return Self::CubeCl { runtime, autodiff };
        }
        Self::Unmeasured
    }

    /// Who computes the columns formulation on this class.
    pub fn engine(self) -> Engine {
        match self {
            Self::Flex => Engine::FlexLoops,
            Self::CubeCl { .. } => Engine::CubeKernels,
            Self::Unmeasured => Engine::TensorOps,
        }
    }

    /// Whether a static convolution takes the columns formulation (with unit factors) rather
    /// than burn's convolution: on flex, whose fused loops train and infer about twice as fast
    /// as its convolution; in training on wgpu, where burn's convolution spends 15–25 times its
    /// forward in the backward pass and the kernels train 5–12 times as fast (lavapipe; the
    /// README's cost section). In inference there, burn's single convolution launch beats the
    /// kernels' three on small inputs (a ResNet-18 at width 1/4 on 64² images infers 1.6× faster
    /// with it). CUDA keeps burn's convolution (implicit GEMM on the tensor cores) until the GPU
    /// check's per-layer rows (`static` against `static (pedconv)`) have been measured.
    pub fn static_by_columns(self) -> bool {
        matches!(
            self,
            Self::Flex
                | Self::CubeCl {
                    runtime: CubeRuntime::Wgpu,
                    autodiff: true
                }
        )
    }
}

/// When `B` is `I` or `Autodiff` over it (either checkpointing strategy): whether it is the
/// latter.
#[allow(dead_code)] // unused without the GPU backends' features
fn over<B: Backend, I: Backend>() -> Option<bool> {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Autodiff;
    use core::any::TypeId;
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<I>() {
        return Some(false);
    }
    (backend == TypeId::of::<Autodiff<I>>()
        || backend == TypeId::of::<Autodiff<I, BalancedCheckpointing>>())
    .then_some(true)
}

/// The factorized path: `y = Σ_r a_out ⊙ conv(x ⊙ a_in, W ⊙ a_k)` without per-sample kernels.
/// Kernels larger than 1×1, and every kernel where fused loops or kernels compute it (flex, the
/// CubeCL backends), take the im2col formulation of [`columns`]; otherwise, for 1×1 kernels,
/// `a_k` is a scalar per sample and joins the output scaling around a static convolution.
pub(crate) fn factorized<B: Backend>(
    x: Tensor<B, 4>,
    factors: &AttentionFactors<B>,
    conv: &StaticConv<B>,
) -> Tensor<B, 4> {
    let [_, _, kh, kw] = conv.weight.dims();
    if kh * kw > 1 || BackendClass::of::<B>().engine() != Engine::TensorOps {
        return Formulation::columns::<B>(conv.layout).apply(Operands {
            x,
            factors: factors.clone(),
            weight: conv.weight.clone(),
        });
    }
    let [batch, _, _, _] = x.dims();
    let [_, rank, _] = factors.input.dims();
    let scaled = scale_rows(
        expand_terms(x, rank),
        input_scale(&factors.input, conv.layout.groups),
    );
    let (scaled, options) = conv.prepare(scaled, [1, 1]);
    let per_term = conv2d(scaled, conv.weight.clone(), None, options);
    let [_, channels_out, _, _] = per_term.dims();
    let output_scale = (factors.output.clone() * factors.kernel.clone()).reshape([
        batch * rank,
        channels_out,
        1,
        1,
    ]);
    sum_terms(scale_rows(per_term, output_scale), rank)
}

/// A static convolution, `conv2d(x, W) + bias` with burn's `Conv2d` parameters and options.
///
/// On flex it runs the factorized path's fused loops with unit factors, which take a forward and
/// backward pass in about half the time of flex's own convolution (see the README's cost
/// section) and keep nothing but the input. Elsewhere it is burn's convolution, on
/// the input as [`StaticConv::prepare`] prepares it.
pub(crate) fn static_convolution<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, _, height, width] = x.dims();
    let geometry = match ConvGeometry::new(
        [height, width],
        conv.kernel_size,
        conv.stride,
        conv.dilation,
        &conv.padding,
    ) {
        Ok(geometry) => geometry,
        // burn's convolution reports the shapes that do not fit.
        Err(_) => return conv.forward(x),
    };
    let dtype = x.dtype();
    let layer = StaticConv {
        weight: cast_to(conv.weight.val(), dtype),
        layout: ConvLayout {
            stride: conv.stride,
            dilation: conv.dilation,
            groups: conv.groups,
            geometry,
        },
    };
    let bias = conv.bias.as_ref().map(|bias| cast_to(bias.val(), dtype));
    if !BackendClass::of::<B>().static_by_columns() {
        let (x, options) = layer.prepare(x, conv.kernel_size);
        return conv2d(x, layer.weight, bias, options);
    }
    let [channels_out, group_in, kh, kw] = layer.weight.dims();
    let options = (&x.device(), x.dtype());
    let unit = |entries: usize| Tensor::ones([batch, 1, entries], options);
    let factors = AttentionFactors {
        input: unit(group_in),
        output: unit(channels_out),
        kernel: unit(kh * kw),
    };
    let output = Formulation::columns::<B>(layer.layout).apply(Operands {
        x,
        factors,
        weight: layer.weight,
    });
    match bias {
        Some(bias) => add_channel_bias(output, bias),
        None => output,
    }
}

/// `x + bias` for one `bias` value per channel of `x` `[N, C, H, W]`, as one scalar per row of
/// `[N·C, H·W]`, the broadcast that flex runs with SIMD (it runs a `[1, C, 1, 1]` operand element
/// by element). The bias of a batch norm folded into its convolution takes this in inference.
pub(crate) fn add_channel_bias<B: Backend>(x: Tensor<B, 4>, bias: Tensor<B, 1>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let per_row = bias
        .unsqueeze_dim::<2>(0)
        .expand([n, c])
        .reshape([n * c, 1]);
    (x.reshape([n * c, h * w]) + per_row).reshape([n, c, h, w])
}

/// `x ⊙ scale` for a `scale` of one value per row `[A, B, 1, 1]` of `x` `[A, B, H, W]`, as the
/// two-dimensional product that flex runs with SIMD (it runs the four-dimensional broadcast
/// element by element).
fn scale_rows<B: Backend>(x: Tensor<B, 4>, scale: Tensor<B, 4>) -> Tensor<B, 4> {
    let [a, b, h, w] = x.dims();
    (x.reshape([a * b, h * w]) * scale.reshape([a * b, 1])).reshape([a, b, h, w])
}

/// The input-channel factor `[B, r, in/g]` as one scale per row of `[N, in, H, W]`: entry `i`
/// scales channel `i` of every group alike. (An `expand`, not a `repeat_dim`: burn 0.21's
/// autodiff gives `repeat_dim` a wrong gradient.)
fn input_scale<B: Backend>(input: &Tensor<B, 3>, groups: usize) -> Tensor<B, 4> {
    let [batch, rank, group_in] = input.dims();
    input
        .clone()
        .unsqueeze_dim::<4>(2)
        .expand([batch, rank, groups, group_in])
        .reshape([batch * rank, groups * group_in, 1, 1])
}

/// `[B, …]` repeated for each of the `rank` terms, `[B·r, …]` (sample-major).
fn expand_terms<B: Backend>(x: Tensor<B, 4>, rank: usize) -> Tensor<B, 4> {
    if rank == 1 {
        return x;
    }
    let [batch, channels, height, width] = x.dims();
    x.unsqueeze_dim::<5>(1)
        .expand([batch, rank, channels, height, width])
        .reshape([batch * rank, channels, height, width])
}

/// The sum over the `rank` terms of `[B·r, …]`, `[B, …]`: the adjoint of [`expand_terms`].
fn sum_terms<B: Backend>(x: Tensor<B, 4>, rank: usize) -> Tensor<B, 4> {
    if rank == 1 {
        return x;
    }
    let [terms, channels, height, width] = x.dims();
    x.reshape([terms / rank, rank, channels * height * width])
        .sum_dim(1)
        .reshape([terms / rank, channels, height, width])
}

/// `value` as a `U`, when `T` is `U`: how a generic function takes a backend-specific route.
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn core::any::Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
}

/// A float tensor of a backend's primitive.
fn float_tensor<B: Backend, const D: usize>(primitive: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// Swaps the first two dimensions, materialised.
///
/// A large tensor is copied as one contiguous block per entry of the first dimension (a
/// concatenation): flex copies a permuted view of more than two dimensions element by element,
/// ten times slower. Where one of the two dimensions has size 1 this is a reshape: the CubeCL
/// backends of burn 0.21 compute wrong results on the strided views that `swap_dims` gives
/// there (seen on wgpu with batch 1).
fn swap_leading_dims<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    /// Below this many elements a strided copy costs less than one copy per leading entry.
    const SMALL: usize = 1 << 14;
    let mut dims = x.dims();
    let leading = dims[0];
    dims.swap(0, 1);
    if leading == 1 || dims[0] == 1 {
        return x.reshape(dims);
    }
    if D == 2 || x.shape().num_elements() < SMALL {
        return x.swap_dims(0, 1);
    }
    let mut part = dims;
    part[1] = 1;
    let parts = (0..leading)
        .map(|i| x.clone().narrow(0, i, 1).reshape(part))
        .collect();
    Tensor::cat(parts, 1)
}

/// The rows and columns an im2col pads its `[H, W]` input to: the layer's padding plus what
/// every tap's window of `stride · out` rows and columns needs to stay in range.
fn padded_size(input_size: [usize; 2], layout: &ConvLayout, kernel_size: [usize; 2]) -> [usize; 2] {
    let geometry = &layout.geometry;
    std::array::from_fn(|axis| {
        let padded = input_size[axis] + geometry.padding_start[axis] + geometry.padding_end[axis];
        let reach = (kernel_size[axis] - 1) * layout.dilation[axis]
            + layout.stride[axis] * geometry.output_size[axis];
        padded.max(reach)
    })
}

/// The kernel-tap view of a convolution's input: `[A, kh·kw, N, Ho, Wo]` for an `[A, N, H, W]`
/// input, tap `u·kw + v` holding the input pixels that kernel position `(u, v)` meets at each
/// output position.
///
/// Built in two steps, the kernel rows then the kernel columns, so that every copy reads a
/// view that is two-dimensional (rows of a fixed stride): flex copies those at memory speed,
/// and a window of rows *and* columns element by element, ten times slower. Strides are taken
/// by a reshape and a narrow rather than a stepped slice, whose backward burn 0.21 does not
/// support.
fn im2col<B: Backend>(
    x: Tensor<B, 4>,
    layout: &ConvLayout,
    kernel_size: [usize; 2],
) -> Tensor<B, 5> {
    let [a, n, height, width] = x.dims();
    let [kh, kw] = kernel_size;
    let [ho, wo] = layout.geometry.output_size;
    let [sh, sw] = layout.stride;
    let [dh, dw] = layout.dilation;
    let start = layout.geometry.padding_start;
    let [hp, wp] = padded_size([height, width], layout, kernel_size);
    let x = pad_zeros(
        x,
        [start[0], hp - height - start[0]],
        [start[1], wp - width - start[1]],
    );
    // Kernel row u: padded rows u·dh + sh·i, i < Ho, as [A, 1, N, Ho·Wp].
    let rows = (0..kh)
        .map(|u| {
            let window = x.clone().narrow(2, u * dh, sh * ho);
            let window = if sh > 1 {
                window.reshape([a * n * ho, sh * wp]).narrow(1, 0, wp)
            } else {
                window.reshape([a * n * ho, wp])
            };
            window.reshape([a, 1, n, ho * wp])
        })
        .collect();
    let rows = Tensor::cat(rows, 1).reshape([a * kh * n * ho, wp]);
    // Kernel column v: columns v·dw + sw·j, j < Wo, as [A·kh, 1, N·Ho·Wo].
    let taps = (0..kw)
        .map(|v| {
            let window = rows.clone().narrow(1, v * dw, sw * wo);
            let window = if sw > 1 {
                window.reshape([a * kh * n * ho * wo, sw]).narrow(1, 0, 1)
            } else {
                window
            };
            window.reshape([a * kh, 1, n * ho * wo])
        })
        .collect();
    Tensor::cat(taps, 1).reshape([a, kh * kw, n, ho, wo])
}

/// The adjoint of [`im2col`]: sums the tap view `[A, kh·kw, N, Ho, Wo]` back onto the input
/// pixels each tap was read from, `[A, N, H, W]` for an `[H, W]` input. The same two steps in
/// reverse, each tap spread onto the strided grid it came from and zero-padded into place: every
/// step copies two-dimensional views or sums element-wise.
fn col2im<B: Backend>(
    taps: Tensor<B, 5>,
    layout: &ConvLayout,
    kernel_size: [usize; 2],
    input_size: [usize; 2],
) -> Tensor<B, 4> {
    let [a, _, n, ho, wo] = taps.dims();
    let [kh, kw] = kernel_size;
    let [sh, sw] = layout.stride;
    let [dh, dw] = layout.dilation;
    let [hp, wp] = padded_size(input_size, layout, kernel_size);
    let taps = taps.reshape([a, kh * kw, n * ho * wo]);
    let padded = (0..kh)
        .map(|u| {
            // Kernel row u's taps placed on the padded columns, [1, 1, A·N·Ho, Wp].
            let row = (0..kw)
                .map(|v| {
                    let tap = taps.clone().narrow(1, u * kw + v, 1);
                    let spread = if sw > 1 {
                        pad_axis(tap.reshape([1, a * n * ho * wo, 1, 1]), 3, [0, sw - 1])
                    } else {
                        tap.reshape([1, 1, 1, a * n * ho * wo])
                    };
                    pad_axis(
                        spread.reshape([1, 1, a * n * ho, sw * wo]),
                        3,
                        [v * dw, wp - v * dw - sw * wo],
                    )
                })
                .reduce(|sum, placed| sum + placed)
                .expect("a kernel has at least one column");
            let spread = if sh > 1 {
                pad_axis(row.reshape([1, a * n * ho, 1, wp]), 2, [0, sh - 1])
            } else {
                row
            };
            pad_axis(
                spread.reshape([a, n, sh * ho, wp]),
                2,
                [u * dh, hp - u * dh - sh * ho],
            )
        })
        .reduce(|sum, placed| sum + placed)
        .expect("a kernel has at least one row");
    let start = layout.geometry.padding_start;
    padded
        .narrow(2, start[0], input_size[0])
        .narrow(3, start[1], input_size[1])
}

/// Zero-pads the last two dimensions by `[before, after]` rows and columns.
fn pad_zeros<B: Backend>(x: Tensor<B, 4>, rows: [usize; 2], columns: [usize; 2]) -> Tensor<B, 4> {
    pad_axis(pad_axis(x, 2, rows), 3, columns)
}

/// Zero-pads dimension `axis` by `[before, after]` entries, in the input's dtype (burn 0.21's
/// `Tensor::pad` creates its zeros in the default float dtype, which fails on a float64 input).
fn pad_axis<B: Backend>(x: Tensor<B, 4>, axis: usize, [before, after]: [usize; 2]) -> Tensor<B, 4> {
    if before == 0 && after == 0 {
        return x;
    }
    let zeros = |amount: usize| {
        let mut shape = x.dims();
        shape[axis] = amount;
        Tensor::<B, 4>::zeros(shape, (&x.device(), x.dtype()))
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(zeros(before));
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(zeros(after));
    }
    Tensor::cat(parts, axis)
}

/// The class of every backend this crate is built for, pinned with what follows from it (the
/// path `ComputePath::Auto` takes, the engine of the columns formulation, the route of static
/// convolutions): each follows what was measured on that backend, and a backend that a burn
/// upgrade wraps or renames would otherwise take the unmeasured, slower route silently.
#[cfg(test)]
mod backend_classes {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Autodiff;
    use burn::tensor::backend::Backend;

    use super::{BackendClass, CubeRuntime, Engine};
    use crate::ComputePath;

    /// `I` has `class` and autodiff over it `trains` (either checkpointing strategy); `Auto`
    /// picks for the first stage of a ResNet at 224² (64 channels, 56 × 56 pixels) `infers` on
    /// `I` and `trains` on autodiff; the columns formulation runs on `engine`; static
    /// convolutions take it `[in inference, in training]`.
    #[allow(dead_code)] // unused without backend features
    fn pinned<I: Backend>(
        [inner, autodiff]: [BackendClass; 2],
        [infers, trains]: [ComputePath; 2],
        engine: Engine,
        [static_infers, static_trains]: [bool; 2],
    ) {
        let check = |name: &str, of: BackendClass, class, auto, path, by_columns| {
            assert_eq!(of, class, "{name}");
            assert_eq!(auto, path, "{name}");
            assert_eq!(of.engine(), engine, "{name}");
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
        pinned::<burn::backend::Flex>(
            [Flex, Flex],
            [Factorized, Factorized],
            Engine::FlexLoops,
            [true, true],
        );
        #[cfg(feature = "ndarray")]
        pinned::<burn::backend::NdArray>(
            [Unmeasured, Unmeasured],
            [PerSampleKernel; 2],
            Engine::TensorOps,
            [false, false],
        );
        let cubecl = |runtime| [false, true].map(|autodiff| CubeCl { runtime, autodiff });
        #[cfg(feature = "wgpu")]
        pinned::<burn::backend::Wgpu>(
            cubecl(CubeRuntime::Wgpu),
            [PerSampleKernel, Factorized],
            Engine::CubeKernels,
            [false, true],
        );
        #[cfg(feature = "cuda")]
        pinned::<burn::backend::Cuda>(
            cubecl(CubeRuntime::Cuda),
            [PerSampleKernel, Factorized],
            Engine::CubeKernels,
            [false, false],
        );
        let _ = cubecl;
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{DType, Tensor};

    use super::*;

    type B = Autodiff<Flex>;

    fn normal<const D: usize>(shape: [usize; D], dtype: DType) -> Tensor<B, D> {
        crate::testing::normal(shape, dtype, [0.0, 1.0])
    }

    /// The static convolutions of the ResNets (the 7×7 stem, 1×1 shortcuts, 3×3 at strides 1
    /// and 2, the "d" stem's), and one with a bias and groups, through the fused loops: output and
    /// the gradients of x, W and the bias equal burn's convolution differentiated by autodiff, in
    /// float64 and float32. The two differ in the order of their sums only (at most 147 terms
    /// here): 1e-12 of the largest value in float64, 1e-5 in float32 (about 100 ulps).
    #[test]
    fn static_convolution_equals_burns() {
        assert!(
            fused_columns::<B>(),
            "the fused loops run on Autodiff<Flex>"
        );
        // (channels, kernel, stride, padding, groups, bias, [batch, H, W])
        let cases = [
            ([3, 8], 7, 2, 3, 1, false, [2, 17, 16]),
            ([4, 8], 1, 2, 0, 1, false, [2, 9, 8]),
            ([6, 6], 3, 1, 1, 1, false, [3, 8, 7]),
            ([4, 8], 3, 2, 1, 1, false, [2, 9, 9]),
            ([4, 6], 3, 1, 1, 2, true, [2, 5, 6]),
        ];
        let dtypes = [(DType::F64, 1e-12), (DType::F32, 1e-5)];
        for (
            (channels, kernel, stride, padding, groups, bias, [batch, h, w]),
            (dtype, tolerance),
        ) in cases
            .into_iter()
            .flat_map(|case| dtypes.map(|dtype| (case, dtype)))
        {
            let normal = |shape| normal(shape, dtype);
            let name =
                format!("{dtype:?} {channels:?} {kernel}×{kernel} stride {stride} groups {groups}");
            let conv = Conv2dConfig::new(channels, [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    padding, padding, padding, padding,
                ))
                .with_groups(groups)
                .with_bias(bias)
                .init::<B>(&Default::default());
            let mut conv = conv;
            conv.weight = Param::from_tensor(normal(conv.weight.dims()));
            conv.bias = conv
                .bias
                .map(|b| Param::from_tensor(normal([b.dims()[0], 1, 1, 1]).reshape([b.dims()[0]])));
            let x = normal([batch, channels[0], h, w]).require_grad();
            let fused = static_convolution(&conv, x.clone());
            let probe = normal(fused.dims());
            let evaluate = |output: Tensor<B, 4>| {
                let grads = (output.clone() * probe.clone()).sum().backward();
                let mut all = vec![
                    output.into_data(),
                    x.grad(&grads).expect("x's gradient").into_data(),
                    conv.weight.grad(&grads).expect("W's gradient").into_data(),
                ];
                if let Some(bias) = &conv.bias {
                    all.push(bias.grad(&grads).expect("the bias's gradient").into_data());
                }
                all
            };
            let actual = evaluate(fused);
            let expected = evaluate(conv.forward(x.clone()));
            for (what, (actual, expected)) in ["output", "x", "W", "bias"]
                .iter()
                .zip(actual.into_iter().zip(expected))
            {
                let what = format!("{name}: {what}");
                crate::testing::assert_close(&what, &actual, &expected, tolerance);
            }
        }
    }
}
