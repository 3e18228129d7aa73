//! Batch norms folded into the convolutions: the folded network's logits equal the original's
//! in inference, for static and PEDConv ResNets and the paper's checkpoint.

use crate::common;

use burn::module::{Param, RunningState};
use burn::nn::BatchNorm;
use burn::tensor::{Distribution, Tensor};
use common::{
    assert_close, golden_dir, in_test_precision, network_tolerance, normal, precision, TestBackend,
};
use pedconv::resnet::{ImportMode, ResNet, ResNetConfig, ResNetDepth};

type B = TestBackend;

/// Folding changes the order of a few multiplications per weight: in float64 the logits stay
/// within 1e-10 of their scale; in float32 within 1e-5 (a few hundred ulps after 18–50 layers);
/// with CUDA's TF32 products, whose rounding differs between the folded and unfolded weights,
/// within `common::TF32_NETWORK`.
fn tolerance() -> f64 {
    if precision().dtype == burn::tensor::DType::F64 {
        1e-10
    } else {
        network_tolerance(1e-5)
    }
}

/// Random statistics and affine parameters, so that a fold that drops or misplaces any of them
/// changes the logits: scale in [0.5, 1.5], shift and mean in [-0.5, 0.5], variance in [0.5, 2].
fn randomise(bn: &mut Option<BatchNorm<B>>) {
    let Some(bn) = bn else { return };
    let like = bn.gamma.val();
    let uniform = |low: f64, high: f64| -> Tensor<B, 1> {
        let options = (&like.device(), like.dtype());
        Tensor::random(like.dims(), Distribution::Uniform(low, high), options)
    };
    bn.gamma = Param::from_tensor(uniform(0.5, 1.5));
    bn.beta = Param::from_tensor(uniform(-0.5, 0.5));
    bn.running_mean = RunningState::new(uniform(-0.5, 0.5));
    bn.running_var = RunningState::new(uniform(0.5, 2.0));
}

fn randomise_all(model: &mut ResNet<B>) {
    for bn in [&mut model.bn1, &mut model.bn2, &mut model.bn3] {
        randomise(bn);
    }
    for block in [
        &mut model.layer1,
        &mut model.layer2,
        &mut model.layer3,
        &mut model.layer4,
    ]
    .into_iter()
    .flatten()
    {
        for bn in [&mut block.bn1, &mut block.bn2, &mut block.bn3] {
            randomise(bn);
        }
        if let Some(downsample) = &mut block.downsample {
            randomise(&mut downsample.bn);
        }
    }
}

/// No batch norm is left, and the logits are the unfolded network's.
fn assert_folds(model: ResNet<B>, input: Tensor<B, 4>) {
    let expected = model.forward(input.clone());
    let folded = model.fold_batch_norms();
    let blocks = || {
        [
            &folded.layer1,
            &folded.layer2,
            &folded.layer3,
            &folded.layer4,
        ]
    };
    assert!(folded.bn1.is_none() && folded.bn2.is_none() && folded.bn3.is_none());
    for block in blocks().into_iter().flatten() {
        assert!(block.bn1.is_none() && block.bn2.is_none() && block.bn3.is_none());
        assert!(block.downsample.as_ref().is_none_or(|d| d.bn.is_none()));
    }
    assert_close(
        "folded logits",
        &folded.forward(input),
        &expected,
        tolerance(),
    );
}

#[test]
fn folding_keeps_the_logits_of_static_and_pedconv_resnets() {
    for depth in [ResNetDepth::R18, ResNetDepth::R50] {
        for dynamic in [false, true] {
            let mut config = ResNetConfig::new(depth)
                .with_width(0.25)
                .with_num_classes(10);
            if dynamic {
                config = config.dynamic();
            }
            let mut model = in_test_precision(config.init::<B>(&Default::default()));
            randomise_all(&mut model);
            assert_folds(model, normal([2, 3, 64, 48]));
        }
    }
}

/// The paper's checkpoint (trained statistics), in the precision under test.
#[test]
fn folding_keeps_the_golden_checkpoints_logits() {
    let model = ResNetConfig::new(ResNetDepth::R18)
        .with_width(0.25)
        .with_num_classes(10)
        .dynamic()
        .init_from_pytorch::<B>(
            golden_dir().join("resnet18_w0.25_c10_ref.pth.tar"),
            ImportMode::Exact,
            &Default::default(),
        )
        .unwrap_or_else(|error| panic!("{error}"));
    assert_folds(in_test_precision(model), normal([3, 3, 32, 32]));
}
