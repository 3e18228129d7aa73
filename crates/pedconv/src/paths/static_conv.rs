//! Static convolutions, `conv2d(x, W) + bias` with burn's `Conv2d` parameters and options, by
//! the fastest route measured on each backend.

use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::Tensor;

use super::{ConvLayout, Formulation, Operands, StaticConv};
use crate::attention::AttentionFactors;
use crate::backend::BackendClass;
use crate::geometry::ConvGeometry;
use crate::precision::cast_to;

/// A static convolution, `conv2d(x, W) + bias` with burn's `Conv2d` parameters and options.
///
/// Where it was measured faster ([`BackendClass::static_by_columns`]: on flex, and in training on
/// wgpu; the figures are in `docs/benchmarks.md`) it runs the factorized path's columns with unit
/// factors, which keep nothing but the input for the backward pass. Elsewhere it is burn's
/// convolution, on the input as [`StaticConv::prepare`] prepares it.
pub(crate) fn static_convolution<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, _, height, width] = x.dims();
    let geometry = match ConvGeometry::new(
        [height, width],
        conv.kernel_size,
        conv.stride,
        conv.dilation,
        &conv.padding,
    ) {
        Ok(geometry) => geometry,
        // burn's convolution reports the shapes that do not fit.
        Err(_) => return conv.forward(x),
    };
    let dtype = x.dtype();
    let layer = StaticConv {
        weight: cast_to(conv.weight.val(), dtype),
        layout: ConvLayout {
            stride: conv.stride,
            dilation: conv.dilation,
            groups: conv.groups,
            geometry,
        },
    };
    let bias = conv.bias.as_ref().map(|bias| cast_to(bias.val(), dtype));
    if !BackendClass::of::<B>().static_by_columns() {
        let (x, options) = layer.prepare(x, conv.kernel_size);
        return conv2d(x, layer.weight, bias, options);
    }
    let [channels_out, group_in, kh, kw] = layer.weight.dims();
    let options = (&x.device(), x.dtype());
    let unit = |entries: usize| Tensor::ones([batch, 1, entries], options);
    let factors = AttentionFactors {
        input: unit(group_in),
        output: unit(channels_out),
        kernel: unit(kh * kw),
    };
    let output = Formulation::Columns(layer.layout).apply(Operands {
        x,
        factors,
        weight: layer.weight,
    });
    match bias {
        Some(bias) => add_channel_bias(output, bias),
        None => output,
    }
}

/// `x + bias` for one `bias` value per channel of `x` `[N, C, H, W]`, as one scalar per row of
/// `[N·C, H·W]`, the broadcast that flex runs with SIMD (it runs a `[1, C, 1, 1]` operand element
/// by element). The bias of a batch norm folded into its convolution takes this in inference.
pub(crate) fn add_channel_bias<B: Backend>(x: Tensor<B, 4>, bias: Tensor<B, 1>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let per_row = bias
        .unsqueeze_dim::<2>(0)
        .expand([n, c])
        .reshape([n * c, 1]);
    (x.reshape([n * c, h * w]) + per_row).reshape([n, c, h, w])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{DType, Tensor};

    use super::*;

    type B = Autodiff<Flex>;

    fn normal<const D: usize>(shape: [usize; D], dtype: DType) -> Tensor<B, D> {
        crate::testing::normal(shape, dtype, [0.0, 1.0])
    }

    /// The static convolutions of the ResNets (the 7×7 stem, 1×1 shortcuts, 3×3 at strides 1
    /// and 2, the "d" stem's), and one with a bias and groups, through the fused loops: output and
    /// the gradients of x, W and the bias equal burn's convolution differentiated by autodiff, in
    /// float64 and float32. The two differ in the order of their sums only (at most 147 terms
    /// here): 1e-12 of the largest value in float64, 1e-5 in float32 (about 100 ulps).
    #[test]
    fn static_convolution_equals_burns() {
        let _drawing = crate::testing::drawing();
        assert_eq!(
            BackendClass::of::<B>(),
            BackendClass::Flex,
            "the fused loops run on Autodiff<Flex>"
        );
        // (channels, kernel, stride, padding, groups, bias, [batch, H, W])
        let cases = [
            ([3, 8], 7, 2, 3, 1, false, [2, 17, 16]),
            ([4, 8], 1, 2, 0, 1, false, [2, 9, 8]),
            ([6, 6], 3, 1, 1, 1, false, [3, 8, 7]),
            ([4, 8], 3, 2, 1, 1, false, [2, 9, 9]),
            ([4, 6], 3, 1, 1, 2, true, [2, 5, 6]),
        ];
        let dtypes = [(DType::F64, 1e-12), (DType::F32, 1e-5)];
        for (
            (channels, kernel, stride, padding, groups, bias, [batch, h, w]),
            (dtype, tolerance),
        ) in cases
            .into_iter()
            .flat_map(|case| dtypes.map(|dtype| (case, dtype)))
        {
            let normal = |shape| normal(shape, dtype);
            let name =
                format!("{dtype:?} {channels:?} {kernel}×{kernel} stride {stride} groups {groups}");
            let conv = Conv2dConfig::new(channels, [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    padding, padding, padding, padding,
                ))
                .with_groups(groups)
                .with_bias(bias)
                .init::<B>(&Default::default());
            let mut conv = conv;
            conv.weight = Param::from_tensor(normal(conv.weight.dims()));
            conv.bias = conv
                .bias
                .map(|b| Param::from_tensor(normal([b.dims()[0], 1, 1, 1]).reshape([b.dims()[0]])));
            let x = normal([batch, channels[0], h, w]).require_grad();
            let fused = static_convolution(&conv, x.clone());
            let probe = normal(fused.dims());
            let evaluate = |output: Tensor<B, 4>| {
                let grads = (output.clone() * probe.clone()).sum().backward();
                let mut all = vec![
                    output.into_data(),
                    x.grad(&grads).expect("x's gradient").into_data(),
                    conv.weight.grad(&grads).expect("W's gradient").into_data(),
                ];
                if let Some(bias) = &conv.bias {
                    all.push(bias.grad(&grads).expect("the bias's gradient").into_data());
                }
                all
            };
            let actual = evaluate(fused);
            let expected = evaluate(conv.forward(x.clone()));
            for (what, (actual, expected)) in ["output", "x", "W", "bias"]
                .iter()
                .zip(actual.into_iter().zip(expected))
            {
                let what = format!("{name}: {what}");
                crate::testing::assert_close(&what, &actual, &expected, tolerance);
            }
        }
    }
}
