//! The batching step of the pipeline: a batch's images decoded and augmented in parallel on the
//! batcher's own threads, unreadable images replaced (and counted), mixup applied, stacked into
//! a CPU [`Batch`] that the training step moves to the device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use super::rng::{seed_of, Rng};
use super::sources::ImageSource;
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
/// target distributions `[n, classes]` (one-hot, or two classes mixed by mixup) and the
/// dominant class of each image; and the seed of the training forward's random numbers
/// (PEDConv's noise), a function of the batch's images and epoch alone.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: TensorData,
    pub targets: TensorData,
    pub labels: Vec<i64>,
    pub noise_seed: u64,
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

    /// The number of images of the split.
    pub fn images(&self) -> usize {
        self.source.len()
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
        let batch_seed = seed_of(&samples.iter().map(|s| s.seed).collect::<Vec<_>>());
        let mut rng = Rng::new(batch_seed);
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
            noise_seed: seed_of(&[batch_seed, NOISE_STREAM]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;

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
}
