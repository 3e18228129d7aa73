//! The training objective: label-smoothed cross-entropy against (possibly mixed) target
//! distributions, plus the weighted information-maximisation loss, with weight decay on every
//! parameter but the batch norms'.

use std::sync::{Arc, Mutex, PoisonError};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, Tensor};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use pedconv::precision::cast_to;
use pedconv::resnet::ResNet;

use super::fine_tune::{PartRates, PartTracker};
use super::loss_scale::{locked, LossScale, SharedLossScale};
use crate::config::{Precision, TrainConfig};
use crate::data::Batch;

/// A ResNet with its training objective.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    pub net: ResNet<B>,
    label_smoothing: f64,
    info_max_weight: f64,
    weight_decay: f64,
    /// The share of one pass's gradients in an optimizer step's, which averages the gradients
    /// of the step's batch as the reference does: burn-train sums the passes it accumulates
    /// (and, on several devices without an all-reduce, the devices' passes).
    gradient_scale: f64,
    /// The float type the network computes in (its parameters stay float32).
    #[module(skip)]
    precision: Precision,
    /// float16's dynamic loss scale, shared by the model's copies on the devices.
    #[module(skip)]
    loss_scale: Option<SharedLossScale>,
    /// In a fine-tuning run, which parts of the network train in each epoch, and at what rate.
    #[module(skip)]
    part_rates: Option<PartRates>,
}

/// How the gradients of the devices' passes are combined into an optimizer step's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradientReduction {
    /// Summed over the passes and the devices (burn-train's accumulation and its multi-device
    /// strategy).
    Sum,
    /// Averaged over the devices by an all-reduce after every pass (distributed data
    /// parallel), then summed over the passes.
    #[cfg_attr(not(feature = "ddp"), allow(dead_code))]
    DeviceMean,
}

/// The backend's random generator is one per process: a training forward seeds it with its
/// batch's noise seed and draws its noise holding this lock, so that devices working at once
/// draw the same noise whatever their timing, and a resumed run the same as an uninterrupted one.
static NOISE_DRAWS: Mutex<()> = Mutex::new(());

/// `init` run with the backend's generator seeded with `seed`, holding the lock of the
/// generator, so that training forwards (and tests) running at once, which share the
/// generator, cannot draw between the seeding and the initialisation.
pub(crate) fn seeded<B: Backend, T>(device: &B::Device, seed: u64, init: impl FnOnce() -> T) -> T {
    let _drawing = NOISE_DRAWS.lock().unwrap_or_else(PoisonError::into_inner);
    B::seed(device, seed);
    init()
}

impl<B: Backend> Classifier<B> {
    /// `net` with the objective of `recipe` (its label smoothing, info-max weight, weight
    /// decay, and the passes and devices per optimizer step, whose gradients `reduction`
    /// combines).
    pub fn new(net: ResNet<B>, recipe: &TrainConfig, reduction: GradientReduction) -> Self {
        let images_per_pass = match reduction {
            GradientReduction::Sum => recipe.batch_size,
            GradientReduction::DeviceMean => recipe.global_batch(),
        };
        Self {
            net,
            label_smoothing: recipe.label_smoothing,
            info_max_weight: recipe.info_max_weight,
            weight_decay: recipe.weight_decay,
            gradient_scale: images_per_pass as f64 / recipe.optimizer_batch() as f64,
            precision: recipe.precision,
            loss_scale: (recipe.precision == Precision::F16)
                .then(|| Arc::new(Mutex::new(LossScale::default()))),
            part_rates: recipe.fine_tune.as_ref().and_then(PartRates::of),
        }
    }

    /// float16's loss scale, which the run's log records and a resumed run restores.
    pub fn loss_scale(&self) -> Option<&SharedLossScale> {
        self.loss_scale.as_ref()
    }

    /// The network's logits for `images` (float32), computed in the model's precision.
    fn logits(&self, images: Tensor<B, 4>, train: bool) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
        let images = cast_to(images, self.precision.dtype());
        let (logits, info_max) = if train {
            let out = self.net.forward_train(images);
            (out.logits, out.info_max_loss)
        } else {
            (self.net.forward(images), None)
        };
        (cast_to(logits, DType::F32), info_max)
    }

    /// `-Σ_c t'_c log softmax(z)_c`, averaged over the batch, with the smoothed targets
    /// `t' = (1 - ε) t + ε / C` (for one-hot `t`, PyTorch's and burn's label-smoothed
    /// cross-entropy; for mixed `t`, the reference's mixup loss).
    pub fn task_loss(&self, logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
        let classes = logits.dims()[1] as f64;
        let eps = self.label_smoothing;
        let smoothed = targets.mul_scalar(1.0 - eps).add_scalar(eps / classes);
        (smoothed * log_softmax(logits, 1)).sum_dim(1).mean().neg()
    }

    fn device(&self) -> B::Device {
        self.net.fc.weight.device()
    }
}

impl<B: AutodiffBackend> TrainStep for Classifier<B> {
    type Input = Batch;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: Batch) -> TrainOutput<ClassificationOutput<B>> {
        let device = self.device();
        let (noise_seed, epoch) = (batch.noise_seed, batch.epoch);
        let batch = batch.into_device::<B>(&device);
        let (logits, info_max) = {
            let _drawing = NOISE_DRAWS.lock().unwrap_or_else(PoisonError::into_inner);
            B::seed(&device, noise_seed);
            self.logits(batch.images, true)
        };
        let task = self.task_loss(logits.clone(), batch.targets);
        let loss = match info_max {
            Some(info_max) => task.clone() + info_max.mul_scalar(self.info_max_weight),
            None => task.clone(),
        };
        let scale = self
            .loss_scale
            .as_ref()
            .map_or(1.0, |shared| locked(shared).scale);
        let backward = loss.mul_scalar(self.gradient_scale * scale).backward();
        let mut grads = GradientsParams::from_grads(backward, self);
        if let Some(shared) = &self.loss_scale {
            let finite = all_finite::<B>(&grads, self);
            locked(shared).update(finite);
            if !finite {
                // The pass changes nothing: no parameter has a gradient.
                grads = GradientsParams::new();
            }
        }
        self.visit(&mut FinishGradients::<B> {
            grads: &mut grads,
            unscale: 1.0 / scale,
            decay: self.weight_decay * self.gradient_scale,
            rates: self.part_rates,
            epoch,
            parts: PartTracker::default(),
            _backend: std::marker::PhantomData,
        });
        TrainOutput {
            grads,
            item: ClassificationOutput::new(task, logits, batch.labels),
        }
    }
}

impl<B: Backend> InferenceStep for Classifier<B> {
    type Input = Batch;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: Batch) -> ClassificationOutput<B> {
        let batch = batch.into_device::<B>(&self.device());
        let (logits, _) = self.logits(batch.images, false);
        let loss = self.task_loss(logits.clone(), batch.targets);
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

/// Whether every gradient is finite: the sum of all of them is (an infinity or a NaN anywhere
/// makes it infinite or NaN), read back once.
fn all_finite<B: AutodiffBackend>(grads: &GradientsParams, model: &Classifier<B>) -> bool {
    struct Sum<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sum<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let sum = grad.sum();
                self.total = Some(match self.total.take() {
                    Some(total) => total + sum,
                    None => sum,
                });
            }
        }
    }
    let mut sum = Sum::<B> { grads, total: None };
    model.visit(&mut sum);
    sum.total
        .is_none_or(|total| total.into_scalar().elem::<f64>().is_finite())
}

/// Multiplies every gradient by `unscale` (undoing float16's loss scale), adds `decay · param`
/// to those of every parameter outside batch norms (burn's SGD would decay every parameter),
/// and in fine-tuning removes those of the parts frozen in `epoch` (so that the optimizer
/// leaves them, and their momentum, as they are) and multiplies the others by their part's
/// rate.
struct FinishGradients<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    unscale: f64,
    decay: f64,
    rates: Option<PartRates>,
    epoch: usize,
    parts: PartTracker,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for FinishGradients<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.parts.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.parts.exit(container_type);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let decay = if self.parts.in_batch_norm() {
            0.0
        } else {
            self.decay
        };
        let multiplier = match self.rates {
            Some(rates) => rates.multiplier(self.parts.part(), self.epoch),
            None => Some(1.0),
        };
        if decay == 0.0 && self.unscale == 1.0 && multiplier == Some(1.0) {
            return;
        }
        let Some(mut grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let Some(multiplier) = multiplier else {
            return;
        };
        if self.unscale != 1.0 {
            grad = grad.mul_scalar(self.unscale);
        }
        if decay != 0.0 {
            grad = grad + param.val().inner().mul_scalar(decay);
        }
        if multiplier != 1.0 {
            grad = grad.mul_scalar(multiplier);
        }
        self.grads.register(param.id, grad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::{Int, TensorData};
    use pedconv::resnet::{ResNetConfig, ResNetDepth};

    type B = Autodiff<Flex>;

    fn classifier(weight_decay: f64, accumulation: usize) -> Classifier<B> {
        let net = seeded::<B, _>(&Default::default(), 7, || {
            ResNetConfig::new(ResNetDepth::R18)
                .with_width(0.0625)
                .with_num_classes(3)
                .init(&Default::default())
        });
        let recipe = TrainConfig::builtin()
            .with_weight_decay(weight_decay)
            .with_batch_size(8)
            .with_optimizer_batch_size(Some(8 * accumulation));
        Classifier::new(net, &recipe, GradientReduction::Sum)
    }

    fn batch() -> Batch {
        Batch {
            images: TensorData::new(
                (0..2 * 3 * 16 * 16)
                    .map(|i| (i % 7) as f32 - 3.0)
                    .collect::<Vec<_>>(),
                [2, 3, 16, 16],
            ),
            mixup: None,
            targets: TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0], [2, 3]),
            labels: vec![0, 2],
            noise_seed: 5,
            epoch: 1,
        }
    }

    fn grads(model: &Classifier<B>) -> GradientsParams {
        TrainStep::step(model, batch()).grads
    }

    /// With one-hot targets the loss is burn's label-smoothed cross-entropy; with mixed
    /// targets it is the formula evaluated by hand (in f64).
    #[test]
    fn task_loss_is_smoothed_cross_entropy() {
        let model = classifier(0.0, 1);
        let device = Default::default();
        let rows = [[1.0f32, -0.5, 2.0], [0.3, 0.2, -1.0]];
        let logits = Tensor::<B, 2>::from_data(TensorData::new(rows.concat(), [2, 3]), &device);
        let one_hot = Tensor::from_data(
            TensorData::new(vec![0f32, 0., 1., 0., 1., 0.], [2, 3]),
            &device,
        );
        let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![2i64, 1], [2]), &device);
        let burn = CrossEntropyLossConfig::new()
            .with_smoothing(Some(0.1))
            .init(&device)
            .forward(logits.clone(), labels);
        let ours = model.task_loss(logits.clone(), one_hot);
        assert!((ours.into_scalar() - burn.into_scalar()).abs() < 1e-6);

        let mixed = [[0.7f64, 0.0, 0.3], [0.0, 0.25, 0.75]];
        let targets = Tensor::from_data(
            TensorData::new(mixed.concat().iter().map(|&v| v as f32).collect(), [2, 3]),
            &device,
        );
        let expected = rows
            .iter()
            .zip(&mixed)
            .map(|(z, t)| {
                let log_sum = z.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
                -(0..3)
                    .map(|c| (0.9 * t[c] + 0.1 / 3.0) * (z[c] as f64 - log_sum))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 2.0;
        let ours = model.task_loss(logits, targets).into_scalar() as f64;
        assert!((ours - expected).abs() < 1e-6, "{ours} vs {expected}");
    }

    /// Weight decay adds `decay · w` to the gradients of convolution and classifier weights, and
    /// nothing to batch-norm parameters.
    #[test]
    fn weight_decay_skips_batch_norms() {
        let plain = classifier(0.0, 1);
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
        for bn in [&plain.net.bn1, &plain.net.layer1[0].bn2] {
            let gamma = &bn.as_ref().expect("an unfolded batch norm").gamma;
            let a: Tensor<Flex, 1> = g0.get(gamma.id).unwrap();
            let b: Tensor<Flex, 1> = g1.get(gamma.id).unwrap();
            assert_eq!((b - a).abs().max().into_scalar(), 0.0);
        }
    }

    /// With 4 passes per optimizer step, each pass's gradients (decay included) are a quarter
    /// of a single pass's, so that burn-train's sum over the 4 passes is their mean; on 2
    /// devices, a pass is an eighth of the step's batch when burn-train sums the devices'
    /// gradients, a quarter when an all-reduce averages them.
    #[test]
    fn accumulated_gradients_are_scaled_to_a_mean() {
        let recipe = TrainConfig::builtin()
            .with_batch_size(8)
            .with_devices(2)
            .with_optimizer_batch_size(Some(64));
        let scale =
            |reduction| Classifier::new(classifier(0.0, 1).net, &recipe, reduction).gradient_scale;
        assert_eq!(scale(GradientReduction::Sum), 0.125);
        assert_eq!(scale(GradientReduction::DeviceMean), 0.25);

        let single = classifier(0.5, 1);
        let g1 = grads(&single);
        let quarter = Classifier {
            gradient_scale: 0.25,
            ..single.clone()
        };
        let g4 = grads(&quarter);
        let fc = &single.net.fc.weight;
        let a: Tensor<Flex, 2> = g1.get(fc.id).unwrap();
        let b: Tensor<Flex, 2> = g4.get(fc.id).unwrap();
        let scale = a.clone().abs().max().into_scalar();
        assert!((b.mul_scalar(4.0) - a).abs().max().into_scalar() < 1e-5 * scale);
    }
}
