//! Identities that must hold whatever the weights: every compute path computes the same
//! function (outputs and gradients), all attentions equal to one give burn's plain `Conv2d`,
//! and the output shapes are those of a `Conv2d` with the same settings.

use crate::common;

use burn::module::{AutodiffModule, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use common::{assert_close, in_test_precision, normal, precision, TestAutodiff, TestBackend};
use pedconv::{AttentionFactors, AttentionNoise, ComputePath, PedConv2d, PedConv2dConfig};

/// Configurations covering strides, dilation, groups, ranks, bias, `Same` and asymmetric
/// padding, non-square kernels, narrow layers (hidden width clamped to 1) and batch 1,
/// each with an input size `[batch, H, W]`.
fn configurations() -> Vec<(&'static str, PedConv2dConfig, [usize; 3])> {
    let base = |channels, kernel| PedConv2dConfig::new(channels, kernel);
    let pad1 = PaddingConfig2d::Explicit(1, 1, 1, 1);
    vec![
        (
            "3x3",
            base([8, 12], [3, 3]).with_padding(pad1.clone()),
            [2, 7, 6],
        ),
        (
            "3x3 stride 2",
            base([8, 8], [3, 3])
                .with_stride([2, 2])
                .with_padding(pad1.clone()),
            [3, 9, 8],
        ),
        ("1x1", base([16, 8], [1, 1]), [2, 5, 5]),
        (
            "1x1 stride 2",
            base([8, 16], [1, 1]).with_stride([2, 2]),
            [2, 6, 7],
        ),
        (
            "5x5 dilation 2",
            base([4, 6], [5, 5])
                .with_dilation([2, 2])
                .with_padding(PaddingConfig2d::Explicit(4, 4, 4, 4)),
            [2, 10, 9],
        ),
        (
            "groups 4",
            base([16, 8], [3, 3])
                .with_groups(4)
                .with_padding(pad1.clone()),
            [2, 6, 6],
        ),
        (
            "rank 3",
            base([8, 8], [3, 3]).with_rank(3).with_padding(pad1.clone()),
            [2, 6, 5],
        ),
        (
            "rank 2 groups 2 1x1",
            base([8, 6], [1, 1]).with_rank(2).with_groups(2),
            [2, 4, 4],
        ),
        ("bias", base([8, 8], [3, 3]).with_bias(true), [2, 6, 6]),
        (
            "same 2x2",
            base([4, 4], [2, 2]).with_padding(PaddingConfig2d::Same),
            [2, 5, 6],
        ),
        (
            "asymmetric 3x1",
            base([4, 4], [3, 1])
                .with_stride([2, 1])
                .with_padding(PaddingConfig2d::Explicit(2, 0, 0, 1)),
            [2, 7, 5],
        ),
        (
            "batch 1",
            base([32, 16], [3, 3]).with_padding(pad1),
            [1, 5, 5],
        ),
    ]
}

/// Zero-pads the last two dimensions, `start = [top, left]`, `end = [bottom, right]`.
fn zero_pad(
    x: Tensor<TestBackend, 4>,
    start: [usize; 2],
    end: [usize; 2],
) -> Tensor<TestBackend, 4> {
    let [batch, channels, h, w] = x.dims();
    let mut padded: Tensor<TestBackend, 4> = Tensor::zeros(
        [
            batch,
            channels,
            h + start[0] + end[0],
            w + start[1] + end[1],
        ],
        (&x.device(), x.dtype()),
    );
    padded = padded.slice_assign(
        [
            0..batch,
            0..channels,
            start[0]..start[0] + h,
            start[1]..start[1] + w,
        ],
        x,
    );
    padded
}

fn build(config: &PedConv2dConfig) -> PedConv2d<TestAutodiff> {
    in_test_precision(config.init::<TestAutodiff>(&Default::default()))
}

/// Every parameter's gradient, in a fixed order, with its name.
fn parameter_grads(
    layer: &PedConv2d<TestAutodiff>,
    grads: &<TestAutodiff as AutodiffBackend>::Gradients,
) -> Vec<(String, Tensor<TestBackend, 1>)> {
    let mut out = Vec::new();
    let mut push = |name: &str, grad: Option<Tensor<TestBackend, 1>>| {
        out.push((
            name.to_string(),
            grad.unwrap_or_else(|| panic!("no gradient for {name}")),
        ));
    };
    push("weight", layer.weight.grad(grads).map(|g| g.flatten(0, 3)));
    if let Some(bias) = &layer.bias {
        push("bias", bias.grad(grads));
    }
    let attn = &layer.attn;
    let decoder = attn.decoder.as_ref().expect("decoder on");
    for (name, linear) in [
        ("fc_share", &attn.fc_share),
        ("fc_inp", &attn.fc_inp),
        ("fc_oup", &attn.fc_oup),
        ("fc_k", &attn.fc_k),
        ("decoder.hidden", &decoder.hidden),
        ("decoder.output", &decoder.output),
    ] {
        push(
            &format!("{name}.weight"),
            linear.weight.grad(grads).map(|g| g.flatten(0, 1)),
        );
        push(
            &format!("{name}.bias"),
            linear.bias.as_ref().and_then(|b| b.grad(grads)),
        );
    }
    out
}

/// One path's forward passes on the same layer, input and noise.
struct PathRun {
    layer: PedConv2d<TestAutodiff>,
    x: Tensor<TestAutodiff, 4>,
    eval: Tensor<TestBackend, 4>,
    train: Tensor<TestAutodiff, 4>,
    info_max: Tensor<TestAutodiff, 1>,
}

impl PathRun {
    fn new(
        layer: &PedConv2d<TestAutodiff>,
        x: &Tensor<TestAutodiff, 4>,
        noise: &AttentionNoise<TestAutodiff>,
        path: ComputePath,
    ) -> Self {
        let layer = layer.clone().with_compute_path(path);
        let x = x.clone().detach().require_grad();
        let eval = layer.valid().forward(x.clone().inner());
        let out = layer.forward_train_with_noise(x.clone(), noise.clone());
        Self {
            layer,
            x,
            eval,
            train: out.output,
            info_max: out.info_max_loss.expect("decoder on"),
        }
    }

    /// Gradients of `sum(train · r) + 0.001 · info_max` (the golden files' loss).
    fn grads(
        &self,
        r: &Tensor<TestAutodiff, 4>,
    ) -> (
        Tensor<TestBackend, 4>,
        Vec<(String, Tensor<TestBackend, 1>)>,
    ) {
        let loss = (self.train.clone() * r.clone()).sum() + self.info_max.clone().mul_scalar(0.001);
        let grads = loss.backward();
        (
            self.x.grad(&grads).expect("input gradient"),
            parameter_grads(&self.layer, &grads),
        )
    }
}

/// f64 on flex, f32 on wgpu: see `common::precision` for the tolerances.
#[test]
fn every_path_gives_the_same_outputs_and_gradients() {
    let tolerance = precision().tolerance;
    for (name, config, [batch, h, w]) in configurations() {
        let layer = build(&config);
        let x: Tensor<TestAutodiff, 4> = normal([batch, config.channels[0], h, w]);
        let sizes = layer.sizes();
        let noise = AttentionNoise::<TestAutodiff> {
            input: normal([batch, sizes.rank * sizes.input]),
            output: normal([batch, sizes.rank * sizes.output]),
            kernel: normal([batch, sizes.rank * sizes.kernel]),
        };
        let reference = PathRun::new(&layer, &x, &noise, ComputePath::PerSampleKernel);
        let r = normal::<TestAutodiff, 4>(reference.train.dims());
        let (ref_grad_x, ref_param_grads) = reference.grads(&r);
        for path in [ComputePath::Factorized, ComputePath::Auto] {
            let label = |what: &str| format!("{name} ({path:?} vs PerSampleKernel): {what}");
            let other = PathRun::new(&layer, &x, &noise, path);
            assert_close(
                &label("eval output"),
                &other.eval,
                &reference.eval,
                tolerance,
            );
            assert_close(
                &label("train output"),
                &other.train,
                &reference.train,
                tolerance,
            );
            assert_close(
                &label("info-max loss"),
                &other.info_max,
                &reference.info_max,
                tolerance,
            );
            let (grad_x, param_grads) = other.grads(&r);
            assert_close(&label("grad x"), &grad_x, &ref_grad_x, tolerance);
            for ((param, grad), (_, expected)) in param_grads.iter().zip(&ref_param_grads) {
                assert_close(&label(&format!("grad {param}")), grad, expected, tolerance);
            }
        }
    }
}

/// With every attention factor equal to one (and, for rank r, the output factor 1/r), every
/// path is burn's `Conv2d` with the same weight, bias and settings.
#[test]
fn unit_attentions_give_a_plain_conv2d() {
    let tolerance = precision().tolerance;
    for (name, config, [batch, h, w]) in configurations() {
        let layer = build(&config).valid();
        // burn's `Conv2d`, with the padding applied by `zero_pad` and `Valid` in the conv:
        // burn 0.21 pads asymmetric convolutions with float32 zeros, which fails in float64.
        let mut conv = Conv2dConfig::new(config.channels, config.kernel_size)
            .with_stride(config.stride)
            .with_dilation(config.dilation)
            .with_groups(config.groups)
            .with_bias(config.bias)
            .init::<TestBackend>(&Default::default());
        conv.weight = Param::from_tensor(layer.weight.val());
        conv.bias = layer
            .bias
            .as_ref()
            .map(|bias| Param::from_tensor(bias.val()));
        let x: Tensor<TestBackend, 4> = normal([batch, config.channels[0], h, w]);
        let geometry = layer.geometry([h, w]);
        let expected = conv.forward(zero_pad(
            x.clone(),
            geometry.padding_start,
            geometry.padding_end,
        ));
        let sizes = layer.sizes();
        let ones = |entries| normal::<TestBackend, 3>([batch, sizes.rank, entries]).ones_like();
        let factors = AttentionFactors {
            input: ones(sizes.input),
            output: ones(sizes.output).div_scalar(sizes.rank as f64),
            kernel: ones(sizes.kernel),
        };
        for path in [
            ComputePath::PerSampleKernel,
            ComputePath::Factorized,
            ComputePath::Auto,
        ] {
            let y = layer
                .clone()
                .with_compute_path(path)
                .forward_with_factors(x.clone(), &factors);
            assert_close(&format!("{name} ({path:?})"), &y, &expected, tolerance);
        }
    }
}

#[test]
fn output_shapes_are_those_of_conv2d() {
    for (name, config, [batch, h, w]) in configurations() {
        let layer = build(&config).valid();
        let conv = Conv2dConfig::new(config.channels, config.kernel_size)
            .with_stride(config.stride)
            .with_dilation(config.dilation)
            .with_groups(config.groups)
            .with_padding(config.padding.clone())
            .init::<TestBackend>(&Default::default());
        let x: Tensor<TestBackend, 4> = normal([batch, config.channels[0], h, w]);
        // burn's `Conv2d` in its default float32 (see `zero_pad`).
        let expected = conv.forward(x.clone().cast(DType::F32)).dims();
        for path in [ComputePath::PerSampleKernel, ComputePath::Factorized] {
            let y = layer.clone().with_compute_path(path).forward(x.clone());
            assert_eq!(y.dims(), expected, "{name} ({path:?})");
        }
        assert_eq!(
            layer.geometry([h, w]).output_size,
            [expected[2], expected[3]],
            "{name}"
        );
    }
}

/// Training noise follows burn's `Dropout`: present on an autodiff backend, absent after
/// `.valid()`, and absent everywhere with `noise_std = 0`.
#[test]
fn noise_acts_only_in_training() {
    let config = PedConv2dConfig::new([8, 8], [3, 3]);
    let x: Tensor<TestAutodiff, 4> = normal([2, 8, 5, 5]);
    let noisy = build(&config);
    let differ = |a: Tensor<TestAutodiff, 4>, b: Tensor<TestAutodiff, 4>| {
        a.sub(b).abs().max().into_scalar().to_string() != "0"
    };
    assert!(
        differ(noisy.forward(x.clone()), noisy.forward(x.clone())),
        "training forward without noise"
    );
    let eval = noisy.valid();
    let a = eval.forward(x.clone().inner());
    let b = eval.forward(x.clone().inner());
    assert_close("inference forward", &a, &b, 0.0);

    let quiet = build(&config.clone().with_noise_std(0.0));
    assert!(
        !differ(quiet.forward(x.clone()), quiet.forward(x.clone())),
        "noise with noise_std = 0"
    );
    // Training and inference may take different compute paths (`Auto` on the CubeCL backends
    // trains with the factorized path), equal up to float32 rounding (1e-5), or up to the
    // backend's tolerance where that is larger (TF32 on CUDA), as the paths are compared
    // elsewhere.
    let train = quiet.forward_train(x.clone());
    assert_close(
        "noise_std = 0: forward_train",
        &train.output.inner(),
        &quiet.valid().forward(x.clone().inner()),
        precision().tolerance.max(1e-5),
    );
    assert!(train.info_max_loss.is_some());

    let no_decoder = build(&config.with_info_max_decoder(false));
    assert!(no_decoder.attn.decoder.is_none());
    assert!(no_decoder.forward_train(x).info_max_loss.is_none());
}
