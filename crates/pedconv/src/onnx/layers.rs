//! burn modules as ONNX nodes: convolutions, batch norms, linear layers, pools, and the PEDConv
//! layer lowered to standard operators without per-sample kernels.

use std::ops::Range;

use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, MaxPool2d};
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::tensor::backend::Backend;

use super::graph::{Graph, Window};
use crate::pedconv2d::PedConv2d;
use crate::Error;

/// `Conv` with the module's weight (initializer `{name}.weight`) and bias if it has one.
pub(super) fn conv2d<B: Backend>(g: &mut Graph, name: &str, x: &str, conv: &Conv2d<B>) -> String {
    let weight = g.weight(&format!("{name}.weight"), conv.weight.val(), None);
    let bias = conv
        .bias
        .as_ref()
        .map(|bias| g.weight(&format!("{name}.bias"), bias.val(), None));
    let window = Window {
        kernel: conv.kernel_size,
        stride: conv.stride,
        dilation: conv.dilation,
        padding: &conv.padding,
    };
    g.conv(name, x, &weight, bias.as_deref(), &window, conv.groups)
}

/// `BatchNormalization` with the module's statistics and epsilon, or `x` itself where the
/// batch norm has been folded into the convolution before it (`None`).
pub(super) fn batch_norm<B: Backend>(
    g: &mut Graph,
    name: &str,
    x: String,
    bn: &Option<BatchNorm<B>>,
) -> String {
    let Some(bn) = bn else {
        return x;
    };
    let parameters = [
        g.weight(&format!("{name}.weight"), bn.gamma.val(), None),
        g.weight(&format!("{name}.bias"), bn.beta.val(), None),
        g.weight(
            &format!("{name}.running_mean"),
            bn.running_mean.value(),
            None,
        ),
        g.weight(&format!("{name}.running_var"), bn.running_var.value(), None),
    ];
    g.batch_norm(
        name,
        &x,
        parameters.each_ref().map(String::as_str),
        bn.epsilon,
    )
}

/// `Gemm` by the output features `features` of a linear layer (all of them for a classifier,
/// one rank-1 term's share for an attention head), defining `output`. The weight stays in
/// burn's `[in, out]` layout (initializers `{name}.weight`, `{name}.bias`).
pub(super) fn linear<B: Backend>(
    g: &mut Graph,
    name: &str,
    output: &str,
    x: &str,
    linear: &Linear<B>,
    features: Range<usize>,
) -> String {
    let (start, count) = (features.start, features.len());
    let weight = linear.weight.val().narrow(1, start, count);
    let weight = g.weight(&format!("{name}.weight"), weight, None);
    let bias = linear.bias.as_ref().map(|bias| {
        g.weight(
            &format!("{name}.bias"),
            bias.val().narrow(0, start, count),
            None,
        )
    });
    g.gemm(output, x, &weight, bias.as_deref())
}

/// `MaxPool` of the module's window.
pub(super) fn max_pool(g: &mut Graph, name: &str, x: &str, pool: &MaxPool2d) -> String {
    let window = Window {
        kernel: pool.kernel_size,
        stride: pool.stride,
        dilation: pool.dilation,
        padding: &pool.padding,
    };
    g.max_pool(name, x, &window, pool.ceil_mode)
}

/// `AveragePool` of the module's window.
pub(super) fn average_pool(g: &mut Graph, name: &str, x: &str, pool: &AvgPool2d) -> String {
    let window = Window {
        kernel: pool.kernel_size,
        stride: pool.stride,
        dilation: [1, 1],
        padding: &pool.padding,
    };
    g.average_pool(name, x, &window, pool.ceil_mode, pool.count_include_pad)
}

/// A PEDConv layer in inference form (no noise, no decoder), for a dynamic batch, without
/// per-sample kernels. With the attention factors `a_in` `[N, C]`, `a_k` `[N, kh·kw]` and
/// `a_out` `[N, out]` of each rank-1 term (sigmoids of the heads' logits, computed from the
/// globally pooled input by the attention MLP), each term is
/// `a_out ⊙ conv(x ⊙ a_in, W ⊙ a_k) = a_out ⊙ (W · (im2col(x) ⊙ (a_in ⊗ a_k)))`:
///
/// - the columns `im2col(x)` `[N, C·kh·kw, Ho, Wo]` come from one convolution with fixed one-hot
///   kernels (`group = C`, the layer's stride, padding and dilation), channel `c·kh·kw + t`
///   holding tap `t` (row-major) of input channel `c`; for 1×1 kernels the columns are `x`;
/// - the scale `a_in ⊗ a_k`, `[N, C·kh·kw, 1, 1]` in the same channel order, multiplies them:
///   scaling the input by `a_in` and the columns by `a_k` at once (the columns of a zero-padded
///   input scale with it);
/// - a convolution by the base weight reshaped `[out, C·kh·kw, 1, 1]` (same element order)
///   contracts them (for 1×1 kernels: the layer's own convolution by `W`);
/// - `a_out` `[N, out, 1, 1]` scales the result.
///
/// Terms are summed, then the bias (if any) added. The one-hot kernels and the columns are
/// shared by the terms.
///
/// Fails, naming the layer, for grouped layers (`groups > 1`, which the paper's ResNets do not
/// have).
pub(super) fn pedconv2d<B: Backend>(
    g: &mut Graph,
    name: &str,
    x: &str,
    conv: &PedConv2d<B>,
) -> Result<String, Error> {
    if conv.groups != 1 {
        return Err(Error::Config {
            config: "PedConv2dConfig",
            message: format!(
                "{name} has groups = {}; the ONNX export supports PEDConv layers with groups = 1",
                conv.groups
            ),
        });
    }
    let [out, channels, kh, kw] = conv.weight.dims();
    let taps = kh * kw;
    let attn = &conv.attn;
    let pooled = g.global_average_pool(&format!("{name}.pool"), x);
    let pooled = g.flatten(&format!("{name}.pooled"), &pooled);
    let hidden_width = attn.fc_share.weight.dims()[1];
    let fc_share = format!("{name}.attn.fc_share");
    let hidden = linear(
        g,
        &fc_share,
        &fc_share,
        &pooled,
        &attn.fc_share,
        0..hidden_width,
    );
    let hidden = g.relu(&format!("{name}.attn.hidden"), &hidden);

    let window = Window {
        kernel: conv.kernel_size,
        stride: conv.stride,
        dilation: conv.dilation,
        padding: &conv.padding,
    };
    let pointwise = Window {
        kernel: [1, 1],
        stride: [1, 1],
        dilation: [1, 1],
        padding: &PaddingConfig2d::Valid,
    };
    let weight_name = format!("{name}.weight");
    let (columns, weight, window) = if taps == 1 {
        let weight = g.weight(&weight_name, conv.weight.val(), None);
        (x.to_string(), weight, window)
    } else {
        let kernels = im2col_kernels(g, channels, [kh, kw]);
        let columns = g.conv(
            &format!("{name}.columns"),
            x,
            &kernels,
            None,
            &window,
            channels,
        );
        let dims = [out, channels * taps, 1, 1];
        let weight = g.weight(&weight_name, conv.weight.val(), Some(&dims));
        (columns, weight, pointwise)
    };

    let mut output: Option<String> = None;
    for term in 0..conv.rank {
        let suffix = match conv.rank {
            1 => String::new(),
            _ => format!(".{term}"),
        };
        let mut factor = |head: &str, linear_layer: &Linear<B>, entries: usize, shape: &[i64]| {
            let head_name = format!("{name}.attn.{head}{suffix}");
            let logits = linear(
                g,
                &head_name,
                &head_name,
                &hidden,
                linear_layer,
                term * entries..(term + 1) * entries,
            );
            let factor = g.sigmoid(&format!("{name}.{head}{suffix}.sigmoid"), &logits);
            g.reshape(&format!("{name}.{head}{suffix}.reshaped"), &factor, shape)
        };
        let (c, k, o) = (channels as i64, taps as i64, out as i64);
        let a_in = factor("fc_inp", &attn.fc_inp, channels, &[0, c, 1]);
        let a_k = factor("fc_k", &attn.fc_k, taps, &[0, 1, k]);
        let a_out = factor("fc_oup", &attn.fc_oup, out, &[0, o, 1, 1]);
        let scale = g.mul(&format!("{name}.scale{suffix}"), &a_in, &a_k);
        let scale = g.reshape(
            &format!("{name}.scale{suffix}.4d"),
            &scale,
            &[0, c * k, 1, 1],
        );
        let scaled = g.mul(&format!("{name}.scaled{suffix}"), &columns, &scale);
        let y = g.conv(
            &format!("{name}.conv{suffix}"),
            &scaled,
            &weight,
            None,
            &window,
            1,
        );
        let y = g.mul(&format!("{name}.term{suffix}"), &y, &a_out);
        output = Some(match output {
            None => y,
            Some(sum) => g.add(&format!("{name}.sum{suffix}"), &sum, &y),
        });
    }
    let output = output.ok_or_else(|| Error::Config {
        config: "PedConv2dConfig",
        message: format!("{name} has rank 0"),
    })?;
    Ok(match &conv.bias {
        Some(bias) => {
            let bias = g.weight(&format!("{name}.bias"), bias.val(), Some(&[1, out, 1, 1]));
            g.add(&format!("{name}.biased"), &output, &bias)
        }
        None => output,
    })
}

/// The one-hot kernels that turn a grouped convolution into an im2col: `[C·K, 1, kh, kw]`
/// (`K = kh·kw`), output channel `c·K + t` copying tap `t` (row-major) of input channel `c`.
/// One initializer per channel count and kernel size, shared by the layers that have them.
pub(super) fn im2col_kernels(g: &mut Graph, channels: usize, [kh, kw]: [usize; 2]) -> String {
    let name = format!("im2col.{channels}x{kh}x{kw}");
    if !g.has(&name) {
        let taps = kh * kw;
        let mut values = vec![0.0; channels * taps * taps];
        for row in 0..channels * taps {
            values[row * taps + row % taps] = 1.0;
        }
        g.constant(&name, &[channels * taps, 1, kh, kw], &values);
    }
    name
}
