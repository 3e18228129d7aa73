//! The `pedconv` command line, run as a user runs it, on small generated image folders.

mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_refused, assert_same_metrics, copy_run, edit_config, forget_epochs, pedconv, report,
    scratch,
};

fn golden_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/resnet18_w0.25_c10_ref.pth.tar")
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

#[test]
fn eval_prints_one_json_object() {
    let data = mixed_folder("eval-json");
    let weights = golden_checkpoint();
    let eval = |extra: &[&str]| {
        let mut args = vec![
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
        ];
        args.extend(extra);
        let (ok, stdout, stderr) = pedconv(&args);
        assert!(ok, "{stderr}");
        let report: serde_json::Value =
            serde_json::from_str(stdout.trim()).expect("one JSON object");
        (report, stderr)
    };
    let (report, stderr) = eval(&[]);
    // Folded batch norms (the default) and kept ones: the same loss up to float32 rounding.
    let (unfolded, _) = eval(&["--no-fold"]);
    let (loss, loss_unfolded) = (
        report["loss"].as_f64().unwrap(),
        unfolded["loss"].as_f64().unwrap(),
    );
    assert!(
        (loss - loss_unfolded).abs() <= 1e-5 * loss.abs(),
        "{report} {unfolded}"
    );
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
    let data = &mut config["data"];
    data["source"] = serde_json::json!({"kind": "builtin", "train_images": 48, "valid_images": 16});
    for key in ["train_crop", "val_resize", "val_crop"] {
        data[key] = 16.into();
    }
    let path = dir.join("tiny.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// What a run learned, epoch by epoch: its validation metrics.
fn valid_metrics(run: &Path) -> Vec<serde_json::Value> {
    report(run)["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|epoch| epoch["valid"].clone())
        .collect()
}

#[test]
fn train_writes_a_reproducible_run_directory_and_never_overwrites_it() {
    let dir = scratch("train");
    let config = tiny_config(&dir);
    let run = |name: &str| {
        let output = dir.join(name);
        let args = [
            "train",
            "--config",
            config.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        let (ok, stdout, stderr) = pedconv(&args);
        assert!(ok, "{stderr}");
        (output, stdout)
    };
    let (output, stdout) = run("first");
    assert!(
        stdout.contains("epoch   2/2"),
        "one line per epoch: {stdout}"
    );
    let report = report(&output);
    assert_eq!(report["epochs"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["best_top1"].as_f64().is_some(), "{report}");
    assert_eq!(report["finished"], true);
    assert_eq!(report["config"]["batch_size"], 16);
    let best = report["best_checkpoint"].as_str().unwrap();
    assert!(Path::new(best).exists(), "{best}");
    for file in [
        "config.json",
        "model.mpk",
        "epochs.jsonl",
        "checkpoint/model-2.mpk",
        "curves.svg",
    ] {
        assert!(output.join(file).exists(), "{file} is missing");
    }
    assert_events_match_journal(&output);
    let (again, _) = run("second");
    assert_eq!(
        valid_metrics(&output),
        valid_metrics(&again),
        "same seed, same run"
    );

    let (ok, _, stderr) = pedconv(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("already holds a run"), "{stderr}");
}

/// A run stopped after epoch 1 and resumed for epoch 2 keeps epoch 1's record and checkpoint;
/// a NaN loss stops a resumed run, naming the last good checkpoint, which stays.
#[test]
fn resume_continues_a_run_and_a_nan_loss_stops_it() {
    let dir = scratch("resume");
    let config = tiny_config(&dir);
    let output = dir.join("run");
    let out = output.to_str().unwrap();
    let (ok, _, stderr) = pedconv(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output",
        out,
        "--epochs",
        "1",
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = pedconv(&["train", "--resume", out]);
    assert!(
        !ok && stderr.contains("already finished its 1 epochs"),
        "{stderr}"
    );

    let (ok, stdout, stderr) = pedconv(&["train", "--resume", out, "--epochs", "3"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("resuming epochs 2-3"), "{stdout}");
    assert!(
        !stdout.contains("epoch   1/3") && stdout.contains("epoch   3/3"),
        "{stdout}"
    );
    let epochs: Vec<u64> = report(&output)["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2, 3]);

    let (ok, _, stderr) = pedconv(&["train", "--resume", out, "--epochs", "4", "--lr", "1e30"]);
    assert!(!ok, "a diverging run fails");
    assert!(stderr.contains("the training loss became"), "{stderr}");
    assert!(
        stderr.contains("the last checkpoint is epoch 3"),
        "{stderr}"
    );
    assert!(output.join("checkpoint/model-3.mpk").exists());
    assert!(!output.join("checkpoint/model-4.mpk").exists());
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Every scalar of a run's TensorBoard event files as TensorBoard's own reader loads them
/// (`tests/tensorboard/read_events.py`): split → tag → `[[step, value], …]`. Without Python's
/// `tensorboard` package, fails saying so, or answers `None` with `PEDCONV_SKIP_TENSORBOARD=1`.
fn tensorboard_scalars(run: &Path) -> Option<serde_json::Value> {
    let available = std::process::Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        if std::env::var_os("PEDCONV_SKIP_TENSORBOARD").is_some_and(|v| v == "1") {
            eprintln!("skipped reading {} with TensorBoard", run.display());
            return None;
        }
        panic!(
            "TensorBoard is missing: `python3 -c \"import tensorboard\"` fails. `cargo xtask \
             test` installs it (tests/requirements.txt, in a venv under target/); or set \
             PEDCONV_SKIP_TENSORBOARD=1 to skip reading the event files"
        );
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tensorboard/read_events.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(run)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "read_events.py: {stderr}");
    Some(serde_json::from_slice(&output.stdout).expect("read_events.py prints JSON"))
}

/// TensorBoard finds every metric of every epoch of `epochs.jsonl` once, at the epoch's step,
/// with the journal's value (stored as float32: 1e-6 relative, some ten float32 ulps), and the
/// training loss every 10 iterations at strictly increasing steps.
fn assert_events_match_journal(run: &Path) {
    let Some(scalars) = tensorboard_scalars(run) else {
        return;
    };
    let journal: Vec<serde_json::Value> = std::fs::read_to_string(run.join("epochs.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let epochs: Vec<u64> = journal
        .iter()
        .map(|r| r["epoch"].as_u64().unwrap())
        .collect();
    let tags = [
        ("Loss", "loss"),
        ("Accuracy", "top1"),
        ("Top-K Accuracy @ TopK(5)", "top5"),
        ("Learning Rate", "learning_rate"),
    ];
    for split in ["train", "valid"] {
        let mut expected: Vec<(&str, Vec<f64>)> = tags
            .iter()
            .filter(|(name, _)| journal[0][split].get(name).is_some())
            .map(|&(name, tag)| {
                let values = journal.iter().map(|r| r[split][name].as_f64().unwrap());
                (tag, values.collect())
            })
            .collect();
        if split == "train" {
            let rates = journal
                .iter()
                .map(|r| r["images_per_second"].as_f64().unwrap());
            expected.push(("images_per_second", rates.collect()));
        }
        assert!(expected.len() >= 3, "{split}: {journal:?}");
        for (tag, values) in expected {
            let events = scalars[split][tag]
                .as_array()
                .unwrap_or_else(|| panic!("no {split} {tag} in {scalars}"));
            let steps: Vec<u64> = events.iter().map(|e| e[0].as_u64().unwrap()).collect();
            assert_eq!(steps, epochs, "{split} {tag}: one event per epoch");
            for (event, value) in events.iter().zip(values) {
                let read = event[1].as_f64().unwrap();
                assert!(
                    (read - value).abs() <= 1e-6 * value.abs(),
                    "{split} {tag} at step {}: {read} read, {value} in epochs.jsonl",
                    event[0]
                );
            }
        }
    }
    let iterations: u64 = journal
        .iter()
        .map(|r| r["iterations"].as_u64().unwrap())
        .sum();
    // Absent where the run had fewer than 10 iterations.
    let steps: Vec<u64> = scalars["train"]["loss_per_iteration"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|e| e[0].as_u64().unwrap())
        .collect();
    let every_ten: Vec<u64> = (1..=iterations / 10).map(|n| 10 * n).collect();
    assert_eq!(
        steps, every_ten,
        "the iteration loss, every 10 of {iterations}"
    );
}

/// The tiny configuration for 3 epochs, with mixup, every checkpoint kept: for resumed runs.
fn resumable_config(dir: &Path) -> PathBuf {
    let config = tiny_config(dir);
    edit_config(&config, |config| {
        config["epochs"] = 3.into();
        config["keep_checkpoints"] = 3.into();
        config["mixup"] = 0.2.into();
    });
    config
}

/// Trains `config` with the `extra` arguments into `dir/straight`: the run directory and what
/// the run printed.
fn train_straight(dir: &Path, config: &Path, extra: &[&str]) -> (PathBuf, String) {
    let straight = dir.join("straight");
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output",
        straight.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = pedconv(&args);
    assert!(ok, "{stderr}");
    (straight, stdout)
}

/// Three epochs straight, and one epoch then a resume for two more, give the same metrics and
/// the same final model: the data order, the augmentations (mixup here) and PEDConv's noise
/// depend on the seed and the epoch alone. A damaged last checkpoint is skipped for the one
/// before it, with a message; with none readable, the resume stops with an error.
#[test]
fn resume_is_exact_and_skips_damaged_checkpoints() {
    let dir = scratch("exact-resume");
    let config = resumable_config(&dir);
    // 6 iterations an epoch: the training loss logged every 10 iterations falls in epoch 2,
    // which the resumed run trains again.
    edit_config(&config, |config| config["batch_size"] = 8.into());
    let (straight, _) = train_straight(&dir, &config, &[]);
    let final_model = std::fs::read(straight.join("model.mpk")).unwrap();

    let resume = |name: &str, damage: &dyn Fn(&Path)| {
        let run = dir.join(name);
        copy_run(&straight, &run);
        damage(&run);
        let result = pedconv(&["train", "--resume", run.to_str().unwrap()]);
        (run, result)
    };
    let (resumed, (ok, stdout, stderr)) = resume("resumed", &|run| forget_epochs(run, &[2, 3]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("resuming epochs 2-3"), "{stdout}");
    assert_same_metrics(&straight, &resumed);
    // The copied event files held epochs 2 and 3 already: the resumed run replaced them.
    assert_events_match_journal(&resumed);
    assert!(
        std::fs::read(resumed.join("model.mpk")).unwrap() == final_model,
        "the resumed run's final model differs from the straight run's"
    );

    // A truncated checkpoint of epoch 2 (a crash while it was written by an older version, a
    // full disk): resumed from epoch 1, to the same end.
    let truncate = |path: PathBuf| {
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    };
    let (skipped, (ok, stdout, stderr)) = resume("skipped", &|run| {
        forget_epochs(run, &[3]);
        truncate(run.join("checkpoint/model-2.mpk"));
    });
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("skipping the checkpoint of epoch 2") && stderr.contains("model-2.mpk"),
        "{stderr}"
    );
    assert!(
        stdout.contains("resuming from the checkpoint of epoch 1"),
        "{stdout}"
    );
    assert_same_metrics(&straight, &skipped);
    assert!(std::fs::read(skipped.join("model.mpk")).unwrap() == final_model);

    let (_, (ok, _, stderr)) = resume("unreadable", &|run| {
        forget_epochs(run, &[2, 3]);
        truncate(run.join("checkpoint/optim-1.mpk"));
    });
    assert!(!ok, "nothing to resume from");
    assert!(
        stderr.contains("optim-1.mpk") && stderr.contains("no checkpoint in"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Two workers on the CPU (`--devices 0,1`): three epochs straight, and one then a resume for
/// two more, end with the same model and metrics, as on one device; a resume on another number
/// of devices, and a device listed twice, are refused.
#[test]
fn two_devices_resume_exactly() {
    let dir = scratch("devices-resume");
    let config = resumable_config(&dir);
    let (straight, stdout) = train_straight(&dir, &config, &["--devices", "0,1"]);
    assert!(
        stdout.contains("batch 32,") && stdout.contains("2 devices [0, 1] of flex (16 per device)"),
        "{stdout}"
    );
    let resumed = dir.join("resumed");
    copy_run(&straight, &resumed);
    forget_epochs(&resumed, &[2, 3]);
    let run = resumed.to_str().unwrap();
    let (ok, _, stderr) = pedconv(&["train", "--resume", run, "--devices", "0"]);
    assert!(
        !ok && stderr.contains("was trained on 2 devices"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = pedconv(&["train", "--resume", run]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("resuming epochs 2-3"), "{stdout}");
    assert_same_metrics(&straight, &resumed);
    // The copied event files held epochs 2 and 3 already: the resumed run replaced them.
    assert_events_match_journal(&resumed);
    assert!(
        std::fs::read(resumed.join("model.mpk")).unwrap()
            == std::fs::read(straight.join("model.mpk")).unwrap(),
        "the resumed run's final model differs from the straight run's"
    );

    let config = config.to_str().unwrap();
    let twice = ["train", "--config", config, "--devices", "1,0,1"];
    assert_refused(&twice, &dir.join("twice"), "device 1 is listed twice");
}

/// The built-in data on two workers of 32 images learns as one device of 64 does (the same
/// global batch and learning rate): best validation top-1 within 2 points.
#[test]
fn two_devices_learn_the_builtin_data_as_one() {
    let dir = scratch("devices-builtin");
    let best = |name: &str, extra: &[&str]| {
        let output = dir.join(name);
        let mut args = vec!["train", "--output", output.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (ok, _, stderr) = pedconv(&args);
        assert!(ok, "{stderr}");
        report(&output)["best_top1"].as_f64().unwrap()
    };
    let one = best("one", &[]);
    let two = best("two", &["--devices", "0,1", "--batch-size", "32"]);
    assert!(one > 90.0, "one device: {one}%");
    assert!((one - two).abs() <= 2.0, "one device {one}%, two {two}%");
}

/// bf16 and f16 (with its dynamic loss scale, recorded every epoch) train the built-in data to
/// within 2 points of float32's best validation top-1; the three runs at once (flex runs the
/// half types on one thread). ndarray, which has no half types, refuses them.
#[test]
fn half_precision_learns_the_builtin_data_as_float32() {
    let dir = scratch("precision");
    let runs: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let runs: Vec<_> = ["f32", "bf16", "f16"]
            .into_iter()
            .map(|precision| {
                let output = dir.join(precision);
                scope.spawn(move || {
                    let out = output.to_str().unwrap();
                    let (ok, _, stderr) =
                        pedconv(&["train", "--precision", precision, "--output", out]);
                    assert!(ok, "{precision}: {stderr}");
                    report(&output)
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let best = |run: &serde_json::Value| run["best_top1"].as_f64().unwrap();
    let f32_top1 = best(&runs[0]);
    assert!(f32_top1 > 90.0, "f32: {f32_top1}%");
    for (run, name) in runs[1..].iter().zip(["bf16", "f16"]) {
        assert_eq!(run["config"]["precision"], name);
        let top1 = best(run);
        assert!(
            (top1 - f32_top1).abs() <= 2.0,
            "{name} {top1}%, f32 {f32_top1}%"
        );
    }
    let scales: Vec<f64> = runs[2]["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|epoch| {
            epoch["loss_scale"]["scale"]
                .as_f64()
                .expect("f16's loss scale")
        })
        .collect();
    assert_eq!(scales.len(), 8, "{scales:?}");
    assert!(runs[0]["epochs"][0].get("loss_scale").is_none());

    let ndarray = ["train", "--backend", "ndarray", "--precision", "bf16"];
    let message = "the ndarray backend cannot compute in bf16";
    assert_refused(&ndarray, &dir.join("ndarray"), message);
}

/// With the default configuration, `--data` takes the number of classes from the folder;
/// `--num-classes` sets it and is checked; a batch larger than the training split is refused.
#[test]
fn classes_come_from_the_folder_and_batches_must_fit_it() {
    let data = image_folder("classes", 6);
    let folder = data.to_str().unwrap();
    let (ok, stdout, stderr) = pedconv(&["train", "--print-config", "--data", folder]);
    assert!(ok, "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["model"]["num_classes"], 2);

    let output = data.join("run");
    let (ok, _, stderr) = pedconv(&[
        "train",
        "--data",
        folder,
        "--output",
        output.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "6",
    ]);
    assert!(ok, "{stderr}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["model"]["num_classes"], 2);

    let refused = |extra: &[&str]| {
        let output = data.join("refused");
        let mut args = vec![
            "train",
            "--data",
            folder,
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend(extra);
        let (ok, _, stderr) = pedconv(&args);
        assert!(!ok && !stderr.contains("panicked"), "{stderr}");
        assert!(!output.exists(), "a refused run leaves nothing");
        stderr
    };
    let classes = refused(&["--num-classes", "3"]);
    assert!(
        classes.contains("model.num_classes is 3, the data has 2 classes")
            && classes.contains("--num-classes 2"),
        "{classes}"
    );
    // The default batch of 64 against 12 training images.
    let batch = refused(&[]);
    assert!(
        batch.contains("(64 images") && batch.contains("12 training images"),
        "{batch}"
    );
}

/// Two classes of stripes (horizontal, vertical) as colour PNGs, grayscale JPEGs named `.JPEG`
/// and RGBA `.png`s, with `per_class` training and 3 validation images each.
fn image_folder(name: &str, per_class: usize) -> PathBuf {
    let root = scratch(name);
    for (split, count) in [("train", per_class), ("val", 3)] {
        for (class, vertical) in [("horizontal", false), ("vertical", true)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let period = 6 + (i % 5) as u32;
                let value = move |x: u32, y: u32| {
                    let t = if vertical { x } else { y };
                    if (t / period).is_multiple_of(2) {
                        230u8
                    } else {
                        25
                    }
                };
                let (w, h) = (40 + (i % 3) as u32 * 8, 36 + (i % 4) as u32 * 6);
                match i % 3 {
                    0 => image::RgbImage::from_fn(w, h, |x, y| {
                        image::Rgb([value(x, y), 90, 255 - value(x, y)])
                    })
                    .save(dir.join(format!("{i}.png")))
                    .unwrap(),
                    1 => image::GrayImage::from_fn(w, h, |x, y| image::Luma([value(x, y)]))
                        .save_with_format(dir.join(format!("{i}.JPEG")), image::ImageFormat::Jpeg)
                        .unwrap(),
                    _ => image::RgbaImage::from_fn(w, h, |x, y| {
                        image::Rgba([value(x, y), value(x, y), 40, 255])
                    })
                    .save_with_format(dir.join(format!("{i}.PNG")), image::ImageFormat::Png)
                    .unwrap(),
                }
            }
        }
    }
    root
}

/// A configuration for a tiny folder run: 16-pixel crops of 20-pixel validation images, with
/// the ImageNet recipes' augmentation (random resized crop, flip, AutoAugment).
fn folder_config(dir: &Path, data: &Path) -> PathBuf {
    let path = tiny_config(dir);
    edit_config(&path, |config| {
        config["model"]["num_classes"] = 2.into();
        config["data"]["source"] = serde_json::json!({"kind": "folder", "path": data});
        config["data"]["val_resize"] = 20.into();
        config["data"]["augmentation"]["auto_augment"] = true.into();
    });
    path
}

#[test]
fn train_on_an_image_folder_skips_and_counts_unreadable_images() {
    let data = image_folder("folder", 12);
    std::fs::write(data.join("train/vertical/broken.jpg"), b"not a jpeg").unwrap();
    let config = folder_config(&data, &data);
    let run = |config: &Path, output: &Path| {
        pedconv(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--epochs",
            "1",
        ])
    };
    // 1 of 25 training images is 4 %: more than the default 1 % stops the run.
    let (ok, _, stderr) = run(&config, &data.join("run"));
    assert!(!ok, "too many unreadable images stop the run");
    assert!(
        stderr.contains("could not be read") && stderr.contains("broken.jpg"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    edit_config(&config, |config| {
        config["data"]["max_bad_fraction"] = 0.1.into()
    });
    let output = data.join("run-lenient");
    let (ok, stdout, stderr) = run(&config, &output);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("epoch   1/1"), "{stdout}");
    assert_eq!(
        stderr.matches("broken.jpg").count(),
        1,
        "reported once: {stderr}"
    );
    assert_eq!(report(&output)["finished"], true);
}

/// `pedconv pack` writes a folder as a pack (naming and skipping an unreadable image); training
/// from the pack sees the folder's images in the folder's order, so it gives the folder run's
/// metrics; `eval` reads the pack's validation split as it reads the folder's.
#[test]
fn a_packed_folder_trains_and_evaluates_as_the_folder() {
    let data = image_folder("pack", 12);
    let with_broken = image_folder("pack-broken", 12);
    std::fs::write(
        with_broken.join("train/vertical/broken.jpg"),
        b"\xFF\xD8 no",
    )
    .unwrap();
    let pack = data.join("packed");
    let (ok, stdout, stderr) = pedconv(&[
        "pack",
        "--data",
        with_broken.to_str().unwrap(),
        "--output",
        pack.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("broken.jpg"), "named: {stderr}");
    assert!(
        stdout.contains("24 training and 6 validation images (1 skipped"),
        "{stdout}"
    );
    let (ok, _, stderr) = pedconv(&[
        "pack",
        "--data",
        data.to_str().unwrap(),
        "--output",
        pack.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("exists already"), "{stderr}");

    let config = folder_config(&data, &data);
    let train = |data: &Path, output: &Path| {
        let (ok, _, stderr) = pedconv(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--epochs",
            "2",
        ]);
        assert!(ok, "{stderr}");
    };
    let (from_folder, from_pack) = (data.join("run-folder"), data.join("run-pack"));
    train(&data, &from_folder);
    train(&pack, &from_pack);
    assert_same_metrics(&from_folder, &from_pack);

    let eval = |data: &Path| {
        let (ok, stdout, stderr) = pedconv(&[
            "eval",
            "--weights",
            from_folder.join("model.mpk").to_str().unwrap(),
            "--config",
            from_folder.join("config.json").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--resize",
            "20",
            "--crop",
            "16",
            "--json",
        ]);
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()
    };
    assert_eq!(eval(&data), eval(&pack));
}

#[test]
fn bad_data_folders_are_named() {
    let dir = scratch("bad-folders");
    let mismatched = image_folder("mismatched", 2);
    std::fs::create_dir_all(mismatched.join("val/diagonal")).unwrap();
    let no_val = image_folder("no-val", 2);
    std::fs::remove_dir_all(no_val.join("val")).unwrap();
    let empty = scratch("empty-train");
    for split in ["train", "val"] {
        std::fs::create_dir_all(empty.join(split)).unwrap();
    }
    let config = folder_config(&dir, &mismatched);
    let cases = [
        (mismatched, "only in val: [\"diagonal\"]".to_string()),
        (
            no_val.clone(),
            format!("{} has no `val/` folder", no_val.display()),
        ),
        (
            empty.clone(),
            format!("{} has no class folders", empty.join("train").display()),
        ),
        (dir.join("missing"), "does not exist".to_string()),
    ];
    for (i, (data, expected)) in cases.into_iter().enumerate() {
        let output = dir.join(format!("run-{i}"));
        let (ok, _, stderr) = pedconv(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        assert!(
            !ok && stderr.contains(&expected),
            "`{stderr}` does not say `{expected}`"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
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
    let (ok, _, stderr) = pedconv(&["train", "--resume", dir.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("config.json does not exist"),
        "{stderr}"
    );
    // The default build has no CUDA; a CUDA build on a machine without a GPU has no device.
    let output = dir.join("c");
    let (ok, _, stderr) = pedconv(&[
        "train",
        "--config",
        tiny.to_str().unwrap(),
        "--backend",
        "cuda",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(
        !ok && (stderr.contains("`cuda` backend is not compiled into this build")
            || stderr.contains("cuda backend has no usable device")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !output.exists(),
        "a run that cannot start leaves nothing behind"
    );
}

/// The synthetic source (throughput runs) trains through, with gradient accumulation and the
/// step decay, and reports its throughput.
#[test]
fn synthetic_source_with_accumulation_and_step_decay() {
    let dir = scratch("synthetic");
    let path = tiny_config(&dir);
    edit_config(&path, |config| {
        config["data"]["source"] = serde_json::json!({"kind": "synthetic", "train_images": 32, "valid_images": 8, "classes": 12});
        config["batch_size"] = 8.into();
        config["optimizer_batch_size"] = 16.into();
        config["decay"] = serde_json::json!({"kind": "step", "milestones": [1], "gamma": 0.1});
        config["mixup"] = 0.2.into();
    });
    let output = dir.join("run");
    let (ok, stdout, stderr) = pedconv(&[
        "train",
        "--config",
        path.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("32 synthetic images (batch 8, 16 per optimizer step"),
        "{stdout}"
    );
    let report = report(&output);
    let epochs = report["epochs"].as_array().unwrap();
    // Peak 0.512 · 16 / 512 = 0.016 reached at the end of the 1 warm-up epoch (4 passes), then
    // 0.0016 after the milestone: the epoch means of the per-pass rates.
    let lr = |e: usize| epochs[e]["train"]["Learning Rate"].as_f64().unwrap();
    assert!(
        (lr(0) - 0.016 * (1.0 + 2.0 + 3.0 + 4.0) / 16.0).abs() < 1e-9,
        "{report}"
    );
    assert!((lr(1) - 0.0016).abs() < 1e-9, "{report}");
    assert!(report["images_per_second"].as_f64().unwrap() > 0.0);
}

/// `predict` names the classes a training run recorded (from the run directory or above its
/// `checkpoint/`), prints JSON lines or a table, numbers the classes of a PyTorch checkpoint that
/// is not ImageNet's, and names and skips an unreadable image, failing at the end.
#[test]
fn predict_names_classes_and_skips_unreadable_images() {
    let data = image_folder("predict", 8);
    let config = folder_config(&data, &data);
    let run = data.join("run");
    let (ok, _, stderr) = pedconv(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output",
        run.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert!(ok, "{stderr}");
    let names: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(run.join("classes.json")).unwrap()).unwrap();
    assert_eq!(names, ["horizontal", "vertical"]);

    let val = data.join("val");
    let small = ["--resize", "20", "--crop", "16"];
    for weights in ["model.mpk", "checkpoint/model-1.mpk"] {
        let weights = run.join(weights);
        let config = run.join("config.json");
        let mut args = vec![
            "predict",
            "--weights",
            weights.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--json",
            val.to_str().unwrap(),
        ];
        args.extend(small);
        let (ok, stdout, stderr) = pedconv(&args);
        assert!(ok, "{stderr}");
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 6, "{stdout}");
        for line in &lines {
            let top = line["top"].as_array().unwrap();
            assert_eq!(top.len(), 2, "two classes: {line}");
            let class = top[0]["class"].as_u64().unwrap() as usize;
            assert_eq!(top[0]["name"], names[class].as_str());
            let sum: f64 = top.iter().map(|t| t["probability"].as_f64().unwrap()).sum();
            assert!((sum - 1.0).abs() < 1e-6, "{line}");
        }
    }

    std::fs::write(val.join("vertical/broken.png"), b"not a png").unwrap();
    let weights = golden_checkpoint();
    let mut args = vec![
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--top",
        "3",
    ];
    args.extend(small);
    args.push(val.to_str().unwrap());
    let (ok, stdout, stderr) = pedconv(&args);
    assert!(!ok, "an unreadable image fails the run");
    assert!(stderr.contains("broken.png"), "{stderr}");
    assert!(
        stderr.contains("1 of 7 images could not be read"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A table: each image's path, then three classes, by number (the checkpoint's 10 classes
    // have no names).
    assert_eq!(stdout.lines().count(), 6 * 4, "{stdout}");
    assert!(stdout.contains("/0.png\n"), "{stdout}");

    let (ok, _, stderr) = pedconv(&["predict", "--weights", weights.to_str().unwrap(), "nowhere"]);
    assert!(!ok && stderr.contains("nowhere does not exist"), "{stderr}");
}

/// `bench` writes its JSON and markdown with a static baseline for every layer and network.
#[test]
fn bench_reports_layers_and_networks_with_ratios() {
    let dir = scratch("bench");
    let output = dir.join("bench");
    let (ok, stdout, stderr) = pedconv(&[
        "bench",
        "--layers",
        "r18",
        "--layer-batch",
        "1",
        "--layer-image",
        "64",
        "--networks",
        "r18",
        "--settings",
        "2x32",
        "--width",
        "0.125",
        "--reps",
        "1",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("| ResNet-18 | 2 | 32² | pedconv |"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("bench.json")).unwrap()).unwrap();
    let layers = report["layers"].as_array().unwrap();
    // ResNet-18 has 7 distinct PEDConv shapes, each measured with burn's static convolution,
    // the static convolution as the ResNets run it, and both paths.
    assert_eq!(layers.len(), 7 * 4, "{report}");
    // The shapes of a 64×64 input: the first blocks see the stem's 16×16 output.
    assert_eq!(layers[0]["layer"], "8→8 3×3 /1 @ 16×16", "{report}");
    assert_eq!(
        layers
            .iter()
            .map(|l| l["count"].as_u64().unwrap())
            .sum::<u64>(),
        4 * 16,
        "the counts cover ResNet-18's 16 PEDConvs (8 blocks of 2), once per operator"
    );
    // On a CPU backend the peak is the heap's; device memory is the CubeCL backends'.
    assert!(
        layers
            .iter()
            .all(|l| l["forward_backward"]["device_peak_mib"].is_null()
                && l["forward_backward"]["peak_mib"].as_f64().unwrap() > 0.0),
        "{report}"
    );
    let networks = report["networks"].as_array().unwrap();
    assert_eq!(networks.len(), 2);
    assert!(networks
        .iter()
        .all(|n| n["train_images_per_second"].as_f64().unwrap() > 0.0));
    assert!(output.join("bench.md").exists());
    // bench.jsonl: every row of the report, in the order measured, each with its kind.
    let logged: Vec<serde_json::Value> = std::fs::read_to_string(output.join("bench.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(logged.len(), layers.len() + networks.len());
    for (row, (kind, reported)) in logged.iter().zip(
        std::iter::repeat("layer")
            .zip(layers)
            .chain(std::iter::repeat("network").zip(networks)),
    ) {
        let mut row = row.clone();
        assert_eq!(row["kind"], kind, "{row}");
        row.as_object_mut().unwrap().remove("kind");
        assert_eq!(&row, reported);
    }

    let (ok, _, stderr) = pedconv(&["bench", "--settings", "16by224"]);
    assert!(
        !ok && stderr.contains("`16by224` is not BATCHxSIDE"),
        "{stderr}"
    );
    let (ok, _, stderr) = pedconv(&["bench", "--networks", "r19"]);
    assert!(!ok && stderr.contains("unknown network `r19`"), "{stderr}");
    let (ok, _, stderr) = pedconv(&["bench", "--layer-image", "16"]);
    assert!(!ok && stderr.contains("--layer-image: 16"), "{stderr}");
}

/// `--version` names burn's version (from Cargo.lock), the backends of this build, burn's
/// fusion on its GPU backends and the JPEG decoder (the default features: zune-jpeg).
#[test]
fn version_names_burn_and_the_backends() {
    let (ok, stdout, stderr) = pedconv(&["--version"]);
    assert!(ok, "{stderr}");
    let lock =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock"))
            .unwrap();
    let burn = lock
        .split("[[package]]")
        .find(|entry| entry.contains("\nname = \"burn\"\n"))
        .and_then(|entry| entry.split("version = \"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("burn in Cargo.lock");
    assert!(
        stdout.starts_with(&format!(
            "pedconv {} (burn {burn}; backends: flex, ndarray, wgpu, vulkan; GPU backends with burn's fusion; JPEGs decoded by zune-jpeg)",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout}"
    );
}
