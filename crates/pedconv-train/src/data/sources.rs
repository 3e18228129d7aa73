//! The images of a split, produced on demand on the batcher's threads: an image folder or a
//! packed dataset (decoded and transformed), and random synthetic images (the built-in set is
//! in [`super::builtin`]).

use std::fmt::Display;

use image::RgbImage;

use super::folder::ImageFolder;
use super::pack::PackedSplit;
use super::rng::{seed_of, Rng};
use super::transform::{decode, resize_and_crop_image, timed, Augmentation, StageTimes};

/// An image as a source produces it.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// Decoded 8-bit RGB, normalised on the device (see [`super::batcher::Batch`]).
    Rgb8(RgbImage),
    /// A model input `[3, side, side]`, channel-major (the generated sets).
    Float(Vec<f32>),
}

/// One split's images, produced on demand (on the batcher's threads).
pub trait ImageSource: Send + Sync {
    /// The number of images.
    fn len(&self) -> usize;
    /// Image `index`'s class.
    fn label(&self, index: usize) -> usize;
    /// Image `index` at the split's side, drawing any augmentation from `rng` and adding the
    /// time of each stage to `times`; the error names the image.
    fn pixels(&self, index: usize, rng: &mut Rng, times: &mut StageTimes)
        -> Result<Pixels, String>;
}

/// How the decoded images of a folder or a pack are transformed.
#[derive(Debug, Clone)]
pub enum ImageTransform {
    /// The training augmentation, to `size × size`.
    Train {
        augmentation: Augmentation,
        size: u32,
    },
    /// Shorter side to `resize`, centre crop `crop`.
    Eval { resize: u32, crop: u32 },
}

impl ImageTransform {
    /// The transformed image of the encoded `bytes` (`name` names it in errors).
    fn apply(
        &self,
        bytes: &[u8],
        name: &dyn Display,
        rng: &mut Rng,
        times: &mut StageTimes,
    ) -> Result<Pixels, String> {
        let image = match self {
            ImageTransform::Train { augmentation, size } => {
                augmentation.apply(bytes, name, *size, rng, times)?
            }
            ImageTransform::Eval { resize, crop } => {
                let rgb = timed(&mut times.decode, || decode(bytes, name))?;
                timed(&mut times.crop_resize, || {
                    resize_and_crop_image(&rgb, *resize, *crop, name)
                })?
            }
        };
        Ok(Pixels::Rgb8(image))
    }
}

/// The images of a folder split.
pub struct FolderImages {
    pub folder: ImageFolder,
    pub transform: ImageTransform,
}

impl ImageSource for FolderImages {
    fn len(&self) -> usize {
        self.folder.len()
    }

    fn label(&self, index: usize) -> usize {
        self.folder.label(index)
    }

    fn pixels(
        &self,
        index: usize,
        rng: &mut Rng,
        times: &mut StageTimes,
    ) -> Result<Pixels, String> {
        let path = self.folder.path(index);
        let bytes = timed(&mut times.read, || std::fs::read(&path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.transform.apply(&bytes, &path.display(), rng, times)
    }
}

/// The images of a packed split.
pub struct PackedImages {
    pub split: PackedSplit,
    pub transform: ImageTransform,
}

impl ImageSource for PackedImages {
    fn len(&self) -> usize {
        self.split.len()
    }

    fn label(&self, index: usize) -> usize {
        self.split.label(index)
    }

    fn pixels(
        &self,
        index: usize,
        rng: &mut Rng,
        times: &mut StageTimes,
    ) -> Result<Pixels, String> {
        let bytes = timed(&mut times.read, || self.split.bytes(index));
        self.transform
            .apply(bytes, &self.split.name(index), rng, times)
    }
}

/// Random normal images with random labels, for throughput runs.
pub struct SyntheticImages {
    pub len: usize,
    pub size: usize,
    pub classes: usize,
    pub seed: u64,
}

impl ImageSource for SyntheticImages {
    fn len(&self) -> usize {
        self.len
    }

    fn label(&self, index: usize) -> usize {
        Rng::new(seed_of(&[self.seed, index as u64])).below(self.classes)
    }

    fn pixels(&self, index: usize, _: &mut Rng, _: &mut StageTimes) -> Result<Pixels, String> {
        let mut rng = Rng::new(seed_of(&[self.seed, index as u64, 1]));
        Ok(Pixels::Float(
            (0..3 * self.size * self.size)
                .map(|_| rng.normal() as f32)
                .collect(),
        ))
    }
}
