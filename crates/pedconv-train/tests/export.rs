//! `pedconv export`: the ONNX files it writes, run in onnxruntime by `tests/onnx/check_onnx.py`
//! and compared with burn's logits of the same model on the same images (batch 1 and batch 7,
//! at two image sizes, since batch and image size are dynamic in the graph).
//!
//! onnxruntime comes from Python (tests/requirements.txt, which `cargo xtask test` installs).
//! Without it the tests fail, saying so, unless `PEDCONV_SKIP_ONNXRUNTIME=1` is set: then they
//! export and compute burn's logits but skip the runtime check.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use common::{pedconv, scratch};
use pedconv::import::PytorchCheckpoint;
use pedconv::resnet::{ImportMode, PedConvSettings, ResNet, ResNetConfig};

type B = Flex;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Exports `weights` (with `extra` flags) to `onnx` through the command line.
fn export(weights: &Path, onnx: &Path, extra: &[&str]) {
    let mut args = vec![
        "export",
        "--weights",
        weights.to_str().unwrap(),
        "--onnx",
        onnx.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = pedconv(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("nodes"), "{stdout}");
    assert!(onnx.is_file(), "{} was not written", onnx.display());
}

/// Writes a float32 array as a NumPy `.npy` file (format 1.0, little-endian, C order).
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    // Magic, version and length take 10 bytes; the header ends in a newline and pads the
    // whole preamble to a multiple of 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

/// Deterministic images in `[-2, 2)` (a linear congruential generator), `[batch, 3, h, w]`.
fn images(seed: u64, [batch, height, width]: [usize; 3]) -> (Vec<usize>, Vec<f32>) {
    let shape = vec![batch, 3, height, width];
    let mut state = seed;
    let values = (0..shape.iter().product())
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    (shape, values)
}

/// Writes images of each size and burn's logits for them (`input-K.npy`, `expected-K.npy`)
/// into `dir`, and returns the file pairs in the order `check_onnx.py` takes them.
fn write_cases(model: &ResNet<B>, dir: &Path, sizes: &[[usize; 3]]) -> Vec<PathBuf> {
    let device = Default::default();
    let mut files = Vec::new();
    for (case, &size) in sizes.iter().enumerate() {
        let (shape, values) = images(case as u64 + 1, size);
        let input =
            Tensor::<B, 4>::from_data(TensorData::new(values.clone(), shape.clone()), &device);
        let logits = model.forward(input);
        let logits_shape = logits.dims().to_vec();
        let logits: Vec<f32> = logits.into_data().iter::<f32>().collect();
        let input_file = dir.join(format!("input-{case}.npy"));
        let expected_file = dir.join(format!("expected-{case}.npy"));
        write_npy(&input_file, &shape, &values);
        write_npy(&expected_file, &logits_shape, &logits);
        files.extend([input_file, expected_file]);
    }
    files
}

/// Runs `tests/onnx/check_onnx.py` on `onnx` and the case files; without onnxruntime, fails
/// saying so, or skips when `PEDCONV_SKIP_ONNXRUNTIME=1`.
fn check_in_onnxruntime(onnx: &Path, cases: &[PathBuf]) {
    let available = Command::new("python3")
        .args(["-c", "import onnxruntime, onnx, numpy"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        if std::env::var("PEDCONV_SKIP_ONNXRUNTIME").as_deref() == Ok("1") {
            eprintln!(
                "skipped the onnxruntime check of {} (PEDCONV_SKIP_ONNXRUNTIME=1)",
                onnx.display()
            );
            return;
        }
        panic!(
            "onnxruntime is missing: `python3 -c \"import onnxruntime, onnx, numpy\"` fails. \
             `cargo xtask test` installs them (tests/requirements.txt, in a venv under \
             target/); or set PEDCONV_SKIP_ONNXRUNTIME=1 to skip the runtime check"
        );
    }
    let output = Command::new("python3")
        .arg(repository().join("tests/onnx/check_onnx.py"))
        .arg(onnx)
        .args(cases)
        .output()
        .expect("python3 runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}:\n{report}", onnx.display());
    assert!(output.status.success(), "{}: {report}", onnx.display());
}

#[test]
fn golden_checkpoint_exports_and_matches_burn_in_onnxruntime() {
    let dir = scratch("golden");
    let weights = repository().join("tests/fixtures/golden/resnet18_w0.25_c10_ref.pth.tar");
    let checkpoint = PytorchCheckpoint::read(&weights).unwrap();
    let config = ResNetConfig::from_state_dict(&checkpoint).unwrap();
    let model = config
        .init::<B>(&Default::default())
        .load_pytorch(&checkpoint, ImportMode::Exact)
        .unwrap();
    let cases = write_cases(&model, &dir, &[[1, 64, 64], [7, 48, 80]]);
    for (file, flags) in [
        ("folded.onnx", &[][..]),
        ("batch-norms.onnx", &["--no-fold"][..]),
    ] {
        let onnx = dir.join(file);
        export(&weights, &onnx, flags);
        check_in_onnxruntime(&onnx, &cases);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Exports a randomly initialised model of `config` (saved as a `.mpk` with its config JSON,
/// exported through `--config`) and checks it at the given `[batch, height, width]` sizes.
fn random_model_matches_in_onnxruntime(name: &str, config: ResNetConfig, sizes: &[[usize; 3]]) {
    let dir = scratch(name);
    let model = config.init::<B>(&Default::default());
    // burn initialises parameters lazily and a clone of an uninitialised parameter draws its
    // own values: the forward passes come first, so that the saved record holds these weights.
    let cases = write_cases(&model, &dir, sizes);
    let config_file = dir.join("model.json");
    burn::config::Config::save(&config, &config_file).unwrap();
    model.save_record(dir.join("model")).unwrap();
    let onnx = dir.join("model.onnx");
    export(
        &dir.join("model.mpk"),
        &onnx,
        &["--config", config_file.to_str().unwrap()],
    );
    check_in_onnxruntime(&onnx, &cases);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn width_one_pedconv_resnet18_exports_and_matches_burn_in_onnxruntime() {
    random_model_matches_in_onnxruntime(
        "r18",
        ResNetConfig::resnet18().dynamic(),
        &[[1, 224, 224], [7, 64, 96]],
    );
}

/// Bottlenecks (1×1 PEDConv layers), the deep stem, average-pool shortcuts (ceil mode, on odd
/// sizes at 48×80) and two rank-1 terms per PEDConv layer.
#[test]
fn rank_two_pedconv_resnet50d_exports_and_matches_burn_in_onnxruntime() {
    let config = ResNetConfig::resnet50d()
        .with_width(0.25)
        .with_num_classes(10)
        .with_pedconv(Some(PedConvSettings::new().with_rank(2)));
    random_model_matches_in_onnxruntime("r50d", config, &[[1, 64, 64], [7, 48, 80]]);
}

#[test]
fn export_errors_name_the_file() {
    let weights = repository().join("tests/fixtures/golden/resnet18_w0.25_c10_ref.pth.tar");
    let onnx = "/nonexistent/folder/model.onnx";
    let (ok, _, stderr) = pedconv(&[
        "export",
        "--weights",
        weights.to_str().unwrap(),
        "--onnx",
        onnx,
    ]);
    assert!(!ok);
    assert!(stderr.contains(&format!("error: {onnx}: ")), "{stderr}");
}
