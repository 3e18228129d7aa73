//! [`PedConv2d`]: the PEDConv layer.

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::attention::{Attention, AttentionFactors, AttentionNoise, AttentionSizes};
use crate::config::{ComputePath, PedConv2dConfig};
use crate::geometry::ConvGeometry;
use crate::paths::{self, ConvLayout, StaticConv};
use crate::precision::cast_to;
use crate::Error;

/// A parameter-efficient dynamic convolution (PEDConv): a 2-D convolution whose kernel is, for
/// each sample `b`, the shared base weight rescaled element by element by a rank-`r` CP product
/// of sigmoid attentions computed from the globally pooled input:
///
/// `W_b[o, i, u, v] = W[o, i, u, v] · Σ_r a_out[b, r, o] · a_in[b, r, i] · a_k[b, r, u·kw + v]`.
///
/// Build it with [`PedConv2dConfig`]; it replaces a burn `Conv2d` wherever one takes
/// `[B, in, H, W]` to `[B, out, Ho, Wo]`.
///
/// Training behaviour follows burn's `Dropout`: on an autodiff backend `forward` adds
/// `noise_std · N(0, 1)` to the attention logits; on an inference backend (for example after
/// `.valid()`) it is deterministic. Use [`forward_train`](Self::forward_train) to also get the
/// information-maximisation loss that the paper adds to the training loss.
#[derive(Module, Debug)]
pub struct PedConv2d<B: Backend> {
    /// Base weight `W`, `[out, in/groups, kh, kw]`.
    pub weight: Param<Tensor<B, 4>>,
    /// Optional static bias `[out]`, added after the modulated convolution.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The attention branch (and the training-only decoder).
    pub attn: Attention<B>,
    /// Stride of the convolution.
    pub stride: [usize; 2],
    /// Size of the kernel.
    pub kernel_size: [usize; 2],
    /// Spacing between kernel elements.
    pub dilation: [usize; 2],
    /// Controls the connections between input and output channels.
    pub groups: usize,
    /// The padding configuration.
    pub padding: PaddingConfig2d,
    /// The number of rank-1 terms of the kernel modulation.
    pub rank: usize,
    /// Standard deviation of the training noise on the attention logits.
    pub noise_std: f64,
    /// The compute path `forward` uses.
    pub compute_path: ComputePath,
}

/// The result of a training forward: the output and, when the layer has its decoder, the
/// layer's information-maximisation loss (shape `[1]`). A model adds
/// `0.001 · Σ info_max_loss` over its layers to the task loss, as the paper does.
#[derive(Debug, Clone)]
pub struct PedConvOutput<B: Backend> {
    /// `[B, out, Ho, Wo]`.
    pub output: Tensor<B, 4>,
    /// The mean squared error of the decoder's reconstruction of the pooled input.
    pub info_max_loss: Option<Tensor<B, 1>>,
}

impl PedConv2dConfig {
    /// Builds the layer, or says which value of the configuration is invalid.
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<PedConv2d<B>, Error> {
        self.validate()?;
        let [channels_in, channels_out] = self.channels;
        let [kh, kw] = self.kernel_size;
        let group_in = channels_in / self.groups;
        let fan_in = group_in * kh * kw;
        let fan_out = channels_out / self.groups * kh * kw;
        let weight = self.initializer.init_with(
            [channels_out, group_in, kh, kw],
            Some(fan_in),
            Some(fan_out),
            device,
        );
        let bias = self.bias.then(|| {
            self.initializer
                .init_with([channels_out], Some(fan_in), Some(fan_out), device)
        });
        let sizes = AttentionSizes {
            input: group_in,
            output: channels_out,
            kernel: kh * kw,
            rank: self.rank,
        };
        Ok(PedConv2d {
            weight,
            bias,
            attn: Attention::new(
                channels_in,
                self.hidden_width(),
                sizes,
                self.info_max_decoder,
                device,
            ),
            stride: self.stride,
            kernel_size: self.kernel_size,
            dilation: self.dilation,
            groups: self.groups,
            padding: self.padding.clone(),
            rank: self.rank,
            noise_std: self.noise_std,
            compute_path: self.compute_path,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// When the configuration is invalid, with the message of [`try_init`](Self::try_init).
    pub fn init<B: Backend>(&self, device: &B::Device) -> PedConv2d<B> {
        self.try_init(device)
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

impl<B: Backend> PedConv2d<B> {
    /// Applies the layer. On an autodiff backend, the attention logits get the training noise;
    /// the information-maximisation loss is not computed (see [`forward_train`](Self::forward_train)).
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height_in, width_in]`
    /// - `output`: `[batch_size, channels_out, height_out, width_out]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let noise = (B::ad_enabled(&input.device()) && self.noise_std > 0.0)
            .then(|| self.sample_noise(&input));
        self.apply(input, noise, false).output
    }

    /// The training forward: samples the noise (when `noise_std > 0`) and returns the
    /// information-maximisation loss with the output (when the layer has its decoder).
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height_in, width_in]`
    /// - `output.output`: `[batch_size, channels_out, height_out, width_out]`
    /// - `output.info_max_loss`: `[1]`
    pub fn forward_train(&self, input: Tensor<B, 4>) -> PedConvOutput<B> {
        let noise = (self.noise_std > 0.0).then(|| self.sample_noise(&input));
        self.apply(input, noise, true)
    }

    /// The training forward with the given standard normal noise (scaled by `noise_std`), for
    /// reproducible runs and tests.
    ///
    /// # Shapes
    /// As [`forward_train`](Self::forward_train); the noise shapes are those documented on
    /// [`AttentionNoise`].
    ///
    /// # Panics
    /// When a noise tensor's shape differs from the logits it is added to.
    pub fn forward_train_with_noise(
        &self,
        input: Tensor<B, 4>,
        noise: AttentionNoise<B>,
    ) -> PedConvOutput<B> {
        self.apply(input, Some(noise), true)
    }

    /// A copy of this layer that uses the given compute path.
    pub fn with_compute_path(mut self, compute_path: ComputePath) -> Self {
        self.compute_path = compute_path;
        self
    }

    /// The attention factors for an input, without noise.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height_in, width_in]`
    /// - factors: `[batch_size, rank, entries]` (see [`AttentionFactors`])
    pub fn attention(&self, input: Tensor<B, 4>) -> AttentionFactors<B> {
        self.check_input(&input);
        self.attn
            .forward(global_average(input), self.sizes(), None)
            .factors
    }

    /// The convolution with the given attention factors instead of the attention branch's: with
    /// every factor equal to one this is the static convolution with the base weight.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height_in, width_in]`
    /// - `factors`: `[batch_size, rank, entries]` (see [`AttentionFactors`])
    /// - output: `[batch_size, channels_out, height_out, width_out]`
    ///
    /// # Panics
    /// When a factor's shape is not `[batch_size, rank, entries]`.
    pub fn forward_with_factors(
        &self,
        input: Tensor<B, 4>,
        factors: &AttentionFactors<B>,
    ) -> Tensor<B, 4> {
        let geometry = self.check_input(&input);
        let sizes = self.sizes();
        let batch = input.dims()[0];
        for (name, factor, entries) in [
            ("input", &factors.input, sizes.input),
            ("output", &factors.output, sizes.output),
            ("kernel", &factors.kernel, sizes.kernel),
        ] {
            assert_eq!(
                factor.dims(),
                [batch, sizes.rank, entries],
                "AttentionFactors::{name} has shape {:?}, the layer needs [batch, rank, entries] = {:?}",
                factor.dims(),
                [batch, sizes.rank, entries]
            );
        }
        self.modulated_conv(input, factors, &geometry)
    }

    /// The sizes of the attention factors.
    pub fn sizes(&self) -> AttentionSizes {
        let [channels_out, group_in, kh, kw] = self.weight.dims();
        AttentionSizes {
            input: group_in,
            output: channels_out,
            kernel: kh * kw,
            rank: self.rank,
        }
    }

    /// The spatial layout of this layer on an `[H, W]` input.
    ///
    /// # Panics
    /// When the dilated kernel does not fit in the padded input.
    pub fn geometry(&self, input_size: [usize; 2]) -> ConvGeometry {
        ConvGeometry::new(
            input_size,
            self.kernel_size,
            self.stride,
            self.dilation,
            &self.padding,
        )
        .unwrap_or_else(|error| panic!("PedConv2d: {error}"))
    }

    fn sample_noise(&self, input: &Tensor<B, 4>) -> AttentionNoise<B> {
        AttentionNoise::sample(input.dims()[0], self.sizes(), input)
    }

    fn check_input(&self, input: &Tensor<B, 4>) -> ConvGeometry {
        let [_, channels_in, height, width] = input.dims();
        let expected = self.weight.dims()[1] * self.groups;
        assert_eq!(
            channels_in,
            expected,
            "PedConv2d expects {expected} input channels, got an input of shape {:?}",
            input.dims()
        );
        self.geometry([height, width])
    }

    fn apply(
        &self,
        input: Tensor<B, 4>,
        noise: Option<AttentionNoise<B>>,
        info_max: bool,
    ) -> PedConvOutput<B> {
        let geometry = self.check_input(&input);
        let pooled = global_average(input.clone());
        let pass = self.attn.forward(
            pooled.clone(),
            self.sizes(),
            noise.map(|noise| (noise, self.noise_std)),
        );
        let info_max_loss = self
            .attn
            .decoder
            .as_ref()
            .filter(|_| info_max)
            .map(|decoder| decoder.loss(pass.logits, pooled));
        PedConvOutput {
            output: self.modulated_conv(input, &pass.factors, &geometry),
            info_max_loss,
        }
    }

    fn modulated_conv(
        &self,
        input: Tensor<B, 4>,
        factors: &AttentionFactors<B>,
        geometry: &ConvGeometry,
    ) -> Tensor<B, 4> {
        let channels_out = self.weight.dims()[0];
        let conv = StaticConv {
            weight: cast_to(self.weight.val(), input.dtype()),
            layout: ConvLayout {
                stride: self.stride,
                dilation: self.dilation,
                groups: self.groups,
                geometry: *geometry,
            },
        };
        let output = match self
            .compute_path
            .resolve::<B>(channels_out / self.groups, geometry.output_pixels())
        {
            ComputePath::PerSampleKernel => paths::per_sample_kernel(input, factors, &conv),
            _ => paths::factorized(input, factors, &conv),
        };
        match &self.bias {
            Some(bias) => paths::add_channel_bias(output, bias.val()),
            None => output,
        }
    }
}

/// The global average pool `[B, in]` of `[B, in, H, W]`, as the mean of each row of
/// `[B·in, H·W]`: its gradient is then one row broadcast, which flex runs with SIMD (a mean over
/// the two trailing dimensions has two gradient steps that it runs element by element).
fn global_average<B: Backend>(input: Tensor<B, 4>) -> Tensor<B, 2> {
    let [batch, channels, height, width] = input.dims();
    input
        .reshape([batch * channels, height * width])
        .mean_dim(1)
        .reshape([batch, channels])
}
