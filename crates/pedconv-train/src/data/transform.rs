//! The image transforms: torchvision's evaluation `Resize` + `CenterCrop`, and the training
//! augmentation ([`Augmentation`]: `RandomResizedCrop` or a plain resize and centre crop,
//! `RandomHorizontalFlip`, AutoAugment); both end with ImageNet's normalisation.

use std::path::Path;

use burn::config::Config;
use image::{imageops, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use super::autoaugment::auto_augment;
use super::rng::Rng;

/// ImageNet's channel means and standard deviations (of images scaled to `[0, 1]`).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Decodes an image by its content (not its extension), converting grayscale, RGBA, CMYK and
/// 16-bit images to 8-bit RGB. Errors name the file.
pub fn decode(path: &Path) -> Result<RgbImage, String> {
    let image = ImageReader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .decode()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(image.to_rgb8())
}

/// Python's `round` (half to even), which torchvision's centre crop uses.
fn round_half_even(x: f64) -> usize {
    let floor = x.floor();
    let rounded = if x - floor == 0.5 {
        if floor as i64 % 2 == 0 {
            floor
        } else {
            floor + 1.0
        }
    } else {
        x.round()
    };
    rounded as usize
}

/// torchvision's `Resize(resize)` + `CenterCrop(crop)` of the image at `path`: the shorter side
/// resized to `resize` (bilinear, the other side `floor(resize · long / short)`), then the centre
/// `crop × crop`. Grayscale, RGBA and CMYK images are converted to RGB first.
pub fn resize_and_crop(path: &Path, resize: u32, crop: u32) -> Result<RgbImage, String> {
    resize_and_crop_image(&decode(path)?, resize, crop, path)
}

/// [`resize_and_crop`] of a decoded image (`path` names it in errors).
fn resize_and_crop_image(
    rgb: &RgbImage,
    resize: u32,
    crop: u32,
    path: &Path,
) -> Result<RgbImage, String> {
    let (w, h) = rgb.dimensions();
    let (ow, oh) = if w <= h {
        (resize, (resize as u64 * h as u64 / w as u64) as u32)
    } else {
        ((resize as u64 * w as u64 / h as u64) as u32, resize)
    };
    if ow < crop || oh < crop {
        return Err(format!(
            "{}: resized to {ow}×{oh}, smaller than the {crop}×{crop} crop",
            path.display()
        ));
    }
    let resized = imageops::resize(rgb, ow, oh, imageops::FilterType::Triangle);
    let top = round_half_even((oh - crop) as f64 / 2.0) as u32;
    let left = round_half_even((ow - crop) as f64 / 2.0) as u32;
    Ok(imageops::crop_imm(&resized, left, top, crop, crop).to_image())
}

/// The evaluation input of an image: [`resize_and_crop`], then [`normalise`].
pub fn eval_image(path: &Path, resize: u32, crop: u32) -> Result<Vec<f32>, String> {
    Ok(normalise(&resize_and_crop(path, resize, crop)?))
}

/// The crop of torchvision's `RandomResizedCrop(scale, ratio)` on a `width × height` image, as
/// `(left, top, crop width, crop height)`: ten tries at a random area fraction in `scale` and a
/// log-uniform aspect ratio in `ratio`, then the centre crop of the nearest allowed ratio.
pub fn random_crop_box(
    width: u32,
    height: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut Rng,
) -> (u32, u32, u32, u32) {
    let area = width as f64 * height as f64;
    for _ in 0..10 {
        let target = area * rng.range(scale[0], scale[1]);
        let aspect = rng.range(ratio[0].ln(), ratio[1].ln()).exp();
        let w = round_half_even((target * aspect).sqrt()) as u32;
        let h = round_half_even((target / aspect).sqrt()) as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below((height - h + 1) as usize) as u32;
            let left = rng.below((width - w + 1) as usize) as u32;
            return (left, top, w, h);
        }
    }
    let image_ratio = width as f64 / height as f64;
    let (w, h) = if image_ratio < ratio[0] {
        (width, round_half_even(width as f64 / ratio[0]) as u32)
    } else if image_ratio > ratio[1] {
        (round_half_even(height as f64 * ratio[1]) as u32, height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// How the training images of a folder are cropped to `data.train_crop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainCrop {
    /// torchvision's `RandomResizedCrop`: a random part of the image (area fraction in `scale`,
    /// aspect ratio in `ratio`, log-uniform), resized (bilinear).
    RandomResized { scale: [f64; 2], ratio: [f64; 2] },
    /// No cropping at random: the shorter side resized to `resize` (bilinear), then the centre
    /// square, as in validation; for data that must not be cropped (small, centred objects).
    ResizeCentre { resize: usize },
}

impl TrainCrop {
    /// torchvision's defaults, the reference's: area 8–100 %, aspect ratio 3/4–4/3.
    pub fn random_resized() -> Self {
        Self::RandomResized {
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
        }
    }
}

/// The training transform of a folder's images, in the reference loader's order: crop, flip,
/// AutoAugment, normalisation. (The built-in and synthetic images are generated, not augmented.)
#[derive(Config, Debug)]
pub struct Augmentation {
    /// How the image is cropped to `data.train_crop`.
    #[config(default = "TrainCrop::random_resized()")]
    pub crop: TrainCrop,
    /// Mirror left-right with probability 1/2.
    #[config(default = true)]
    pub flip: bool,
    /// NVIDIA's AutoAugment ImageNet policy, as the reference's training loader applies it
    /// (see [`super::autoaugment`]).
    #[config(default = false)]
    pub auto_augment: bool,
}

impl Augmentation {
    /// The training input of the image at `path`, `size × size`, every draw from `rng`.
    pub fn apply(&self, path: &Path, size: u32, rng: &mut Rng) -> Result<Vec<f32>, String> {
        let rgb = decode(path)?;
        let mut image = match &self.crop {
            TrainCrop::RandomResized { scale, ratio } => {
                let (left, top, w, h) =
                    random_crop_box(rgb.width(), rgb.height(), *scale, *ratio, rng);
                let crop = imageops::crop_imm(&rgb, left, top, w, h).to_image();
                imageops::resize(&crop, size, size, imageops::FilterType::Triangle)
            }
            TrainCrop::ResizeCentre { resize } => {
                resize_and_crop_image(&rgb, *resize as u32, size, path)?
            }
        };
        if self.flip && rng.uniform() < 0.5 {
            imageops::flip_horizontal_in_place(&mut image);
        }
        if self.auto_augment {
            image = auto_augment(image, rng);
        }
        Ok(normalise(&image))
    }

    /// Checks the values against the crop side, naming the first wrong one.
    pub fn validate(&self, train_crop: usize) -> Result<(), String> {
        match &self.crop {
            TrainCrop::RandomResized { scale, ratio } => {
                if !(0.0 < scale[0] && scale[0] <= scale[1] && scale[1] <= 1.0) {
                    return Err(format!(
                        "data.augmentation.crop.scale must be increasing area fractions in \
                         (0, 1], got {scale:?}"
                    ));
                }
                let increasing = 0.0 < ratio[0] && ratio[0] <= ratio[1];
                if !(increasing && ratio[1].is_finite()) {
                    return Err(format!(
                        "data.augmentation.crop.ratio must be increasing positive aspect ratios, \
                         got {ratio:?}"
                    ));
                }
            }
            TrainCrop::ResizeCentre { resize } if *resize < train_crop => {
                return Err(format!(
                    "data.augmentation.crop.resize ({resize}) must be at least data.train_crop \
                     ({train_crop})"
                ));
            }
            TrainCrop::ResizeCentre { .. } => {}
        }
        Ok(())
    }
}

/// `[3, H, W]` channel-major values `(pixel / 255 - MEAN) / STD`.
pub fn normalise(image: &RgbImage) -> Vec<f32> {
    let (width, height) = image.dimensions();
    let plane = (width * height) as usize;
    let mut values = vec![0.0f32; 3 * plane];
    for (x, y, pixel) in image.enumerate_pixels() {
        let at = (y * width + x) as usize;
        for c in 0..3 {
            values[c * plane + at] = (pixel[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_crop_rounds_half_to_even_like_python() {
        assert_eq!(round_half_even(16.5), 16);
        assert_eq!(round_half_even(17.5), 18);
        assert_eq!(round_half_even(16.0), 16);
        assert_eq!(round_half_even(16.4), 16);
    }

    /// Against PIL (see `tests/fixtures/transform/README.md`). PIL resizes in 8-bit fixed point
    /// and the image crate in floating point, so pixels may differ by rounding: at most 2 levels
    /// anywhere and 0.5 on average, where a wrong filter, size or crop offset differs by tens.
    #[test]
    fn resize_and_crop_match_torchvision() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/transform");
        let ours = resize_and_crop(&dir.join("input.png"), 256, 224).unwrap();
        let expected = image::open(dir.join("expected_crop.png"))
            .unwrap()
            .to_rgb8();
        assert_eq!(ours.dimensions(), expected.dimensions());
        let differences: Vec<i32> = ours
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .collect();
        let max = *differences.iter().max().unwrap();
        let mean = differences.iter().sum::<i32>() as f64 / differences.len() as f64;
        assert!(max <= 2 && mean <= 0.5, "max difference {max}, mean {mean}");
    }

    /// Crops stay inside the image with an area fraction in [0.08, 1] and an aspect ratio in
    /// [3/4, 4/3] (up to the rounding of the sides to whole pixels), and vary.
    #[test]
    fn random_crops_follow_the_scale_and_ratio_ranges() {
        const SCALE: [f64; 2] = [0.08, 1.0];
        const RATIO: [f64; 2] = [0.75, 4.0 / 3.0];
        let mut rng = Rng::new(11);
        let (width, height) = (500u32, 375u32);
        let mut areas = Vec::new();
        for _ in 0..2000 {
            let (left, top, w, h) = random_crop_box(width, height, SCALE, RATIO, &mut rng);
            assert!(left + w <= width && top + h <= height);
            let fraction = (w * h) as f64 / (width * height) as f64;
            let ratio = w as f64 / h as f64;
            let slack = 1.0 / h.min(w) as f64 + 1e-9; // rounding of a side by half a pixel, twice
            assert!((0.08 - 0.01..=1.0).contains(&fraction), "{fraction}");
            assert!(
                ratio >= 0.75 * (1.0 - slack) && ratio <= 4.0 / 3.0 * (1.0 + slack),
                "{w}x{h}"
            );
            areas.push(fraction);
        }
        let mean = areas.iter().sum::<f64>() / areas.len() as f64;
        // Uniform area fractions in [0.08, 1] average 0.54; tries that do not fit the image
        // (large areas at extreme ratios) are redrawn, which lowers it a little.
        assert!((0.4..0.56).contains(&mean), "{mean}");
        // A very wide image falls back to the centre crop of ratio 4/3 when no try fits.
        assert_eq!(
            random_crop_box(1000, 10, SCALE, RATIO, &mut rng),
            (493, 0, 13, 10)
        );
        // A narrow range: area fractions in [0.5, 0.6], square crops.
        for _ in 0..200 {
            let (_, _, w, h) = random_crop_box(400, 300, [0.5, 0.6], [1.0, 1.0], &mut rng);
            let fraction = (w * h) as f64 / 120_000.0;
            assert!(
                w.abs_diff(h) <= 1 && (0.49..=0.61).contains(&fraction),
                "{w}x{h}"
            );
        }
    }

    /// Normalisation uses the ImageNet statistics, channel-major.
    #[test]
    fn normalise_standardises_channel_major() {
        let mut image = RgbImage::new(2, 1);
        image.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let values = normalise(&image);
        let red = (1.0 - MEAN[0]) / STD[0];
        let zero = -MEAN[0] / STD[0];
        assert_eq!((values[0], values[1]), (red, zero));
        assert_eq!(values[2], -MEAN[1] / STD[1]);
    }

    /// A plain resize and centre crop draws nothing and equals the evaluation transform; the
    /// flip mirrors it; AutoAugment changes it (with a seed that applies an operation).
    #[test]
    fn augmentation_steps_follow_the_config() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/transform");
        let input = dir.join("input.png");
        let plain = Augmentation::new().with_crop(TrainCrop::ResizeCentre { resize: 40 });
        let still = plain.clone().with_flip(false);
        let eval = eval_image(&input, 40, 32).unwrap();
        let mut rng = Rng::new(5);
        assert_eq!(still.apply(&input, 32, &mut rng).unwrap(), eval);
        assert_eq!(rng.next_u64(), Rng::new(5).next_u64(), "nothing drawn");
        let mirrored = |values: &[f32]| -> Vec<f32> {
            values
                .chunks(32)
                .flat_map(|row| row.iter().rev().copied())
                .collect()
        };
        let (mut flips, mut changed) = (0, 0);
        for seed in 0..20 {
            let flipped = plain.apply(&input, 32, &mut Rng::new(seed)).unwrap();
            flips += usize::from(flipped == mirrored(&eval));
            assert!(flipped == eval || flipped == mirrored(&eval));
            let augmented = still
                .clone()
                .with_auto_augment(true)
                .apply(&input, 32, &mut Rng::new(seed))
                .unwrap();
            changed += usize::from(augmented != eval);
        }
        assert!((4..=16).contains(&flips), "{flips} flips of 20");
        assert!(changed >= 10, "AutoAugment changed {changed} of 20");
    }

    #[test]
    fn bad_augmentations_are_named() {
        let error = |crop| {
            Augmentation::new()
                .with_crop(crop)
                .validate(32)
                .unwrap_err()
        };
        let scale = error(TrainCrop::RandomResized {
            scale: [0.5, 0.2],
            ratio: [0.75, 1.3],
        });
        assert!(scale.contains("data.augmentation.crop.scale"), "{scale}");
        let ratio = error(TrainCrop::RandomResized {
            scale: [0.1, 1.0],
            ratio: [0.0, 1.3],
        });
        assert!(ratio.contains("data.augmentation.crop.ratio"), "{ratio}");
        let resize = error(TrainCrop::ResizeCentre { resize: 16 });
        assert!(
            resize.contains("data.augmentation.crop.resize (16)"),
            "{resize}"
        );
    }
}
