//! `pedconv train --weights`: fine-tuning the paper's checkpoint format and torchvision's
//! static weights on an image folder, as a user runs it, with `configs/fine-tune.json`.
//!
//! The fixtures come from scripts beside them: `tests/fixtures/digits/make_digits.py` trained
//! the paper's PEDConv ResNet-18 (width 1/4) with the paper's code on ten generated digits and
//! drew `five/`, a folder of five of those digits that the checkpoint never saw;
//! `tests/fixtures/torchvision/make_resnet18.py` saved torchvision's static ResNet-18 (a
//! quarter of the channels).

mod common;

use std::path::{Path, PathBuf};

use serde_json::json;

use common::{
    assert_refused, assert_same_metrics, copy_run, edit_config, forget_epochs, pedconv, report,
    scratch,
};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(path)
}

fn digits_checkpoint() -> PathBuf {
    fixture("digits/digits_r18_w0.25_c10.pth.tar")
}

fn five_digits() -> PathBuf {
    fixture("digits/five")
}

/// `configs/fine-tune.json` for the 32×32 digits: the crops at their size, no flips (digits
/// change meaning under a mirror), `epochs` epochs.
fn digits_config(dir: &Path, epochs: usize) -> PathBuf {
    let path = dir.join("fine-tune.json");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/fine-tune.json");
    std::fs::copy(shipped, &path).unwrap();
    edit_config(&path, |config| {
        config["epochs"] = epochs.into();
        let data = &mut config["data"];
        data["train_crop"] = 32.into();
        data["val_resize"] = 32.into();
        data["val_crop"] = 32.into();
        data["augmentation"] = json!({
            "crop": {"kind": "resize_centre", "resize": 32},
            "flip": false,
            "auto_augment": false
        });
    });
    path
}

/// The network of the digits checkpoint (a PEDConv ResNet-18 at width 1/4, 10 classes) as a
/// configuration's `model`, with `edit` applied.
fn digits_network(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut model = json!({
        "depth": "R18", "variant": "Classic", "width": 0.25, "num_classes": 10,
        "pedconv": {"reduction": 16, "rank": 1, "noise_std": 0.1, "info_max_decoder": true,
                    "compute_path": "Auto"},
        "conv_init": "Classic", "bn_scale_init": 0.5, "zero_init_last_bn": false
    });
    edit(&mut model);
    model
}

/// Trains with `args` into `dir/name`: the run directory and what the run printed.
fn train(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, String) {
    let output = dir.join(name);
    let mut all = vec!["train", "--output", output.to_str().unwrap()];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = pedconv(&all);
    assert!(ok, "{stderr}");
    (output, stdout)
}

/// Fine-tunes `weights` on the five digits with `config` and the `extra` arguments into
/// `dir/name`: the run directory and what the run printed.
fn fine_tune(
    dir: &Path,
    name: &str,
    weights: &Path,
    config: &Path,
    extra: &[&str],
) -> (PathBuf, String) {
    let data = five_digits();
    let mut args = vec![
        "--weights",
        weights.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    train(dir, name, &args)
}

fn best_top1(run: &Path) -> f64 {
    report(run)["best_top1"].as_f64().unwrap()
}

/// The SHA-256 of a file by coreutils' `sha256sum`.
fn sha256sum(path: &Path) -> String {
    let output = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    let text = String::from_utf8(output.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_string()
}

/// The paper's-format digits checkpoint (10 classes) fine-tuned for one epoch on five unseen
/// digits reaches 97 % validation top-1 with a new 5-class head; one epoch from scratch on
/// the same folder, with the same configuration and the same network, stays far below.
#[test]
fn fine_tuning_the_digits_checkpoint_beats_training_from_scratch() {
    let dir = scratch("fine-tune-digits");
    let config = digits_config(&dir, 1);
    let (config_arg, data) = (config.to_str().unwrap(), five_digits());
    let weights = digits_checkpoint();
    let (tuned, stdout) = fine_tune(&dir, "tuned", &weights, &config, &[]);
    assert!(
        stdout.contains("a new classifier for the data's 5 classes (the file's has 10)"),
        "{stdout}"
    );
    let started = &report(&tuned)["fine_tuned_from"];
    assert_eq!(started["sha256"], sha256sum(&weights).as_str(), "{started}");
    assert_eq!(started["weights"], weights.to_str().unwrap(), "{started}");
    assert_eq!(started["new_head"], true, "{started}");
    assert_eq!(started["attention_from_file"], true, "{started}");
    let tuned_top1 = best_top1(&tuned);
    assert!(tuned_top1 >= 97.0, "fine-tuned: {tuned_top1}%");

    // From scratch: the file's network written into the configuration, no fine-tuning.
    edit_config(&config, |config| {
        let model = &report(&tuned)["config"]["model"];
        config["model"] = model.clone();
        config.as_object_mut().unwrap().remove("fine_tune");
    });
    let (scratch_run, _) = train(
        &dir,
        "scratch",
        &["--config", config_arg, "--data", data.to_str().unwrap()],
    );
    assert!(report(&scratch_run)["fine_tuned_from"].is_null());
    let scratch_top1 = best_top1(&scratch_run);
    assert!(
        scratch_top1 <= tuned_top1 - 30.0,
        "from scratch {scratch_top1}%, fine-tuned {tuned_top1}%"
    );
}

/// A fine-tuning run whose head alone trains in its first epoch, killed in its second and
/// resumed, gives the metrics and the final model of the uninterrupted run: the frozen epochs
/// and the rates follow the saved configuration.
#[test]
fn a_resumed_fine_tuning_run_is_exact() {
    let dir = scratch("fine-tune-resume");
    let config = digits_config(&dir, 2);
    let weights = digits_checkpoint();
    let extra = ["--train-only", "head", "--train-only-epochs", "1"];
    let (straight, _) = fine_tune(&dir, "straight", &weights, &config, &extra);
    let resumed = dir.join("resumed");
    copy_run(&straight, &resumed);
    forget_epochs(&resumed, &[2]);
    let (ok, stdout, stderr) = pedconv(&["train", "--resume", resumed.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("resuming epochs 2-2"), "{stdout}");
    assert_same_metrics(&straight, &resumed);
    let model = |run: &Path| std::fs::read(run.join("model.mpk")).unwrap();
    assert!(
        model(&straight) == model(&resumed),
        "the resumed run's final model differs from the straight run's"
    );
    let settings = &report(&resumed)["config"]["fine_tune"];
    assert_eq!(settings["train_only"], "head", "{settings}");
    assert_eq!(settings["train_only_epochs"], 1, "{settings}");
}

/// torchvision's static ResNet-18 starts a PEDConv run: its convolutions become the base
/// weights (the library's unit test checks them bit for bit at step 0), the attention
/// branches start fresh, and the run trains.
#[test]
fn torchvision_static_weights_start_a_pedconv_run() {
    let dir = scratch("fine-tune-torchvision");
    let config = digits_config(&dir, 1);
    let weights = fixture("torchvision/resnet18_w0.25_c10_torchvision.pth");
    // The file's network with PEDConv.
    edit_config(&config, |config| config["model"] = digits_network(|_| ()));
    let (run, stdout) = fine_tune(&dir, "run", &weights, &config, &[]);
    assert!(stdout.contains("the file is a static network"), "{stdout}");
    let started = &report(&run)["fine_tuned_from"];
    assert_eq!(started["attention_from_file"], false, "{started}");
    assert_eq!(report(&run)["finished"], true);
    assert!(run.join("model.mpk").is_file());
}

/// Weights that do not fit the configuration are refused before anything is written: another
/// depth, a static configuration for PEDConv weights, a tensor of another shape (named with
/// both shapes), a burn record without its run's configuration, and fine-tuning settings
/// without weights.
#[test]
fn weights_that_do_not_fit_are_named_and_leave_nothing() {
    let dir = scratch("fine-tune-mismatch");
    let config = digits_config(&dir, 1);
    let config_arg = config.to_str().unwrap().to_string();
    let weights = digits_checkpoint();
    let weights_arg = weights.to_str().unwrap();
    let data = five_digits();
    let data_arg = data.to_str().unwrap();
    let output = dir.join("never");
    let refused = |config: &Path, extra: &[&str], message: &str| {
        let mut args = vec![
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            data_arg,
        ];
        args.extend_from_slice(extra);
        assert_refused(&args, &output, message);
    };
    let with_model = |name: &str, model: serde_json::Value| {
        let path = dir.join(name);
        std::fs::copy(&config, &path).unwrap();
        edit_config(&path, |config| config["model"] = model);
        path
    };
    let r50 = with_model("r50.json", digits_network(|m| m["depth"] = "R50".into()));
    refused(&r50, &["--weights", weights_arg], "model.depth is R50");
    let static_r18 = with_model(
        "static.json",
        digits_network(|m| m["pedconv"] = json!(null)),
    );
    refused(
        &static_r18,
        &["--weights", weights_arg],
        "model.pedconv is null",
    );
    // The digits network described with rank-2 attention: the file's attention heads do not fit.
    let rank2_network = digits_network(|m| m["pedconv"]["rank"] = 2.into());
    let rank2 = dir.join("rank2-network.json");
    std::fs::write(&rank2, rank2_network.to_string()).unwrap();
    let rank2_config = with_model("rank2.json", rank2_network);
    refused(
        &rank2_config,
        &[
            "--weights",
            weights_arg,
            "--weights-config",
            rank2.to_str().unwrap(),
        ],
        "layer1.0.conv1.attn.fc_k.weight: the model expects shape",
    );
    let record = dir.join("model.mpk");
    std::fs::write(&record, b"not a record").unwrap();
    refused(
        Path::new(&config_arg),
        &["--weights", record.to_str().unwrap()],
        "no run's config.json is beside it",
    );
    refused(Path::new(&config_arg), &[], "has no model");
    refused(&r50, &[], "fine_tune settings apply to pretrained weights");
}
