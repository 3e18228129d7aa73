//! `pedconv train`: burn-train's supervised training of a (PEDConv) ResNet.

mod checkpoints;
mod curves;
mod events;
mod fine_tune;
mod loss_scale;
mod objective;
mod progress;
mod report;

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
use crate::model::Weights;
use crate::run_dir::{self, write_file, write_json, DurableRecorder};
use crate::schedule::Schedule;

/// What burn's learner trains: the classifier, the recipe's optimizer and schedule.
type Components<B> = burn::train::LearningComponentsMarker<
    B,
    Schedule,
    Classifier<B>,
    burn::optim::adaptor::OptimizerAdaptor<pedconv::optim::MomentumSgd, Classifier<B>, B>,
>;
use checkpoints::{checkpoint_file, saved_epochs, KeepLastAndBest};
pub use fine_tune::{check_architecture, started_from};
pub use objective::{Classifier, GradientReduction};
use progress::{read_journal, rewrite_journal, EpochLog, LineRenderer, RunFiles, RunLog};
pub use report::best_of;
use report::finish;

/// A training run to launch on a backend.
pub struct Training {
    pub config: TrainConfig,
    /// The run directory.
    pub output: PathBuf,
    pub backend_name: String,
    /// The newest epoch with a complete checkpoint, which a resumed run starts from if it can
    /// be read (else the newest readable one before it); 0 for a new run.
    pub resume_from: usize,
    /// The pretrained weights a new run starts from (what it found in them is in the
    /// configuration's `fine_tune.started_from`).
    pub weights: Option<Weights>,
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
    let net = objective::seeded::<B, _>(&device, config.seed, || config.model.init(&device));
    let started = config
        .fine_tune
        .as_ref()
        .and_then(|f| f.started_from.as_ref());
    let net = match (&job.weights, started) {
        (Some(weights), Some(started)) if job.resume_from == 0 => {
            fine_tune::start_from(weights, net, config, started, &device)?
        }
        _ => net,
    };
    let model = Classifier::new(net, config, reduction);
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
    let optimizer = config.optimizer().init();
    let resume_from = match job.resume_from {
        0 => 0,
        newest => newest_readable_checkpoint(&job.output, newest, &optimizer, &device)?,
    };
    let (run, schedule) = prepare::<B>(&job, resume_from, &model)?;
    let started = Instant::now();
    let learned = learn(
        &job,
        &run,
        execution,
        Learner::new(model, optimizer, schedule),
    );
    finish(&job, &run, learned, started.elapsed().as_secs_f64())
}

/// What a run has ready when burn-train's learner starts.
struct Prepared<B: AutodiffBackend> {
    resume_from: usize,
    train_loader: Arc<EpochLoader<B>>,
    valid_loader: Arc<EpochLoader<B::InnerBackend>>,
    /// The images of each split that could not be read.
    bad: [Arc<BadImages>; 2],
    interrupter: Interrupter,
    /// The `k` of the top-k accuracy: 5, or fewer classes.
    top_k: usize,
    log: Arc<Mutex<RunLog>>,
}

/// Opens the data, creates the run directory with its configuration and class names, and
/// makes the loaders, the run log (continued from the journal when resuming, with float16's
/// loss scale) and the learning-rate schedule.
fn prepare<B: AutodiffBackend>(
    job: &Training,
    resume_from: usize,
    model: &Classifier<B>,
) -> Result<(Prepared<B>, Schedule), String> {
    let config = &job.config;
    let data = config.data.open(config.seed)?;
    config.check_data(data.classes, data.train.source.len())?;
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
    let bad = [&data.train, &data.valid].map(|split| bad_images(split, fraction, &interrupter));
    // The images of a batch are decoded by the batcher's `workers` threads; the loaders'
    // orders and augmentations depend on the seed and the epoch alone.
    let batcher = |split: &Split, mixup: f64, bad: &Arc<BadImages>| {
        let workers = config.data.workers(config.devices);
        ImageBatcher::new(split, data.classes, mixup, workers, bad.clone())
    };
    let first_epoch = resume_from + 1;
    let train_loader = EpochLoader::<B>::new(
        batcher(&data.train, config.mixup, &bad[0])?,
        config.batch_size,
        config.seed,
        true,
        config.devices,
        first_epoch,
    );
    let valid_loader = EpochLoader::<B::InnerBackend>::new(
        batcher(&data.valid, 0.0, &bad[1])?,
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
    // burn's top-k metric fails for fewer than k classes.
    let top_k = data.classes.min(5);
    let log = Arc::new(Mutex::new(RunLog::new(
        records,
        config.epochs,
        top_k,
        RunFiles {
            output: &job.output,
            print_lines: !std::io::stdout().is_terminal(),
        },
        interrupter.clone(),
        model.loss_scale().cloned(),
    )?));
    let prepared = Prepared {
        resume_from,
        train_loader: Arc::new(train_loader),
        valid_loader: Arc::new(valid_loader),
        bad,
        interrupter,
        top_k,
        log,
    };
    Ok((prepared, schedule))
}

/// burn-train's supervised training of `learner` on the prepared loaders, with the run's
/// metrics, checkpoints and renderer: the trained network.
fn learn<B: AutodiffBackend>(
    job: &Training,
    run: &Prepared<B>,
    execution: ExecutionStrategy<B>,
    learner: Learner<Components<B>>,
) -> pedconv::resnet::ResNet<B::InnerBackend> {
    let config = &job.config;
    let strategy = KeepLastAndBest::new(
        config.keep_checkpoints,
        saved_epochs(&checkpoint_dir(&job.output)),
        run.log.clone(),
    );
    let mut training = SupervisedTraining::new(
        &job.output,
        run.train_loader.clone(),
        run.valid_loader.clone(),
    )
    .metrics((
        AccuracyMetric::new(),
        TopKAccuracyMetric::new(run.top_k),
        LossMetric::new(),
    ))
    .metric_train_numeric(LearningRateMetric::new())
    .with_metric_logger(EpochLog(run.log.clone()))
    .with_file_checkpointer(DurableRecorder::default())
    .with_checkpointing_strategy(strategy)
    .with_interrupter(run.interrupter.clone())
    .grads_accumulation(config.accumulation())
    .num_epochs(config.epochs)
    .with_training_strategy(execution.into());
    training = if std::io::stdout().is_terminal() {
        training.renderer(TuiMetricsRendererWrapper::new(
            run.interrupter.clone(),
            (run.resume_from > 0).then_some(run.resume_from),
        ))
    } else {
        training.renderer(LineRenderer::default())
    };
    if run.resume_from > 0 {
        training = training.checkpoint(run.resume_from);
    }
    training.launch(learner).model.net
}

#[cfg(test)]
mod tests;
