//! pedconv used from a crate of one's own on wgpu (CUDA with the `cuda` feature), with burn's
//! default features: trains the library's operator example (`PedConv2d` beside burn's `Conv2d`,
//! `Autodiff` over the GPU backend, burn's SGD) and checks `pedconv::static_conv2d` and
//! `MomentumSgd` against burn's `Conv2d` and `Sgd` on the same backend. Exits with an error
//! where any of them fails.

use std::process::ExitCode;

use burn::backend::Autodiff;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{SgdConfig, SimpleOptimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};
use pedconv::optim::MomentumSgd;

#[path = "../../../crates/pedconv/examples/swap_conv.rs"]
#[allow(dead_code)] // the example's own `main` trains on the CPU
mod swap_conv;

/// The GPU backend, as burn's features make it.
#[cfg(not(feature = "cuda"))]
type Gpu = burn::backend::Wgpu;
#[cfg(feature = "cuda")]
type Gpu = burn::backend::Cuda;

type B = Autodiff<Gpu>;

/// Validation accuracy the example must reach in `EPOCHS` (chance is 25 %).
const ACCURACY: f64 = 0.6;
const EPOCHS: usize = 1;

/// `static_conv2d` against burn's `Conv2d`: output and input gradient of a strided, padded
/// 3×3 convolution, float32 with sums of 72 terms: within 1e-4 of the largest value.
fn static_conv2d_equals_conv2d<B: AutodiffBackend>(device: &B::Device) -> Result<(), String> {
    let conv = Conv2dConfig::new([8, 16], [3, 3])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init::<B>(device);
    let x =
        Tensor::<B, 4>::random([2, 8, 9, 9], Distribution::Normal(0.0, 1.0), device).require_grad();
    let evaluate = |y: Tensor<B, 4>| -> [TensorData; 2] {
        let grads = (y.clone() * y.clone()).sum().backward();
        let grad = x.grad(&grads).expect("the input's gradient");
        [y.into_data(), grad.into_data()]
    };
    let ours = evaluate(pedconv::static_conv2d(&conv, x.clone()));
    let burns = evaluate(conv.forward(x.clone()));
    for (what, (ours, burns)) in ["output", "input gradient"]
        .iter()
        .zip(ours.iter().zip(&burns))
    {
        let scale = burns.iter::<f32>().fold(0f32, |m, v| m.max(v.abs()));
        let difference = largest_difference(ours, burns);
        if difference > 1e-4 * scale {
            return Err(format!(
                "static_conv2d's {what} differs from Conv2d's by {difference:e} (largest value {scale:e})"
            ));
        }
    }
    Ok(())
}

/// Three steps of `MomentumSgd` against burn's `Sgd` with the same momentum and no
/// dampening, on the backend the optimizer runs on: within 1e-5 (a fused multiply-add rounds
/// once less).
fn momentum_sgd_equals_sgd<G: Backend>(device: &G::Device) -> Result<(), String> {
    let ours = MomentumSgd {
        momentum: 0.875,
        nesterov: false,
    };
    let burns = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(ours.momentum)
                .with_dampening(0.0),
        ))
        .build::<G>();
    let draw = || Tensor::<G, 2>::random([33, 70], Distribution::Normal(0.0, 1.0), device);
    let (mut param, mut reference) = (draw(), None);
    let mut expected = param.clone();
    let mut state = None;
    for lr in [0.5, 0.25, 0.125] {
        let grad = draw();
        (param, state) = ours.step(lr, param, grad.clone(), state);
        (expected, reference) = burns.step(lr, expected, grad, reference);
        let difference = largest_difference(&param.to_data(), &expected.to_data());
        if difference > 1e-5 {
            return Err(format!(
                "MomentumSgd's step at lr {lr} differs from Sgd's by {difference:e}"
            ));
        }
    }
    Ok(())
}

/// `max |a − b|` over the elements, in float32 (NaN where either is NaN).
fn largest_difference(a: &TensorData, b: &TensorData) -> f32 {
    a.iter::<f32>()
        .zip(b.iter::<f32>())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

fn main() -> ExitCode {
    println!("backend: {}", std::any::type_name::<Gpu>());
    let device = Default::default();
    let checks = [
        ("static_conv2d", static_conv2d_equals_conv2d::<B>(&device)),
        ("MomentumSgd", momentum_sgd_equals_sgd::<Gpu>(&device)),
    ];
    let mut failed = false;
    for (name, result) in checks {
        match result {
            Ok(()) => println!("{name}: equals burn's"),
            Err(message) => {
                eprintln!("error: {message}");
                failed = true;
            }
        }
    }
    let accuracy = swap_conv::train::<B>(&device, EPOCHS);
    if accuracy < ACCURACY {
        eprintln!(
            "error: the example reached {:.1} % in {EPOCHS} epochs, below {:.0} %",
            100.0 * accuracy,
            100.0 * ACCURACY
        );
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
