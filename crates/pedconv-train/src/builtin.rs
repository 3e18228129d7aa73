//! The built-in data set, generated procedurally (no download): noisy coloured stripe patterns
//! whose class is the stripes' orientation (0°, 45°, 90°, 135°) crossed with a dominant colour
//! channel, for `4 · 3 = 12` classes. Every image is a pure function of its index and seed.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// The number of classes of the built-in set.
pub const CLASSES: usize = 12;

/// One image `[3, size, size]` (channel-major, roughly zero-mean) and its class.
#[derive(Debug, Clone)]
pub struct Item {
    pub pixels: Vec<f32>,
    pub label: usize,
}

/// `len` images of `size × size`, drawn with `seed` (use different seeds for training and
/// validation).
#[derive(Debug, Clone)]
pub struct BuiltinDataset {
    pub len: usize,
    pub size: usize,
    pub seed: u64,
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

impl Dataset<Item> for BuiltinDataset {
    fn get(&self, index: usize) -> Option<Item> {
        if index >= self.len {
            return None;
        }
        let mut rng = Rng(self.seed.wrapping_mul(0x1000_0000_01B3) ^ index as u64);
        let label = (rng.next() * CLASSES as f32) as usize % CLASSES;
        let (orientation, colour) = (label % 4, label / 4);
        let period = 3.0 + 5.0 * rng.next();
        let phase = rng.next() * std::f32::consts::TAU;
        let contrast = 0.4 + 0.6 * rng.next();
        let size = self.size;
        let mut pixels = vec![0.0f32; 3 * size * size];
        for row in 0..size {
            for col in 0..size {
                let (r, c) = (row as f32, col as f32);
                let t = [c, r + c, r, r - c][orientation];
                let wave = contrast * (std::f32::consts::TAU * t / period + phase).sin();
                for channel in 0..3 {
                    let gain = if channel == colour { 1.0 } else { 0.35 };
                    let noise = (rng.next() + rng.next() + rng.next() - 1.5) * 0.9;
                    pixels[channel * size * size + row * size + col] = gain * wave + noise;
                }
            }
        }
        Some(Item { pixels, label })
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// A batch of images `[B, 3, H, W]` and labels `[B]`.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    pub images: Tensor<B, 4>,
    pub labels: Tensor<B, 1, Int>,
}

/// Stacks [`Item`]s of one size into an [`ImageBatch`].
#[derive(Debug, Clone, Default)]
pub struct ImageBatcher;

impl<B: Backend> Batcher<B, Item, ImageBatch<B>> for ImageBatcher {
    fn batch(&self, items: Vec<Item>, device: &B::Device) -> ImageBatch<B> {
        let count = items.len();
        let side = ((items[0].pixels.len() / 3) as f64).sqrt() as usize;
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        let pixels: Vec<f32> = items.into_iter().flat_map(|item| item.pixels).collect();
        ImageBatch {
            images: Tensor::from_data(TensorData::new(pixels, [count, 3, side, side]), device),
            labels: Tensor::from_data(TensorData::new(labels, [count]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_deterministic_and_cover_the_classes() {
        let data = BuiltinDataset {
            len: 600,
            size: 16,
            seed: 1,
        };
        let first = data.get(3).unwrap();
        assert_eq!(first.pixels, data.get(3).unwrap().pixels);
        assert_eq!(first.pixels.len(), 3 * 16 * 16);
        let mut seen = [0usize; CLASSES];
        (0..data.len()).for_each(|i| seen[data.get(i).unwrap().label] += 1);
        assert!(seen.iter().all(|&n| n > 20), "{seen:?}");
        assert!(data.get(600).is_none());
    }
}
