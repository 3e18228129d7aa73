//! The training data: where images come from ([`DataSource`]), how they are transformed, and the
//! pipeline that decodes, augments, mixes and batches them on the CPU.
//!
//! The data loader hands out light [`Sample`]s (an index and the seed of its augmentation); the
//! [`ImageBatcher`] decodes a batch's images in parallel on its own thread pool and stacks them
//! into a CPU [`Batch`], which the training step moves to the device. A sample's randomness
//! depends only on the run's seed, the image and how often it has been drawn, so a run is
//! reproducible whatever thread decodes which image.

pub mod builtin;
pub mod folder;
pub mod rng;
pub mod transform;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use burn::config::Config;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use builtin::BuiltinImages;
use folder::{ImageFolder, Splits};
use rng::{seed_of, Rng};

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
    /// Random normal images with random labels, for throughput runs (there is nothing to learn).
    Synthetic {
        train_images: usize,
        valid_images: usize,
        classes: usize,
    },
}

/// The data of a run and its transforms.
#[derive(Config, Debug)]
pub struct DataConfig {
    /// The images.
    pub source: DataSource,
    /// Side of the training images (the output of the random resized crop).
    #[config(default = 224)]
    pub train_crop: usize,
    /// Validation images have their shorter side resized to this (bilinear) ...
    #[config(default = 256)]
    pub val_resize: usize,
    /// ... before the centre crop of this side.
    #[config(default = 224)]
    pub val_crop: usize,
    /// Threads that decode and augment images.
    #[config(default = 4)]
    pub workers: usize,
    /// The run stops when more than this fraction of a split's images cannot be read (they are
    /// skipped, counted and reported otherwise).
    #[config(default = 0.01)]
    pub max_bad_fraction: f64,
}

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
#[derive(Debug, Clone, Copy)]
enum FolderTransform {
    /// Random resized crop to `size`, random flip.
    Train { size: u32 },
    /// Shorter side to `resize`, centre crop `crop`.
    Eval { resize: u32, crop: u32 },
}

struct FolderImages {
    folder: ImageFolder,
    transform: FolderTransform,
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
        match self.transform {
            FolderTransform::Train { size } => transform::train_image(path, size, rng),
            FolderTransform::Eval { resize, crop } => transform::eval_image(path, resize, crop),
        }
    }
}

struct SyntheticImages {
    len: usize,
    size: usize,
    classes: usize,
    seed: u64,
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

/// One split, ready for a data loader.
pub struct Split {
    pub source: Arc<dyn ImageSource>,
    /// Side of its images.
    pub side: usize,
    /// Where it comes from, for messages.
    pub name: String,
}

/// Both splits and the number of classes.
pub struct Data {
    pub train: Split,
    pub valid: Split,
    pub classes: usize,
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
            },
            DataSource::Folder { path } => {
                let splits = Splits::open(path)?;
                let classes = splits.train.classes.len();
                Data {
                    train: Split {
                        source: Arc::new(FolderImages {
                            folder: splits.train,
                            transform: FolderTransform::Train {
                                size: train_side as u32,
                            },
                        }),
                        side: train_side,
                        name: path.join("train").display().to_string(),
                    },
                    valid: Split {
                        source: Arc::new(FolderImages {
                            folder: splits.valid,
                            transform: FolderTransform::Eval {
                                resize: self.val_resize as u32,
                                crop: val_side as u32,
                            },
                        }),
                        side: val_side,
                        name: path.join("val").display().to_string(),
                    },
                    classes,
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
                }
            }
        })
    }

    /// Checks the values, naming the first wrong one.
    pub fn validate(&self) -> Result<(), String> {
        let mut positive = vec![
            ("data.train_crop", self.train_crop),
            ("data.val_crop", self.val_crop),
            ("data.workers", self.workers),
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
            DataSource::Folder { .. } => {}
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
        if !(0.0..=1.0).contains(&self.max_bad_fraction) {
            return Err(format!(
                "data.max_bad_fraction must be in [0, 1], got {}",
                self.max_bad_fraction
            ));
        }
        Ok(())
    }
}

/// What the data loader hands to the batcher: an image and the seed of its augmentation.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub index: usize,
    pub seed: u64,
}

/// A split's samples; the seed of an image's augmentation changes with every draw of it.
pub struct Samples {
    len: usize,
    seed: u64,
    draws: Vec<AtomicU32>,
}

impl Samples {
    /// `len` samples whose draws are counted from `first_draw` (the epochs already trained, when
    /// resuming: each epoch draws every image once).
    pub fn new(len: usize, seed: u64, first_draw: u32) -> Self {
        Self {
            len,
            seed,
            draws: (0..len).map(|_| AtomicU32::new(first_draw)).collect(),
        }
    }
}

impl Dataset<Sample> for Samples {
    fn get(&self, index: usize) -> Option<Sample> {
        let draw = self.draws.get(index)?.fetch_add(1, Ordering::Relaxed);
        Some(Sample {
            index,
            seed: seed_of(&[self.seed, index as u64, draw as u64]),
        })
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// The unreadable images of a split: each is reported once, and `stop` is called when there are
/// more than the allowed fraction.
pub struct BadImages {
    split: String,
    allowed: usize,
    found: Mutex<BTreeMap<usize, String>>,
    stop: Box<dyn Fn() + Send + Sync>,
}

impl BadImages {
    /// Allows `floor(max_fraction · images)` unreadable images of `split`.
    pub fn new(split: &Split, max_fraction: f64, stop: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            split: split.name.clone(),
            allowed: (max_fraction * split.source.len() as f64).floor() as usize,
            found: Mutex::new(BTreeMap::new()),
            stop: Box::new(stop),
        }
    }

    fn record(&self, index: usize, message: String) {
        let mut found = self.found.lock().expect("bad image list");
        if found.contains_key(&index) {
            return;
        }
        eprintln!("warning: skipping an unreadable image: {message}");
        found.insert(index, message);
        if found.len() == self.allowed + 1 {
            (self.stop)();
        }
    }

    /// How many images could not be read.
    pub fn count(&self) -> usize {
        self.found.lock().expect("bad image list").len()
    }

    /// The error to report if there were too many unreadable images.
    pub fn too_many(&self) -> Option<String> {
        let found = self.found.lock().expect("bad image list");
        (found.len() > self.allowed).then(|| {
            format!(
                "stopped: {} images of {} could not be read, more than data.max_bad_fraction \
                 allows ({}); the first: {}",
                found.len(),
                self.split,
                self.allowed,
                found.values().next().map_or("", String::as_str)
            )
        })
    }
}

/// A batch on the CPU (loader threads never touch the device): images `[n, 3, side, side]`,
/// target distributions `[n, classes]` (one-hot, or two classes mixed by mixup) and the
/// dominant class of each image.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: TensorData,
    pub targets: TensorData,
    pub labels: Vec<i64>,
}

/// A batch on the device.
pub struct DeviceBatch<B: Backend> {
    pub images: Tensor<B, 4>,
    pub targets: Tensor<B, 2>,
    pub labels: Tensor<B, 1, Int>,
}

impl Batch {
    pub fn into_device<B: Backend>(self, device: &B::Device) -> DeviceBatch<B> {
        let count = self.labels.len();
        DeviceBatch {
            images: Tensor::from_data(self.images, device),
            targets: Tensor::from_data(self.targets, device),
            labels: Tensor::from_data(TensorData::new(self.labels, [count]), device),
        }
    }
}

/// Decodes a batch's images in parallel, replacing unreadable ones, and applies mixup.
#[derive(Clone)]
pub struct ImageBatcher {
    source: Arc<dyn ImageSource>,
    side: usize,
    classes: usize,
    /// The mixup's Beta parameter; 0 turns it off.
    mixup: f64,
    pool: Arc<rayon::ThreadPool>,
    bad: Arc<BadImages>,
}

/// How many other images are tried in place of an unreadable one.
const REPLACEMENT_TRIES: usize = 8;

impl ImageBatcher {
    pub fn new(
        split: &Split,
        classes: usize,
        mixup: f64,
        workers: usize,
        bad: Arc<BadImages>,
    ) -> Result<Self, String> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("pedconv-data-{i}"))
            .build()
            .map_err(|e| format!("cannot start {workers} data threads: {e}"))?;
        Ok(Self {
            source: split.source.clone(),
            side: split.side,
            classes,
            mixup,
            pool: Arc::new(pool),
            bad,
        })
    }

    /// The pixels and class of `sample`, or of the next readable image when it cannot be read
    /// (zeros, if none of the next few can be).
    fn load(&self, sample: Sample) -> (Vec<f32>, usize) {
        let len = self.source.len();
        let mut rng = Rng::new(sample.seed);
        for index in (0..=REPLACEMENT_TRIES).map(|k| (sample.index + k) % len) {
            match self.source.pixels(index, &mut rng) {
                Ok(pixels) => return (pixels, self.source.label(index)),
                Err(message) => self.bad.record(index, message),
            }
        }
        (
            vec![0.0; 3 * self.side * self.side],
            self.source.label(sample.index),
        )
    }

    /// Stacks the images into a batch; with mixup, every image is blended with a random other
    /// one of the batch, `λ · x_i + (1 - λ) · x_π(i)` with `λ ~ Beta(α, α)`, and so are the
    /// one-hot targets (as the reference's training script does).
    pub fn assemble(&self, samples: &[Sample]) -> Batch {
        let loaded: Vec<(Vec<f32>, usize)> = self
            .pool
            .install(|| samples.par_iter().map(|&s| self.load(s)).collect());
        let count = loaded.len();
        let plane = 3 * self.side * self.side;
        let mut rng = Rng::new(seed_of(&samples.iter().map(|s| s.seed).collect::<Vec<_>>()));
        let (lambda, partner) = if self.mixup > 0.0 {
            (rng.beta(self.mixup, self.mixup), rng.permutation(count))
        } else {
            (1.0, (0..count).collect())
        };
        let mut images = Vec::with_capacity(count * plane);
        let mut targets = vec![0.0f32; count * self.classes];
        let mut labels = Vec::with_capacity(count);
        for (i, (pixels, label)) in loaded.iter().enumerate() {
            let (other, other_label) = &loaded[partner[i]];
            if lambda == 1.0 {
                images.extend_from_slice(pixels);
            } else {
                let (a, b) = (lambda as f32, 1.0 - lambda as f32);
                images.extend(pixels.iter().zip(other).map(|(x, y)| a * x + b * y));
            }
            targets[i * self.classes + label] += lambda as f32;
            targets[i * self.classes + other_label] += 1.0 - lambda as f32;
            labels.push(if lambda >= 0.5 { *label } else { *other_label } as i64);
        }
        Batch {
            images: TensorData::new(images, [count, 3, self.side, self.side]),
            targets: TensorData::new(targets, [count, self.classes]),
            labels,
        }
    }
}

impl<B: Backend> Batcher<B, Sample, Batch> for ImageBatcher {
    fn batch(&self, samples: Vec<Sample>, _device: &B::Device) -> Batch {
        self.assemble(&samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Image `i` is the constant `i`, of class `i`; image 2 cannot be read.
    struct Constant;

    impl ImageSource for Constant {
        fn len(&self) -> usize {
            5
        }
        fn label(&self, index: usize) -> usize {
            index
        }
        fn pixels(&self, index: usize, _rng: &mut Rng) -> Result<Vec<f32>, String> {
            if index == 2 {
                return Err("image 2: corrupt".into());
            }
            Ok(vec![index as f32; 3 * 2 * 2])
        }
    }

    fn constant_batcher(mixup: f64, max_fraction: f64) -> (ImageBatcher, Arc<Mutex<usize>>) {
        let split = Split {
            source: Arc::new(Constant),
            side: 2,
            name: "constants".into(),
        };
        let stops = Arc::new(Mutex::new(0));
        let counter = stops.clone();
        let bad = BadImages::new(&split, max_fraction, move || *counter.lock().unwrap() += 1);
        let batcher = ImageBatcher::new(&split, 5, mixup, 2, Arc::new(bad)).unwrap();
        (batcher, stops)
    }

    fn samples(indices: &[usize], seed: u64) -> Vec<Sample> {
        indices
            .iter()
            .map(|&index| Sample { index, seed })
            .collect()
    }

    /// Mixed images are `λ x_i + (1 - λ) x_π(i)` and mixed targets put `λ` and `1 - λ` on the two
    /// images' classes: as image `c` is the constant `c` of class `c`, every pixel must equal
    /// `Σ_c target_c · c`. The label is the class of larger weight.
    #[test]
    fn mixup_blends_images_and_targets_alike() {
        let (batcher, _) = constant_batcher(0.2, 1.0);
        let indices = [0, 1, 3, 4];
        let mut mixed = 0;
        for seed in 0..5 {
            let batch = batcher.assemble(&samples(&indices, seed));
            let images = batch.images.to_vec::<f32>().unwrap();
            let targets = batch.targets.to_vec::<f32>().unwrap();
            for (i, &index) in indices.iter().enumerate() {
                let row = &targets[i * 5..(i + 1) * 5];
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
                assert!(row[index] >= 0.0 && row.iter().filter(|&&w| w > 0.0).count() <= 2);
                let expected: f32 = row.iter().enumerate().map(|(c, w)| w * c as f32).sum();
                let pixels = &images[i * 12..(i + 1) * 12];
                assert!(
                    pixels.iter().all(|p| (p - expected).abs() < 1e-5),
                    "{pixels:?} {row:?}"
                );
                let label = batch.labels[i] as usize;
                assert!(row.iter().all(|&w| row[label] >= w));
                mixed += usize::from(row[index] < 1.0 - 1e-6);
            }
        }
        assert!(mixed > 0);
        // Without mixup, targets are one-hot.
        let (plain, _) = constant_batcher(0.0, 1.0);
        let batch = plain.assemble(&samples(&[0, 4], 0));
        assert_eq!(
            batch.targets.to_vec::<f32>().unwrap(),
            vec![1., 0., 0., 0., 0., 0., 0., 0., 0., 1.]
        );
        assert_eq!(batch.labels, vec![0, 4]);
    }

    /// An unreadable image is replaced by the next readable one and counted once; `stop` is
    /// called when the allowed count is exceeded (`floor(0.2 · 5) = 1` allowed, then none).
    #[test]
    fn unreadable_images_are_replaced_counted_and_stop_the_run() {
        let (lenient, stops) = constant_batcher(0.0, 0.2);
        let batch = lenient.assemble(&samples(&[2, 2, 0], 0));
        let images = batch.images.to_vec::<f32>().unwrap();
        assert_eq!((images[0], images[12]), (3.0, 3.0)); // image 3 replaced image 2
        assert_eq!(batch.labels, vec![3, 3, 0]);
        assert_eq!(lenient.bad.count(), 1);
        assert!(lenient.bad.too_many().is_none());
        assert_eq!(*stops.lock().unwrap(), 0);

        let (strict, stops) = constant_batcher(0.0, 0.1);
        strict.assemble(&samples(&[2], 0));
        assert_eq!(*stops.lock().unwrap(), 1);
        let message = strict.bad.too_many().unwrap();
        assert!(message.contains("constants") && message.contains("image 2: corrupt"));
    }

    /// A sample's seed changes with every draw of the same image, and is the same in a second
    /// run.
    #[test]
    fn augmentation_seeds_change_per_draw_and_repeat_per_run() {
        let (a, b) = (Samples::new(3, 1, 0), Samples::new(3, 1, 0));
        let first = a.get(1).unwrap().seed;
        let second = a.get(1).unwrap().seed;
        assert_ne!(first, second);
        assert_eq!(first, b.get(1).unwrap().seed);
        assert!(a.get(3).is_none());
    }
}
