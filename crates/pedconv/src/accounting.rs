//! Parameter and multiply-accumulate counts of a PEDConv layer, from its configuration alone.

use crate::config::PedConv2dConfig;
use crate::geometry::ConvGeometry;

/// Parameters of a layer, split by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParameterCounts {
    /// The base weight (and bias): what a static convolution of the same shape has.
    pub base: usize,
    /// The attention MLP (shared bottleneck and the three heads).
    pub attention: usize,
    /// The training-only information-maximisation decoder.
    pub decoder: usize,
}

impl ParameterCounts {
    /// Parameters used at inference: base and attention.
    pub fn inference(&self) -> usize {
        self.base + self.attention
    }

    /// Every parameter, the decoder included.
    pub fn total(&self) -> usize {
        self.inference() + self.decoder
    }

    /// What a static convolution of the same shape has: the base alone.
    pub fn static_part(&self) -> Self {
        Self {
            base: self.base,
            ..Self::default()
        }
    }
}

impl core::ops::Add for ParameterCounts {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            base: self.base + other.base,
            attention: self.attention + other.attention,
            decoder: self.decoder + other.decoder,
        }
    }
}

/// Multiply-accumulates of one forward for one sample, split by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MacCounts {
    /// The convolution itself: `out · in/g · kh · kw · Ho · Wo`, as for a static convolution.
    pub conv: u64,
    /// The attention MLP's matrix products (`in · hidden + hidden · r · (in/g + out + kh·kw)`).
    pub attention: u64,
    /// Applying the factors to the kernel: one multiply per kernel element and rank term
    /// (`r · out · in/g · kh · kw`), as the reference's per-sample kernel does.
    pub modulation: u64,
    /// The training-only decoder's matrix products.
    pub decoder: u64,
}

impl MacCounts {
    /// Multiply-accumulates of an inference forward: conv, attention and modulation.
    pub fn inference(&self) -> u64 {
        self.conv + self.attention + self.modulation
    }

    /// What a static convolution of the same shape does: the convolution alone.
    pub fn static_part(&self) -> Self {
        Self {
            conv: self.conv,
            ..Self::default()
        }
    }
}

impl core::ops::Add for MacCounts {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            conv: self.conv + other.conv,
            attention: self.attention + other.attention,
            modulation: self.modulation + other.modulation,
            decoder: self.decoder + other.decoder,
        }
    }
}

/// Parameters of a `Linear(d_in → d_out)` with bias.
fn linear_params(d_in: usize, d_out: usize) -> usize {
    d_in * d_out + d_out
}

impl PedConv2dConfig {
    /// The parameters the layer built from this configuration has.
    pub fn parameter_counts(&self) -> ParameterCounts {
        let [channels_in, channels_out] = self.channels;
        let kernel_elements = channels_out * channels_in / self.groups * self.kernel_taps();
        let hidden = self.hidden_width();
        let logits = self.attention_logits();
        ParameterCounts {
            base: kernel_elements + if self.bias { channels_out } else { 0 },
            attention: linear_params(channels_in, hidden) + linear_params(hidden, logits),
            decoder: if self.info_max_decoder {
                linear_params(logits, hidden) + linear_params(hidden, channels_in)
            } else {
                0
            },
        }
    }

    /// Multiply-accumulates of one forward for one `[H, W]` input.
    ///
    /// # Panics
    /// When the dilated kernel does not fit in the padded input.
    pub fn macs(&self, input_size: [usize; 2]) -> MacCounts {
        let geometry = ConvGeometry::new(
            input_size,
            self.kernel_size,
            self.stride,
            self.dilation,
            &self.padding,
        )
        .unwrap_or_else(|error| panic!("PedConv2dConfig::macs: {error}"));
        let [channels_in, channels_out] = self.channels;
        let kernel_elements =
            (channels_out * channels_in / self.groups * self.kernel_taps()) as u64;
        let hidden = self.hidden_width() as u64;
        let logits = self.attention_logits() as u64;
        MacCounts {
            conv: kernel_elements * geometry.output_pixels() as u64,
            attention: channels_in as u64 * hidden + hidden * logits,
            modulation: self.rank as u64 * kernel_elements,
            decoder: if self.info_max_decoder {
                logits * hidden + hidden * channels_in as u64
            } else {
                0
            },
        }
    }

    fn kernel_taps(&self) -> usize {
        self.kernel_size[0] * self.kernel_size[1]
    }

    /// The attention logits per sample: `rank · (in/g + out + kh·kw)`.
    fn attention_logits(&self) -> usize {
        let [channels_in, channels_out] = self.channels;
        self.rank * (channels_in / self.groups + channels_out + self.kernel_taps())
    }
}
