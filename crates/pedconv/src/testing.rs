//! Helpers of the crate's unit tests.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};

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
