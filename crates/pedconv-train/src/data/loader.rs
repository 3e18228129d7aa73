//! The data loader: burn's [`DataLoader`] over a split whose order and augmentations are
//! functions of the run's seed and the epoch alone, so a resumed run continues the uninterrupted
//! one exactly. (burn's own loader seeds its shuffle once per process.) A training loader for
//! several devices lays each epoch out shard by shard, so that burn-train's split of the loader
//! into contiguous slices hands every device a shuffled shard of the whole split.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::Backend;

use super::batcher::{Batch, ImageBatcher, Sample};
use super::rng::{seed_of, Rng};

/// Batches of a split, epoch by epoch (epochs numbered from 1, as burn-train does).
pub struct EpochLoader<B: Backend> {
    batcher: ImageBatcher,
    /// Images per batch of one device.
    batch_size: usize,
    seed: u64,
    /// A training loader: shuffles every epoch. A validation loader keeps the split's order.
    shuffle: bool,
    /// The devices whose shards each epoch is laid out in.
    shards: usize,
    /// The positions of each epoch's layout that this loader serves (all, or a device's shard).
    positions: Range<usize>,
    /// The epoch the next [`DataLoader::iter`] serves.
    next_epoch: Arc<AtomicUsize>,
    /// The device the batches go to, once known ([`DataLoader::to_device`]): their images are
    /// staged for it (pinned host memory on CUDA) on the loader's thread.
    device: Option<B::Device>,
    _backend: PhantomData<B>,
}

impl<B: Backend> EpochLoader<B> {
    /// A loader of the batcher's split, in batches of `batch_size` per device, whose next epoch
    /// is `first_epoch`. With `shards` devices each epoch serves the largest multiple of `shards`
    /// images (the others of that epoch's order are left out), laid out shard by shard.
    pub fn new(
        batcher: ImageBatcher,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        shards: usize,
        first_epoch: usize,
    ) -> Self {
        let served = batcher.images() / shards * shards;
        Self {
            positions: 0..served,
            batcher,
            batch_size,
            seed,
            shuffle,
            shards,
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            device: None,
            _backend: PhantomData,
        }
    }

    /// The samples of `epoch` this loader serves, in order: the split shuffled by a generator
    /// seeded with the seed and the epoch, laid out shard by shard ([`shard_layout`]); each
    /// image's augmentation seeded with the seed, the image and the epoch.
    pub fn epoch_samples(&self, epoch: usize) -> Vec<Sample> {
        let len = self.batcher.images();
        let order: Vec<usize> = if self.shuffle {
            Rng::new(seed_of(&[self.seed, epoch as u64])).permutation(len)
        } else {
            (0..len).collect()
        };
        let layout = shard_layout(&order, self.shards, self.batch_size);
        layout[self.positions.clone()]
            .iter()
            .map(|&index| Sample {
                index,
                seed: seed_of(&[self.seed, index as u64, epoch as u64]),
            })
            .collect()
    }

    fn with_positions(&self, positions: Range<usize>, device: Option<B::Device>) -> Self {
        Self {
            batcher: self.batcher.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
            shuffle: self.shuffle,
            shards: self.shards,
            positions,
            next_epoch: Arc::new(AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst))),
            device,
            _backend: PhantomData,
        }
    }
}

/// `order` (its first multiple of `shards` entries) rearranged shard by shard: the `k`-th global
/// batch, `order[k·g..(k+1)·g]` with `g = shards · batch`, is cut into `shards` equal parts, and
/// shard `d` is the concatenation of the `d`-th parts. So each shard holds the same number of
/// images, in batches of `batch` (the last ones as short as each other), and pass `k` of all the
/// devices together sees the `k`-th global batch, the batch one device of `g` images would see.
pub fn shard_layout(order: &[usize], shards: usize, batch: usize) -> Vec<usize> {
    let served = &order[..order.len() / shards * shards];
    let chunks = || served.chunks(shards * batch);
    (0..shards)
        .flat_map(|shard| {
            chunks().flat_map(move |chunk| {
                let part = chunk.len() / shards;
                &chunk[shard * part..(shard + 1) * part]
            })
        })
        .copied()
        .collect()
}

/// How many batches the loader's thread prepares ahead of the one the step consumes.
const BATCHES_AHEAD: usize = 2;

/// One epoch's batches, assembled ahead on a thread of their own.
struct EpochBatches {
    batches: Receiver<Batch>,
    processed: usize,
    total: usize,
}

impl Iterator for EpochBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let batch = self.batches.recv().ok()?;
        self.processed += batch.labels.len();
        Some(batch)
    }
}

impl DataLoaderIterator<Batch> for EpochBatches {
    fn progress(&self) -> Progress {
        Progress::new(self.processed, self.total)
    }
}

impl<B: Backend> DataLoader<B, Batch> for EpochLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<Batch> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let samples = self.epoch_samples(epoch);
        let total = samples.len();
        let (sender, batches) = sync_channel(BATCHES_AHEAD);
        let (batcher, batch_size) = (self.batcher.clone(), self.batch_size);
        let device = self.device.clone();
        std::thread::Builder::new()
            .name("pedconv-loader".into())
            .spawn(move || {
                for chunk in samples.chunks(batch_size) {
                    let mut batch = batcher.assemble(chunk, epoch);
                    if let Some(device) = &device {
                        B::staging(std::iter::once(&mut batch.images), device);
                    }
                    // The receiver is gone when the epoch was interrupted.
                    if sender.send(batch).is_err() {
                        break;
                    }
                }
            })
            .expect("cannot start the data loader thread");
        Box::new(EpochBatches {
            batches,
            processed: 0,
            total,
        })
    }

    fn num_items(&self) -> usize {
        self.positions.len()
    }

    /// The batches are host data (staged for `device`), moved to it by the training step.
    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, Batch>> {
        Arc::new(self.with_positions(self.positions.clone(), Some(device.clone())))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, Batch>> {
        let first = self.positions.start;
        let positions = first + start..first + end.min(self.positions.len());
        Arc::new(self.with_positions(positions, self.device.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::batcher::BadImages;
    use crate::data::sources::{ImageSource, Pixels};
    use crate::data::transform::StageTimes;
    use crate::data::Split;
    use burn::backend::Flex;
    use burn::data::dataloader::split::split_dataloader;

    /// Image `i` is of class `i`, so that a batch's labels name its images.
    struct Numbered(usize);

    impl ImageSource for Numbered {
        fn len(&self) -> usize {
            self.0
        }
        fn label(&self, index: usize) -> usize {
            index
        }
        fn pixels(&self, _: usize, _: &mut Rng, _: &mut StageTimes) -> Result<Pixels, String> {
            Ok(Pixels::Float(vec![0.0; 3 * 2 * 2]))
        }
    }

    fn loader_of(len: usize, batch: usize, shards: usize, shuffle: bool) -> EpochLoader<Flex> {
        let split = Split {
            source: Arc::new(Numbered(len)),
            side: 2,
            name: "numbered".into(),
        };
        let bad = Arc::new(BadImages::new(&split, 0.0, || {}));
        let batcher = ImageBatcher::new(&split, len, 0.0, 1, bad).unwrap();
        EpochLoader::new(batcher, batch, 9, shuffle, shards, 1)
    }

    fn loader(len: usize, shuffle: bool, first_epoch: usize) -> EpochLoader<Flex> {
        let loader = loader_of(len, 4, 1, shuffle);
        loader.next_epoch.store(first_epoch, Ordering::SeqCst);
        loader
    }

    /// The images of each batch of the loader's next epoch.
    fn serve(loader: &dyn DataLoader<Flex, Batch>) -> Vec<Vec<i64>> {
        loader.iter().map(|b| b.labels).collect()
    }

    /// Each epoch is a permutation of the split that depends on the seed and the epoch alone: a
    /// loader that starts at epoch 3 (a resumed run) serves what an uninterrupted one serves in
    /// its third epoch; every image's augmentation seed changes with the epoch.
    #[test]
    fn epochs_depend_on_the_seed_and_the_epoch_alone() {
        let straight = loader(10, true, 1);
        let epochs: Vec<Vec<Sample>> = (1..=3).map(|e| straight.epoch_samples(e)).collect();
        assert_ne!(epochs[0], epochs[1]);
        for samples in &epochs {
            let mut indices: Vec<usize> = samples.iter().map(|s| s.index).collect();
            indices.sort();
            assert_eq!(indices, (0..10).collect::<Vec<_>>());
        }
        let seed_of_image =
            |samples: &[Sample], index| samples.iter().find(|s| s.index == index).unwrap().seed;
        assert_ne!(seed_of_image(&epochs[0], 4), seed_of_image(&epochs[1], 4));

        let straight_batches: Vec<_> = (0..3).map(|_| serve(&straight)).collect();
        let resumed = loader(10, true, 3);
        assert_eq!(serve(&resumed), straight_batches[2]);
        assert_eq!(straight_batches[0].len(), 3, "batches of 4, 4 and 2");

        let validation = loader(10, false, 1);
        assert_eq!(validation.epoch_samples(2)[3].index, 3);
    }

    /// Slices split each epoch's order between loaders; progress counts images.
    #[test]
    fn slices_share_out_the_epoch() {
        let whole = loader(10, true, 1);
        let (first, second) = (whole.slice(0, 6), whole.slice(6, 10));
        assert_eq!((first.num_items(), second.num_items()), (6, 4));
        let mut iter = second.iter();
        let labels: Vec<i64> = iter.by_ref().flat_map(|b| b.labels).collect();
        assert_eq!(iter.progress().items_processed, 4);
        let expected: Vec<i64> = whole.epoch_samples(1)[6..]
            .iter()
            .map(|s| s.index as i64)
            .collect();
        assert_eq!(labels, expected);
    }

    /// burn-train's split of a training loader between 3 devices hands each a shard of the
    /// epoch's shuffled order: the shards have as many batches as each other, cover the epoch
    /// once but for the remainder of 23 images by 3, and their `k`-th batches together are the
    /// `k`-th batch of one device with the global batch.
    #[test]
    fn shards_cover_each_epoch_once() {
        let sharded: Arc<dyn DataLoader<Flex, Batch>> = Arc::new(loader_of(23, 2, 3, true));
        let shards: Vec<Vec<Vec<i64>>> = split_dataloader(sharded, &[Default::default(); 3])
            .iter()
            .map(|shard| serve(shard.as_ref()))
            .collect();
        for shard in &shards {
            let sizes: Vec<usize> = shard.iter().map(Vec::len).collect();
            assert_eq!(sizes, [2, 2, 2, 1], "7 images per shard, in batches of 2");
        }
        let mut seen: Vec<i64> = shards.iter().flatten().flatten().copied().collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 21, "every image served once, 2 left out");

        let one_device = serve(&loader_of(23, 6, 1, true));
        for (k, batch) in one_device.iter().take(3).enumerate() {
            let together: Vec<i64> = shards.iter().flat_map(|s| s[k].clone()).collect();
            assert_eq!(&together, batch, "pass {k}");
        }
    }
}
