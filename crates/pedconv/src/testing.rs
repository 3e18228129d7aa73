//! Helpers of the crate's unit tests.

use burn::tensor::TensorData;

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
