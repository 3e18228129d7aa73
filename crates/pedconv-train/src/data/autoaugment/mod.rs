//! NVIDIA DeepLearningExamples' AutoAugment ImageNet policy (`AutoaugmentImageNetPolicy` of its
//! PyTorch image classification loader), applied to the 8-bit RGB image after the random resized
//! crop and flip, before normalisation.
//!
//! Every operation reproduces what PIL does to the same image (`tests/fixtures/autoaugment`
//! holds PIL's results and the tolerances): all exactly but the rotation, which may take a
//! neighbouring pixel where PIL's fixed-point coordinates tie. Every random draw comes from the
//! sample's [`Rng`], so an image's augmentation is a function of the run's seed, the image and
//! the epoch.

mod geometry;

use image::{Rgb, RgbImage};

use super::rng::Rng;
use geometry::{affine_bicubic, affine_nearest, rotate};
use Operation::*;

/// The policy's fill colour of the area a geometric operation uncovers.
const FILL: Rgb<u8> = Rgb([128; 3]);

/// The operations of the reference's table. Its ImageNet policy uses eleven of them; translateX,
/// contrast, sharpness and brightness are there for policies of other data, implemented and
/// checked against PIL all the same (so outside the tests nothing builds them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub enum Operation {
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Color,
    Posterize,
    Solarize,
    SolarizeAdd,
    Contrast,
    Sharpness,
    Brightness,
    AutoContrast,
    Equalize,
    Invert,
}

/// A sub-policy: two `(probability, operation, magnitude index)`, applied in turn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubPolicy {
    pub first: (f64, Operation, usize),
    pub second: (f64, Operation, usize),
}

/// A sub-policy from the reference's six arguments.
const fn sub(p1: f64, op1: Operation, m1: usize, p2: f64, op2: Operation, m2: usize) -> SubPolicy {
    SubPolicy {
        first: (p1, op1, m1),
        second: (p2, op2, m2),
    }
}

/// The 25 sub-policies, in the reference's order.
#[rustfmt::skip]
pub const IMAGENET_POLICY: [SubPolicy; 25] = [
    sub(0.8, Equalize, 1, 0.8, ShearY, 4),
    sub(0.4, Color, 9, 0.6, Equalize, 3),
    sub(0.4, Color, 1, 0.6, Rotate, 8),
    sub(0.8, Solarize, 3, 0.4, Equalize, 7),
    sub(0.4, Solarize, 2, 0.6, Solarize, 2),
    sub(0.2, Color, 0, 0.8, Equalize, 8),
    sub(0.4, Equalize, 8, 0.8, SolarizeAdd, 3),
    sub(0.2, ShearX, 9, 0.6, Rotate, 8),
    sub(0.6, Color, 1, 1.0, Equalize, 2),
    sub(0.4, Invert, 9, 0.6, Rotate, 0),
    sub(1.0, Equalize, 9, 0.6, ShearY, 3),
    sub(0.4, Color, 7, 0.6, Equalize, 0),
    sub(0.4, Posterize, 6, 0.4, AutoContrast, 7),
    sub(0.6, Solarize, 8, 0.6, Color, 9),
    sub(0.2, Solarize, 4, 0.8, Rotate, 9),
    sub(1.0, Rotate, 7, 0.8, TranslateY, 9),
    sub(0.0, ShearX, 0, 0.8, Solarize, 4),
    sub(0.8, ShearY, 0, 0.6, Color, 4),
    sub(1.0, Color, 0, 0.6, Rotate, 2),
    sub(0.8, Equalize, 4, 0.0, Equalize, 8),
    sub(1.0, Equalize, 4, 0.6, AutoContrast, 2),
    sub(0.4, ShearY, 7, 0.6, SolarizeAdd, 7),
    sub(0.8, Posterize, 2, 0.6, Solarize, 10),
    sub(0.6, Solarize, 8, 0.6, Equalize, 1),
    sub(0.8, Color, 6, 0.4, Rotate, 5),
];

/// `np.linspace(low, high, 11)[index]`, rounded as NumPy computes it.
fn linspace(low: f64, high: f64, index: usize) -> f64 {
    assert!(index <= 10, "magnitude index {index} is not in 0..=10");
    if index == 10 {
        high
    } else {
        index as f64 * ((high - low) / 10.0) + low
    }
}

impl Operation {
    /// Every operation.
    #[cfg(test)]
    pub const ALL: [Operation; 15] = [
        ShearX,
        ShearY,
        TranslateX,
        TranslateY,
        Rotate,
        Color,
        Posterize,
        Solarize,
        SolarizeAdd,
        Contrast,
        Sharpness,
        Brightness,
        AutoContrast,
        Equalize,
        Invert,
    ];

    /// The reference's name of the operation.
    #[cfg(test)]
    pub fn name(self) -> &'static str {
        match self {
            ShearX => "shearX",
            ShearY => "shearY",
            TranslateX => "translateX",
            TranslateY => "translateY",
            Rotate => "rotate",
            Color => "color",
            Posterize => "posterize",
            Solarize => "solarize",
            SolarizeAdd => "solarizeadd",
            Contrast => "contrast",
            Sharpness => "sharpness",
            Brightness => "brightness",
            AutoContrast => "autocontrast",
            Equalize => "equalize",
            Invert => "invert",
        }
    }

    /// Whether the magnitude's sign is drawn (the geometric operations).
    pub fn is_signed(self) -> bool {
        matches!(self, ShearX | ShearY | TranslateX | TranslateY | Rotate)
    }

    /// The magnitude at `index` (0 to 10) of the operation's range: the shear factor, the
    /// translation in pixels, the angle in degrees, the enhancement factor, the bits kept, the
    /// solarisation threshold or the added level; 0 for the operations without one.
    pub fn magnitude(self, index: usize) -> f64 {
        match self {
            ShearX | ShearY => linspace(0.0, 0.3, index),
            TranslateX | TranslateY => linspace(0.0, 250.0, index),
            Rotate => linspace(0.0, 30.0, index),
            Color | Contrast | Sharpness | Brightness => linspace(0.1, 1.9, index),
            Posterize => linspace(0.0, 4.0, index).round_ties_even(),
            Solarize => linspace(0.0, 256.0, index),
            SolarizeAdd => linspace(0.0, 110.0, index),
            AutoContrast | Equalize | Invert => 0.0,
        }
    }
}

/// Applies `op` at magnitude index `magnitude_index`, the magnitude multiplied by `sign` (±1;
/// ignored by the operations without a sign).
pub fn apply(op: Operation, magnitude_index: usize, image: &RgbImage, sign: f64) -> RgbImage {
    let m = op.magnitude(magnitude_index) * if op.is_signed() { sign } else { 1.0 };
    match op {
        ShearX => affine_bicubic(image, [1.0, m, 0.0, 0.0, 1.0, 0.0]),
        ShearY => affine_bicubic(image, [1.0, 0.0, 0.0, m, 1.0, 0.0]),
        TranslateX => affine_nearest(image, [1.0, 0.0, m, 0.0, 1.0, 0.0]),
        TranslateY => affine_nearest(image, [1.0, 0.0, 0.0, 0.0, 1.0, m]),
        Rotate => rotate(image, m),
        Color => {
            let mut grey = image.clone();
            for pixel in grey.pixels_mut() {
                *pixel = Rgb([luma(pixel); 3]);
            }
            blend(image, &grey, m)
        }
        Contrast => {
            let sum: u64 = image.pixels().map(|p| u64::from(luma(p))).sum();
            let pixels = f64::from(image.width()) * f64::from(image.height());
            let mean = (sum as f64 / pixels + 0.5) as u8;
            let (w, h) = image.dimensions();
            blend(image, &RgbImage::from_pixel(w, h, Rgb([mean; 3])), m)
        }
        Sharpness => blend(image, &smooth(image), m),
        Brightness => {
            let (w, h) = image.dimensions();
            blend(image, &RgbImage::new(w, h), m)
        }
        // 0 bits (indices 0 and 1, unused by the policy) give black, as PIL did before 13.
        Posterize => {
            let mask = !((1u32 << (8 - m as u32)) - 1) as u8;
            map_levels(image, [lut(|i| i & mask); 3])
        }
        Solarize => map_levels(
            image,
            [lut(|i| if f64::from(i) < m { i } else { 255 - i }); 3],
        ),
        SolarizeAdd => map_levels(
            image,
            [lut(|i| {
                if i < 128 {
                    (f64::from(i) + m).min(255.0) as u8
                } else {
                    i
                }
            }); 3],
        ),
        AutoContrast => map_levels(image, histograms(image).map(|h| autocontrast_lut(&h))),
        Equalize => map_levels(image, histograms(image).map(|h| equalize_lut(&h))),
        Invert => map_levels(image, [lut(|i| 255 - i); 3]),
    }
}

/// What the policy draws for one image: the sub-policy and, for each of its two operations, the
/// sign of the magnitude if the operation is applied (1 for those without a sign).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    pub sub_policy: usize,
    pub applied: [Option<f64>; 2],
}

impl Draw {
    /// Draws as the reference does: the sub-policy, then for each operation whether it is
    /// applied and, if it is and has a sign, the sign.
    pub fn new(rng: &mut Rng) -> Self {
        let sub_policy = rng.below(IMAGENET_POLICY.len());
        let policy = IMAGENET_POLICY[sub_policy];
        let applied = [policy.first, policy.second].map(|(probability, op, _)| {
            (rng.uniform() < probability).then(|| {
                if op.is_signed() && rng.below(2) == 0 {
                    -1.0
                } else {
                    1.0
                }
            })
        });
        Self {
            sub_policy,
            applied,
        }
    }

    /// Applies the drawn operations to `image`.
    pub fn apply(&self, image: RgbImage) -> RgbImage {
        let policy = IMAGENET_POLICY[self.sub_policy];
        [policy.first, policy.second]
            .into_iter()
            .zip(self.applied)
            .fold(image, |image, ((_, op, index), sign)| match sign {
                Some(sign) => apply(op, index, &image, sign),
                None => image,
            })
    }
}

/// The AutoAugment ImageNet policy: one of the 25 sub-policies, uniformly.
pub fn auto_augment(image: RgbImage, rng: &mut Rng) -> RgbImage {
    Draw::new(rng).apply(image)
}

/// PIL's `L` of an RGB pixel (ITU-R 601-2 luma in 16-bit fixed point, rounded).
fn luma(p: &Rgb<u8>) -> u8 {
    let [r, g, b] = p.0.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// `Image.blend(degenerate, image, factor)`, PIL's `ImageEnhance` step: `d + α (x - d)` in
/// single precision, truncated and clipped to 0..=255.
fn blend(image: &RgbImage, degenerate: &RgbImage, factor: f64) -> RgbImage {
    let alpha = factor as f32;
    let mut out = degenerate.clone();
    for (d, &x) in out.iter_mut().zip(image.as_raw()) {
        let base = f32::from(*d);
        // `as` saturates: the clip to 0..=255.
        *d = (base + alpha * (f32::from(x) - base)) as u8;
    }
    out
}

/// PIL's `ImageFilter.SMOOTH`: the 3×3 kernel `[1 1 1; 1 5 1; 1 1 1] / 13` in single precision
/// with 0.5 added and the sum truncated; the border rows and columns are copied.
fn smooth(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let (side, centre) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    let mut out = image.clone();
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let mut sum = [0.5f32; 3];
            // PIL's order of summation: the row below, the row, the row above.
            for (dy, middle) in [(1, side), (0, centre), (-1, side)] {
                let row = (y as i32 + dy) as u32;
                let [l, c, r] = [x - 1, x, x + 1].map(|x| image.get_pixel(x, row).0);
                for k in 0..3 {
                    sum[k] +=
                        f32::from(l[k]) * side + f32::from(c[k]) * middle + f32::from(r[k]) * side;
                }
            }
            out.put_pixel(x, y, Rgb(sum.map(|s| s as u8)));
        }
    }
    out
}

/// A lookup table of every level.
fn lut(f: impl Fn(u8) -> u8) -> [u8; 256] {
    std::array::from_fn(|i| f(i as u8))
}

/// Maps each channel through its lookup table (PIL's `Image.point`).
fn map_levels(image: &RgbImage, luts: [[u8; 256]; 3]) -> RgbImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        for (value, lut) in p.0.iter_mut().zip(&luts) {
            *value = lut[usize::from(*value)];
        }
    }
    out
}

/// The histogram of each channel.
fn histograms(image: &RgbImage) -> [[u64; 256]; 3] {
    let mut counts = [[0u64; 256]; 3];
    for p in image.pixels() {
        for (count, &value) in counts.iter_mut().zip(&p.0) {
            count[usize::from(value)] += 1;
        }
    }
    counts
}

/// `ImageOps.autocontrast` (no cutoff): the channel's lowest level to 0 and its highest to 255,
/// `int(i · scale + offset)` clipped.
fn autocontrast_lut(histogram: &[u64; 256]) -> [u8; 256] {
    let present = |i: &usize| histogram[*i] > 0;
    let (low, high) = match ((0..256).find(present), (0..256).rfind(present)) {
        (Some(low), Some(high)) if high > low => (low as f64, high as f64),
        _ => return lut(|i| i),
    };
    let scale = 255.0 / (high - low);
    let offset = -low * scale;
    lut(|i| (f64::from(i) * scale + offset).clamp(0.0, 255.0) as u8)
}

/// `ImageOps.equalize`: `lut[i] = (step / 2 + Σ_{j<i} h[j]) // step` with `step` the count of
/// all but the highest level's pixels `// 255`, clipped; the identity when that step is 0.
fn equalize_lut(histogram: &[u64; 256]) -> [u8; 256] {
    let Some(highest) = histogram.iter().rposition(|&n| n > 0) else {
        return lut(|i| i);
    };
    let step = (histogram.iter().sum::<u64>() - histogram[highest]) / 255;
    if step == 0 {
        return lut(|i| i);
    }
    let mut n = step / 2;
    std::array::from_fn(|i| {
        let level = (n / step).min(255) as u8;
        n += histogram[i];
        level
    })
}

#[cfg(test)]
mod tests;
