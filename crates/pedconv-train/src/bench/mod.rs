//! `pedconv bench`: per-layer and whole-network cost of PEDConv against static convolutions,
//! on one backend, reported as JSON and markdown with the PEDConv/static ratios; and the
//! training input pipeline alone ([`input`]). Each row is
//! also appended to `bench.jsonl` as soon as it is measured, so that a run stopped part-way
//! keeps what it measured.

pub mod input;
pub mod memory;
mod report;

use std::path::PathBuf;

use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::optim::Optimizer;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use burn::train::{InferenceStep, TrainStep};
use pedconv::resnet::{ResNetConfig, ResNetDepth};
use pedconv::{ComputePath, PedConv2d, PedConv2dConfig};
use serde::Serialize;

use crate::backend::{BackendJob, JobBackend};
use crate::config::{Precision, TrainConfig};
use crate::data::{Batch, DataConfig, DataSource};
use crate::train::{Classifier, GradientReduction};
use input::{InputBench, InputRow, ScanRow};
use memory::{measure, Measure};
use report::RowLog;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Bench {
    /// Networks whose PEDConv layers are measured one by one (at `layer_image`² inputs).
    pub layer_networks: Vec<ResNetDepth>,
    /// Batch of the per-layer measurements.
    pub layer_batch: usize,
    /// Side of the network input whose layer shapes are measured.
    pub layer_image: usize,
    /// Networks measured whole, static and PEDConv.
    pub networks: Vec<ResNetDepth>,
    /// `(batch, image side)` of the whole-network measurements.
    pub settings: Vec<(usize, usize)>,
    /// Width multiplier of the networks.
    pub width: f64,
    /// Timed repetitions (after two warm-up runs and one for the peak memory).
    pub reps: usize,
    /// How the whole-network training steps keep what the backward pass needs.
    pub checkpointing: Checkpointing,
    /// The backend's name, for the report.
    pub backend: String,
    /// The float type the whole networks compute in (the layers: float32).
    pub precision: Precision,
    /// The input pipeline's measurements, if any (before the networks').
    pub input: Option<InputBench>,
    /// The directory of `bench.jsonl`, `bench.json` and `bench.md`.
    pub output: PathBuf,
}

/// burn's autodiff checkpointing strategy for the whole-network training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    /// Keep every intermediate the backward pass needs.
    None,
    /// Recompute the memory-bound operations (element-wise, reshapes, slices) in the backward
    /// pass instead of keeping their outputs: less memory, some more time.
    Balanced,
}

/// One layer shape, measured with one operator.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub network: String,
    /// `Cin→Cout k×k /stride @ H×W`.
    pub layer: String,
    /// How many layers of the network have this shape.
    pub count: usize,
    /// `static` or the PEDConv path.
    pub operator: String,
    /// The path `Auto` takes for this shape in inference (on the backend itself), as timed
    /// by `forward`.
    pub auto_inference: String,
    /// The path `Auto` takes for this shape in training (on its autodiff backend), as timed by
    /// `forward_backward`.
    pub auto_training: String,
    pub forward: Measure,
    pub forward_backward: Measure,
}

/// One network at one batch and resolution.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkRow {
    pub network: String,
    /// `static` or `pedconv`.
    pub model: String,
    pub batch: usize,
    pub image_size: usize,
    /// The float type the network computes in.
    pub precision: Precision,
    /// One training step: forward, loss, backward, weight decay and the SGD update.
    pub train_step: Measure,
    pub train_images_per_second: f64,
    /// One inference forward, batch norms folded (as `predict` and `eval` run it).
    pub inference: Measure,
    pub inference_images_per_second: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub threads: usize,
    pub reps: usize,
    pub layer_batch: usize,
    pub layer_image: usize,
    pub width: f64,
    pub checkpointing: Checkpointing,
    pub precision: Precision,
    pub layers: Vec<LayerRow>,
    pub networks: Vec<NetworkRow>,
    pub input: Vec<InputRow>,
    pub scan: Vec<ScanRow>,
}

/// The operator of the rows measuring [`pedconv::static_conv2d`], the static convolution as the
/// ResNets run it (the "static" rows are burn's `Conv2d`).
const STATIC_ROUTED: &str = "static (pedconv)";

fn depth_name(depth: ResNetDepth) -> String {
    format!("ResNet-{}", &format!("{depth:?}")[1..])
}

fn path_name(path: ComputePath) -> String {
    format!("{path:?}")
}

fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device synchronisation");
}

impl BackendJob for Bench {
    type Output = BenchReport;

    fn run<B: JobBackend>(self, device: B::Device) -> Result<BenchReport, String> {
        if !self.networks.is_empty() {
            self.precision.check::<B>(&self.backend, &device)?;
        }
        let mut log = RowLog::create(&self.output)?;
        let (input, scan) = match &self.input {
            Some(bench) => bench.run(&mut log)?,
            None => Default::default(),
        };
        let mut layers = Vec::new();
        for &depth in &self.layer_networks {
            for row in bench_layers::<B>(&self, depth, &device) {
                log.append("layer", &row)?;
                layers.push(row);
            }
        }
        let mut networks = Vec::new();
        for &depth in &self.networks {
            for &(batch, size) in &self.settings {
                for dynamic in [false, true] {
                    let run = match self.checkpointing {
                        Checkpointing::None => bench_network::<B, NoCheckpointing>,
                        Checkpointing::Balanced => bench_network::<B, BalancedCheckpointing>,
                    };
                    let row = run(&self, depth, dynamic, batch, size, &device);
                    log.append("network", &row)?;
                    networks.push(row);
                }
            }
        }
        Ok(BenchReport {
            backend: self.backend,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            reps: self.reps,
            layer_batch: self.layer_batch,
            layer_image: self.layer_image,
            width: self.width,
            checkpointing: self.checkpointing,
            precision: self.precision,
            layers,
            networks,
            input,
            scan,
        })
    }
}

/// The distinct PEDConv layers of a network on `image`² inputs, in order, with their
/// multiplicity.
fn distinct_layers(
    config: &ResNetConfig,
    image: usize,
) -> Vec<(PedConv2dConfig, [usize; 2], usize)> {
    let mut distinct: Vec<(PedConv2dConfig, [usize; 2], usize)> = Vec::new();
    for layer in config.conv_layers([image, image]) {
        if !layer.dynamic {
            continue;
        }
        let same = |(c, size, _): &&mut (PedConv2dConfig, [usize; 2], usize)| {
            c.channels == layer.config.channels
                && c.kernel_size == layer.config.kernel_size
                && c.stride == layer.config.stride
                && *size == layer.input_size
        };
        match distinct.iter_mut().find(same) {
            Some(entry) => entry.2 += 1,
            None => distinct.push((layer.config, layer.input_size, 1)),
        }
    }
    distinct
}

fn bench_layers<B: JobBackend>(
    bench: &Bench,
    depth: ResNetDepth,
    device: &B::Device,
) -> Vec<LayerRow> {
    type Ad<B> = Autodiff<B>;
    let network = ResNetConfig::new(depth).with_width(bench.width).dynamic();
    let mut rows = Vec::new();
    for (config, [h, w], count) in distinct_layers(&network, bench.layer_image) {
        let [cin, cout] = config.channels;
        let [k, _] = config.kernel_size;
        let ped: PedConv2d<Ad<B>> = config.init(device);
        let conv: Conv2d<Ad<B>> = Conv2dConfig::new(config.channels, config.kernel_size)
            .with_stride(config.stride)
            .with_padding(config.padding.clone())
            .with_bias(false)
            .init(device);
        let x = Tensor::<Ad<B>, 4>::random(
            [bench.layer_batch, cin, h, w],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let geometry = ped.geometry([h, w]);
        let [ho, wo] = geometry.output_size;
        let (outputs_per_group, pixels) = (cout / config.groups, ho * wo);
        let auto_inference = path_name(ComputePath::Auto.resolve::<B>(outputs_per_group, pixels));
        let auto_training =
            path_name(ComputePath::Auto.resolve::<Ad<B>>(outputs_per_group, pixels));
        let layer = format!("{cin}→{cout} {k}×{k} /{} @ {h}×{w}", config.stride[0]);
        eprintln!("bench: {} {layer} …", depth_name(depth));
        let x_inner = x.clone().inner();
        let row = |operator: String, forward, forward_backward| LayerRow {
            network: depth_name(depth),
            layer: layer.clone(),
            count,
            operator,
            auto_inference: auto_inference.clone(),
            auto_training: auto_training.clone(),
            forward,
            forward_backward,
        };
        let conv_inner = conv.valid();
        rows.push(row(
            "static".into(),
            measure::<B>(bench.reps, device, || {
                let _ = conv_inner.forward(x_inner.clone());
                sync::<B>(device);
            }),
            measure::<B>(bench.reps, device, || {
                let _ = conv.forward(x.clone().require_grad()).sum().backward();
                sync::<B>(device);
            }),
        ));
        rows.push(row(
            STATIC_ROUTED.into(),
            measure::<B>(bench.reps, device, || {
                let _ = pedconv::static_conv2d(&conv_inner, x_inner.clone());
                sync::<B>(device);
            }),
            measure::<B>(bench.reps, device, || {
                let output = pedconv::static_conv2d(&conv, x.clone().require_grad());
                let _ = output.sum().backward();
                sync::<B>(device);
            }),
        ));
        for path in [ComputePath::Factorized, ComputePath::PerSampleKernel] {
            let train = ped.clone().with_compute_path(path);
            let inner = train.valid();
            rows.push(row(
                path_name(path),
                measure::<B>(bench.reps, device, || {
                    let _ = inner.forward(x_inner.clone());
                    sync::<B>(device);
                }),
                measure::<B>(bench.reps, device, || {
                    let out = train.forward_train(x.clone().require_grad());
                    let mut loss = out.output.sum();
                    if let Some(info_max) = out.info_max_loss {
                        loss = loss + info_max.mul_scalar(0.001);
                    }
                    let _ = loss.backward();
                    sync::<B>(device);
                }),
            ));
        }
    }
    rows
}

fn bench_network<B: JobBackend, C: CheckpointStrategy>(
    bench: &Bench,
    depth: ResNetDepth,
    dynamic: bool,
    batch: usize,
    size: usize,
    device: &B::Device,
) -> NetworkRow {
    let classes = 1000;
    let mut config = ResNetConfig::new(depth)
        .with_width(bench.width)
        .with_num_classes(classes);
    if dynamic {
        config = config.dynamic();
    }
    let model_name = if dynamic { "pedconv" } else { "static" };
    eprintln!(
        "bench: {} {model_name}, batch {batch}, {size}×{size} …",
        depth_name(depth)
    );
    B::seed(device, 0);
    // The paper's recipe (the configuration's defaults), one pass per optimizer step.
    let recipe = TrainConfig::new(
        config.clone(),
        DataConfig::new(DataSource::Synthetic {
            train_images: batch,
            valid_images: batch,
            classes,
        }),
    )
    .with_batch_size(batch)
    .with_precision(bench.precision);
    let mut model = Some(Classifier::new(
        config.init::<Autodiff<B, C>>(device),
        &recipe,
        GradientReduction::Sum,
    ));
    let mut optimizer = recipe
        .optimizer()
        .init::<Autodiff<B, C>, Classifier<Autodiff<B, C>>>();
    let batch_data = synthetic_batch(batch, size, classes);
    let train_step = measure::<B>(bench.reps, device, || {
        let current = model.take().expect("the model");
        let grads = TrainStep::step(&current, batch_data.clone()).grads;
        model = Some(optimizer.step(recipe.peak_lr(), current, grads));
        sync::<B>(device);
    });
    // Inference as `predict` and `eval` run it: batch norms folded into the convolutions. The
    // line tells the GPU check's profile where the training steps end.
    eprintln!("bench: {} {model_name} inference …", depth_name(depth));
    let mut inner = model.take().expect("the model").valid();
    inner.net = inner.net.fold_batch_norms();
    let inference = measure::<B>(bench.reps, device, || {
        let _ = InferenceStep::step(&inner, batch_data.clone());
        sync::<B>(device);
    });
    let per_second = |m: &Measure| batch as f64 / (m.millis / 1e3);
    NetworkRow {
        network: depth_name(depth),
        model: model_name.into(),
        batch,
        image_size: size,
        precision: bench.precision,
        train_images_per_second: per_second(&train_step),
        inference_images_per_second: per_second(&inference),
        train_step,
        inference,
    }
}

/// Random 8-bit images with one-hot targets, on the CPU (the step moves them to the device and
/// normalises them there, as in training).
fn synthetic_batch(batch: usize, size: usize, classes: usize) -> Batch {
    let mut rng = crate::data::rng::Rng::new(1);
    let images: Vec<u8> = (0..batch * 3 * size * size)
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    let mut targets = vec![0.0f32; batch * classes];
    for (i, &label) in labels.iter().enumerate() {
        targets[i * classes + label as usize] = 1.0;
    }
    Batch {
        images: TensorData::new(images, [batch, 3, size, size]),
        mixup: None,
        targets: TensorData::new(targets, [batch, classes]),
        labels,
        noise_seed: 1,
        epoch: 1,
    }
}
