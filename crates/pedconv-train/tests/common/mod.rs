//! What the command-line test binaries share: running `pedconv`, scratch folders, and reading
//! and comparing run directories. Each binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh folder for one test's files (named by this process and `name`, so that test binaries
/// and tests running at once do not meet); a failing test leaves it for inspection.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pedconv-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the `pedconv` binary: whether it succeeded, its stdout and its stderr.
pub fn pedconv(args: &[&str]) -> (bool, String, String) {
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

/// Rewrites the JSON configuration at `path` with `edit` applied.
pub fn edit_config(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

pub fn report(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("report.json")).expect("report.json");
    serde_json::from_str(&text).unwrap()
}

/// Every epoch's training and validation metrics.
pub fn epoch_metrics(run: &Path) -> Vec<(u64, serde_json::Value, serde_json::Value)> {
    report(run)["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["epoch"].as_u64().unwrap(),
                e["train"].clone(),
                e["valid"].clone(),
            )
        })
        .collect()
}

/// Equal per-epoch metrics (losses, accuracies, learning rate), to 1e-6 relative.
pub fn assert_same_metrics(straight: &Path, resumed: &Path) {
    let (a, b) = (epoch_metrics(straight), epoch_metrics(resumed));
    assert_eq!(a.len(), b.len());
    for ((epoch, train_a, valid_a), (epoch_b, train_b, valid_b)) in a.iter().zip(&b) {
        assert_eq!(epoch, epoch_b);
        for (x, y) in [(train_a, train_b), (valid_a, valid_b)] {
            let (x, y) = (x.as_object().unwrap(), y.as_object().unwrap());
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            for (name, value) in x {
                let (u, v) = (value.as_f64().unwrap(), y[name].as_f64().unwrap());
                assert!(
                    (u - v).abs() <= 1e-6 * u.abs().max(v.abs()),
                    "epoch {epoch} {name}: {u} straight, {v} resumed"
                );
            }
        }
    }
}

/// `pedconv args --output output` fails with `message`, without a panic, and leaves nothing at
/// `output`.
pub fn assert_refused(args: &[&str], output: &Path, message: &str) {
    let mut args = args.to_vec();
    args.extend(["--output", output.to_str().unwrap()]);
    let (ok, _, stderr) = pedconv(&args);
    assert!(!ok && stderr.contains(message), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !output.exists(),
        "a run that cannot start leaves nothing behind"
    );
}

/// A copy of the run directory `from` at `to`.
pub fn copy_run(from: &Path, to: &Path) {
    for dir in ["checkpoint", "tensorboard/train", "tensorboard/valid"] {
        std::fs::create_dir_all(to.join(dir)).unwrap();
    }
    for dir in ["", "checkpoint", "tensorboard/train", "tensorboard/valid"] {
        for entry in std::fs::read_dir(from.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, to.join(dir).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
}

/// Removes the checkpoints of `epochs` and what the finished run added (the final model and
/// the report): the run directory as a kill during the first of those epochs leaves it.
pub fn forget_epochs(run: &Path, epochs: &[usize]) {
    for epoch in epochs {
        for part in ["model", "optim", "scheduler"] {
            std::fs::remove_file(run.join(format!("checkpoint/{part}-{epoch}.mpk"))).unwrap();
        }
    }
    std::fs::remove_file(run.join("model.mpk")).unwrap();
    std::fs::remove_file(run.join("report.json")).unwrap();
}
