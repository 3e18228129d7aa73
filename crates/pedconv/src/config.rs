//! [`PedConv2dConfig`]: the hyper-parameters of a PEDConv layer, their validation, and the
//! choice of compute path.

use burn::config::Config;
use burn::module::Initializer;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;

use crate::backend::BackendClass;
use crate::Error;

/// How [`PedConv2d`](crate::PedConv2d) applies its per-sample kernel. Every path computes the same
/// function (the tests check outputs and gradients against each other and against the reference);
/// they differ in what they materialise and so in time and memory.
///
/// In training on `Autodiff` over flex, ndarray, wgpu or CUDA (this crate's features of those
/// names, with or without burn's fusion; flex is on by default) each path runs as one autodiff
/// operation whose backward pass recomputes the path's large intermediates: what the layer keeps
/// for the backward pass is then its input, its factors and, where `Factorized` takes its
/// columns formulation (kernels larger than 1×1, and every kernel on flex and the CubeCL
/// backends), one output-sized tensor. On other backends autodiff differentiates the same
/// composition of tensor operations and keeps the intermediates named below until the backward
/// pass.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ComputePath {
    /// The reference implementation: build the `[B·Cout, Cin/g, kh, kw]` per-sample kernels and run
    /// one grouped convolution with `B·g` groups. Intermediates: the kernels and the modulation,
    /// `B·Cout·(Cin/g)·kh·kw` elements each.
    PerSampleKernel,
    /// Never builds per-sample kernels. The channel factors scale the input and the output of a
    /// static convolution (`y = a_out ⊙ conv(x ⊙ a_in, W ⊙ a_k)`); for kernels larger than 1×1
    /// the spatial factor `a_k` scales the columns of an im2col of the input, which a matrix
    /// product with the reshaped base weight then contracts. Intermediates: the scaled input for
    /// 1×1 kernels, else the columns and their scaled copy, `B·Cin·kh·kw·Ho·Wo` elements each.
    /// On flex (float32 and float64), for every kernel size, fused loops instead: the scaled
    /// columns of one tile of about 512 output positions at a time, in a buffer that stays in
    /// cache, each tile's matrix products on one thread; nothing column-sized is allocated. On
    /// wgpu and CUDA (with or without burn's fusion), for every kernel size, CubeCL kernels
    /// around burn's matrix product: the scaled columns written in one pass, no scaled copy.
    Factorized,
    /// Per backend, the path `pedconv bench` measured fastest. On flex (and `Autodiff` over it,
    /// float32 or float64), [`Factorized`](Self::Factorized), whose fused loops train (forward
    /// and backward) faster than both the per-sample kernels and burn's static convolution at
    /// every PEDConv layer shape of ResNet-18 and ResNet-50. On `Autodiff` over the CubeCL
    /// backends (wgpu, CUDA), `Factorized` too: on wgpu (Vulkan) its kernels train several
    /// times faster than the per-sample kernels at every ResNet-18 layer (the figures are in
    /// `docs/benchmarks.md`).
    /// Elsewhere, and for inference on the CubeCL backends (where the per-sample kernels' single
    /// grouped convolution is the faster forward on small inputs), the
    /// path that materialises fewer elements: `Factorized` whenever `Cout/g ≥ Ho·Wo` (its
    /// columns, or its scaled input for 1×1 kernels, are then no larger than the per-sample
    /// kernels), else [`PerSampleKernel`](Self::PerSampleKernel).
    Auto,
}

impl ComputePath {
    /// The concrete path used on backend `B` for a layer with `out_channels_per_group` output
    /// channels per group and an `output_pixels = Ho·Wo` output plane.
    pub fn resolve<B: Backend>(
        self,
        out_channels_per_group: usize,
        output_pixels: usize,
    ) -> ComputePath {
        let measured_fastest = matches!(
            BackendClass::of::<B>(),
            BackendClass::Flex | BackendClass::CubeCl { autodiff: true, .. }
        );
        match self {
            ComputePath::Auto if measured_fastest || out_channels_per_group >= output_pixels => {
                ComputePath::Factorized
            }
            ComputePath::Auto => ComputePath::PerSampleKernel,
            concrete => concrete,
        }
    }
}

/// Configuration of a [`PedConv2d`](crate::PedConv2d) layer, built like burn's `Conv2dConfig`:
/// `PedConv2dConfig::new([in, out], [kh, kw]).with_stride(..).with_padding(..).init(&device)`.
///
/// The defaults are those of the paper's code: rank-1 attention with reduction 16, noise std 0.1,
/// the information-maximisation decoder on, and no bias.
#[derive(Config, Debug)]
pub struct PedConv2dConfig {
    /// The number of input and output channels, `[in, out]`.
    pub channels: [usize; 2],
    /// The size of the kernel, `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// The stride of the convolution.
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Spacing between kernel elements.
    #[config(default = "[1, 1]")]
    pub dilation: [usize; 2],
    /// Controls the connections between input and output channels. The input attention has
    /// `in / groups` entries and, as in the reference, scales channel `i` of every group alike.
    #[config(default = "1")]
    pub groups: usize,
    /// The padding configuration.
    #[config(default = "PaddingConfig2d::Valid")]
    pub padding: PaddingConfig2d,
    /// If a (static, not attention-scaled) bias is added to the output. The reference has none.
    #[config(default = false)]
    pub bias: bool,
    /// The attention branch's hidden width is `max(1, in / reduction)`.
    #[config(default = 16)]
    pub reduction: usize,
    /// The number of rank-1 (CP) terms summed into the kernel modulation; the paper uses 1.
    #[config(default = 1)]
    pub rank: usize,
    /// Standard deviation of the Gaussian noise added to the attention logits in training;
    /// 0 turns the noise off.
    #[config(default = 0.1)]
    pub noise_std: f64,
    /// If the training-only decoder that reconstructs the pooled input from the attention
    /// logits (the information-maximisation loss) is built.
    #[config(default = true)]
    pub info_max_decoder: bool,
    /// The compute path used by `forward`.
    #[config(default = "ComputePath::Auto")]
    pub compute_path: ComputePath,
    /// Initializer of the base weight (and bias); the default is PyTorch's `Conv2d` default, as
    /// in burn's `Conv2dConfig`. The attention and decoder layers use burn's `Linear` default,
    /// which is PyTorch's.
    #[config(default = "Initializer::KaimingUniform{gain:1.0/3.0f64.sqrt(),fan_out_only:false}")]
    pub initializer: Initializer,
}

fn invalid(message: String) -> Result<(), Error> {
    Err(Error::Config {
        config: "PedConv2dConfig",
        message,
    })
}

impl PedConv2dConfig {
    /// Checks every value that does not depend on the input size.
    pub fn validate(&self) -> Result<(), Error> {
        let [channels_in, channels_out] = self.channels;
        for (name, values) in [
            ("channels", self.channels),
            ("kernel_size", self.kernel_size),
            ("stride", self.stride),
            ("dilation", self.dilation),
        ] {
            if values.contains(&0) {
                return invalid(format!("{name} must be positive, got {values:?}"));
            }
        }
        for (name, value) in [
            ("groups", self.groups),
            ("reduction", self.reduction),
            ("rank", self.rank),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be positive, got 0"));
            }
        }
        if channels_in % self.groups != 0 || channels_out % self.groups != 0 {
            return invalid(format!(
                "channels must be divisible by groups, got channels={:?} and groups={}",
                self.channels, self.groups
            ));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return invalid(format!(
                "noise_std must be finite and non-negative, got {}",
                self.noise_std
            ));
        }
        Ok(())
    }

    /// The attention branch's hidden width, `max(1, in / reduction)` (the reference's
    /// `in // reduction`, kept from reaching zero for narrow layers).
    pub fn hidden_width(&self) -> usize {
        (self.channels[0] / self.reduction.max(1)).max(1)
    }
}
