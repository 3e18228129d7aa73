//! The ResNet as an ONNX graph, module by module in the order of its forward pass.

use burn::tensor::backend::Backend;

use super::graph::{Dim, Graph};
use super::layers::{average_pool, batch_norm, conv2d, linear, max_pool, pedconv2d};
use super::proto::GraphProto;
use crate::resnet::{Block, ConvLayer, Downsample, ResNet};
use crate::Error;

/// The graph input's name: images `[N, 3, H, W]` (the stem's input channels).
const INPUT: &str = "input";
/// The graph output's name: `[N, classes]`.
const OUTPUT: &str = "logits";

/// The graph of `model`. Values and initializers are named after the modules (`layer1.0.conv1`,
/// `layer1.0.bn1.running_mean`, …).
pub(super) fn resnet_graph<B: Backend>(model: &ResNet<B>) -> Result<GraphProto, Error> {
    if model.avgpool.output_size != [1, 1] {
        return Err(Error::Shape(format!(
            "the final pool's output size is {:?}; the ONNX export supports a global pool ([1, 1])",
            model.avgpool.output_size
        )));
    }
    let mut g = Graph::default();
    let mut x = INPUT.to_string();
    let stem = [
        (Some(&model.conv1), &model.bn1),
        (model.conv2.as_ref(), &model.bn2),
        (model.conv3.as_ref(), &model.bn3),
    ];
    for (index, (conv, bn)) in stem.into_iter().enumerate() {
        if let Some(conv) = conv {
            let n = index + 1;
            x = conv2d(&mut g, &format!("conv{n}"), &x, conv);
            x = batch_norm(&mut g, &format!("bn{n}"), x, bn);
            x = g.relu(&format!("relu{n}"), &x);
        }
    }
    x = max_pool(&mut g, "maxpool", &x, &model.maxpool);
    let stages = [&model.layer1, &model.layer2, &model.layer3, &model.layer4];
    for (stage, blocks) in stages.into_iter().enumerate() {
        for (index, block) in blocks.iter().enumerate() {
            x = residual_block(&mut g, &format!("layer{}.{index}", stage + 1), &x, block)?;
        }
    }
    let pooled = g.global_average_pool("avgpool", &x);
    let features = g.flatten("flatten", &pooled);
    let classes = model.fc.weight.dims()[1];
    linear(&mut g, "fc", OUTPUT, &features, &model.fc, 0..classes);
    let image = [
        Dim::Symbolic("N"),
        Dim::Fixed(model.conv1.weight.dims()[1]),
        Dim::Symbolic("H"),
        Dim::Symbolic("W"),
    ];
    Ok(g.finish(
        "resnet",
        &[(INPUT, &image)],
        &[(OUTPUT, &[Dim::Symbolic("N"), Dim::Fixed(classes)])],
    ))
}

/// `relu(bn_n(conv_n(… relu(bn1(conv1(x))) …)) + shortcut(x))`.
fn residual_block<B: Backend>(
    g: &mut Graph,
    name: &str,
    x: &str,
    block: &Block<B>,
) -> Result<String, Error> {
    let shortcut = match &block.downsample {
        Some(downsample) => shortcut(g, &format!("{name}.downsample"), x, downsample),
        None => x.to_string(),
    };
    let layers = [(&block.conv1, &block.bn1), (&block.conv2, &block.bn2)]
        .into_iter()
        .chain(block.conv3.as_ref().map(|conv3| (conv3, &block.bn3)));
    let mut y = x.to_string();
    for (index, (conv, bn)) in layers.enumerate() {
        if index > 0 {
            y = g.relu(&format!("{name}.relu{index}"), &y);
        }
        let n = index + 1;
        let conv_name = format!("{name}.conv{n}");
        y = match conv {
            ConvLayer::Static(conv) => conv2d(g, &conv_name, &y, conv),
            ConvLayer::Dynamic(conv) => pedconv2d(g, &conv_name, &y, conv)?,
        };
        y = batch_norm(g, &format!("{name}.bn{n}"), y, bn);
    }
    let sum = g.add(&format!("{name}.add"), &y, &shortcut);
    Ok(g.relu(&format!("{name}.relu"), &sum))
}

/// `bn(conv(pool(x)))`, the convolution strided.
fn shortcut<B: Backend>(g: &mut Graph, name: &str, x: &str, downsample: &Downsample<B>) -> String {
    let x = match &downsample.pool {
        Some(pool) => average_pool(g, &format!("{name}.pool"), x, pool),
        None => x.to_string(),
    };
    let y = conv2d(g, &format!("{name}.conv"), &x, &downsample.conv);
    batch_norm(g, &format!("{name}.bn"), y, &downsample.bn)
}
