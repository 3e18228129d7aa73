//! Shared test support: the backend under test, float comparison, and fixture loading.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// The backend the tests run on: flex (CPU) by default, wgpu with the `test-wgpu` feature,
/// CUDA with `test-cuda`.
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda")))]
pub type TestBackend = burn::backend::Flex;
#[cfg(feature = "test-wgpu")]
pub type TestBackend = burn::backend::Wgpu;
#[cfg(all(feature = "test-cuda", not(feature = "test-wgpu")))]
pub type TestBackend = burn::backend::Cuda;

pub type TestAutodiff = Autodiff<TestBackend>;

/// Float precision of the numerical tests, with the relative tolerance that goes with it.
#[derive(Debug, Clone, Copy)]
pub struct Precision {
    pub dtype: DType,
    /// Tolerance relative to the largest magnitude of the expected tensor.
    pub tolerance: f64,
}

/// flex and CUDA compute in float64: the paths and the reference differ only in summation
/// order, so errors stay within a few hundred ulps of the largest value (1e-12 is about 5000
/// ulps). (CUDA's float32 matrix products may run on TF32 tensor cores, 10-bit mantissas.)
/// wgpu computes in float32 (no f64 on the software Vulkan driver): convolutions of a few hundred
/// terms accumulate relative errors of order 1e-5; 1e-4 leaves a margin while still catching
/// any wrong term, whose contribution is of order 1e-2 or more.
pub fn precision() -> Precision {
    if cfg!(feature = "test-wgpu") {
        Precision {
            dtype: DType::F32,
            tolerance: 1e-4,
        }
    } else {
        Precision {
            dtype: DType::F64,
            tolerance: 1e-12,
        }
    }
}

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
