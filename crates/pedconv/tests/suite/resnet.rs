//! The ResNet family: parameter counts against the reference's, multiply-accumulates against the
//! published figures, and the forward passes.

use crate::common;

use burn::module::Module;
use burn::tensor::Tensor;
use common::{
    assert_close, in_test_precision, normal, precision, tensor, to_f64, TestAutodiff, TestBackend,
};
use pedconv::resnet::{ResNetConfig, ResNetDepth, ResNetVariant};

/// The reference's counts, from the golden README (PyTorch's `numel` over its models).
#[test]
fn parameter_counts_equal_the_reference() {
    let r18 = ResNetConfig::resnet18().dynamic().parameter_counts();
    assert_eq!(r18.total(), 12_140_744);
    assert_eq!(r18.attention, 227_608);
    assert_eq!(r18.decoder, 223_624);
    assert_eq!(r18.inference(), 11_917_120);
    let r50 = ResNetConfig::resnet50().dynamic().parameter_counts();
    assert_eq!(r50.total(), 31_568_328);
    assert_eq!(r50.attention, 3_017_064);
    assert_eq!(r50.decoder, 2_994_232);
    assert_eq!(r50.inference(), 28_574_096);
    // torchvision's static ResNet-18 and ResNet-50.
    assert_eq!(
        ResNetConfig::resnet18().parameter_counts().total(),
        11_689_512
    );
    assert_eq!(
        ResNetConfig::resnet50().parameter_counts().total(),
        25_557_032
    );
}

/// torchvision's published figures: 1.81 GFLOPS (multiply-accumulates) for ResNet-18 and 4.09
/// for ResNet-50, at 224×224.
#[test]
fn static_macs_match_the_published_figures() {
    let r18 = ResNetConfig::resnet18().macs([224, 224]).inference() as f64 / 1e9;
    let r50 = ResNetConfig::resnet50().macs([224, 224]).inference() as f64 / 1e9;
    assert!((r18 - 1.81).abs() < 0.01, "ResNet-18: {r18} GMACs");
    assert!((r50 - 4.09).abs() < 0.01, "ResNet-50: {r50} GMACs");
    let dynamic = ResNetConfig::resnet18().dynamic().macs([224, 224]);
    assert_eq!(
        dynamic.conv as f64 / 1e9,
        r18,
        "PEDConv keeps the static arithmetic"
    );
    assert!(dynamic.attention > 0 && dynamic.modulation > 0);
}

/// Σ numel of a golden key file's entries (`state_dict` key → shape), with and without the
/// batch norms' running statistics (which burn counts as module floats, not as parameters).
fn key_file_sizes(file: &str) -> (usize, usize) {
    let path = common::golden_dir().join(file);
    let keys: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let numel = |filter: &dyn Fn(&str) -> bool| -> usize {
        keys.iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked") && filter(k))
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    };
    (numel(&|_| true), numel(&|k| !k.contains(".running_")))
}

/// The configuration's counts and the built model equal the reference's `state_dict` sizes.
#[test]
fn counts_and_models_match_the_reference_key_files() {
    let r18_small = ResNetConfig::new(ResNetDepth::R18)
        .with_width(0.25)
        .with_num_classes(10)
        .dynamic();
    let (floats, params) = key_file_sizes("resnet18_w0.25_c10_ref_keys.json");
    assert_eq!(r18_small.parameter_counts().total(), params);
    assert_eq!(
        r18_small
            .init::<TestBackend>(&Default::default())
            .num_params(),
        floats
    );
    for (file, config) in [
        ("resnet18_ref_keys.json", ResNetConfig::resnet18().dynamic()),
        ("resnet50_ref_keys.json", ResNetConfig::resnet50().dynamic()),
        (
            "resnet50d_ref_keys.json",
            ResNetConfig::resnet50d().dynamic(),
        ),
    ] {
        assert_eq!(
            config.parameter_counts().total(),
            key_file_sizes(file).1,
            "{file}"
        );
    }
}

#[test]
fn forward_shapes_and_training_losses() {
    let device = Default::default();
    for config in [
        ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.125)
            .with_num_classes(7),
        ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.125)
            .with_num_classes(7)
            .dynamic(),
        ResNetConfig::new(ResNetDepth::R50)
            .with_variant(ResNetVariant::D)
            .with_width(0.0625)
            .with_num_classes(7)
            .dynamic(),
    ] {
        let model = config.init::<TestAutodiff>(&device);
        let images: Tensor<TestAutodiff, 4> =
            normal::<TestAutodiff, 4>([2, 3, 64, 48]).cast(burn::tensor::DType::F32);
        assert_eq!(model.forward(images.clone()).dims(), [2, 7], "{config:?}");
        let out = model.forward_train(images);
        assert_eq!(out.logits.dims(), [2, 7]);
        assert_eq!(
            out.info_max_loss.is_some(),
            config.pedconv.is_some(),
            "{config:?}"
        );
    }
}

/// A classic shortcut's strided 1×1 convolution, against the formulas evaluated by hand:
/// `y[b,o,i,j] = Σ_c W[o,c] x[b,c,s·i,s·j]` and, for the loss `Σ y ⊙ r`,
/// `∂x[b,c,h,w] = Σ_o W[o,c] r[b,o,h/s,w/s]` where `s` divides `h` and `w`, 0 elsewhere.
/// (burn 0.21's own strided 1×1 convolution gets this gradient wrong on wgpu.) An odd input
/// side checks the last, partial window.
#[test]
fn classic_shortcut_convolution_and_its_gradient() {
    let device = Default::default();
    let model = in_test_precision(
        ResNetConfig::new(ResNetDepth::R18)
            .with_width(0.125)
            .init::<TestAutodiff>(&device),
    );
    let shortcut = model.layer2[0].downsample.as_ref().expect("a shortcut");
    let [cout, cin, _, _] = shortcut.conv.weight.dims();
    let (n, h, w, s) = (2usize, 7usize, 6usize, 2usize);
    let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
    let x = normal::<TestAutodiff, 4>([n, cin, h, w]).require_grad();
    let r = normal::<TestAutodiff, 4>([n, cout, ho, wo]);
    let y = shortcut.convolve(x.clone());
    let grads = (y.clone() * r.clone()).sum().backward();
    let dx = x.grad(&grads).expect("an input gradient");

    let (xv, rv) = (to_f64(&x), to_f64(&r));
    let wv = to_f64(&shortcut.conv.weight.val());
    let mut y_expected = vec![0.0; n * cout * ho * wo];
    let mut dx_expected = vec![0.0; n * cin * h * w];
    for b in 0..n {
        for o in 0..cout {
            for c in 0..cin {
                let weight = wv[o * cin + c];
                for i in 0..ho {
                    for j in 0..wo {
                        let at_x = ((b * cin + c) * h + s * i) * w + s * j;
                        let at_y = ((b * cout + o) * ho + i) * wo + j;
                        y_expected[at_y] += weight * xv[at_x];
                        dx_expected[at_x] += weight * rv[at_y];
                    }
                }
            }
        }
    }
    let tolerance = precision().tolerance;
    assert_close("y", &y, &tensor(y_expected, [n, cout, ho, wo]), tolerance);
    assert_close("dx", &dx, &tensor(dx_expected, [n, cin, h, w]), tolerance);
}
