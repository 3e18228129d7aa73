//! A small burn model of one's own with `PedConv2d` in place of `Conv2d`, trained with burn's
//! autodiff on a built-in, procedurally generated task (no download): telling apart four kinds
//! of noisy stripe patterns. It runs on the CPU (flex backend) in well under a minute.
//!
//! ```text
//! cargo run --release -p pedconv --example swap_conv
//! ```

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use pedconv::{PedConv2d, PedConv2dConfig};

const CLASSES: usize = 4;
const SIZE: usize = 16;
const INFO_MAX_WEIGHT: f64 = 0.001;

/// A convolution, batch norm and ReLU, whose convolution was a `Conv2d` and is now a `PedConv2d`:
/// the only changes are the field's type, the config's name, and collecting the info-max loss.
#[derive(Module, Debug)]
struct Block<B: Backend> {
    conv: PedConv2d<B>,
    norm: BatchNorm<B>,
}

impl<B: Backend> Block<B> {
    fn new(channels: [usize; 2], stride: usize, device: &B::Device) -> Self {
        Self {
            // was: Conv2dConfig::new(channels, [3, 3])...
            conv: PedConv2dConfig::new(channels, [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            norm: BatchNormConfig::new(channels[1]).init(device),
        }
    }

    /// The block's output and its layer's info-max loss (training) or `None` (inference).
    fn forward(&self, x: Tensor<B, 4>, train: bool) -> (Tensor<B, 4>, Option<Tensor<B, 1>>) {
        let (y, info_max) = if train {
            let out = self.conv.forward_train(x);
            (out.output, out.info_max_loss)
        } else {
            (self.conv.forward(x), None)
        };
        (relu(self.norm.forward(y)), info_max)
    }
}

#[derive(Module, Debug)]
struct Net<B: Backend> {
    stem: Conv2d<B>,
    blocks: Vec<Block<B>>,
    head: Linear<B>,
}

impl<B: Backend> Net<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            stem: Conv2dConfig::new([1, 16], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            blocks: vec![
                Block::new([16, 32], 2, device),
                Block::new([32, 32], 1, device),
                Block::new([32, 64], 2, device),
            ],
            head: LinearConfig::new(64, CLASSES).init(device),
        }
    }

    /// Logits and, in training, `INFO_MAX_WEIGHT · Σ info-max losses`.
    fn forward(&self, x: Tensor<B, 4>, train: bool) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
        let mut x = relu(self.stem.forward(x));
        let mut info_max: Option<Tensor<B, 1>> = None;
        for block in &self.blocks {
            let (y, loss) = block.forward(x, train);
            x = y;
            info_max = match (info_max, loss) {
                (Some(total), Some(loss)) => Some(total + loss),
                (total, loss) => total.or(loss),
            };
        }
        let logits = self.head.forward(x.mean_dims(&[2, 3]).flatten(1, 3));
        (
            logits,
            info_max.map(|loss| loss.mul_scalar(INFO_MAX_WEIGHT)),
        )
    }
}

/// A batch of the built-in task: class 0 horizontal stripes, 1 vertical, 2 diagonal,
/// 3 anti-diagonal, each with a random period, phase and contrast, plus Gaussian-like noise.
fn batch<B: Backend>(
    seed: u64,
    size: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    let mut pixels = Vec::with_capacity(size * SIZE * SIZE);
    let mut labels = Vec::with_capacity(size);
    for _ in 0..size {
        let class = (uniform() * CLASSES as f32) as usize % CLASSES;
        let period = 3.0 + 4.0 * uniform();
        let phase = uniform() * std::f32::consts::TAU;
        let contrast = 0.5 + uniform();
        for row in 0..SIZE {
            for col in 0..SIZE {
                let (r, c) = (row as f32, col as f32);
                let t = [r, c, r + c, r - c][class];
                let noise = (uniform() + uniform() + uniform() - 1.5) * 0.8;
                pixels.push(contrast * (std::f32::consts::TAU * t / period + phase).sin() + noise);
            }
        }
        labels.push(class as i64);
    }
    (
        Tensor::from_data(TensorData::new(pixels, [size, 1, SIZE, SIZE]), device),
        Tensor::from_data(TensorData::new(labels, [size]), device),
    )
}

/// The number of correct predictions.
fn correct<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> f64 {
    let hits = logits
        .argmax(1)
        .flatten::<1>(0, 1)
        .equal(labels)
        .int()
        .sum();
    hits.into_scalar().elem::<f64>()
}

/// Trains the model for `epochs` on `B`, printing a line per epoch; the last validation
/// accuracy (a fraction).
pub fn train<B: AutodiffBackend>(device: &B::Device, epochs: usize) -> f64 {
    let (steps, batch_size, lr) = (40, 32, 0.05);
    B::seed(device, 0); // the initial weights and the training noise: the same run every time
    let mut model = Net::<B>::new(device);
    let mut optimizer = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
        ))
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (val_x, val_y) = batch::<B::InnerBackend>(u64::MAX, 512, device);
    println!("epoch | train loss | info-max loss | val accuracy");
    let mut accuracy = 0.0;
    for epoch in 0..epochs {
        let (mut loss_sum, mut info_sum) = (0.0, 0.0);
        for step in 0..steps {
            let (x, y) = batch::<B>((epoch * steps + step) as u64, batch_size, device);
            let (logits, info_max) = model.forward(x, true);
            let task = loss_fn.forward(logits, y);
            loss_sum += task.clone().into_scalar().elem::<f64>();
            let loss = match info_max {
                Some(info_max) => {
                    info_sum += info_max.clone().into_scalar().elem::<f64>();
                    task + info_max
                }
                None => task,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
        }
        let (logits, _) = model.valid().forward(val_x.clone(), false);
        accuracy = correct(logits, val_y.clone()) / 512.0;
        println!(
            "{:5} | {:10.4} | {:13.6} | {:6.1}%",
            epoch + 1,
            loss_sum / steps as f64,
            info_sum / steps as f64,
            100.0 * accuracy
        );
    }
    println!("chance is {:.0}%", 100.0 / CLASSES as f64);
    accuracy
}

fn main() {
    train::<Autodiff<Flex>>(&Default::default(), 6);
}
