//! The batching step of the pipeline: a batch's images decoded and augmented in parallel on the
//! batcher's own threads, unreadable images replaced (and counted), stacked channel-major into a
//! CPU [`Batch`] of 8-bit pixels; the training step moves it to the device, where it is
//! normalised and mixed ([`Batch::into_device`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use image::RgbImage;
use rayon::prelude::*;

use super::rng::{seed_of, Rng};
use super::sources::{ImageSource, Pixels};
use super::transform::{normalise, StageTimes, MEAN, STD};
use super::Split;

/// What the loader hands to the batcher: an image and the seed of its augmentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub index: usize,
    pub seed: u64,
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

/// Tells the noise seeds apart from the mixup's.
const NOISE_STREAM: u64 = 0x006E_6F69_7365;

/// A batch on the CPU (loader threads never touch the device): images `[n, 3, side, side]`,
/// channel-major, as 8-bit RGB (`u8`, a quarter of float32's bytes to move; normalised on the
/// device) or, for the generated sets, as model inputs (`f32`); the mixup to apply on the device;
/// target distributions `[n, classes]` (one-hot, or two classes mixed by mixup) and the dominant
/// class of each image; and the seed of the training forward's random numbers (PEDConv's
/// noise), a function of the batch's images and epoch alone.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: TensorData,
    pub mixup: Option<Mixup>,
    pub targets: TensorData,
    pub labels: Vec<i64>,
    pub noise_seed: u64,
    /// The epoch it belongs to (from 1).
    pub epoch: usize,
}

/// Mixup of a batch: image `i` becomes `λ · x_i + (1 - λ) · x_partner[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixup {
    pub lambda: f32,
    pub partner: Vec<i64>,
}

/// A batch on the device.
pub struct DeviceBatch<B: Backend> {
    pub images: Tensor<B, 4>,
    pub targets: Tensor<B, 2>,
    pub labels: Tensor<B, 1, Int>,
}

impl Batch {
    /// The batch on `device`: 8-bit images normalised there (uploaded as `u8` where the backend
    /// holds 8-bit integers, converted on the host otherwise), then mixed.
    pub fn into_device<B: Backend>(self, device: &B::Device) -> DeviceBatch<B> {
        let count = self.labels.len();
        let images = if self.images.dtype == DType::U8 {
            normalised::<B>(self.images, device)
        } else {
            Tensor::from_data(self.images, device)
        };
        let images = match self.mixup {
            Some(Mixup { lambda, partner }) => {
                let partner =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(partner, [count]), device);
                let others = images.clone().select(0, partner);
                images.mul_scalar(lambda) + others.mul_scalar(1.0 - lambda)
            }
            None => images,
        };
        DeviceBatch {
            images,
            targets: Tensor::from_data(self.targets, device),
            labels: Tensor::from_data(TensorData::new(self.labels, [count]), device),
        }
    }
}

/// ImageNet's normalisation of 8-bit images, `(x / 255 - mean) / std` per channel, on `device`
/// (the same float32 operations as [`normalise`] on the host).
fn normalised<B: Backend>(images: TensorData, device: &B::Device) -> Tensor<B, 4> {
    let pixels: Tensor<B, 4> = if B::supports_dtype(device, DType::U8) {
        Tensor::<B, 4, Int>::from_data(images, (device, DType::U8)).float()
    } else {
        Tensor::from_data(images.convert::<f32>(), device)
    };
    let per_channel = |values: [f32; 3]| {
        Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [3]), device)
            .reshape([1, 3, 1, 1])
    };
    (pixels.div_scalar(255.0) - per_channel(MEAN)) / per_channel(STD)
}

/// Decodes a batch's images in parallel, replacing unreadable ones, and draws the mixup.
#[derive(Clone)]
pub struct ImageBatcher {
    source: Arc<dyn ImageSource>,
    side: usize,
    classes: usize,
    /// The mixup's Beta parameter; 0 turns it off.
    mixup: f64,
    pool: Arc<rayon::ThreadPool>,
    bad: Arc<BadImages>,
    /// The time spent in each stage, summed over the images batched so far.
    times: Arc<Mutex<StageTimes>>,
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
            times: Arc::default(),
        })
    }

    /// The number of images of the split.
    pub fn images(&self) -> usize {
        self.source.len()
    }

    /// The CPU time spent in each stage, summed over the images batched so far.
    pub fn stage_times(&self) -> StageTimes {
        *self.times.lock().expect("stage times")
    }

    /// The pixels and class of `sample`, or of the next readable image when it cannot be read
    /// (black, if none of the next few can be), and the time of its stages.
    fn load(&self, sample: Sample) -> (Pixels, usize, StageTimes) {
        let len = self.source.len();
        let mut rng = Rng::new(sample.seed);
        let mut times = StageTimes::default();
        for index in (0..=REPLACEMENT_TRIES).map(|k| (sample.index + k) % len) {
            match self.source.pixels(index, &mut rng, &mut times) {
                Ok(pixels) => return (pixels, self.source.label(index), times),
                Err(message) => self.bad.record(index, message),
            }
        }
        let black = RgbImage::new(self.side as u32, self.side as u32);
        (Pixels::Rgb8(black), self.source.label(sample.index), times)
    }

    /// Stacks the images into a batch and draws its mixup: every image is to be blended with a
    /// random other one of the batch, `λ · x_i + (1 - λ) · x_π(i)` with `λ ~ Beta(α, α)`, and so
    /// are the one-hot targets (as the reference's training script does). The batch belongs to
    /// `epoch`.
    pub fn assemble(&self, samples: &[Sample], epoch: usize) -> Batch {
        let loaded: Vec<(Pixels, usize, StageTimes)> = self
            .pool
            .install(|| samples.par_iter().map(|&s| self.load(s)).collect());
        let start = Instant::now();
        let count = loaded.len();
        let shape = [count, 3, self.side, self.side];
        let images = self.pool.install(|| stack(&loaded, shape));
        let batch_seed = seed_of(&samples.iter().map(|s| s.seed).collect::<Vec<_>>());
        let mut rng = Rng::new(batch_seed);
        let (lambda, partner) = if self.mixup > 0.0 {
            (rng.beta(self.mixup, self.mixup), rng.permutation(count))
        } else {
            (1.0, (0..count).collect())
        };
        let mut targets = vec![0.0f32; count * self.classes];
        let mut labels = Vec::with_capacity(count);
        for (i, (_, label, _)) in loaded.iter().enumerate() {
            let other_label = loaded[partner[i]].1;
            targets[i * self.classes + label] += lambda as f32;
            targets[i * self.classes + other_label] += 1.0 - lambda as f32;
            labels.push(if lambda >= 0.5 { *label } else { other_label } as i64);
        }
        let mut times = StageTimes::default();
        loaded.iter().for_each(|(_, _, t)| times += *t);
        times.assemble += start.elapsed();
        *self.times.lock().expect("stage times") += times;
        Batch {
            images,
            mixup: (lambda != 1.0).then(|| Mixup {
                lambda: lambda as f32,
                partner: partner.into_iter().map(|i| i as i64).collect(),
            }),
            targets: TensorData::new(targets, [count, self.classes]),
            labels,
            noise_seed: seed_of(&[batch_seed, NOISE_STREAM]),
            epoch,
        }
    }
}

/// The images, channel-major, as `u8` when all are 8-bit and as normalised `f32` otherwise
/// (the generated sets), copied in parallel.
fn stack(loaded: &[(Pixels, usize, StageTimes)], shape: [usize; 4]) -> TensorData {
    let plane = shape[2] * shape[3];
    let all_8bit = loaded.iter().all(|(p, ..)| matches!(p, Pixels::Rgb8(_)));
    if all_8bit {
        let mut images = vec![0u8; shape.iter().product()];
        images
            .par_chunks_mut(3 * plane)
            .zip(loaded)
            .for_each(|(out, (pixels, ..))| {
                if let Pixels::Rgb8(image) = pixels {
                    let (red, rest) = out.split_at_mut(plane);
                    let (green, blue) = rest.split_at_mut(plane);
                    let channels = red.iter_mut().zip(green).zip(blue);
                    for (((r, g), b), pixel) in channels.zip(image.as_raw().chunks_exact(3)) {
                        (*r, *g, *b) = (pixel[0], pixel[1], pixel[2]);
                    }
                }
            });
        TensorData::new(images, shape)
    } else {
        let mut images = vec![0f32; shape.iter().product()];
        images
            .par_chunks_mut(3 * plane)
            .zip(loaded)
            .for_each(|(out, (pixels, ..))| match pixels {
                Pixels::Rgb8(image) => out.copy_from_slice(&normalise(image)),
                Pixels::Float(values) => out.copy_from_slice(values),
            });
        TensorData::new(images, shape)
    }
}

#[cfg(test)]
mod tests;
