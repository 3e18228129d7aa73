//! The image transforms: torchvision's evaluation `Resize` + `CenterCrop`, and the training
//! `RandomResizedCrop` + `RandomHorizontalFlip`; both end with ImageNet's normalisation.

use std::path::Path;

use image::{imageops, ImageReader, RgbImage};

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

/// torchvision's `Resize(resize)` + `CenterCrop(crop)`: the shorter side resized to `resize`
/// (bilinear, the other side `floor(resize · long / short)`), then the centre `crop × crop`.
/// Grayscale, RGBA and CMYK images are converted to RGB first.
pub fn resize_and_crop(path: &Path, resize: u32, crop: u32) -> Result<RgbImage, String> {
    let rgb = decode(path)?;
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
    let resized = imageops::resize(&rgb, ow, oh, imageops::FilterType::Triangle);
    let top = round_half_even((oh - crop) as f64 / 2.0) as u32;
    let left = round_half_even((ow - crop) as f64 / 2.0) as u32;
    Ok(imageops::crop_imm(&resized, left, top, crop, crop).to_image())
}

/// The evaluation input of an image: [`resize_and_crop`], then [`normalise`].
pub fn eval_image(path: &Path, resize: u32, crop: u32) -> Result<Vec<f32>, String> {
    Ok(normalise(&resize_and_crop(path, resize, crop)?, false))
}

/// The crop of torchvision's `RandomResizedCrop(scale = (0.08, 1), ratio = (3/4, 4/3))` on a
/// `width × height` image, as `(left, top, crop width, crop height)`: ten tries at a random area
/// fraction and log-uniform aspect ratio, then the centre crop of the nearest allowed ratio.
pub fn random_crop_box(width: u32, height: u32, rng: &mut Rng) -> (u32, u32, u32, u32) {
    const SCALE: (f64, f64) = (0.08, 1.0);
    const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
    let area = width as f64 * height as f64;
    for _ in 0..10 {
        let target = area * rng.range(SCALE.0, SCALE.1);
        let aspect = rng.range(RATIO.0.ln(), RATIO.1.ln()).exp();
        let w = round_half_even((target * aspect).sqrt()) as u32;
        let h = round_half_even((target / aspect).sqrt()) as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below((height - h + 1) as usize) as u32;
            let left = rng.below((width - w + 1) as usize) as u32;
            return (left, top, w, h);
        }
    }
    let ratio = width as f64 / height as f64;
    let (w, h) = if ratio < RATIO.0 {
        (width, round_half_even(width as f64 / RATIO.0) as u32)
    } else if ratio > RATIO.1 {
        (round_half_even(height as f64 * RATIO.1) as u32, height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// The training input of an image: [`random_crop_box`] resized to `size × size` (bilinear),
/// flipped horizontally with probability 1/2, then [`normalise`]d.
pub fn train_image(path: &Path, size: u32, rng: &mut Rng) -> Result<Vec<f32>, String> {
    let rgb = decode(path)?;
    let (left, top, w, h) = random_crop_box(rgb.width(), rgb.height(), rng);
    let crop = imageops::crop_imm(&rgb, left, top, w, h).to_image();
    let resized = imageops::resize(&crop, size, size, imageops::FilterType::Triangle);
    Ok(normalise(&resized, rng.uniform() < 0.5))
}

/// `[3, H, W]` channel-major values `(pixel / 255 - MEAN) / STD`, mirrored left-right if `flip`.
pub fn normalise(image: &RgbImage, flip: bool) -> Vec<f32> {
    let (width, height) = image.dimensions();
    let plane = (width * height) as usize;
    let mut values = vec![0.0f32; 3 * plane];
    for (x, y, pixel) in image.enumerate_pixels() {
        let column = if flip { width - 1 - x } else { x };
        let at = (y * width + column) as usize;
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
        let mut rng = Rng::new(11);
        let (width, height) = (500u32, 375u32);
        let mut areas = Vec::new();
        for _ in 0..2000 {
            let (left, top, w, h) = random_crop_box(width, height, &mut rng);
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
        assert_eq!(random_crop_box(1000, 10, &mut rng), (493, 0, 13, 10));
    }

    /// The flip mirrors columns; normalisation uses the ImageNet statistics.
    #[test]
    fn normalise_flips_and_standardises() {
        let mut image = RgbImage::new(2, 1);
        image.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let plain = normalise(&image, false);
        let flipped = normalise(&image, true);
        let red = (1.0 - MEAN[0]) / STD[0];
        let zero = -MEAN[0] / STD[0];
        assert_eq!((plain[0], plain[1]), (red, zero));
        assert_eq!((flipped[0], flipped[1]), (zero, red));
        assert_eq!(plain[2], -MEAN[1] / STD[1]);
    }
}
