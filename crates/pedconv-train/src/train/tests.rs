//! Unit tests of the training run: data-parallel steps against one device's.

use super::fine_tune::{parameters_by_part, Part};
use super::objective::seeded;
use super::*;
use crate::config::{FineTuneConfig, LrDecay, StartedFrom, TrainOnly};
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

/// A PEDConv ResNet-18 without noise.
fn network() -> ResNetConfig {
    ResNetConfig::new(ResNetDepth::R18)
        .with_width(0.0625)
        .with_num_classes(3)
        .with_pedconv(Some(PedConvSettings::new().with_noise_std(0.0)))
}

/// 24 generated 8×8 training images of 3 classes, 4 for validation, one worker.
fn synthetic_data() -> DataConfig {
    DataConfig::new(DataSource::Synthetic {
        train_images: 24,
        valid_images: 4,
        classes: 3,
    })
    .with_train_crop(8)
    .with_val_resize(8)
    .with_val_crop(8)
    .with_workers(Some(1))
}

/// `initial` (a [`network`] with its batch norms folded away: a network whose gradients over
/// a batch are the mean of its images' gradients) trained for one epoch of 3 optimizer steps
/// on `devices` devices of `batch` images; its parameters after.
fn train_folded(initial: &ResNet<Flex>, devices: usize, batch: usize) -> Vec<Vec<f32>> {
    let network = network();
    let data = synthetic_data();
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
    let net = ResNet::<B>::from_inner(initial.clone()).map(&mut Trainable);
    let model = Classifier::new(net, &config, GradientReduction::Sum);
    let job = Training {
        config,
        output: output.clone(),
        backend_name: "flex".into(),
        resume_from: 0,
        weights: None,
    };
    let execution =
        ExecutionStrategy::multi(vec![device; devices], MultiDeviceOptim::OptimMainDevice);
    train(job, execution, model).unwrap();
    let trained: ResNet<Flex> = initial
        .clone()
        .load_record(output.join(run_dir::FINAL_MODEL), &device)
        .unwrap();
    std::fs::remove_dir_all(&output).unwrap();
    parameters(&trained)
}

/// Every parameter of `net`, in visiting order.
fn parameters(net: &ResNet<Flex>) -> Vec<Vec<f32>> {
    let mut parameters = Parameters(Vec::new());
    net.visit(&mut parameters);
    parameters.0
}

/// Two devices of 4 images take the same steps as one device of 8: burn-train sums the
/// devices' gradients, the objective scales each to make the sum the batch's mean, and the
/// devices' shards of a step together are the one device's batch. Tolerance: f32 sums of
/// the gradients in another order, through 3 steps.
#[test]
fn two_devices_take_the_steps_of_one_with_twice_the_batch() {
    let device = Default::default();
    // Folded on the inner backend, where the folded parameters are leaves. Both runs start
    // from this one draw: other tests of the process draw from the same generator.
    let initial = seeded::<Flex, _>(&device, 5, || {
        network().init::<Flex>(&device).fold_batch_norms()
    });
    let start = parameters(&initial);
    let (two, one) = (train_folded(&initial, 2, 4), train_folded(&initial, 1, 8));
    assert_eq!(two.len(), one.len());
    let largest = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let difference =
        |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    for (i, (a, b)) in two.iter().zip(&one).enumerate() {
        let scale = largest(b).max(1e-12);
        let error = difference(a, b);
        assert!(
            error <= 1e-5 * scale,
            "parameter {i}: {error} (scale {scale})"
        );
    }
    // The steps are small (a deep network without batch norms): a quarter of the
    // parameters (among them the convolutions' and the classifier's) move by more than ten
    // times the tolerance, the attention's hardly at all.
    let moved = |(start, end): (&Vec<f32>, &Vec<f32>)| difference(start, end) > 1e-4 * largest(end);
    let moved = start.iter().zip(&one).filter(|&p| moved(p)).count();
    assert!(
        moved > start.len() / 4,
        "training moved {moved} of {} parameters",
        start.len()
    );
}

/// A fine-tuning run of one epoch (3 optimizer steps) in which only `train_only` trains: the
/// parameters, by part, before and after.
fn fine_tune_epoch(train_only: TrainOnly) -> [Vec<(Part, String, Vec<f32>)>; 2] {
    let data = synthetic_data();
    let started = StartedFrom {
        weights: "pretrained.pth".into(),
        sha256: String::new(),
        file_classes: 3,
        new_head: false,
        attention_from_file: true,
    };
    let fine_tune = FineTuneConfig::new()
        .with_train_only(Some(train_only))
        .with_pretrained_lr_multiplier(0.5)
        .with_started_from(Some(started));
    let config = TrainConfig::new(network(), data)
        .with_epochs(1)
        .with_warmup_epochs(0)
        .with_mixup(0.0)
        .with_lr(25.6)
        .with_batch_size(8)
        .with_fine_tune(Some(fine_tune));
    let output = std::env::temp_dir().join(format!(
        "pedconv-unit-{}-fine-tune-{train_only:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&output);
    type B = Autodiff<Flex>;
    let device = Default::default();
    let net = seeded::<B, _>(&device, 3, || config.model.init::<B>(&device));
    let model = Classifier::new(net, &config, GradientReduction::Sum);
    let before = parameters_by_part(&model);
    let job = Training {
        config: config.clone(),
        output: output.clone(),
        backend_name: "flex".into(),
        resume_from: 0,
        weights: None,
    };
    let execution = ExecutionStrategy::multi(vec![device], MultiDeviceOptim::OptimMainDevice);
    train(job, execution, model.clone()).unwrap();
    let trained = model
        .valid()
        .net
        .load_record(output.join(run_dir::FINAL_MODEL), &device)
        .unwrap();
    std::fs::remove_dir_all(&output).unwrap();
    let after = Classifier::new(trained, &config, GradientReduction::Sum);
    [before, parameters_by_part(&after)]
}

/// Through an epoch, every parameter outside the trained parts (the batch norms' among them)
/// stays bit for bit what it was; the head moves, and with it the attention branches when
/// they train too. The batch norms' running statistics are not parameters: they follow the
/// data in training mode.
#[test]
fn frozen_parameters_stay_bit_identical_through_an_epoch() {
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for train_only in [TrainOnly::Head, TrainOnly::HeadAndAttention] {
        let [before, after] = fine_tune_epoch(train_only);
        assert_eq!(before.len(), after.len());
        let mut moved = std::collections::BTreeSet::new();
        for ((part, name, start), (_, _, end)) in before.iter().zip(&after) {
            if name.ends_with("running_mean") || name.ends_with("running_var") {
                continue;
            }
            let trains = match train_only {
                TrainOnly::Head => *part == Part::Head,
                TrainOnly::HeadAndAttention => *part != Part::Backbone,
            };
            if !trains {
                assert_eq!(bits(start), bits(end), "{train_only:?}: {name} moved");
            } else if bits(start) != bits(end) {
                moved.insert(format!("{part:?}"));
            }
        }
        let expected: &[&str] = match train_only {
            TrainOnly::Head => &["Head"],
            TrainOnly::HeadAndAttention => &["Attention", "Head"],
        };
        assert_eq!(moved.into_iter().collect::<Vec<_>>(), expected);
    }
}
