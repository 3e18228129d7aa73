//! Configuration errors, input errors, and the parameter and multiply-accumulate counts.

use crate::common;

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::tensor::Tensor;
use common::{normal, TestBackend};
use pedconv::resnet::{ResNetConfig, ResNetDepth};
use pedconv::{AttentionNoise, ComputePath, PedConv2d, PedConv2dConfig};

fn error_of(config: PedConv2dConfig) -> String {
    match config.try_init::<TestBackend>(&Default::default()) {
        Ok(_) => panic!("{config:?} was accepted"),
        Err(error) => error.to_string(),
    }
}

/// Invalid configurations are errors of the configuration kind, naming the configuration, the
/// field and its value; `try_init` returns them where `init` would panic.
#[test]
fn configuration_errors_are_of_the_config_kind() {
    let layer = PedConv2dConfig::new([8, 16], [3, 3])
        .with_rank(0)
        .try_init::<TestBackend>(&Default::default())
        .unwrap_err();
    assert!(matches!(
        layer,
        pedconv::Error::Config {
            config: "PedConv2dConfig",
            ..
        }
    ));
    for (config, expected) in [
        (
            ResNetConfig::new(ResNetDepth::R18).with_width(0.0),
            "invalid ResNetConfig: width must be positive, got 0",
        ),
        (
            ResNetConfig::new(ResNetDepth::R50).with_num_classes(0),
            "invalid ResNetConfig: num_classes must be positive, got 0",
        ),
    ] {
        let error = config
            .try_init::<TestBackend>(&Default::default())
            .unwrap_err();
        assert_eq!(error.to_string(), expected);
        assert!(std::error::Error::source(&error).is_none());
    }
}

#[test]
fn invalid_configurations_are_rejected_with_the_values() {
    let base = || PedConv2dConfig::new([8, 16], [3, 3]);
    for (config, expected) in [
        (
            base().with_groups(3),
            "channels must be divisible by groups, got channels=[8, 16] and groups=3",
        ),
        (
            PedConv2dConfig::new([0, 16], [3, 3]),
            "channels must be positive, got [0, 16]",
        ),
        (
            PedConv2dConfig::new([8, 16], [3, 0]),
            "kernel_size must be positive, got [3, 0]",
        ),
        (
            base().with_stride([0, 1]),
            "stride must be positive, got [0, 1]",
        ),
        (
            base().with_dilation([1, 0]),
            "dilation must be positive, got [1, 0]",
        ),
        (base().with_groups(0), "groups must be positive, got 0"),
        (
            base().with_reduction(0),
            "reduction must be positive, got 0",
        ),
        (base().with_rank(0), "rank must be positive, got 0"),
        (
            base().with_noise_std(-0.1),
            "noise_std must be finite and non-negative, got -0.1",
        ),
        (
            base().with_noise_std(f64::NAN),
            "noise_std must be finite and non-negative, got NaN",
        ),
    ] {
        let message = error_of(config);
        assert!(
            message.contains(expected),
            "`{message}` does not say `{expected}`"
        );
    }
}

#[test]
#[should_panic(expected = "invalid PedConv2dConfig: groups must be positive, got 0")]
fn init_panics_with_the_same_message() {
    PedConv2dConfig::new([8, 16], [3, 3])
        .with_groups(0)
        .init::<TestBackend>(&Default::default());
}

fn layer() -> PedConv2d<TestBackend> {
    common::in_test_precision(PedConv2dConfig::new([8, 16], [3, 3]).init(&Default::default()))
}

#[test]
#[should_panic(expected = "PedConv2d expects 8 input channels, got an input of shape [2, 4, 6, 6]")]
fn wrong_input_channels_are_named() {
    layer().forward(normal([2, 4, 6, 6]));
}

#[test]
#[should_panic(expected = "spans 3 along width, more than the padded input (2 + 0 + 0 = 2)")]
fn kernel_larger_than_the_padded_input_is_named() {
    layer().forward(normal([2, 8, 6, 2]));
}

#[test]
#[should_panic(
    expected = "AttentionNoise::output has shape [2, 15], the layer's output logits have shape [2, 16]"
)]
fn wrong_noise_shape_is_named() {
    let noise = AttentionNoise::<TestBackend> {
        input: normal([2, 8]),
        output: normal([2, 15]),
        kernel: normal([2, 9]),
    };
    layer().forward_train_with_noise(normal([2, 8, 6, 6]), noise);
}

#[test]
#[should_panic(
    expected = "AttentionFactors::kernel has shape [2, 1, 4], the layer needs [batch, rank, entries] = [2, 1, 9]"
)]
fn wrong_factor_shape_is_named() {
    let factors = pedconv::AttentionFactors::<TestBackend> {
        input: normal([2, 1, 8]),
        output: normal([2, 1, 16]),
        kernel: normal([2, 1, 4]),
    };
    layer().forward_with_factors(normal([2, 8, 6, 6]), &factors);
}

#[test]
fn hidden_width_is_in_over_reduction_and_never_zero() {
    let config = |channels_in| PedConv2dConfig::new([channels_in, 8], [3, 3]);
    assert_eq!(config(64).hidden_width(), 4);
    assert_eq!(config(48).hidden_width(), 3);
    assert_eq!(config(8).hidden_width(), 1);
    assert_eq!(config(64).with_reduction(4).hidden_width(), 16);
    let narrow = config(8).init::<TestBackend>(&Default::default());
    assert_eq!(narrow.attn.fc_share.weight.dims(), [8, 1]);
}

/// The counts from the configuration equal the parameters of the module it builds.
#[test]
fn parameter_counts_match_the_module() {
    for config in [
        PedConv2dConfig::new([64, 64], [3, 3]),
        PedConv2dConfig::new([64, 256], [1, 1]).with_bias(true),
        PedConv2dConfig::new([32, 16], [3, 3])
            .with_groups(4)
            .with_rank(2),
        PedConv2dConfig::new([8, 8], [5, 3]).with_info_max_decoder(false),
    ] {
        let counts = config.parameter_counts();
        let layer = config.init::<TestBackend>(&Default::default());
        assert_eq!(counts.total(), layer.num_params(), "{config:?}");
        assert_eq!(
            counts.base,
            layer.weight.num_params() + layer.bias.num_params(),
            "{config:?}"
        );
        let decoder = layer.attn.decoder.num_params();
        assert_eq!(counts.decoder, decoder, "{config:?}");
        assert_eq!(
            counts.attention,
            layer.attn.num_params() - decoder,
            "{config:?}"
        );
    }
}

/// Every dynamic convolution of the reference ResNet-18, ResNet-50 and ResNet-50d (the golden
/// `*_ref_keys.json` files: `state_dict` key → shape) has exactly the attention and decoder
/// parameters that our configuration counts, and the sums over ResNet-18 and ResNet-50 are the
/// reference's totals from the golden README.
#[test]
fn counts_equal_the_reference_models() {
    for (file, attention_total, decoder_total) in [
        ("resnet18_ref_keys.json", Some(227_608), Some(223_624)),
        ("resnet50_ref_keys.json", Some(3_017_064), Some(2_994_232)),
        ("resnet50d_ref_keys.json", None, None),
    ] {
        let path = common::golden_dir().join(file);
        let keys: std::collections::BTreeMap<String, Vec<usize>> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let size = |key: &str| keys[key].iter().product::<usize>();
        let (mut attention_sum, mut decoder_sum, mut layers) = (0, 0, 0);
        for conv in keys
            .keys()
            .filter_map(|k| k.strip_suffix(".attn.fc_share.weight"))
        {
            let [out, group_in, kh, kw] = keys[&format!("{conv}.weight")][..] else {
                panic!("{conv}.weight is not a conv weight")
            };
            let channels_in = keys[&format!("{conv}.attn.fc_share.weight")][1];
            let counts = PedConv2dConfig::new([channels_in, out], [kh, kw])
                .with_groups(channels_in / group_in)
                .parameter_counts();
            let sum = |names: &[&str]| -> usize {
                names
                    .iter()
                    .flat_map(|n| ["weight", "bias"].map(|p| size(&format!("{conv}.attn.{n}.{p}"))))
                    .sum()
            };
            let attention = sum(&["fc_share", "fc_inp", "fc_oup", "fc_k"]);
            let decoder = sum(&["decoder.0", "decoder.2"]);
            assert_eq!(
                counts.base,
                size(&format!("{conv}.weight")),
                "{file}: {conv}"
            );
            assert_eq!(counts.attention, attention, "{file}: {conv} attention");
            assert_eq!(counts.decoder, decoder, "{file}: {conv} decoder");
            attention_sum += attention;
            decoder_sum += decoder;
            layers += 1;
        }
        assert!(layers > 0, "{file} has no dynamic convolution");
        if let (Some(attention), Some(decoder)) = (attention_total, decoder_total) {
            assert_eq!((attention_sum, decoder_sum), (attention, decoder), "{file}");
        }
    }
}

/// The convolution's multiply-accumulates are the static convolution's: out elements times the
/// kernel volume, with the output size taken from an actual forward.
#[test]
fn conv_macs_follow_the_output_size() {
    for (config, input) in [
        (
            PedConv2dConfig::new([8, 16], [3, 3]).with_stride([2, 2]),
            [9, 7],
        ),
        (
            PedConv2dConfig::new([8, 8], [3, 3])
                .with_groups(2)
                .with_padding(PaddingConfig2d::Same),
            [6, 5],
        ),
        (
            PedConv2dConfig::new([4, 4], [5, 5])
                .with_dilation([2, 2])
                .with_compute_path(ComputePath::Factorized),
            [12, 12],
        ),
    ] {
        let layer = config.init::<TestBackend>(&Default::default());
        let x: Tensor<TestBackend, 4> = Tensor::zeros(
            [1, config.channels[0], input[0], input[1]],
            &Default::default(),
        );
        let [_, out, ho, wo] = layer.forward(x).dims();
        let kernel_volume =
            config.channels[0] / config.groups * config.kernel_size[0] * config.kernel_size[1];
        assert_eq!(
            config.macs(input).conv,
            (out * ho * wo * kernel_volume) as u64,
            "{config:?}"
        );
    }
}
