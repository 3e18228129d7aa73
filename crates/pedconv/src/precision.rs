//! Layers compute in their input's float type. Their parameters, kept in float32 (the master
//! weights of mixed-precision training), are cast to it by burn's differentiable cast, so that a
//! half-precision input runs a layer in half precision and its gradients still reach the float32
//! parameters. Batch norms and the information-maximisation loss compute in float32 whatever
//! their input.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// `tensor` in `dtype`: itself when it has it (no autodiff node, no copy), else through burn's
/// differentiable cast.
pub fn cast_to<B: Backend, const D: usize>(tensor: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if tensor.dtype() == dtype {
        tensor
    } else {
        tensor.cast(dtype)
    }
}

/// Whether `dtype` is a half-precision float (f16 or bf16), whose batch norms and losses
/// compute in float32.
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// `tensor` cast up to float32 when it is in half precision, else itself.
pub(crate) fn at_least_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, D> {
    if is_half(tensor.dtype()) {
        tensor.cast(DType::F32)
    } else {
        tensor
    }
}

/// `layer` applied in the float type of `x`.
pub(crate) fn linear<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    burn::tensor::module::linear(
        x,
        cast_to(layer.weight.val(), dtype),
        layer.bias.as_ref().map(|bias| cast_to(bias.val(), dtype)),
    )
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::resnet::{PedConvSettings, ResNetConfig, ResNetDepth};
    use crate::testing::normal;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    /// The largest difference between two tensors over the largest magnitude of the second.
    fn relative<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar();
        (a - b).abs().max().into_scalar() / scale
    }

    /// The cosine of the angle between two tensors.
    fn cosine<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        let norm = |t: &Tensor<Flex, D>| t.clone().square().sum().sqrt().into_scalar();
        (a.clone() * b.clone()).sum().into_scalar() / (norm(&a) * norm(&b))
    }

    /// A PEDConv ResNet fed half-precision images computes in that type (its logits come out
    /// in it, its info-max loss in float32), and its float32 parameters get float32 gradients
    /// close to a float32 pass's. Tolerances in units of the type's machine epsilon `ε` (2⁻⁷
    /// for bf16, 2⁻¹⁰ for f16), the rounding of a dozen layers of activations and gradients:
    /// the logits within 15 ε of the largest (measured: 7.4 ε for bf16, 7.6 ε for f16), the
    /// stem's gradient at a cosine within 25 ε of 1 (measured: 13 ε, 12.6 ε).
    #[test]
    fn half_precision_inputs_train_float32_parameters() {
        let _drawing = crate::testing::drawing();
        let device = Default::default();
        B::seed(&device, 3);
        let net = ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.125)
            .with_num_classes(5)
            .with_pedconv(Some(PedConvSettings::new().with_noise_std(0.0)))
            .init::<B>(&device);
        let images: Tensor<B, 4> = normal([8, 3, 64, 64], DType::F32, [0.0, 1.0]);
        let run = |dtype: DType| {
            let out = net.forward_train(images.clone().cast(dtype));
            assert_eq!(out.logits.dtype(), dtype);
            let info_max = out.info_max_loss.expect("PEDConv's info-max loss");
            assert_eq!(info_max.dtype(), DType::F32, "the loss in float32");
            let logits = out.logits.cast(DType::F32);
            let grads = (logits.clone().square().mean() + info_max).backward();
            let grad_of = |weight: &Tensor<B, 4>| weight.grad(&grads).expect("a gradient");
            let stem = grad_of(&net.conv1.weight.val());
            (logits.inner(), stem)
        };
        let (logits, stem) = run(DType::F32);
        for (dtype, epsilon) in [(DType::BF16, 2f32.powi(-7)), (DType::F16, 2f32.powi(-10))] {
            let (half_logits, half_stem) = run(dtype);
            assert_eq!(
                half_stem.dtype(),
                DType::F32,
                "{dtype:?}: the master weight's gradient"
            );
            let error = relative(half_logits, logits.clone()) / epsilon;
            assert!(error < 15.0, "{dtype:?} logits: {error} ε");
            let error = (1.0 - cosine(half_stem, stem.clone())) / epsilon;
            assert!(
                error < 25.0,
                "{dtype:?} stem gradient: cosine 1 - {error} ε"
            );
        }
    }
}
