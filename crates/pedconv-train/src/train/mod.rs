//! `pedconv train`: burn-train's supervised training of a (PEDConv) ResNet.

mod checkpoints;
mod durable;
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
use crate::predict::CLASS_NAMES_FILE;
use crate::schedule::Schedule;
use checkpoints::{checkpoint_file, saved_epochs, KeepLastAndBest};
use durable::write_file;
use durable::DurableRecorder;
pub use objective::{Classifier, GradientReduction};
use progress::{read_journal, rewrite_journal, EpochLog, EpochRecord, LineRenderer, RunLog};

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
    output.join("checkpoint")
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
        &job.output.join("config.json"),
        config.to_string().as_bytes(),
    )?;
    if let Some(names) = &data.class_names {
        let names = serde_json::to_string_pretty(names).unwrap_or_default();
        write_file(&job.output.join(CLASS_NAMES_FILE), names.as_bytes())?;
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

    let journal = job.output.join("epochs.jsonl");
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
        !terminal,
        journal,
        interrupter.clone(),
        model.loss_scale().cloned(),
    )));
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
            .save_record(job.output.join("model"))
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
    let report = serde_json::json!({
        "backend": job.backend_name,
        "finished": finished,
        "epochs": records,
        "best_top1": best.map(|(_, top1)| top1),
        "best_epoch": best.map(|(epoch, _)| epoch),
        "best_checkpoint": best_checkpoint,
        "wall_seconds": wall,
        "unreadable_images": {"train": unreadable[0], "valid": unreadable[1]},
        "images_per_second": images / seconds,
        "config": serde_json::to_value(&job.config).unwrap_or_default(),
    });
    let path = job.output.join("report.json");
    write_file(
        &path,
        serde_json::to_string_pretty(&report)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    if let Some((epoch, top1)) = best {
        println!(
            "best validation top-1 {top1:.1}% (epoch {epoch}); report {}",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LrDecay;
    use crate::data::{DataConfig, DataSource};
    use burn::backend::Flex;
    use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use pedconv::resnet::{PedConvSettings, ResNet, ResNetConfig, ResNetDepth};

    /// Makes every parameter trainable (folding makes new ones, for inference).
    struct Trainable;

    impl<B: Backend> ModuleMapper<B> for Trainable {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|tensor| tensor.set_require_grad(true))
        }
    }

    /// Every parameter of a network, in visiting order.
    struct Parameters(Vec<Vec<f32>>);

    impl<B: Backend> ModuleVisitor<B> for Parameters {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f32>();
            self.0.push(values.to_vec().expect("f32 values"));
        }
    }

    /// A PEDConv ResNet-18 without noise and with its batch norms folded away (a network whose
    /// gradients over a batch are the mean of its images' gradients), trained for one epoch of
    /// 3 optimizer steps on `devices` devices of `batch` images; its parameters before and after.
    fn train_folded(devices: usize, batch: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let network = ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.0625)
            .with_num_classes(3)
            .with_pedconv(Some(PedConvSettings::new().with_noise_std(0.0)));
        let data = DataConfig::new(DataSource::Synthetic {
            train_images: 24,
            valid_images: 4,
            classes: 3,
        })
        .with_train_crop(8)
        .with_val_resize(8)
        .with_val_crop(8)
        .with_workers(1);
        let config = TrainConfig::new(network.clone(), data)
            .with_epochs(1)
            .with_warmup_epochs(0)
            .with_mixup(0.0)
            // 0.4 at 8 images per step, constant: 3 steps move the weights.
            .with_lr(25.6)
            .with_decay(LrDecay::Step {
                milestones: Vec::new(),
                gamma: 1.0,
            })
            .with_batch_size(batch)
            .with_devices(devices);
        let output = std::env::temp_dir().join(format!(
            "pedconv-unit-{}-folded-{devices}x{batch}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&output);
        type B = Autodiff<Flex>;
        let device = Default::default();
        B::seed(&device, 5);
        // Folded on the inner backend, where the folded parameters are leaves.
        let net = ResNet::<B>::from_inner(network.init::<Flex>(&device).fold_batch_norms())
            .map(&mut Trainable);
        let mut initial = Parameters(Vec::new());
        net.visit(&mut initial);
        let model = Classifier::new(net, &config, GradientReduction::Sum);
        let job = Training {
            config,
            output: output.clone(),
            backend_name: "flex".into(),
            resume_from: 0,
        };
        let execution =
            ExecutionStrategy::multi(vec![device; devices], MultiDeviceOptim::OptimMainDevice);
        train(job, execution, model).unwrap();
        let trained: ResNet<Flex> = network
            .init(&device)
            .fold_batch_norms()
            .load_record(output.join("model"), &device)
            .unwrap();
        let mut parameters = Parameters(Vec::new());
        trained.visit(&mut parameters);
        std::fs::remove_dir_all(&output).unwrap();
        (initial.0, parameters.0)
    }

    /// Two devices of 4 images take the same steps as one device of 8: burn-train sums the
    /// devices' gradients, the objective scales each to make the sum the batch's mean, and the
    /// devices' shards of a step together are the one device's batch. Tolerance: f32 sums of
    /// the gradients in another order, through 3 steps.
    #[test]
    fn two_devices_take_the_steps_of_one_with_twice_the_batch() {
        let (two, one) = (train_folded(2, 4), train_folded(1, 8));
        assert_eq!(two.1.len(), one.1.len());
        let largest = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let difference =
            |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        for (i, ((a, b), start)) in two.1.iter().zip(&one.1).zip(&one.0).enumerate() {
            let scale = largest(b).max(1e-12);
            let error = difference(a, b);
            assert!(
                error <= 1e-5 * scale,
                "parameter {i}: {error} (scale {scale})"
            );
            assert_eq!(start, &two.0[i], "the same initialisation");
        }
        // The steps are small (a deep network without batch norms): a quarter of the
        // parameters (among them the convolutions' and the classifier's) move by more than ten
        // times the tolerance, the attention's hardly at all.
        let moved =
            |(start, end): (&Vec<f32>, &Vec<f32>)| difference(start, end) > 1e-4 * largest(end);
        let moved = one.0.iter().zip(&one.1).filter(|&p| moved(p)).count();
        assert!(
            moved > one.0.len() / 4,
            "training moved {moved} of {} parameters",
            one.0.len()
        );
    }
}
