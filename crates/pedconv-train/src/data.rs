//! Image folders (`<split>/<class>/<image>`) and the evaluation transform.

use std::path::{Path, PathBuf};

/// ImageNet's channel means and standard deviations (of images scaled to `[0, 1]`).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The images of one split: one sub-folder per class, classes numbered in name order (as
/// torchvision's `ImageFolder` does), images with extension `.jpg`, `.jpeg` or `.png` in any case.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub classes: Vec<String>,
    pub items: Vec<(PathBuf, usize)>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

impl ImageFolder {
    /// Scans `dir`, naming it in every error.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read the data folder {}: {e}", dir.display()))?;
        let mut classes: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(format!(
                "{} has no class folders (expected one sub-folder of images per class)",
                dir.display()
            ));
        }
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let class_dir = dir.join(class);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
                .map_err(|e| format!("cannot read {}: {e}", class_dir.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            items.extend(files.into_iter().map(|p| (p, label)));
        }
        if items.is_empty() {
            return Err(format!(
                "no images (.jpg, .jpeg, .png) in the class folders of {}",
                dir.display()
            ));
        }
        Ok(Self { classes, items })
    }
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
pub fn resize_and_crop(path: &Path, resize: u32, crop: u32) -> Result<image::RgbImage, String> {
    let image = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rgb = image.to_rgb8();
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
    let resized = image::imageops::resize(&rgb, ow, oh, image::imageops::FilterType::Triangle);
    let top = round_half_even((oh - crop) as f64 / 2.0) as u32;
    let left = round_half_even((ow - crop) as f64 / 2.0) as u32;
    Ok(image::imageops::crop_imm(&resized, left, top, crop, crop).to_image())
}

/// The evaluation input of an image: [`resize_and_crop`], scaled to `[0, 1]` and normalised with
/// [`MEAN`] and [`STD`]. Returns `[3, crop, crop]` values, channel-major.
pub fn eval_image(path: &Path, resize: u32, crop: u32) -> Result<Vec<f32>, String> {
    let cropped = resize_and_crop(path, resize, crop)?;
    let plane = (crop * crop) as usize;
    let mut values = vec![0.0f32; 3 * plane];
    for (x, y, pixel) in cropped.enumerate_pixels() {
        for c in 0..3 {
            values[c * plane + (y * crop + x) as usize] =
                (pixel[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    Ok(values)
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
}
