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
/// `.PNG`, and one corrupt `.jpg`.
fn mixed_folder() -> PathBuf {
    let root = scratch("mixed");
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
    let data = mixed_folder();
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
    let data = mixed_folder();
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
