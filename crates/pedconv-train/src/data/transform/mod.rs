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

/// A rectangle of an image: `(left, top, width, height)` in pixels.
pub type Region = (u32, u32, u32, u32);

/// The JPEG decoder compiled in (the `libjpeg-turbo` feature chooses it; see [`Opened`]).
pub const JPEG_DECODER: &str = if cfg!(feature = "libjpeg-turbo") {
    "libjpeg-turbo"
} else {
    "zune-jpeg"
};

/// Decodes an encoded image by its content (not its name), converting grayscale, RGBA, CMYK and
/// 16-bit images to 8-bit RGB; errors name `name`. See [`Opened`] for the JPEG decoders.
pub fn decode(bytes: &[u8], name: &dyn Display) -> Result<RgbImage, String> {
    Opened::read(bytes, name)?.into_image(name)
}

/// An encoded image whose dimensions are known: with the `libjpeg-turbo` feature a JPEG with
/// its headers read, so that a crop can be decoded alone ([`Self::region`]); any other image
/// decoded whole. JPEGs go to zune-jpeg directly otherwise, with the options that the image
/// crate gives it (so the pixels are the image crate's), without its copies.
pub enum Opened<'a> {
    #[cfg(feature = "libjpeg-turbo")]
    Jpeg(libjpeg::Jpeg<'a>),
    Decoded(RgbImage, std::marker::PhantomData<&'a [u8]>),
}

impl<'a> Opened<'a> {
    pub fn read(bytes: &'a [u8], name: &dyn Display) -> Result<Self, String> {
        let decoded = |image| Ok(Self::Decoded(image, std::marker::PhantomData));
        if !bytes.starts_with(&[0xFF, 0xD8]) {
            let image = image::load_from_memory(bytes).map_err(|e| format!("{name}: {e}"))?;
            return decoded(image.into_rgb8());
        }
        #[cfg(feature = "libjpeg-turbo")]
        {
            let jpeg = libjpeg::Jpeg::open(bytes, name)?;
            if jpeg.converts_to_rgb() {
                return Ok(Self::Jpeg(jpeg));
            }
        }
        let options = DecoderOptions::default()
            .set_strict_mode(false)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX)
            .jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        let pixels = decoder.decode().map_err(|e| format!("{name}: {e:?}"))?;
        let (width, height) = decoder.dimensions().expect("headers decoded");
        match RgbImage::from_raw(width as u32, height as u32, pixels) {
            Some(image) => decoded(image),
            None => Err(format!("{name}: the JPEG decoder returned too few pixels")),
        }
    }

    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            #[cfg(feature = "libjpeg-turbo")]
            Self::Jpeg(jpeg) => jpeg.dimensions(),
            Self::Decoded(image, _) => image.dimensions(),
        }
    }

    /// An image holding the region `(left, top, width, height)` of this one, and where the
    /// region lies in it: a decoded image whole; a JPEG's rows of the region and the columns of
    /// whole blocks around it (libjpeg-turbo: the pixels of the whole image's decode).
    #[cfg_attr(not(feature = "libjpeg-turbo"), allow(unused_variables))]
    pub fn region(self, region: Region, name: &dyn Display) -> Result<(RgbImage, Region), String> {
        match self {
            #[cfg(feature = "libjpeg-turbo")]
            Self::Jpeg(jpeg) => {
                let (image, left) = jpeg.decode_region(region, name)?;
                Ok((image, (left, 0, region.2, region.3)))
            }
            Self::Decoded(image, _) => Ok((image, region)),
        }
    }

    /// The whole image, decoded.
    pub fn into_image(self, name: &dyn Display) -> Result<RgbImage, String> {
        let (width, height) = self.dimensions();
        Ok(self.region((0, 0, width, height), name)?.0)
    }
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
) -> Region {
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
        let opened = timed(&mut times.decode, || Opened::read(bytes, name))?;
        let mut image = match &self.crop {
            TrainCrop::RandomResized { scale, ratio } => {
                let (width, height) = opened.dimensions();
                let crop = random_crop_box(width, height, *scale, *ratio, rng);
                let (pixels, crop) = timed(&mut times.decode, || opened.region(crop, name))?;
                timed(&mut times.crop_resize, || {
                    resized_crop(&pixels, crop, (size, size))
                })
            }
            TrainCrop::ResizeCentre { resize } => {
                let rgb = timed(&mut times.decode, || opened.into_image(name))?;
                timed(&mut times.crop_resize, || {
                    resize_and_crop_image(&rgb, *resize as u32, size, name)
                })?
            }
        };
        timed(&mut times.augment, || {
            if self.flip && rng.uniform() < 0.5 {
                mirror(&mut image);
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

/// Mirrors `image` left-right in place: each row's bytes reversed, then each pixel's channels
/// put back in order (two passes the compiler vectorises, where a pixel-by-pixel swap is not).
pub fn mirror(image: &mut RgbImage) {
    let width = image.width() as usize;
    for row in image.chunks_exact_mut(3 * width) {
        row.reverse();
        for pixel in row.chunks_exact_mut(3) {
            pixel.reverse();
        }
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
pub fn resized_crop(image: &RgbImage, crop: Region, size: (u32, u32)) -> RgbImage {
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

#[cfg(feature = "libjpeg-turbo")]
mod libjpeg;
#[cfg(test)]
mod tests;
