//! The end of a run: the final model where it finished, `report.json`, and what stopped it,
//! with how to continue.

use burn::tensor::backend::AutodiffBackend;

use super::progress::EpochRecord;
use super::{last_checkpoint, model_checkpoint, Prepared, Training};
use crate::config::{StartedFrom, TrainConfig};
use crate::run_dir::{self, write_json};

/// After the learner: the final model where the run finished, the report, and what stopped
/// the run, with how to continue it.
pub(super) fn finish<B: AutodiffBackend>(
    job: &Training,
    run: &Prepared<B>,
    net: pedconv::resnet::ResNet<B::InnerBackend>,
    wall: f64,
) -> Result<(), String> {
    let config = &job.config;
    let log = run.log.lock().expect("run log");
    let best = best_of(&log.records);
    let last = log.records.last().map_or(0, |r| r.epoch);
    let [bad_train, bad_valid] = &run.bad;
    let stop = bad_train
        .too_many()
        .or_else(|| bad_valid.too_many())
        .or_else(|| log.stopped.clone());
    let finished = stop.is_none() && last == config.epochs;
    if finished {
        net.save_record(job.output.join(run_dir::FINAL_MODEL))
            .map_err(|e| format!("cannot save the final model: {e}"))?;
    }
    let unreadable = [bad_train.count(), bad_valid.count()];
    if unreadable.iter().any(|&n| n > 0) {
        println!(
            "{} training and {} validation images could not be read and were skipped",
            unreadable[0], unreadable[1]
        );
    }
    write_report(job, &log.records, best, wall, finished, unreadable)?;
    let resume_hint = |what: &str| match last_checkpoint(&job.output) {
        Some(epoch) => format!(
            "{what}; the last checkpoint is epoch {epoch} ({}); continue with \
             `pedconv train --resume {}`",
            model_checkpoint(&job.output, epoch).display(),
            job.output.display()
        ),
        None => format!("{what}; no epoch finished, so there is no checkpoint"),
    };
    match stop {
        Some(reason) => Err(resume_hint(&reason)),
        None if !finished => {
            println!("{}", resume_hint("stopped before the last epoch"));
            Ok(())
        }
        None => Ok(()),
    }
}

/// The best epoch by validation top-1 (the earliest of equals).
pub fn best_of(records: &[EpochRecord]) -> Option<(usize, f64)> {
    records
        .iter()
        .map(|r| (r.epoch, r.valid_top1()))
        .filter(|(_, top1)| top1.is_finite())
        .fold(None, |best, (epoch, top1)| match best {
            Some((_, b)) if b >= top1 => best,
            _ => Some((epoch, top1)),
        })
}

/// `report.json`.
#[derive(serde::Serialize)]
struct Report<'a> {
    backend: &'a str,
    finished: bool,
    epochs: &'a [EpochRecord],
    best_top1: Option<f64>,
    best_epoch: Option<usize>,
    best_checkpoint: Option<String>,
    wall_seconds: f64,
    unreadable_images: Unreadable,
    images_per_second: f64,
    /// The pretrained weights the run started from (its SHA-256, whether its head is new).
    fine_tuned_from: Option<&'a StartedFrom>,
    config: &'a TrainConfig,
}

/// Images skipped as unreadable, per split.
#[derive(serde::Serialize)]
struct Unreadable {
    train: usize,
    valid: usize,
}

fn write_report(
    job: &Training,
    records: &[EpochRecord],
    best: Option<(usize, f64)>,
    wall: f64,
    finished: bool,
    unreadable: [usize; 2],
) -> Result<(), String> {
    let (images, seconds) = records.iter().fold((0.0, 0.0), |(i, s), r| {
        (
            i + r.images_per_second * r.train_seconds,
            s + r.train_seconds,
        )
    });
    let best_checkpoint =
        best.map(|(epoch, _)| model_checkpoint(&job.output, epoch).display().to_string());
    let report = Report {
        backend: &job.backend_name,
        finished,
        epochs: records,
        best_top1: best.map(|(_, top1)| top1),
        best_epoch: best.map(|(epoch, _)| epoch),
        best_checkpoint,
        wall_seconds: wall,
        unreadable_images: Unreadable {
            train: unreadable[0],
            valid: unreadable[1],
        },
        images_per_second: images / seconds,
        fine_tuned_from: job
            .config
            .fine_tune
            .as_ref()
            .and_then(|f| f.started_from.as_ref()),
        config: &job.config,
    };
    let path = job.output.join(run_dir::REPORT);
    write_json(&path, &report)?;
    if let Some((epoch, top1)) = best {
        println!(
            "best validation top-1 {top1:.1}% (epoch {epoch}); report {}",
            path.display()
        );
    }
    Ok(())
}
