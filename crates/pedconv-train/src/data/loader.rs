//! The data loader: burn's [`DataLoader`] over a split whose order, augmentations and (for
//! training) the backend's random numbers are functions of the run's seed and the epoch alone,
//! so a resumed run continues the uninterrupted one exactly. (burn's own loader seeds its
//! shuffle once per process, and nothing restores the backend's generator.)

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::Backend;

use super::batcher::{Batch, ImageBatcher, Sample};
use super::rng::{seed_of, Rng};

/// Tells the backend generator's seeds apart from the order's and the images'.
const BACKEND_STREAM: u64 = 0x006E_6F69_7365;

/// Batches of a split, epoch by epoch (epochs numbered from 1, as burn-train does).
pub struct EpochLoader<B: Backend> {
    batcher: ImageBatcher,
    batch_size: usize,
    seed: u64,
    /// A training loader: shuffles every epoch and seeds the backend's generator (PEDConv's
    /// noise) as each epoch starts. A validation loader keeps the split's order.
    shuffle: bool,
    /// The positions of each epoch's order that this loader serves (all, or a slice of them).
    positions: Range<usize>,
    /// The epoch the next [`DataLoader::iter`] serves.
    next_epoch: Arc<AtomicUsize>,
    device: B::Device,
}

impl<B: Backend> EpochLoader<B> {
    /// A loader of the batcher's split whose next epoch is `first_epoch`; the backend
    /// generator is seeded on `device` when `shuffle` is on (a training loader).
    pub fn new(
        batcher: ImageBatcher,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        first_epoch: usize,
        device: B::Device,
    ) -> Self {
        Self {
            positions: 0..batcher.images(),
            batcher,
            batch_size,
            seed,
            shuffle,
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            device,
        }
    }

    /// The samples of `epoch`, in order: the split shuffled by a generator seeded with the seed
    /// and the epoch, each image's augmentation seeded with the seed, the image and the epoch.
    pub fn epoch_samples(&self, epoch: usize) -> Vec<Sample> {
        let len = self.batcher.images();
        let order: Vec<usize> = if self.shuffle {
            Rng::new(seed_of(&[self.seed, epoch as u64])).permutation(len)
        } else {
            (0..len).collect()
        };
        order[self.positions.clone()]
            .iter()
            .map(|&index| Sample {
                index,
                seed: seed_of(&[self.seed, index as u64, epoch as u64]),
            })
            .collect()
    }

    fn with_positions(&self, positions: Range<usize>, device: B::Device) -> Self {
        Self {
            batcher: self.batcher.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
            shuffle: self.shuffle,
            positions,
            next_epoch: Arc::new(AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst))),
            device,
        }
    }
}

/// One epoch's batches, assembled one ahead on a thread of their own.
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
        if self.shuffle {
            B::seed(
                &self.device,
                seed_of(&[self.seed, epoch as u64, BACKEND_STREAM]),
            );
        }
        let samples = self.epoch_samples(epoch);
        let total = samples.len();
        let (sender, batches) = sync_channel(1);
        let (batcher, batch_size) = (self.batcher.clone(), self.batch_size);
        std::thread::Builder::new()
            .name("pedconv-loader".into())
            .spawn(move || {
                for chunk in samples.chunks(batch_size) {
                    // The receiver is gone when the epoch was interrupted.
                    if sender.send(batcher.assemble(chunk)).is_err() {
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

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, Batch>> {
        Arc::new(self.with_positions(self.positions.clone(), device.clone()))
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
    use crate::data::sources::{ImageSource, SyntheticImages};
    use crate::data::Split;
    use burn::backend::Flex;

    fn images(len: usize) -> SyntheticImages {
        SyntheticImages {
            len,
            size: 2,
            classes: 3,
            seed: 0,
        }
    }

    fn loader(len: usize, shuffle: bool, first_epoch: usize) -> EpochLoader<Flex> {
        let split = Split {
            source: Arc::new(images(len)),
            side: 2,
            name: "synthetic".into(),
        };
        let bad = Arc::new(BadImages::new(&split, 0.0, || {}));
        let batcher = ImageBatcher::new(&split, 3, 0.0, 1, bad).unwrap();
        EpochLoader::new(batcher, 4, 9, shuffle, first_epoch, Default::default())
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

        let serve = |loader: &EpochLoader<Flex>| -> Vec<Vec<i64>> {
            DataLoader::iter(loader).map(|b| b.labels).collect()
        };
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
            .map(|s| images(10).label(s.index) as i64)
            .collect();
        assert_eq!(labels, expected);
    }
}
