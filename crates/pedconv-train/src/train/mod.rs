//! `pedconv train`: burn-train's supervised training of a (PEDConv) ResNet.

mod checkpoints;
mod curves;
mod events;
mod loss_scale;
mod objective;
mod progress;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::Module;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::Optimizer;
use burn::record::Recorder;
#[cfg(feature = "ddp")]
use burn::tensor::backend::distributed::{DistributedBackend, DistributedConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric, TopKAccuracyMetric};
use burn::train::renderer::tui::TuiMetricsRendererWrapper;
use burn::train::{ExecutionStrategy, Interrupter, Learner, MultiDeviceOptim, SupervisedTraining};

use crate::backend::{JobBackend, ParallelJob};
use crate::config::TrainConfig;
use crate::data::batcher::{BadImages, ImageBatcher};
use crate::data::loader::EpochLoader;
use crate::data::Split;
use crate::run_dir::{self, write_file, write_json, DurableRecorder};
use crate::schedule::Schedule;
use checkpoints::{checkpoint_file, saved_epochs, KeepLastAndBest};
pub use objective::{Classifier, GradientReduction};
use progress::{
    read_journal, rewrite_journal, EpochLog, EpochRecord, LineRenderer, RunFiles, RunLog,
};

/// A training run to launch on a backend.
pub struct Training {
    pub config: TrainConfig,
    /// The run directory.
    pub output: PathBuf,
    pub backend_name: String,
    /// The newest epoch with a complete checkpoint, which a resumed run starts from if it can
    /// be read (else the newest readable one before it); 0 for a new run.
    pub resume_from: usize,
}

/// The run directory's checkpoint folder (burn-train's layout).
pub fn checkpoint_dir(output: &Path) -> PathBuf {
    output.join(run_dir::CHECKPOINTS)
}

/// The model checkpoint of `epoch` in a run directory.
fn model_checkpoint(output: &Path, epoch: usize) -> PathBuf {
    checkpoint_file(&checkpoint_dir(output), "model", epoch)
}

/// The last epoch with a complete checkpoint in a run directory.
pub fn last_checkpoint(output: &Path) -> Option<usize> {
    saved_epochs(&checkpoint_dir(output)).last().copied()
}

impl ParallelJob for Training {
    type Output = ();

    /// burn-train's multi-device strategy (one device: the single-device one), whose sum of
    /// the devices' gradients the objective's scale makes a mean.
    fn run<B: JobBackend>(self, devices: Vec<B::Device>) -> Result<(), String> {
        let strategy = ExecutionStrategy::multi(devices, MultiDeviceOptim::OptimMainDevice);
        run::<Autodiff<B>>(self, strategy, GradientReduction::Sum)
    }

    /// burn-train's distributed data parallel, whose all-reduce averages the gradients.
    #[cfg(feature = "ddp")]
    fn run_distributed<B: DistributedBackend>(self, devices: Vec<B::Device>) -> Result<(), String> {
        let all_reduce = DistributedConfig {
            all_reduce_op: burn::tensor::backend::distributed::ReduceOperation::Mean,
        };
        let strategy = ExecutionStrategy::ddp(devices, all_reduce);
        run::<Autodiff<B>>(self, strategy, GradientReduction::DeviceMean)
    }
}

/// The unreadable-image count of a split, which stops the run when it is exceeded.
fn bad_images(split: &Split, fraction: f64, interrupter: &Interrupter) -> Arc<BadImages> {
    let interrupter = interrupter.clone();
    Arc::new(BadImages::new(split, fraction, move || {
        interrupter.stop(Some("too many unreadable images"))
    }))
}

/// The newest checkpoint, up to epoch `newest`, whose model, optimizer and scheduler files all
/// load, saying which newer ones were skipped and why.
fn newest_readable_checkpoint<B: AutodiffBackend, O: Optimizer<Classifier<B>, B>>(
    output: &Path,
    newest: usize,
    _optimizer: &O,
    device: &B::Device,
) -> Result<usize, String> {
    let dir = checkpoint_dir(output);
    let recorder = DurableRecorder::default();
    let readable = |epoch: usize| -> Result<(), String> {
        let file = |part: &str| checkpoint_file(&dir, part, epoch);
        let named = |part: &str| {
            let path = file(part);
            move |e| format!("{}: {e}", path.display())
        };
        Recorder::<B>::load::<<Classifier<B> as Module<B>>::Record>(
            &recorder,
            file("model"),
            device,
        )
        .map_err(named("model"))?;
        Recorder::<B>::load::<O::Record>(&recorder, file("optim"), device)
            .map_err(named("optim"))?;
        Recorder::<B>::load::<<Schedule as LrScheduler>::Record<B>>(
            &recorder,
            file("scheduler"),
            device,
        )
        .map_err(named("scheduler"))?;
        Ok(())
    };
    let mut skipped = Vec::new();
    for epoch in saved_epochs(&dir)
        .into_iter()
        .rev()
        .filter(|&e| e <= newest)
    {
        match readable(epoch) {
            Ok(()) => {
                if !skipped.is_empty() {
                    println!("resuming from the checkpoint of epoch {epoch} instead");
                }
                return Ok(epoch);
            }
            Err(reason) => {
                eprintln!("warning: skipping the checkpoint of epoch {epoch}, which cannot be read: {reason}");
                skipped.push(epoch);
            }
        }
    }
    Err(format!(
        "no checkpoint in {} can be read (skipped epochs {skipped:?}); start a new run instead",
        dir.display()
    ))
}

/// Trains the configuration's network.
fn run<B: AutodiffBackend>(
    job: Training,
    execution: ExecutionStrategy<B>,
    reduction: GradientReduction,
) -> Result<(), String> {
    let config = &job.config;
    let device = execution.main_device().clone();
    // The initialisation (replaced by the checkpoint when resuming); every training forward
    // seeds the generator again with its batch's noise seed.
    B::seed(&device, config.seed);
    let model = Classifier::new(config.model.init(&device), config, reduction);
    train(job, execution, model)
}

/// Trains `model` as the job says, on the devices of `execution`.
fn train<B: AutodiffBackend>(
    job: Training,
    execution: ExecutionStrategy<B>,
    model: Classifier<B>,
) -> Result<(), String> {
    let config = &job.config;
    let device = execution.main_device().clone();
    config
        .precision
        .check::<B::InnerBackend>(&job.backend_name, &device)?;
    let data = config.data.open(config.seed)?;
    config.check_data(data.classes, data.train.source.len())?;
    let optimizer = config.optimizer().init();
    let resume_from = match job.resume_from {
        0 => 0,
        newest => newest_readable_checkpoint(&job.output, newest, &optimizer, &device)?,
    };
    // Only a run that can start leaves a directory behind.
    std::fs::create_dir_all(&job.output)
        .map_err(|e| format!("cannot create {}: {e}", job.output.display()))?;
    write_file(
        &job.output.join(run_dir::CONFIG),
        config.to_string().as_bytes(),
    )?;
    if let Some(names) = &data.class_names {
        write_json(&job.output.join(run_dir::CLASSES), names)?;
    }
    let interrupter = Interrupter::new();
    let fraction = config.data.max_bad_fraction;
    let (bad_train, bad_valid) = (
        bad_images(&data.train, fraction, &interrupter),
        bad_images(&data.valid, fraction, &interrupter),
    );
    // The images of a batch are decoded by the batcher's `workers` threads; the loaders'
    // orders and augmentations depend on the seed and the epoch alone.
    let batcher = |split: &Split, mixup: f64, bad: &Arc<BadImages>| {
        ImageBatcher::new(split, data.classes, mixup, config.data.workers, bad.clone())
    };
    let first_epoch = resume_from + 1;
    let train_loader = EpochLoader::<B>::new(
        batcher(&data.train, config.mixup, &bad_train)?,
        config.batch_size,
        config.seed,
        true,
        config.devices,
        first_epoch,
    );
    let valid_loader = EpochLoader::<B::InnerBackend>::new(
        batcher(&data.valid, 0.0, &bad_valid)?,
        config.batch_size,
        config.seed,
        false,
        1,
        first_epoch,
    );
    // burn-train steps the schedule once per pass of all the devices: once per batch of a shard.
    let shard = data.train.source.len() / config.devices;
    let schedule = Schedule::new(
        config.peak_lr(),
        config.warmup_epochs,
        config.epochs,
        shard.div_ceil(config.batch_size),
        &config.decay,
    );

    let journal = job.output.join(run_dir::JOURNAL);
    let records = if resume_from > 0 {
        read_journal(&journal, resume_from)?
    } else {
        Vec::new()
    };
    rewrite_journal(&journal, &records)?;
    // float16's loss scale continues from the epoch the run resumes after.
    if let (Some(shared), Some(saved)) = (
        model.loss_scale(),
        records.last().and_then(|record| record.loss_scale),
    ) {
        *loss_scale::locked(shared) = saved;
    }
    let terminal = std::io::stdout().is_terminal();
    // burn's top-k metric fails for fewer than k classes.
    let top_k = data.classes.min(5);
    let log = Arc::new(Mutex::new(RunLog::new(
        records,
        config.epochs,
        top_k,
        RunFiles {
            output: &job.output,
            print_lines: !terminal,
        },
        interrupter.clone(),
        model.loss_scale().cloned(),
    )?));
    let strategy = KeepLastAndBest::new(
        config.keep_checkpoints,
        saved_epochs(&checkpoint_dir(&job.output)),
        log.clone(),
    );
    let mut training =
        SupervisedTraining::new(&job.output, Arc::new(train_loader), Arc::new(valid_loader))
            .metrics((
                AccuracyMetric::new(),
                TopKAccuracyMetric::new(top_k),
                LossMetric::new(),
            ))
            .metric_train_numeric(LearningRateMetric::new())
            .with_metric_logger(EpochLog(log.clone()))
            .with_file_checkpointer(DurableRecorder::default())
            .with_checkpointing_strategy(strategy)
            .with_interrupter(interrupter.clone())
            .grads_accumulation(config.accumulation())
            .num_epochs(config.epochs)
            .with_training_strategy(execution.into());
    training = if terminal {
        training.renderer(TuiMetricsRendererWrapper::new(
            interrupter.clone(),
            (resume_from > 0).then_some(resume_from),
        ))
    } else {
        training.renderer(LineRenderer::default())
    };
    if resume_from > 0 {
        training = training.checkpoint(resume_from);
    }
    let started = Instant::now();
    let result = training.launch(Learner::new(model, optimizer, schedule));
    let wall = started.elapsed().as_secs_f64();

    let log = log.lock().expect("run log");
    let best = best_of(&log.records);
    let last = log.records.last().map_or(0, |r| r.epoch);
    let stop = bad_train
        .too_many()
        .or_else(|| bad_valid.too_many())
        .or_else(|| log.stopped.clone());
    let finished = stop.is_none() && last == config.epochs;
    if finished {
        result
            .model
            .net
            .save_record(job.output.join(run_dir::FINAL_MODEL))
            .map_err(|e| format!("cannot save the final model: {e}"))?;
    }
    let unreadable = [bad_train.count(), bad_valid.count()];
    if unreadable.iter().any(|&n| n > 0) {
        println!(
            "{} training and {} validation images could not be read and were skipped",
            unreadable[0], unreadable[1]
        );
    }
    write_report(&job, &log.records, best, wall, finished, unreadable)?;
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

#[cfg(test)]
mod tests;
