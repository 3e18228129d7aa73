//! A run directory: the files `train` writes into it (and `predict`, `eval`, `export` and
//! `train --resume` read), their names, and how they are written (whole or not at all, see
//! [`durable`]).
//!
//! ```text
//! runs/train-1/
//!   config.json         the configuration the run used
//!   classes.json        the class names, in the model's output order
//!   checkpoint/         model-N.mpk, optim-N.mpk, scheduler-N.mpk per kept epoch
//!   epochs.jsonl        one JSON record per finished epoch
//!   curves.svg          loss and top-1 per epoch, training and validation
//!   tensorboard/        train/ and valid/ event files for `tensorboard --logdir runs/`
//!   model.mpk           the final model, once the run has finished
//!   report.json         per-epoch metrics, the best epoch, wall time, configuration
//! ```

pub mod durable;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use durable::{write_file, DurableRecorder};

pub const CONFIG: &str = "config.json";
pub const CLASSES: &str = "classes.json";
pub const CHECKPOINTS: &str = "checkpoint";
pub const JOURNAL: &str = "epochs.jsonl";
pub const CURVES: &str = "curves.svg";
pub const TENSORBOARD: &str = "tensorboard";
/// The final model's record, without the `.mpk` that burn's recorder adds.
pub const FINAL_MODEL: &str = "model";
pub const REPORT: &str = "report.json";

/// The first `runs/<kind>-N` that does not exist.
pub fn free_run_dir(kind: &str) -> PathBuf {
    (1..)
        .map(|n| PathBuf::from(format!("runs/{kind}-{n}")))
        .find(|dir| !dir.exists())
        .expect("a free run directory")
}

/// `value` as pretty-printed JSON at `path`, written whole; a value that cannot be serialised
/// is an error naming the file, never an empty file.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| format!("cannot serialise {}: {e}", path.display()))?;
    write_file(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map whose keys are not strings has no JSON form: the writer says so and writes nothing.
    #[test]
    fn unserialisable_values_are_errors_not_empty_files() {
        let dir = std::env::temp_dir().join(format!("pedconv-run-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(REPORT);
        let value: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let error = write_json(&path, &value).unwrap_err();
        assert!(
            error.contains("cannot serialise") && error.contains(REPORT),
            "{error}"
        );
        assert!(!path.exists());
        write_json(&path, &[1, 2]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[\n  1,\n  2\n]");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
