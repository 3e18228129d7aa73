//! `pedconv train`: burn-train's supervised training of a (PEDConv) ResNet.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::record::DefaultRecorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn::train::checkpoint::{
    ComposedCheckpointingStrategy, KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::metric::{
    AccuracyMetric, LearningRateMetric, LossMetric, MetricDefinition, MetricId, NumericEntry,
    TopKAccuracyMetric,
};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use pedconv::resnet::ResNet;

use crate::backend::BackendJob;
use crate::builtin::{BuiltinDataset, ImageBatch, ImageBatcher};
use crate::config::TrainConfig;
use crate::schedule::WarmupCosine;

/// A ResNet with its training objective: label-smoothed cross-entropy plus the weighted
/// information-maximisation loss, and weight decay on every parameter but the batch norms'.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    pub net: ResNet<B>,
    label_smoothing: f64,
    info_max_weight: f64,
    weight_decay: f64,
}

impl<B: Backend> Classifier<B> {
    fn task_loss(&self, logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        CrossEntropyLossConfig::new()
            .with_smoothing((self.label_smoothing > 0.0).then_some(self.label_smoothing as f32))
            .init(&logits.device())
            .forward(logits, labels)
    }
}

impl<B: AutodiffBackend> TrainStep for Classifier<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let out = self.net.forward_train(batch.images);
        let task = self.task_loss(out.logits.clone(), batch.labels.clone());
        let loss = match out.info_max_loss {
            Some(info_max) => task.clone() + info_max.mul_scalar(self.info_max_weight),
            None => task.clone(),
        };
        let mut grads = GradientsParams::from_grads(loss.backward(), self);
        if self.weight_decay > 0.0 {
            self.visit(&mut DecayGradients::<B> {
                grads: &mut grads,
                decay: self.weight_decay,
                norm_depth: 0,
                _backend: std::marker::PhantomData,
            });
        }
        TrainOutput {
            grads,
            item: ClassificationOutput::new(task, out.logits, batch.labels),
        }
    }
}

impl<B: Backend> InferenceStep for Classifier<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        let logits = self.net.forward(batch.images);
        let loss = self.task_loss(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

/// Adds `decay · param` to the gradient of every parameter outside batch norms (burn's SGD
/// would decay every parameter).
struct DecayGradients<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    decay: f64,
    /// How many batch norms the visit is inside.
    norm_depth: usize,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for DecayGradients<'_, B> {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if container_type.ends_with(":BatchNorm") {
            self.norm_depth += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type.ends_with(":BatchNorm") {
            self.norm_depth -= 1;
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.norm_depth > 0 {
            return;
        }
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let decayed = grad + param.val().inner().mul_scalar(self.decay);
            self.grads.register(param.id, decayed);
        }
    }
}

/// One epoch's figures, as printed and reported.
#[derive(Debug, Clone, Default)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Metric name → mean over the epoch, for the training and the validation split.
    pub train: HashMap<String, f64>,
    pub valid: HashMap<String, f64>,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Prints one line per epoch (burn's CLI renderer prints every iteration) and keeps the
/// records for the run's report.
struct LineRenderer {
    names: HashMap<MetricId, String>,
    train: HashMap<String, (f64, usize)>,
    valid: HashMap<String, (f64, usize)>,
    started: Instant,
    train_images: usize,
    records: Arc<Mutex<Vec<EpochRecord>>>,
}

fn accumulate(
    sums: &mut HashMap<String, (f64, usize)>,
    names: &HashMap<MetricId, String>,
    state: MetricState,
) {
    if let MetricState::Numeric(entry, value) = state {
        let (value, count) = match value {
            NumericEntry::Value(v) => (v, 1),
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => (aggregated_value, count),
        };
        let name = names.get(&entry.metric_id).cloned().unwrap_or_default();
        let sum = sums.entry(name).or_insert((0.0, 0));
        sum.0 += value * count as f64;
        sum.1 += count;
    }
}

fn means(sums: &mut HashMap<String, (f64, usize)>) -> HashMap<String, f64> {
    sums.drain()
        .map(|(name, (sum, count))| (name, sum / count.max(1) as f64))
        .collect()
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, state: MetricState) {
        accumulate(&mut self.train, &self.names, state)
    }

    fn update_valid(&mut self, state: MetricState) {
        accumulate(&mut self.valid, &self.names, state)
    }

    fn render_train(&mut self, _item: TrainingProgress, _progress: Vec<ProgressType>) {}

    fn render_valid(&mut self, item: TrainingProgress, _progress: Vec<ProgressType>) {
        let Some(progress) = &item.progress else {
            return;
        };
        if progress.items_processed < progress.items_total {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: item.global_progress.items_processed,
            train: means(&mut self.train),
            valid: means(&mut self.valid),
            seconds,
            images_per_second: self.train_images as f64 / seconds,
        };
        let get =
            |map: &HashMap<String, f64>, name: &str| map.get(name).copied().unwrap_or(f64::NAN);
        println!(
            "epoch {:>3}/{} | train loss {:.4} top-1 {:5.1}% | valid loss {:.4} top-1 {:5.1}% top-5 {:5.1}% | lr {:.4} | {:.1} img/s",
            record.epoch,
            item.global_progress.items_total,
            get(&record.train, "Loss"),
            get(&record.train, "Accuracy"),
            get(&record.valid, "Loss"),
            get(&record.valid, "Accuracy"),
            get(&record.valid, TOP5),
            get(&record.train, "Learning Rate"),
            record.images_per_second,
        );
        self.records.lock().expect("records").push(record);
        self.started = Instant::now();
    }
}

impl MetricsRendererEvaluation for LineRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _progress: Vec<ProgressType>) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}

const TOP5: &str = "Top-K Accuracy @ TopK(5)";

/// A training run to launch on a backend.
pub struct Training {
    pub config: TrainConfig,
    pub output: PathBuf,
    pub backend_name: String,
}

impl BackendJob for Training {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<(), String> {
        run::<burn::backend::Autodiff<B>>(self, device)
    }
}

fn run<B: AutodiffBackend>(job: Training, device: B::Device) -> Result<(), String> {
    let config = &job.config;
    B::seed(&device, config.seed);
    let data = &config.data;
    let train_set = BuiltinDataset {
        len: data.train_images,
        size: data.image_size,
        seed: config.seed,
    };
    let valid_set = BuiltinDataset {
        len: data.valid_images,
        size: data.image_size,
        // Another stream than the training images'.
        seed: config.seed ^ 0x9E37_79B9_7F4A_7C15,
    };
    let train_loader = DataLoaderBuilder::<B, _, _>::new(ImageBatcher)
        .batch_size(config.batch_size)
        .shuffle(config.seed)
        .num_workers(data.workers)
        .build(train_set);
    let valid_loader = DataLoaderBuilder::<B::InnerBackend, _, _>::new(ImageBatcher)
        .batch_size(config.batch_size)
        .num_workers(data.workers)
        .build(valid_set);

    let iterations_per_epoch = data.train_images.div_ceil(config.batch_size);
    let schedule = WarmupCosine::new(
        config.peak_lr(),
        config.warmup_epochs * iterations_per_epoch,
        config.epochs * iterations_per_epoch,
    );
    let optimizer = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(config.momentum)
                .with_dampening(0.0)
                .with_nesterov(config.nesterov),
        ))
        .init();
    let model = Classifier {
        net: config.model.init(&device),
        label_smoothing: config.label_smoothing,
        info_max_weight: config.info_max_weight,
        weight_decay: config.weight_decay,
    };

    let records = Arc::new(Mutex::new(Vec::new()));
    let renderer = LineRenderer {
        names: HashMap::new(),
        train: HashMap::new(),
        valid: HashMap::new(),
        started: Instant::now(),
        train_images: data.train_images,
        records: records.clone(),
    };
    let checkpoints = ComposedCheckpointingStrategy::builder()
        .add(KeepLastNCheckpoints::new(2))
        .add(MetricCheckpointingStrategy::new(
            &AccuracyMetric::<B::InnerBackend>::new(),
            Aggregate::Mean,
            Direction::Highest,
            Split::Valid,
        ))
        .build();
    let started = Instant::now();
    let training = SupervisedTraining::new(&job.output, train_loader, valid_loader)
        .metrics((
            AccuracyMetric::new(),
            TopKAccuracyMetric::new(5),
            LossMetric::new(),
        ))
        .metric_train_numeric(LearningRateMetric::new())
        .with_file_checkpointer(DefaultRecorder::new())
        .with_checkpointing_strategy(checkpoints)
        .renderer(renderer)
        .num_epochs(config.epochs);
    let result = training.launch(Learner::new(model, optimizer, schedule));
    let wall = started.elapsed().as_secs_f64();

    result
        .model
        .net
        .save_record(job.output.join("model"))
        .map_err(|e| format!("cannot save the final model: {e}"))?;
    let records = records.lock().expect("records").clone();
    write_report(&job, &records, wall)
}

fn write_report(job: &Training, records: &[EpochRecord], wall: f64) -> Result<(), String> {
    let best = records
        .iter()
        .filter_map(|r| r.valid.get("Accuracy").map(|a| (r.epoch, *a)))
        .fold(None::<(usize, f64)>, |best, (epoch, top1)| match best {
            Some((_, b)) if b >= top1 => best,
            _ => Some((epoch, top1)),
        });
    let images = job.config.data.train_images * records.len();
    let report = serde_json::json!({
        "backend": job.backend_name,
        "epochs": records.iter().map(|r| serde_json::json!({
            "epoch": r.epoch,
            "train": r.train,
            "valid": r.valid,
            "seconds": r.seconds,
            "images_per_second": r.images_per_second,
        })).collect::<Vec<_>>(),
        "best_top1": best.map(|(_, top1)| top1),
        "best_epoch": best.map(|(epoch, _)| epoch),
        "wall_seconds": wall,
        "images_per_second": images as f64 / wall,
        "config": serde_json::to_value(&job.config).unwrap_or_default(),
    });
    let path = job.output.join("report.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!(
        "best validation top-1 {:.1}% (epoch {}); run directory {}",
        best.map_or(f64::NAN, |b| b.1),
        best.map_or(0, |b| b.0),
        job.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;
    use pedconv::resnet::{ResNetConfig, ResNetDepth};

    type B = Autodiff<Flex>;

    fn classifier(weight_decay: f64) -> Classifier<B> {
        B::seed(&Default::default(), 7);
        let net = ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.0625)
            .with_num_classes(3)
            .init(&Default::default());
        Classifier {
            net,
            label_smoothing: 0.1,
            info_max_weight: 0.001,
            weight_decay,
        }
    }

    fn grads(model: &Classifier<B>) -> GradientsParams {
        let device = Default::default();
        let images = Tensor::from_data(
            TensorData::new(
                (0..2 * 3 * 16 * 16)
                    .map(|i| (i % 7) as f32 - 3.0)
                    .collect::<Vec<_>>(),
                [2, 3, 16, 16],
            ),
            &device,
        );
        let labels = Tensor::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        TrainStep::step(model, ImageBatch { images, labels }).grads
    }

    /// Weight decay adds `decay · w` to the gradients of convolution and classifier weights, and
    /// nothing to batch-norm parameters.
    #[test]
    fn weight_decay_skips_batch_norms() {
        let plain = classifier(0.0);
        let g0 = grads(&plain); // initialises the (lazy) parameters, which the clone then shares
        let decayed = Classifier {
            weight_decay: 0.5,
            ..plain.clone()
        };
        let g1 = grads(&decayed);
        let change = |id| -> Tensor<Flex, 1> {
            let a: Tensor<Flex, 4> = g0.get(id).unwrap();
            let b: Tensor<Flex, 4> = g1.get(id).unwrap();
            (b - a).flatten(0, 3)
        };
        let conv = &plain.net.conv1.weight;
        let expected = conv.val().inner().mul_scalar(0.5).flatten(0, 3);
        assert!((change(conv.id) - expected).abs().max().into_scalar() < 1e-5);
        let fc = &plain.net.fc.weight;
        let a: Tensor<Flex, 2> = g0.get(fc.id).unwrap();
        let b: Tensor<Flex, 2> = g1.get(fc.id).unwrap();
        assert!(
            (b - a - fc.val().inner().mul_scalar(0.5))
                .abs()
                .max()
                .into_scalar()
                < 1e-5
        );
        for gamma in [&plain.net.bn1.gamma, &plain.net.layer1[0].bn2.gamma] {
            let a: Tensor<Flex, 1> = g0.get(gamma.id).unwrap();
            let b: Tensor<Flex, 1> = g1.get(gamma.id).unwrap();
            assert_eq!((b - a).abs().max().into_scalar(), 0.0);
        }
    }
}
