//! The attention branch of a PEDConv layer: a bottleneck MLP from the pooled input to the three
//! factors of the kernel modulation, and the training-only information-maximisation decoder.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::activation::{relu, sigmoid};
use crate::precision::{at_least_f32, linear};

/// Sizes of the three attention factors of one layer, per rank-1 term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSizes {
    /// Entries of the input-channel factor, `in / groups`.
    pub input: usize,
    /// Entries of the output-channel factor, `out`.
    pub output: usize,
    /// Entries of the spatial factor, `kh·kw`.
    pub kernel: usize,
    /// The number of rank-1 terms.
    pub rank: usize,
}

impl AttentionSizes {
    /// The total number of attention logits per sample (the decoder's input width).
    pub fn logits(&self) -> usize {
        self.rank * (self.input + self.output + self.kernel)
    }
}

/// The attention MLP. Field names follow the reference's `state_dict` (`attn.fc_share`, …).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Shared bottleneck, `in → hidden`, followed by a ReLU.
    pub fc_share: Linear<B>,
    /// Head of the input-channel factor, `hidden → rank·in/groups`.
    pub fc_inp: Linear<B>,
    /// Head of the output-channel factor, `hidden → rank·out`.
    pub fc_oup: Linear<B>,
    /// Head of the spatial factor, `hidden → rank·kh·kw`.
    pub fc_k: Linear<B>,
    /// The information-maximisation decoder; `None` when the configuration turns it off.
    pub decoder: Option<InfoMaxDecoder<B>>,
}

/// Reconstructs the pooled input from the attention logits: `Linear → ReLU → Linear`
/// (the reference's `decoder.0` and `decoder.2`).
#[derive(Module, Debug)]
pub struct InfoMaxDecoder<B: Backend> {
    /// `logits → hidden` (the reference's `decoder.0`).
    pub hidden: Linear<B>,
    /// `hidden → in` (the reference's `decoder.2`).
    pub output: Linear<B>,
}

/// Standard normal noise for the attention logits of one training forward, one row per sample;
/// the layer multiplies it by its `noise_std`. Passing it explicitly makes a training forward
/// reproducible.
#[derive(Debug, Clone)]
pub struct AttentionNoise<B: Backend> {
    /// `[batch, rank·in/groups]`.
    pub input: Tensor<B, 2>,
    /// `[batch, rank·out]`.
    pub output: Tensor<B, 2>,
    /// `[batch, rank·kh·kw]`.
    pub kernel: Tensor<B, 2>,
}

impl<B: Backend> AttentionNoise<B> {
    /// Draws standard normal noise for a batch, in the float dtype `like` has, on its device.
    pub fn sample(batch: usize, sizes: AttentionSizes, like: &Tensor<B, 4>) -> Self {
        let draw = |width: usize| {
            Tensor::random(
                [batch, sizes.rank * width],
                Distribution::Normal(0.0, 1.0),
                (&like.device(), like.dtype()),
            )
        };
        Self {
            input: draw(sizes.input),
            output: draw(sizes.output),
            kernel: draw(sizes.kernel),
        }
    }
}

/// The three attention factors of a batch, each `[batch, rank, entries]`, in `(0, 1)`.
#[derive(Debug, Clone)]
pub struct AttentionFactors<B: Backend> {
    /// Input-channel factor `a_in`, `[B, r, in/groups]`.
    pub input: Tensor<B, 3>,
    /// Output-channel factor `a_out`, `[B, r, out]`.
    pub output: Tensor<B, 3>,
    /// Spatial factor `a_k`, `[B, r, kh·kw]` (row-major over the kernel taps).
    pub kernel: Tensor<B, 3>,
}

/// What the attention branch computes for a batch.
pub(crate) struct AttentionPass<B: Backend> {
    pub factors: AttentionFactors<B>,
    /// The (noisy) logits `cat(z_in, z_out, z_k)`, `[B, rank·(in/g + out + kh·kw)]`.
    pub logits: Tensor<B, 2>,
}

impl<B: Backend> Attention<B> {
    /// Builds the branch for the given sizes, with `hidden` units in the bottleneck.
    pub(crate) fn new(
        channels_in: usize,
        hidden: usize,
        sizes: AttentionSizes,
        decoder: bool,
        device: &B::Device,
    ) -> Self {
        let linear = |d_in, d_out| LinearConfig::new(d_in, d_out).init(device);
        Self {
            fc_share: linear(channels_in, hidden),
            fc_inp: linear(hidden, sizes.rank * sizes.input),
            fc_oup: linear(hidden, sizes.rank * sizes.output),
            fc_k: linear(hidden, sizes.rank * sizes.kernel),
            decoder: decoder.then(|| InfoMaxDecoder {
                hidden: linear(sizes.logits(), hidden),
                output: linear(hidden, channels_in),
            }),
        }
    }

    /// Attention factors from the pooled input `[B, in]`, with `noise_std · noise` added to the
    /// logits when noise is given.
    pub(crate) fn forward(
        &self,
        pooled: Tensor<B, 2>,
        sizes: AttentionSizes,
        noise: Option<(AttentionNoise<B>, f64)>,
    ) -> AttentionPass<B> {
        let hidden = relu(linear(&self.fc_share, pooled));
        let mut z_in = linear(&self.fc_inp, hidden.clone());
        let mut z_out = linear(&self.fc_oup, hidden.clone());
        let mut z_k = linear(&self.fc_k, hidden);
        if let Some((noise, std)) = noise {
            check_noise_shape("input", &noise.input, &z_in);
            check_noise_shape("output", &noise.output, &z_out);
            check_noise_shape("kernel", &noise.kernel, &z_k);
            z_in = z_in + noise.input.mul_scalar(std);
            z_out = z_out + noise.output.mul_scalar(std);
            z_k = z_k + noise.kernel.mul_scalar(std);
        }
        let batch = z_in.dims()[0];
        let factor =
            |z: &Tensor<B, 2>, entries| sigmoid(z.clone()).reshape([batch, sizes.rank, entries]);
        AttentionPass {
            factors: AttentionFactors {
                input: factor(&z_in, sizes.input),
                output: factor(&z_out, sizes.output),
                kernel: factor(&z_k, sizes.kernel),
            },
            logits: Tensor::cat(vec![z_in, z_out, z_k], 1),
        }
    }
}

impl<B: Backend> InfoMaxDecoder<B> {
    /// The information-maximisation loss: the mean squared error between the pooled input (as a
    /// constant target) and its reconstruction from the logits, in float32 at least. Shape `[1]`.
    pub(crate) fn loss(&self, logits: Tensor<B, 2>, pooled: Tensor<B, 2>) -> Tensor<B, 1> {
        let reconstruction = linear(&self.output, relu(linear(&self.hidden, logits)));
        (at_least_f32(reconstruction) - at_least_f32(pooled.detach()))
            .square()
            .mean()
    }
}

fn check_noise_shape<B: Backend>(name: &str, noise: &Tensor<B, 2>, logits: &Tensor<B, 2>) {
    assert_eq!(
        noise.dims(),
        logits.dims(),
        "AttentionNoise::{name} has shape {:?}, the layer's {name} logits have shape {:?}",
        noise.dims(),
        logits.dims()
    );
}
