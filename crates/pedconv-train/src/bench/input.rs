//! `pedconv bench --input`: the training input pipeline alone (no model), from an image folder
//! or a packed dataset: images per second through the batcher (decode, random resized crop,
//! flip, AutoAugment or not, stacked into 8-bit batches) at a number of threads, with where the
//! CPU time goes; and, for a folder, the cost of scanning it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::data::batcher::{BadImages, ImageBatcher, Sample};
use crate::data::folder::ImageFolder;
use crate::data::rng::seed_of;
use crate::data::transform::{Augmentation, StageTimes, JPEG_DECODER};
use crate::data::{DataConfig, DataSource};

use super::report::RowLog;

/// What to measure.
#[derive(Debug, Clone)]
pub struct InputBench {
    /// Image folders or packs (each measured in turn).
    pub sources: Vec<PathBuf>,
    /// The thread counts of the batcher's pool.
    pub threads: Vec<usize>,
    /// Images per timed pass (the first of the training split), or all.
    pub images: Option<usize>,
    /// Images per batch.
    pub batch: usize,
    /// Side of the training crop.
    pub crop: usize,
    /// Timed passes, after one warm-up pass; the median is reported.
    pub reps: usize,
}

/// One source, thread count and transform.
#[derive(Debug, Clone, Serialize)]
pub struct InputRow {
    /// `folder` or `packed`.
    pub source: String,
    pub path: PathBuf,
    pub threads: usize,
    pub auto_augment: bool,
    /// The JPEG decoder compiled in: `zune-jpeg`, or `libjpeg-turbo` with its feature.
    pub jpeg_decoder: &'static str,
    pub images: usize,
    pub images_per_second: f64,
    /// CPU milliseconds per image in each stage (summed over the threads).
    pub stages_ms: StagesMs,
}

/// [`StageTimes`] per image, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StagesMs {
    pub read: f64,
    pub decode: f64,
    pub crop_resize: f64,
    pub augment: f64,
    pub assemble: f64,
}

impl StagesMs {
    fn per_image(times: StageTimes, images: usize) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / images as f64;
        Self {
            read: ms(times.read),
            decode: ms(times.decode),
            crop_resize: ms(times.crop_resize),
            augment: ms(times.augment),
            assemble: ms(times.assemble),
        }
    }
}

/// The scan of a folder's training split.
#[derive(Debug, Clone, Serialize)]
pub struct ScanRow {
    pub path: PathBuf,
    pub images: usize,
    pub seconds: f64,
    /// The heap the image list keeps.
    pub list_bytes: usize,
    pub seconds_per_million: f64,
    pub mib_per_million: f64,
}

/// Scans `root/train`, timing it.
fn scan(root: &Path) -> Result<ScanRow, String> {
    let start = Instant::now();
    let folder = ImageFolder::open(&root.join("train"))?;
    let seconds = start.elapsed().as_secs_f64();
    let millions = folder.len() as f64 / 1e6;
    Ok(ScanRow {
        path: root.to_path_buf(),
        images: folder.len(),
        seconds,
        list_bytes: folder.heap_bytes(),
        seconds_per_million: seconds / millions,
        mib_per_million: folder.heap_bytes() as f64 / (1 << 20) as f64 / millions,
    })
}

/// One pass over the first `images` of the split in batches: the seconds it took.
fn pass(batcher: &ImageBatcher, images: usize, batch: usize, pass: u64) -> f64 {
    let samples: Vec<Sample> = (0..images)
        .map(|index| Sample {
            index,
            seed: seed_of(&[pass, index as u64]),
        })
        .collect();
    let start = Instant::now();
    for chunk in samples.chunks(batch) {
        std::hint::black_box(batcher.assemble(chunk, 1));
    }
    start.elapsed().as_secs_f64()
}

impl InputBench {
    /// Measures every source, thread count and transform (random resized crop and flip, with
    /// and without AutoAugment), logging each row through `log` as it is measured.
    pub fn run(&self, log: &mut RowLog) -> Result<(Vec<InputRow>, Vec<ScanRow>), String> {
        let (mut rows, mut scans) = (Vec::new(), Vec::new());
        for path in &self.sources {
            let source = DataSource::at(path.clone());
            let kind = match source {
                DataSource::Packed { .. } => "packed",
                _ => {
                    let row = scan(path)?;
                    log.append("scan", &row)?;
                    scans.push(row);
                    "folder"
                }
            };
            for auto_augment in [false, true] {
                let config = DataConfig::new(source.clone())
                    .with_train_crop(self.crop)
                    .with_augmentation(Augmentation::new().with_auto_augment(auto_augment));
                let data = config.open(0)?;
                let split = data.train;
                let images = self
                    .images
                    .map_or(split.source.len(), |n| n.min(split.source.len()));
                for &threads in &self.threads {
                    let bad = Arc::new(BadImages::new(&split, 1.0, || {}));
                    let batcher =
                        ImageBatcher::new(&split, data.classes, 0.0, threads, bad.clone())?;
                    eprintln!(
                        "bench: input {kind} {}, {threads} threads, AutoAugment {auto_augment} …",
                        path.display()
                    );
                    pass(&batcher, images, self.batch, 0);
                    let before = batcher.stage_times();
                    let mut seconds: Vec<f64> = (1..=self.reps as u64)
                        .map(|p| pass(&batcher, images, self.batch, p))
                        .collect();
                    seconds.sort_by(f64::total_cmp);
                    if let Some(message) = bad.too_many().or_else(|| {
                        (bad.count() > 0).then(|| format!("{} unreadable images", bad.count()))
                    }) {
                        return Err(format!("{}: {message}", path.display()));
                    }
                    let mut times = batcher.stage_times();
                    times -= before;
                    let row = InputRow {
                        source: kind.into(),
                        path: path.clone(),
                        threads,
                        auto_augment,
                        jpeg_decoder: JPEG_DECODER,
                        images,
                        images_per_second: images as f64 / seconds[seconds.len() / 2],
                        stages_ms: StagesMs::per_image(times, images * self.reps),
                    };
                    log.append("input", &row)?;
                    rows.push(row);
                }
            }
        }
        Ok((rows, scans))
    }
}
