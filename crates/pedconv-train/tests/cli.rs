//! The `pedconv` command line, run as a user runs it, on small generated image folders.

use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/resnet18_w0.25_c10_ref.pth.tar")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pedconv-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A validation folder of two classes with a colour PNG, a grayscale JPEG named `.JPEG`, an RGBA
/// `.PNG`, and one corrupt `.jpg`, under a scratch folder of its own (`name`: tests run at once).
fn mixed_folder(name: &str) -> PathBuf {
    let root = scratch(name);
    let val = root.join("val");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(val.join(class)).unwrap();
    }
    let pattern = |x: u32, y: u32| ((x * 7 + y * 3) % 256) as u8;
    image::RgbImage::from_fn(300, 260, |x, y| {
        image::Rgb([pattern(x, y), 128, pattern(y, x)])
    })
    .save(val.join("cat/a.png"))
    .unwrap();
    image::GrayImage::from_fn(256, 320, |x, y| image::Luma([pattern(x, y)]))
        .save_with_format(val.join("dog/b.JPEG"), image::ImageFormat::Jpeg)
        .unwrap();
    image::RgbaImage::from_fn(240, 240, |x, y| image::Rgba([pattern(x, y), 0, 200, 255]))
        .save_with_format(val.join("dog/c.PNG"), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(val.join("cat/broken.jpg"), b"not a jpeg").unwrap();
    root
}

fn pedconv(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_pedconv"))
        .args(args)
        .output()
        .expect("the pedconv binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn eval_prints_one_json_object() {
    let data = mixed_folder("eval-json");
    let weights = golden_checkpoint();
    let (ok, stdout, stderr) = pedconv(&[
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--batch-size",
        "2",
        "--max-bad-fraction",
        "0.5",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["images"], 3, "{report}");
    for key in ["top1", "top5"] {
        let value = report[key].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&value), "{report}");
    }
    assert!(report["loss"].as_f64().unwrap().is_finite(), "{report}");
    assert!(
        stderr.contains("broken.jpg"),
        "the skipped image is named: {stderr}"
    );
}

#[test]
fn bad_input_is_named() {
    let weights = golden_checkpoint();
    let weights = weights.to_str().unwrap();
    let data = mixed_folder("eval-errors");
    let data = data.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![
                "eval",
                "--weights",
                weights,
                "--data",
                "/nonexistent/images",
            ],
            "cannot read the data folder /nonexistent/images",
        ),
        (
            vec![
                "eval",
                "--weights",
                "/nonexistent/model.pth",
                "--data",
                data,
            ],
            "cannot read /nonexistent/model.pth",
        ),
        (
            vec!["eval", "--weights", weights, "--data", data],
            "1 of 4 images could not be read, more than the allowed fraction 0.01",
        ),
        (
            vec![
                "eval",
                "--weights",
                weights,
                "--data",
                data,
                "--resize",
                "100",
            ],
            "--resize (100) at least --crop (224)",
        ),
    ];
    for (args, expected) in cases {
        let (ok, _, stderr) = pedconv(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            stderr.contains(expected),
            "{args:?}: `{stderr}` does not say `{expected}`"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let empty = scratch("empty");
    let (ok, _, stderr) = pedconv(&[
        "eval",
        "--weights",
        weights,
        "--data",
        empty.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("has no class folders"), "{stderr}");
}

/// A tiny configuration, from the default that `train --print-config` prints.
fn tiny_config(dir: &Path) -> PathBuf {
    let (ok, stdout, stderr) = pedconv(&[
        "train",
        "--print-config",
        "--epochs",
        "2",
        "--batch-size",
        "16",
    ]);
    assert!(ok, "{stderr}");
    let mut config: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    config["model"]["width"] = 0.0625.into();
    config["data"] =
        serde_json::json!({"train_images": 48, "valid_images": 16, "image_size": 16, "workers": 0});
    let path = dir.join("tiny.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn train_writes_a_run_directory_and_never_overwrites_it() {
    let dir = scratch("train");
    let config = tiny_config(&dir);
    let output = dir.join("run");
    let args = [
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = pedconv(&args);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("epoch   2/2"),
        "one line per epoch: {stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["epochs"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["best_top1"].as_f64().is_some(), "{report}");
    assert_eq!(report["config"]["batch_size"], 16);
    for file in ["config.json", "model.mpk", "checkpoint/model-2.mpk"] {
        assert!(output.join(file).exists(), "{file} is missing");
    }
    let (ok, _, stderr) = pedconv(&args);
    assert!(!ok && stderr.contains("already holds a run"), "{stderr}");
}

#[test]
fn bad_training_configurations_are_named() {
    let dir = scratch("bad-config");
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let (ok, _, stderr) = pedconv(&[
        "train",
        "--config",
        broken.to_str().unwrap(),
        "--output",
        dir.join("a").to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("cannot read the configuration") && stderr.contains("broken.json"),
        "{stderr}"
    );
    let tiny = tiny_config(&dir);
    let (ok, _, stderr) = pedconv(&[
        "train",
        "--config",
        tiny.to_str().unwrap(),
        "--batch-size",
        "0",
        "--output",
        dir.join("b").to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("batch_size must be positive"),
        "{stderr}"
    );
    assert!(
        !dir.join("b").exists(),
        "nothing is written for an invalid configuration"
    );
}
