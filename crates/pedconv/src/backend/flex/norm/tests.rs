//! The fused batch norm against burn's `BatchNorm`, addition and ReLU.

use burn::backend::{Autodiff, Flex};
use burn::module::{Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{DType, Tensor, TensorData};

use super::{inference, training};
use crate::norm::Epilogue;

type B = Autodiff<Flex>;

fn random<const D: usize>(shape: [usize; D], dtype: DType) -> Tensor<B, D> {
    crate::testing::normal(shape, dtype, [0.5, 2.0])
}

fn assert_close(what: &str, actual: TensorData, expected: TensorData, tolerance: f64) {
    crate::testing::assert_close(what, &actual, &expected, tolerance);
}

/// The fused operation against burn's `BatchNorm`, addition and ReLU differentiated by
/// autodiff: the output, the gradients of x, γ, β and the residual, and the running
/// statistics after two steps, with and without the residual and the ReLU, in float32 and
/// float64, on planes that are not a multiple of the loops' lanes. The two differ only in
/// the order of the sums (over up to 3·53 values per channel): 1e-12 of the largest value in
/// float64, 1e-5 in float32 (about 100 ulps, a wide margin that still catches a wrong term).
#[test]
fn equals_burns_batch_norm_and_its_gradients() {
    let _drawing = crate::testing::drawing();
    for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (residual, relu) in [(false, false), (false, true), (true, true), (true, false)] {
            let [batch, channels, height, width] = [3, 5, 7, 8];
            let shape = [batch, channels, height, width];
            let device = Default::default();
            let mut bn: BatchNorm<B> = BatchNormConfig::new(channels).init(&device);
            bn.gamma = Param::from_tensor(random([channels], dtype).require_grad());
            bn.beta = Param::from_tensor(random([channels], dtype).require_grad());
            bn.running_mean = RunningState::new(random([channels], dtype));
            bn.running_var = RunningState::new(random([channels], dtype).abs());
            // A clone shares the running statistics: the reference gets its own.
            let mut reference = bn.clone();
            reference.running_mean = RunningState::new(bn.running_mean.value());
            reference.running_var = RunningState::new(bn.running_var.value());
            let x = random(shape, dtype).require_grad();
            let r = random(shape, dtype).require_grad();
            let probe = random(shape, dtype);
            let epilogue = || Epilogue {
                residual: residual.then(|| r.clone()),
                relu,
            };
            let name = format!("{dtype:?}, residual {residual}, relu {relu}");
            // Two steps, so that the running statistics are updated twice.
            let fused = training(&bn, &x, &epilogue()).expect("the fused operation");
            let _ = training(&bn, &x.clone().mul_scalar(0.5), &epilogue());
            let expected = epilogue().compose(reference.forward(x.clone()));
            let _ = epilogue().compose(reference.forward(x.clone().mul_scalar(0.5)));
            let gradients = |output: Tensor<B, 4>, bn: &BatchNorm<B>| {
                let grads = (output.clone() * probe.clone()).sum().backward();
                let mut all = vec![
                    output.into_data(),
                    x.grad(&grads).expect("x's gradient").into_data(),
                    bn.gamma.grad(&grads).expect("γ's gradient").into_data(),
                    bn.beta.grad(&grads).expect("β's gradient").into_data(),
                    bn.running_mean.value().into_data(),
                    bn.running_var.value().into_data(),
                ];
                if residual {
                    all.push(r.grad(&grads).expect("the residual's gradient").into_data());
                }
                all
            };
            let actual = gradients(fused, &bn);
            let expected = gradients(expected, &reference);
            let names = ["output", "x", "γ", "β", "running mean", "running var", "r"];
            for ((what, actual), expected) in names.iter().zip(actual).zip(expected) {
                assert_close(&format!("{name}: {what}"), actual, expected, tolerance);
            }
        }
    }
}

/// In inference (flex without autodiff), the running statistics: equal to burn's
/// `BatchNorm`, addition and ReLU (same tolerances as above); and the epilogue alone, as
/// after a folded batch norm, equal to burn's addition and ReLU.
#[test]
fn inference_equals_burns_batch_norm() {
    let _drawing = crate::testing::drawing();
    let device = Default::default();
    let random = |shape: &[usize], dtype| {
        crate::testing::normal::<Flex, 1>([shape.iter().product()], dtype, [0.5, 2.0])
    };
    for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (residual, relu) in [(false, true), (true, true), (true, false)] {
            let shape = [2, 3, 5, 9];
            let mut bn: BatchNorm<Flex> = BatchNormConfig::new(3).init(&device);
            bn.gamma = Param::from_tensor(random(&[3], dtype));
            bn.beta = Param::from_tensor(random(&[3], dtype));
            bn.running_mean = RunningState::new(random(&[3], dtype));
            bn.running_var = RunningState::new(random(&[3], dtype).abs());
            let x = random(&shape, dtype).reshape(shape);
            let epilogue = Epilogue {
                residual: residual.then(|| random(&shape, dtype).reshape(shape)),
                relu,
            };
            let fused = inference(&bn, &x, &epilogue).expect("the fused operation");
            let expected = epilogue.clone().compose(bn.forward(x.clone()));
            let alone = super::epilogue(&x, &epilogue).expect("the fused epilogue");
            let expected_alone = epilogue.compose(x);
            let name = format!("{dtype:?}, residual {residual}, relu {relu}");
            assert_close(&name, fused.into_data(), expected.into_data(), tolerance);
            // The epilogue alone (a folded batch norm): exact, the same operations.
            let name = format!("{name}, epilogue alone");
            assert_close(&name, alone.into_data(), expected_alone.into_data(), 0.0);
        }
    }
}

/// A float16 input is not the fused operation's: the caller composes burn's.
#[test]
fn declines_other_element_types() {
    let _drawing = crate::testing::drawing();
    let device = Default::default();
    let bn: BatchNorm<B> = BatchNormConfig::new(2).init(&device);
    let x = random([1, 2, 3, 3], DType::F16);
    assert!(training(&bn, &x, &Epilogue::relu()).is_none());
}
