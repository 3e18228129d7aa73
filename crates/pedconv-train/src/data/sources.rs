//! The images of a split, produced on demand on the batcher's threads: an image folder (with its
//! transform), and random synthetic images (the built-in set is in [`super::builtin`]).

use super::folder::ImageFolder;
use super::rng::{seed_of, Rng};
use super::transform::{eval_image, Augmentation};

/// One split's images, produced on demand (on the batcher's threads).
pub trait ImageSource: Send + Sync {
    /// The number of images.
    fn len(&self) -> usize;
    /// Image `index`'s class.
    fn label(&self, index: usize) -> usize;
    /// Image `index`'s normalised `[3, side, side]` pixels (channel-major), drawing any
    /// augmentation from `rng`; the error names the image.
    fn pixels(&self, index: usize, rng: &mut Rng) -> Result<Vec<f32>, String>;
}

/// How a folder's images are transformed.
#[derive(Debug, Clone)]
pub enum FolderTransform {
    /// The training augmentation, to `size × size`.
    Train {
        augmentation: Augmentation,
        size: u32,
    },
    /// Shorter side to `resize`, centre crop `crop`.
    Eval { resize: u32, crop: u32 },
}

/// The images of a folder split.
pub struct FolderImages {
    pub folder: ImageFolder,
    pub transform: FolderTransform,
}

impl ImageSource for FolderImages {
    fn len(&self) -> usize {
        self.folder.items.len()
    }

    fn label(&self, index: usize) -> usize {
        self.folder.items[index].1
    }

    fn pixels(&self, index: usize, rng: &mut Rng) -> Result<Vec<f32>, String> {
        let path = &self.folder.items[index].0;
        match &self.transform {
            FolderTransform::Train { augmentation, size } => augmentation.apply(path, *size, rng),
            FolderTransform::Eval { resize, crop } => eval_image(path, *resize, *crop),
        }
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

    fn pixels(&self, index: usize, _rng: &mut Rng) -> Result<Vec<f32>, String> {
        let mut rng = Rng::new(seed_of(&[self.seed, index as u64, 1]));
        Ok((0..3 * self.size * self.size)
            .map(|_| rng.normal() as f32)
            .collect())
    }
}
