//! Importing the paper's PyTorch checkpoints: the golden ResNet-18 reproduces the reference's
//! logits; bad files and mismatched models give errors that name the file and the keys.

use crate::common;

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use common::{assert_close, golden_dir, network_tolerance, TestBackend};
use pedconv::import::{ImportError, PytorchCheckpoint};
use pedconv::resnet::{ImportMode, ResNetConfig, ResNetDepth};
use safetensors::SafeTensors;

const CHECKPOINT: &str = "resnet18_w0.25_c10_ref.pth.tar";

/// The golden checkpoint's architecture: `('resnet18', 'fanin', 10, 0.25)` in its `arch` entry.
fn golden_config() -> ResNetConfig {
    ResNetConfig::new(ResNetDepth::R18)
        .with_width(0.25)
        .with_num_classes(10)
        .dynamic()
}

/// The golden checkpoint's input and the reference's logits.
fn golden_io() -> (Tensor<TestBackend, 4>, Tensor<TestBackend, 2>) {
    inputs_and_logits(golden_dir().join("resnet18_w0.25_c10_ref_io.safetensors"))
}

/// The input `x` and the logits of a safetensors file of inputs and outputs.
fn inputs_and_logits(path: PathBuf) -> (Tensor<TestBackend, 4>, Tensor<TestBackend, 2>) {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensor = |name: &str| {
        let view = file.tensor(name).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        TensorData::new(values, view.shape().to_vec())
    };
    let device = Default::default();
    (
        Tensor::from_data(tensor("x"), &device),
        Tensor::from_data(tensor("logits"), &device),
    )
}

/// float32 through 18 layers: the reference and burn sum in different orders, so logits differ by
/// a few ulps per layer, compounding to about 1e-5 of their scale; 1e-4 leaves a margin while a
/// single wrong weight or statistic moves them by far more. With CUDA's TF32 products:
/// `common::TF32_NETWORK`.
#[test]
fn golden_checkpoint_reproduces_the_reference_logits() {
    let config = golden_config();
    let model = config
        .init_from_pytorch::<TestBackend>(
            golden_dir().join(CHECKPOINT),
            ImportMode::Exact,
            &Default::default(),
        )
        .unwrap_or_else(|error| panic!("{error}"));
    let (x, expected) = golden_io();
    let logits = model.forward(x);
    assert_close("logits", &logits, &expected, network_tolerance(1e-4));
}

#[test]
fn every_key_of_the_reference_maps_onto_the_model() {
    let checkpoint = PytorchCheckpoint::read(golden_dir().join(CHECKPOINT)).unwrap();
    let keys: std::collections::BTreeMap<String, Vec<usize>> = serde_json::from_slice(
        &std::fs::read(golden_dir().join("resnet18_w0.25_c10_ref_keys.json")).unwrap(),
    )
    .unwrap();
    let read: Vec<(&String, Vec<usize>)> = checkpoint
        .tensors()
        .iter()
        .map(|(k, v)| (k, v.shape.to_vec()))
        .collect();
    assert_eq!(
        read.len(),
        keys.len(),
        "the reader finds every state_dict entry"
    );
    for (key, shape) in read {
        assert_eq!(Some(&shape), keys.get(key), "{key}");
    }
}

/// The import problem of a refused import: the crate's error is of the import kind, and keeps
/// the problem as its source.
fn error_of(result: Result<impl Sized, pedconv::Error>) -> ImportError {
    match result {
        Ok(_) => panic!("the import was accepted"),
        Err(pedconv::Error::Import(error)) => error,
        Err(other) => panic!("not an import error: {other}"),
    }
}

fn load(path: PathBuf, config: &ResNetConfig, mode: ImportMode) -> Result<(), pedconv::Error> {
    config
        .init_from_pytorch::<TestBackend>(path, mode, &Default::default())
        .map(|_| ())
}

#[test]
fn another_architecture_is_reported_key_by_key() {
    let path = golden_dir().join(CHECKPOINT);
    // Width 0.5 instead of 0.25: every shape differs.
    let wider = golden_config().with_width(0.5);
    let message = error_of(load(path.clone(), &wider, ImportMode::Exact)).to_string();
    assert!(message.contains(CHECKPOINT), "{message}");
    assert!(
        message.contains("module.conv1.weight: the model expects shape [32, 3, 7, 7], the file has [16, 3, 7, 7]")
            || message.contains("conv1.weight: the model expects shape [32, 3, 7, 7], the file has [16, 3, 7, 7]"),
        "{message}"
    );
    // A static model: the attention branches are not in it.
    let message = error_of(load(
        path.clone(),
        &golden_config().with_pedconv(None),
        ImportMode::Exact,
    ))
    .to_string();
    assert!(
        message.contains("layer1.0.conv1.attn.fc_share.weight: not in the model"),
        "{message}"
    );
    // ResNet-34: its extra blocks are missing from the file.
    let deeper = ResNetConfig {
        depth: ResNetDepth::R34,
        ..golden_config()
    };
    let message = error_of(load(path, &deeper, ImportMode::Exact)).to_string();
    assert!(
        message.contains("layer1.2.conv1.weight: missing from the file"),
        "{message}"
    );
}

#[test]
fn base_weights_mode_allows_missing_attention_only() {
    // A deeper model than the file: its extra blocks' attention branches may stay fresh, their
    // base weights may not.
    let path = golden_dir().join(CHECKPOINT);
    let deeper = ResNetConfig {
        depth: ResNetDepth::R34,
        ..golden_config()
    };
    let message = error_of(load(path, &deeper, ImportMode::BaseWeights)).to_string();
    assert!(
        message.contains("layer1.2.conv1.weight: missing from the file"),
        "{message}"
    );
    assert!(!message.contains("layer1.2.conv1.attn"), "{message}");
}

fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pedconv-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bad_files_give_clear_errors() {
    let config = golden_config();
    let missing = golden_dir().join("no-such-checkpoint.pth");
    let error = error_of(load(missing, &config, ImportMode::Exact));
    assert!(matches!(error, ImportError::Io { .. }), "{error}");
    assert!(
        error.to_string().contains("no-such-checkpoint.pth"),
        "{error}"
    );

    let original = std::fs::read(golden_dir().join(CHECKPOINT)).unwrap();
    let truncated = scratch_file("truncated.pth.tar", &original[..original.len() / 2]);
    let error = error_of(load(truncated, &config, ImportMode::Exact));
    assert!(matches!(error, ImportError::Format { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("truncated.pth.tar is not a readable PyTorch checkpoint"),
        "{error}"
    );

    let text = scratch_file("notes.pth", b"this is not a checkpoint");
    let error = error_of(load(text, &config, ImportMode::Exact));
    assert!(
        error
            .to_string()
            .contains("notes.pth is not a readable PyTorch checkpoint: not a zip archive"),
        "{error}"
    );

    // Corrupt the pickle program: flip bytes in the middle of data.pkl's stored data.
    let mut corrupt = original.clone();
    let at = find(&corrupt, b"module.layer2.0.conv1.weight").expect("a key in the pickle");
    corrupt[at - 6..at + 10].fill(0xfe);
    let corrupt = scratch_file("corrupt.pth.tar", &corrupt);
    let error = error_of(load(corrupt, &config, ImportMode::Exact));
    assert!(matches!(error, ImportError::Format { .. }), "{error}");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The exported safetensors file has the reference's keys and shapes (the golden key file, less
/// `num_batches_tracked` and the `module.` prefix) and the checkpoint's values.
#[test]
fn safetensors_export_has_the_reference_layout() {
    let config = golden_config();
    let checkpoint = PytorchCheckpoint::read(golden_dir().join(CHECKPOINT)).unwrap();
    let model = config
        .init::<TestBackend>(&Default::default())
        .load_pytorch(&checkpoint, ImportMode::Exact)
        .unwrap();
    let path = scratch_file("export.safetensors", b"");
    model.export_safetensors(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let exported = SafeTensors::deserialize(&bytes).unwrap();
    let mut expected: Vec<String> = checkpoint
        .tensors()
        .keys()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .map(|k| k.trim_start_matches("module.").to_string())
        .collect();
    expected.sort();
    let mut names: Vec<String> = exported.names().into_iter().map(str::to_string).collect();
    names.sort();
    assert_eq!(names, expected);
    for key in [
        "fc.weight",
        "layer2.0.downsample.1.running_var",
        "layer3.1.conv2.attn.decoder.0.weight",
    ] {
        let view = exported.tensor(key).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let original = &checkpoint.tensors()[&format!("module.{key}")];
        assert_eq!(view.shape(), &original.shape[..], "{key}");
        assert_eq!(values, original.to_vec::<f32>().unwrap(), "{key}");
    }
}

/// burn's record format keeps every value: a saved and reloaded model gives the same logits.
#[test]
fn burn_record_round_trip() {
    let config = golden_config();
    let device = Default::default();
    let model = config
        .init_from_pytorch::<TestBackend>(golden_dir().join(CHECKPOINT), ImportMode::Exact, &device)
        .unwrap();
    let path = scratch_file("record", b"");
    model.save_record(&path).unwrap();
    let reloaded = config
        .init::<TestBackend>(&device)
        .load_record(&path, &device)
        .unwrap();
    let (x, _) = golden_io();
    let x = x.narrow(0, 0, 1);
    assert_close(
        "reloaded logits",
        &reloaded.forward(x.clone()),
        &model.forward(x),
        0.0,
    );
}

/// A freshly built model, whose parameters burn creates only when first read, saves the values
/// it computes with (not those of a clone that draws its own).
#[test]
fn a_fresh_model_saves_its_own_weights() {
    let config = golden_config();
    let device = Default::default();
    let model = config.init::<TestBackend>(&device);
    let path = scratch_file("fresh-record", b"");
    model.save_record(&path).unwrap();
    let reloaded = config
        .init::<TestBackend>(&device)
        .load_record(&path, &device)
        .unwrap();
    let x = golden_io().0.narrow(0, 0, 1);
    assert_close(
        "reloaded logits",
        &reloaded.forward(x.clone()),
        &model.forward(x),
        0.0,
    );
}

/// torchvision's layout (a bare `state_dict` of a static ResNet, no `module.` prefix) loads into a
/// static model exactly, and into a PEDConv model as its base weights.
#[test]
fn static_weights_load_into_static_and_pedconv_models() {
    let golden = PytorchCheckpoint::read(golden_dir().join(CHECKPOINT)).unwrap();
    let static_part: std::collections::BTreeMap<String, TensorData> = golden
        .tensors()
        .iter()
        .filter(|(k, _)| !k.contains(".attn."))
        .map(|(k, v)| (k.trim_start_matches("module.").to_string(), v.clone()))
        .collect();
    let checkpoint = PytorchCheckpoint::from_tensors("torchvision-layout.pth", static_part);
    let device = Default::default();
    let static_config = golden_config().with_pedconv(None);
    static_config
        .init::<TestBackend>(&device)
        .load_pytorch(&checkpoint, ImportMode::Exact)
        .unwrap_or_else(|e| panic!("{e}"));
    let config = golden_config();
    let error = error_of(
        config
            .init::<TestBackend>(&device)
            .load_pytorch(&checkpoint, ImportMode::Exact),
    );
    assert!(
        error
            .to_string()
            .contains("layer1.0.conv1.attn.fc_share.weight: missing from the file"),
        "{error}"
    );
    let model = config
        .init::<TestBackend>(&device)
        .load_pytorch(&checkpoint, ImportMode::BaseWeights)
        .unwrap_or_else(|e| panic!("{e}"));
    let pedconv::resnet::ConvLayer::Dynamic(conv) = &model.layer1[0].conv1 else {
        panic!("layer1.0.conv1 is dynamic")
    };
    assert_eq!(
        conv.weight.val().into_data().to_vec::<f32>().unwrap(),
        golden.tensors()["module.layer1.0.conv1.weight"]
            .to_vec::<f32>()
            .unwrap()
    );
}

/// torchvision's own static ResNet-18 (a quarter of the channels, random weights and batch-norm
/// statistics; `tests/fixtures/torchvision/make_resnet18.py`): its architecture read off the
/// file, its evaluation-mode logits reproduced to the tolerance of the golden checkpoint's.
#[test]
fn torchvision_resnet18_reproduces_torchvision_logits() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/torchvision");
    let checkpoint =
        PytorchCheckpoint::read(dir.join("resnet18_w0.25_c10_torchvision.pth")).unwrap();
    let config = ResNetConfig::from_state_dict(&checkpoint).unwrap();
    assert_eq!(
        config.to_string(),
        golden_config().with_pedconv(None).to_string()
    );
    let model = config
        .init::<TestBackend>(&Default::default())
        .load_pytorch(&checkpoint, ImportMode::Exact)
        .unwrap_or_else(|e| panic!("{e}"));
    let (x, expected) =
        inputs_and_logits(dir.join("resnet18_w0.25_c10_torchvision_io.safetensors"));
    assert_close(
        "logits",
        &model.forward(x),
        &expected,
        network_tolerance(1e-4),
    );
}

/// The golden checkpoint's architecture is read off its keys and shapes.
#[test]
fn architecture_is_inferred_from_the_state_dict() {
    let checkpoint = PytorchCheckpoint::read(golden_dir().join(CHECKPOINT)).unwrap();
    let inferred = ResNetConfig::from_state_dict(&checkpoint).unwrap();
    let expected = golden_config();
    assert_eq!(inferred.depth, expected.depth);
    assert_eq!(inferred.variant, expected.variant);
    assert_eq!(inferred.width, expected.width);
    assert_eq!(inferred.num_classes, expected.num_classes);
    let settings = inferred.pedconv.as_ref().expect("PEDConv");
    assert_eq!((settings.rank, settings.info_max_decoder), (1, true));
    // Models built from the inferred configuration load the file exactly.
    inferred
        .init::<TestBackend>(&Default::default())
        .load_pytorch(&checkpoint, ImportMode::Exact)
        .unwrap_or_else(|e| panic!("{e}"));
}
