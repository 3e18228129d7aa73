//! Helpers of the crate's unit tests.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};

/// The GPU backend of the kernel-against-reference tests, without fusion: wgpu where the
/// `wgpu` feature is on (without a GPU, Mesa's software Vulkan driver), else CUDA.
#[cfg(feature = "wgpu")]
pub(crate) type GpuBackend = crate::backend::cube::Wgpu;
#[cfg(all(feature = "cuda", not(feature = "wgpu")))]
pub(crate) type GpuBackend = crate::backend::cube::Cuda;

/// Relative tolerance of a float32 result whose sums run through [`GpuBackend`]'s matrix
/// products, against the same sums in float32 on the CPU: `float32` (the summation orders
/// differ) on wgpu; on CUDA, whose products round their operands to TF32 (unit roundoff
/// 2⁻¹¹ ≈ 4.9e-4, an error of about 4e-4 of a sum's rms, under 1e-3 of its largest
/// magnitude at the largest of some thousand outputs), 5e-3: still below the 2e-2 of the
/// largest value that one wrong term of a sum of at most a few hundred moves it by.
#[cfg(feature = "cube")]
pub(crate) fn gpu_products_tolerance(float32: f64) -> f64 {
    if cfg!(feature = "wgpu") {
        float32
    } else {
        5e-3
    }
}

/// `max |actual − expected| ≤ tolerance · max |expected|`, elementwise, in float64 whatever the
/// data's float type. Each test says why its tolerance suits its precision.
pub(crate) fn assert_close(what: &str, actual: &TensorData, expected: &TensorData, tolerance: f64) {
    assert_eq!(actual.shape, expected.shape, "{what}: shapes differ");
    let values = |data: &TensorData| {
        data.clone()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("float data")
    };
    let (actual, expected) = (values(actual), values(expected));
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let error = actual
        .iter()
        .zip(&expected)
        .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
    assert!(
        error <= tolerance * scale,
        "{what}: error {error:e} for a largest value of {scale:e}"
    );
}

/// The backend's generator is one per process, shared by the tests running at once: a test
/// that draws from flex's holds this guard for its whole body, so that a test that seeds the
/// generator draws what its seed gives, whatever the other tests do meanwhile.
pub(crate) fn drawing() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Normal values of `dtype`, from the backend's generator.
pub(crate) fn normal<B: Backend, const D: usize>(
    shape: [usize; D],
    dtype: DType,
    [mean, std]: [f64; 2],
) -> Tensor<B, D> {
    Tensor::random(
        shape,
        Distribution::Normal(mean, std),
        (&Default::default(), dtype),
    )
}
