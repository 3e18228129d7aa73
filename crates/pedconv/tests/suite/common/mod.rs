//! Shared test support: the backend under test, float comparison, and fixture loading.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// The backend the tests run on, named by the suite binary's root (`main.rs`: flex,
/// `wgpu.rs`, `cuda.rs`).
pub use crate::TestBackend;

pub type TestAutodiff = Autodiff<TestBackend>;

/// Which backend a suite binary runs on; each binary constructs one of them.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Flex,
    Wgpu,
    Cuda,
}

/// Float precision of the numerical tests, with the relative tolerance that goes with it.
#[derive(Debug, Clone, Copy)]
pub struct Precision {
    pub dtype: DType,
    /// Tolerance relative to the largest magnitude of the expected tensor.
    pub tolerance: f64,
}

/// flex computes in float64: the paths and the reference differ only in summation order, so
/// errors stay within a few hundred ulps of the largest value (1e-12 is about 5000 ulps).
///
/// wgpu computes in float32 (no f64 on the software Vulkan driver): convolutions of a few hundred
/// terms accumulate relative errors of order 1e-5; 1e-4 leaves a margin while still catching
/// any wrong term, whose contribution is of order 1e-2 or more.
///
/// CUDA computes in float32 (cubecl-cuda registers no float64), and its matrix products and
/// convolutions round their operands to TF32 (10-bit mantissa, unit roundoff u = 2⁻¹¹ ≈ 4.9e-4).
/// Each product then carries a relative error of standard deviation about √(2/3)·u ≈ 4e-4, and
/// a sum of n products of random signs an error of about 4e-4 of its own root-mean-square value;
/// the largest of some thousand outputs lies within 4.5 such deviations, about 2e-3 of the rms,
/// under 1e-3 of the largest magnitude. [`TF32_LAYER`] (5e-3) leaves a margin of five; a wrong
/// term of a sum of at most a few hundred moves the result by more than 1/(3·√n) ≈ 2e-2 of
/// the largest value.
pub fn precision() -> Precision {
    match crate::SUITE {
        Suite::Wgpu => Precision {
            dtype: DType::F32,
            tolerance: 1e-4,
        },
        Suite::Cuda => Precision {
            dtype: DType::F32,
            tolerance: TF32_LAYER,
        },
        Suite::Flex => Precision {
            dtype: DType::F64,
            tolerance: 1e-12,
        },
    }
}

/// Relative tolerance of one layer's output or gradients computed with TF32 matrix products
/// (see [`precision`]).
pub const TF32_LAYER: f64 = 5e-3;

/// Relative tolerance of a whole network's float32 logits: `float32` where the backend computes
/// in float32 throughout, [`TF32_NETWORK`] on CUDA.
pub fn network_tolerance(float32: f64) -> f64 {
    if crate::SUITE == Suite::Cuda {
        TF32_NETWORK
    } else {
        float32
    }
}

/// Relative tolerance of logits after some twenty layers with TF32 products: each layer adds
/// an independent relative error of about 4e-4 of its output's rms (see [`precision`]), so the
/// logits carry about √20 · 4e-4 ≈ 2e-3 of their rms, some 1e-3 of their largest magnitude;
/// 1e-2 leaves a margin of five to ten, while a wrong weight or statistic moves logits by far more.
pub const TF32_NETWORK: f64 = 1e-2;

pub fn device<B: Backend>() -> B::Device {
    Default::default()
}

/// A tensor from float64 values, in the precision under test.
pub fn tensor<B: Backend, const D: usize>(values: Vec<f64>, shape: [usize; D]) -> Tensor<B, D> {
    let dtype = precision().dtype;
    Tensor::from_data(TensorData::new(values, shape), (&device::<B>(), dtype))
}

pub fn to_f64<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Vec<f64> {
    tensor
        .to_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float tensor data")
}

/// Asserts `|actual - expected| <= tolerance · max|expected|` elementwise (and equal shapes),
/// naming the tensor and the worst element when it fails.
pub fn assert_close<B: Backend, const D: usize>(
    name: &str,
    actual: &Tensor<B, D>,
    expected: &Tensor<B, D>,
    tolerance: f64,
) {
    assert_eq!(actual.dims(), expected.dims(), "{name}: shapes differ");
    let actual = to_f64(actual);
    let expected = to_f64(expected);
    let scale = expected
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let (worst, error) = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| (a - e).abs())
        .enumerate()
        .fold((0, 0.0f64), |best, (i, e)| {
            if e > best.1 || e.is_nan() {
                (i, e)
            } else {
                best
            }
        });
    assert!(
        error <= tolerance * scale,
        "{name}: element {worst} is {} where {} was expected (error {error:.3e}, allowed {:.3e} = {tolerance:e} × max |expected| {scale:.3e})",
        actual[worst],
        expected[worst],
        tolerance * scale
    );
}

/// The directory of the golden files: `$PEDCONV_GOLDEN_DIR`, else the project's copy.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("PEDCONV_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden"),
    }
}

/// Casts every float parameter to the precision under test. Mapping also initialises the
/// (lazily initialised) parameters, so that clones of the result share their values.
struct CastParams(DType);

impl<B: Backend> burn::module::ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = tensor.cast(self.0).detach();
        let tensor = if tensor.is_require_grad() {
            tensor
        } else {
            tensor.require_grad()
        };
        burn::module::Param::from_mapped_value(id, tensor, mapper)
    }
}

/// A module with its float parameters in the precision under test.
pub fn in_test_precision<B: Backend, M: burn::module::Module<B>>(module: M) -> M {
    module.map(&mut CastParams(precision().dtype))
}

/// A standard normal tensor in the precision under test.
pub fn normal<B: Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(
        shape,
        burn::tensor::Distribution::Normal(0.0, 1.0),
        (&device::<B>(), precision().dtype),
    )
}
