//! The image transforms: torchvision's evaluation `Resize` + `CenterCrop`, and the training
//! augmentation ([`Augmentation`]: `RandomResizedCrop` or a plain resize and centre crop,
//! `RandomHorizontalFlip`, AutoAugment) on 8-bit RGB images; [`normalise`] is ImageNet's
//! normalisation (the training batches are normalised on the device instead, see
//! [`super::batcher`]).

use std::cell::RefCell;
use std::fmt::Display;
use std::path::Path;
use std::time::{Duration, Instant};

use burn::config::Config;
use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{imageops, RgbImage};
use serde::{Deserialize, Serialize};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::autoaugment::auto_augment;
use super::rng::Rng;

/// ImageNet's channel means and standard deviations (of images scaled to `[0, 1]`).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Decodes an encoded image by its content (not its name), converting grayscale, RGBA, CMYK and
/// 16-bit images to 8-bit RGB; errors name `name`. JPEGs go to zune-jpeg directly, with the
/// options the image crate gives it (so the pixels are the image crate's), without its copies.
pub fn decode(bytes: &[u8], name: &dyn Display) -> Result<RgbImage, String> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let options = DecoderOptions::default()
            .set_strict_mode(false)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX)
            .jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        let pixels = decoder.decode().map_err(|e| format!("{name}: {e:?}"))?;
        let (width, height) = decoder.dimensions().expect("headers decoded");
        return RgbImage::from_raw(width as u32, height as u32, pixels)
            .ok_or_else(|| format!("{name}: the JPEG decoder returned too few pixels"));
    }
    let image = image::load_from_memory(bytes).map_err(|e| format!("{name}: {e}"))?;
    Ok(image.into_rgb8())
}

/// Reads and decodes the image file at `path` (see [`decode`]).
pub fn read_image(path: &Path) -> Result<RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode(&bytes, &path.display())
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
    resize_and_crop_image(&read_image(path)?, resize, crop, &path.display())
}

/// [`resize_and_crop`] of a decoded image (`name` names it in errors).
pub fn resize_and_crop_image(
    rgb: &RgbImage,
    resize: u32,
    crop: u32,
    name: &dyn Display,
) -> Result<RgbImage, String> {
    let (w, h) = rgb.dimensions();
    let (ow, oh) = if w <= h {
        (resize, (resize as u64 * h as u64 / w as u64) as u32)
    } else {
        ((resize as u64 * w as u64 / h as u64) as u32, resize)
    };
    if ow < crop || oh < crop {
        return Err(format!(
            "{name}: resized to {ow}×{oh}, smaller than the {crop}×{crop} crop"
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
    /// The training image `size × size` of the encoded image `bytes` (`name` names it in
    /// errors), every draw from `rng`, the time of each stage added to `times`.
    pub fn apply(
        &self,
        bytes: &[u8],
        name: &dyn Display,
        size: u32,
        rng: &mut Rng,
        times: &mut StageTimes,
    ) -> Result<RgbImage, String> {
        let rgb = timed(&mut times.decode, || decode(bytes, name))?;
        let mut image = timed(&mut times.crop_resize, || match &self.crop {
            TrainCrop::RandomResized { scale, ratio } => {
                let crop = random_crop_box(rgb.width(), rgb.height(), *scale, *ratio, rng);
                Ok(resized_crop(&rgb, crop, (size, size)))
            }
            TrainCrop::ResizeCentre { resize } => {
                resize_and_crop_image(&rgb, *resize as u32, size, name)
            }
        })?;
        timed(&mut times.augment, || {
            if self.flip && rng.uniform() < 0.5 {
                imageops::flip_horizontal_in_place(&mut image);
            }
            if self.auto_augment {
                image = auto_augment(std::mem::take(&mut image), rng);
            }
        });
        Ok(image)
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

/// The CPU time images spend in each stage of the training pipeline, summed over images.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Reading the encoded image (a file, or a slice of a memory-mapped pack).
    pub read: Duration,
    pub decode: Duration,
    pub crop_resize: Duration,
    /// The flip and AutoAugment.
    pub augment: Duration,
    /// Copying the images into the batch (channel-major) and the targets.
    pub assemble: Duration,
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, other: Self) {
        self.read += other.read;
        self.decode += other.decode;
        self.crop_resize += other.crop_resize;
        self.augment += other.augment;
        self.assemble += other.assemble;
    }
}

impl std::ops::SubAssign for StageTimes {
    fn sub_assign(&mut self, other: Self) {
        self.read -= other.read;
        self.decode -= other.decode;
        self.crop_resize -= other.crop_resize;
        self.augment -= other.augment;
        self.assemble -= other.assemble;
    }
}

/// Runs `f`, adding its wall time to `total`.
pub fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let value = f();
    *total += start.elapsed();
    value
}

thread_local! {
    /// Each thread's resizer (it keeps its buffers between images).
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// torchvision's `resized_crop` with PIL's bilinear filter: the crop `(left, top, width,
/// height)` of `image` resized to `size = (width, height)` (the filter sees only the crop, as
/// after PIL's `crop`), by fast_image_resize's SIMD convolution in Pillow's fixed point.
pub fn resized_crop(image: &RgbImage, crop: (u32, u32, u32, u32), size: (u32, u32)) -> RgbImage {
    let (left, top, width, height) = crop;
    let source = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .expect("an RGB image's own buffer");
    let cropped =
        CroppedImage::new(&source, left, top, width, height).expect("a crop inside the image");
    let mut out = Image::new(size.0, size.1, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    RESIZER
        .with_borrow_mut(|resizer| resizer.resize(&cropped, &mut out, &options))
        .expect("resizing between RGB images");
    RgbImage::from_raw(size.0, size.1, out.into_vec()).expect("RGB pixels of the size")
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

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/transform")
    }

    /// The largest and the mean difference of two images' subpixels.
    fn differences(ours: &RgbImage, expected: &RgbImage) -> (i32, f64) {
        assert_eq!(ours.dimensions(), expected.dimensions());
        let differences: Vec<i32> = ours
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .collect();
        let max = *differences.iter().max().unwrap();
        (
            max,
            differences.iter().sum::<i32>() as f64 / differences.len() as f64,
        )
    }

    /// Against PIL (see `tests/fixtures/transform/README.md`). PIL resizes in 8-bit fixed point
    /// and the image crate in floating point, so pixels may differ by rounding: at most 2 levels
    /// anywhere and 0.5 on average, where a wrong filter, size or crop offset differs by tens.
    #[test]
    fn resize_and_crop_match_torchvision() {
        let ours = resize_and_crop(&fixtures().join("input.png"), 256, 224).unwrap();
        let expected = read_image(&fixtures().join("expected_crop.png")).unwrap();
        let (max, mean) = differences(&ours, &expected);
        assert!(max <= 2 && mean <= 0.5, "max difference {max}, mean {mean}");
    }

    /// The training crop and resize against PIL's crop and resize (torchvision's
    /// `resized_crop`), with the same tolerance as above: fast_image_resize rounds its
    /// fixed-point coefficients apart from Pillow's. A filter that saw pixels outside the crop
    /// (as a crop box given to the resize does) differs by tens along the crop's edges.
    #[test]
    fn resized_crops_match_torchvision() {
        let input = read_image(&fixtures().join("input.png")).unwrap();
        let boxes = [(17, 40, 201, 150), (150, 100, 60, 45), (0, 5, 301, 240)];
        for (k, crop) in boxes.into_iter().enumerate() {
            let name = format!("expected_resized_crop_{k}.png");
            let expected = read_image(&fixtures().join(&name)).unwrap();
            let (max, mean) = differences(&resized_crop(&input, crop, (112, 112)), &expected);
            assert!(
                max <= 2 && mean <= 0.5,
                "{name}: max difference {max}, mean {mean}"
            );
        }
    }

    /// The JPEG route (zune-jpeg directly) gives the image crate's pixels, and an unreadable
    /// file is an error that names it.
    #[test]
    fn jpegs_decode_as_the_image_crate_decodes_them() {
        let input = read_image(&fixtures().join("input.png")).unwrap();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&input)
            .unwrap();
        let ours = decode(&jpeg, &"input.jpg").unwrap();
        let theirs = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        assert_eq!(ours, theirs);
        let grey = image::DynamicImage::ImageRgb8(input).into_luma8();
        let mut grey_jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut grey_jpeg)
            .encode_image(&grey)
            .unwrap();
        let ours = decode(&grey_jpeg, &"grey.jpg").unwrap();
        let theirs = image::load_from_memory(&grey_jpeg).unwrap().into_rgb8();
        assert_eq!(ours, theirs, "grayscale, converted to RGB");
        // Cut inside its headers. (Cut inside its data, it decodes with the rest grey, as the
        // image crate decodes it.)
        let error = decode(&jpeg[..100], &"cut.jpg").unwrap_err();
        assert!(error.starts_with("cut.jpg: "), "{error}");
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
        let path = fixtures().join("input.png");
        let bytes = std::fs::read(&path).unwrap();
        let apply = |augmentation: &Augmentation, rng: &mut Rng| {
            let mut times = StageTimes::default();
            augmentation
                .apply(&bytes, &"input.png", 32, rng, &mut times)
                .unwrap()
        };
        let plain = Augmentation::new().with_crop(TrainCrop::ResizeCentre { resize: 40 });
        let still = plain.clone().with_flip(false);
        let eval = resize_and_crop(&path, 40, 32).unwrap();
        let mut rng = Rng::new(5);
        assert_eq!(apply(&still, &mut rng), eval);
        assert_eq!(rng.next_u64(), Rng::new(5).next_u64(), "nothing drawn");
        let mirrored = imageops::flip_horizontal(&eval);
        let (mut flips, mut changed) = (0, 0);
        for seed in 0..20 {
            let flipped = apply(&plain, &mut Rng::new(seed));
            flips += usize::from(flipped == mirrored);
            assert!(flipped == eval || flipped == mirrored);
            let augmented = apply(&still.clone().with_auto_augment(true), &mut Rng::new(seed));
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
