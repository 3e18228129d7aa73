//! The built-in data set, generated procedurally (no download): noisy coloured stripe patterns
//! whose class is the stripes' orientation (0°, 45°, 90°, 135°) crossed with a dominant colour
//! channel, for `4 · 3 = 12` classes. Every image is a pure function of its index and seed.

use super::rng::Rng;
use super::sources::{ImageSource, Pixels};
use super::transform::StageTimes;

/// The number of classes of the built-in set.
pub const CLASSES: usize = 12;

/// The stripes' orientations, in class order (`label % 4`).
const ORIENTATIONS: [&str; 4] = ["vertical", "diagonal", "horizontal", "antidiagonal"];
/// The dominant channels, in class order (`label / 4`).
const COLOURS: [&str; 3] = ["red", "green", "blue"];

/// The classes' names, such as `red vertical`, in label order.
pub fn class_names() -> Vec<String> {
    (0..CLASSES)
        .map(|label| format!("{} {}", COLOURS[label / 4], ORIENTATIONS[label % 4]))
        .collect()
}

/// `len` images of `size × size`, drawn with `seed` (use different seeds for training and
/// validation).
#[derive(Debug, Clone)]
pub struct BuiltinImages {
    pub len: usize,
    pub size: usize,
    pub seed: u64,
}

impl BuiltinImages {
    /// The generator of image `index`, whose first draw is the class.
    fn rng(&self, index: usize) -> Rng {
        Rng::new(self.seed.wrapping_mul(0x1000_0000_01B3) ^ index as u64)
    }

    fn draw_label(rng: &mut Rng) -> usize {
        rng.below(CLASSES)
    }

    /// Image `index`: its pixels `[3, size, size]` (channel-major, roughly zero-mean) and class.
    fn generate(&self, index: usize) -> (Vec<f32>, usize) {
        let mut rng = self.rng(index);
        let label = Self::draw_label(&mut rng);
        let mut next = || rng.uniform() as f32;
        let (orientation, colour) = (label % 4, label / 4);
        let period = 3.0 + 5.0 * next();
        let phase = next() * std::f32::consts::TAU;
        let contrast = 0.4 + 0.6 * next();
        let size = self.size;
        let mut pixels = vec![0.0f32; 3 * size * size];
        for row in 0..size {
            for col in 0..size {
                let (r, c) = (row as f32, col as f32);
                let t = [c, r + c, r, r - c][orientation];
                let wave = contrast * (std::f32::consts::TAU * t / period + phase).sin();
                for channel in 0..3 {
                    let gain = if channel == colour { 1.0 } else { 0.35 };
                    let noise = (next() + next() + next() - 1.5) * 0.9;
                    pixels[channel * size * size + row * size + col] = gain * wave + noise;
                }
            }
        }
        (pixels, label)
    }
}

impl ImageSource for BuiltinImages {
    fn len(&self) -> usize {
        self.len
    }

    fn label(&self, index: usize) -> usize {
        Self::draw_label(&mut self.rng(index))
    }

    fn pixels(&self, index: usize, _: &mut Rng, _: &mut StageTimes) -> Result<Pixels, String> {
        Ok(Pixels::Float(self.generate(index).0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_deterministic_and_cover_the_classes() {
        let data = BuiltinImages {
            len: 600,
            size: 16,
            seed: 1,
        };
        let first = data.generate(3);
        assert_eq!(first, data.generate(3));
        assert_eq!(first.0.len(), 3 * 16 * 16);
        assert_eq!(first.1, data.label(3));
        let mut seen = [0usize; CLASSES];
        (0..data.len()).for_each(|i| seen[data.label(i)] += 1);
        assert!(seen.iter().all(|&n| n > 20), "{seen:?}");
    }
}
