//! The training data: where images come from ([`DataSource`], [`sources`], [`builtin`],
//! [`folder`]), how they are transformed ([`transform`], [`autoaugment`]), and the pipeline that
//! loads, augments, mixes and batches them on the CPU ([`loader`], [`batcher`]).
//!
//! The [`loader::EpochLoader`] hands out light samples (an image and the seed of its
//! augmentation) in an order drawn from the run's seed and the epoch; the
//! [`batcher::ImageBatcher`] decodes a batch's images in parallel on its own thread pool and
//! stacks them into a CPU [`Batch`], which the training step moves to the device. A sample's
//! randomness depends only on the run's seed, the image and the epoch, so a run is reproducible
//! whatever thread decodes which image, and a resumed run continues exactly.

pub mod autoaugment;
pub mod batcher;
pub mod builtin;
pub mod folder;
pub mod loader;
pub mod pack;
pub mod rng;
pub mod sources;
pub mod transform;

use std::path::PathBuf;
use std::sync::Arc;

use burn::config::Config;
use serde::{Deserialize, Serialize};

pub use batcher::Batch;
use builtin::BuiltinImages;
use folder::Splits;
use pack::PackedSplit;
use sources::{FolderImages, ImageSource, ImageTransform, PackedImages, SyntheticImages};
use transform::Augmentation;

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSource {
    /// The built-in procedurally generated set ([`builtin`]): 12 classes, no download. Images
    /// are generated at `train_crop` (training) and `val_crop` (validation) pixels.
    Builtin {
        train_images: usize,
        valid_images: usize,
    },
    /// An ImageNet-style folder: `path/train/<class>/*` and `path/val/<class>/*`.
    Folder { path: PathBuf },
    /// A packed dataset that `pedconv pack` wrote (WebDataset tar shards with an index; see
    /// [`pack`]).
    Packed { path: PathBuf },
    /// Random normal images with random labels, for throughput runs (there is nothing to learn).
    Synthetic {
        train_images: usize,
        valid_images: usize,
        classes: usize,
    },
}

impl DataSource {
    /// The images at `path`: a packed dataset (a folder with a `pack.json`) or an image folder.
    pub fn at(path: PathBuf) -> Self {
        if path.join("pack.json").is_file() {
            DataSource::Packed { path }
        } else {
            DataSource::Folder { path }
        }
    }

    /// The number of classes (for a folder, its `train/` class folders, the images unread).
    pub fn classes(&self) -> Result<usize, String> {
        match self {
            DataSource::Builtin { .. } => Ok(builtin::CLASSES),
            DataSource::Folder { path } => folder::class_count(path),
            DataSource::Packed { path } => Ok(pack::manifest(path)?.classes.len()),
            DataSource::Synthetic { classes, .. } => Ok(*classes),
        }
    }
}

/// The data of a run and its transforms.
#[derive(Config, Debug)]
pub struct DataConfig {
    /// The images.
    pub source: DataSource,
    /// Side of the training images (the output of the training crop).
    #[config(default = 224)]
    pub train_crop: usize,
    /// The training transform of folder images.
    #[config(default = "Augmentation::new()")]
    pub augmentation: Augmentation,
    /// Validation images have their shorter side resized to this (bilinear) ...
    #[config(default = 256)]
    pub val_resize: usize,
    /// ... before the centre crop of this side.
    #[config(default = 224)]
    pub val_crop: usize,
    /// Threads that decode and augment images (one pool for all devices). Default: the
    /// machine's cores less one per device, at least one.
    #[config(default = "None")]
    pub workers: Option<usize>,
    /// The run stops when more than this fraction of a split's images cannot be read (they are
    /// skipped, counted and reported otherwise).
    #[config(default = 0.01)]
    pub max_bad_fraction: f64,
}

/// One split, ready for a data loader.
pub struct Split {
    pub source: Arc<dyn ImageSource>,
    /// Side of its images.
    pub side: usize,
    /// Where it comes from, for messages.
    pub name: String,
}

/// Both splits, the number of classes and their names (none for synthetic images).
pub struct Data {
    pub train: Split,
    pub valid: Split,
    pub classes: usize,
    pub class_names: Option<Vec<String>>,
}

impl DataConfig {
    /// Opens the source (scanning a folder's splits and checking that their classes agree).
    pub fn open(&self, seed: u64) -> Result<Data, String> {
        let (train_side, val_side) = (self.train_crop, self.val_crop);
        Ok(match &self.source {
            DataSource::Builtin {
                train_images,
                valid_images,
            } => Data {
                train: Split {
                    source: Arc::new(BuiltinImages {
                        len: *train_images,
                        size: train_side,
                        seed,
                    }),
                    side: train_side,
                    name: "the built-in training images".into(),
                },
                valid: Split {
                    // Another stream than the training images'.
                    source: Arc::new(BuiltinImages {
                        len: *valid_images,
                        size: val_side,
                        seed: seed ^ 0x9E37_79B9_7F4A_7C15,
                    }),
                    side: val_side,
                    name: "the built-in validation images".into(),
                },
                classes: builtin::CLASSES,
                class_names: Some(builtin::class_names()),
            },
            DataSource::Folder { path } => {
                let splits = Splits::open(path)?;
                let class_names = splits.train.classes.clone();
                let (train, valid) = self.transforms();
                let source = |folder, transform| Arc::new(FolderImages { folder, transform });
                Data {
                    train: Split {
                        source: source(splits.train, train),
                        side: train_side,
                        name: path.join("train").display().to_string(),
                    },
                    valid: Split {
                        source: source(splits.valid, valid),
                        side: val_side,
                        name: path.join("val").display().to_string(),
                    },
                    classes: class_names.len(),
                    class_names: Some(class_names),
                }
            }
            DataSource::Packed { path } => {
                let class_names = pack::manifest(path)?.classes;
                let (train, valid) = self.transforms();
                let source = |split: &str, transform| -> Result<_, String> {
                    let split = PackedSplit::open(path, split)?;
                    Ok(Arc::new(PackedImages { split, transform }))
                };
                Data {
                    train: Split {
                        source: source("train", train)?,
                        side: train_side,
                        name: format!("{} (train)", path.display()),
                    },
                    valid: Split {
                        source: source("val", valid)?,
                        side: val_side,
                        name: format!("{} (val)", path.display()),
                    },
                    classes: class_names.len(),
                    class_names: Some(class_names),
                }
            }
            DataSource::Synthetic {
                train_images,
                valid_images,
                classes,
            } => {
                let split = |len: usize, side: usize, seed: u64, name: &str| Split {
                    source: Arc::new(SyntheticImages {
                        len,
                        size: side,
                        classes: *classes,
                        seed,
                    }),
                    side,
                    name: name.into(),
                };
                Data {
                    train: split(
                        *train_images,
                        train_side,
                        seed,
                        "the synthetic training images",
                    ),
                    valid: split(
                        *valid_images,
                        val_side,
                        !seed,
                        "the synthetic validation images",
                    ),
                    classes: *classes,
                    class_names: None,
                }
            }
        })
    }

    /// The threads that decode and augment images for `devices` devices: `workers`, or the
    /// machine's cores less one per device (at least one).
    pub fn workers(&self, devices: usize) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_sub(devices).max(1)
        })
    }

    /// The transforms of decoded training and validation images.
    fn transforms(&self) -> (ImageTransform, ImageTransform) {
        let train = ImageTransform::Train {
            augmentation: self.augmentation.clone(),
            size: self.train_crop as u32,
        };
        let valid = ImageTransform::Eval {
            resize: self.val_resize as u32,
            crop: self.val_crop as u32,
        };
        (train, valid)
    }

    /// Checks the values, naming the first wrong one.
    pub fn validate(&self) -> Result<(), String> {
        let mut positive = vec![
            ("data.train_crop", self.train_crop),
            ("data.val_crop", self.val_crop),
            ("data.workers", self.workers.unwrap_or(1)),
        ];
        match &self.source {
            DataSource::Builtin {
                train_images,
                valid_images,
            } => positive.extend([
                ("data.source.train_images", *train_images),
                ("data.source.valid_images", *valid_images),
            ]),
            DataSource::Synthetic {
                train_images,
                valid_images,
                classes,
            } => positive.extend([
                ("data.source.train_images", *train_images),
                ("data.source.valid_images", *valid_images),
                ("data.source.classes", *classes),
            ]),
            DataSource::Folder { .. } | DataSource::Packed { .. } => {}
        }
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive, got 0"));
        }
        if self.val_resize < self.val_crop {
            return Err(format!(
                "data.val_resize ({}) must be at least data.val_crop ({})",
                self.val_resize, self.val_crop
            ));
        }
        self.augmentation.validate(self.train_crop)?;
        if !(0.0..=1.0).contains(&self.max_bad_fraction) {
            return Err(format!(
                "data.max_bad_fraction must be in [0, 1], got {}",
                self.max_bad_fraction
            ));
        }
        Ok(())
    }
}
