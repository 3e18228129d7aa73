//! Files that a kill at any moment leaves whole: each is written under a temporary name beside
//! its final one, flushed to disk, and renamed over the old file (a rename within a folder is
//! atomic), so a reader finds the old file or the new one, never a part of one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::record::{DefaultRecorder, FileRecorder, Recorder, RecorderError};
use burn::tensor::backend::Backend;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The temporary name of `path` while it is written: `model-3.mpk` → `model-3-partial.mpk`
/// (which no reader of checkpoints takes for an epoch's file).
fn partial_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(extension) => format!("{stem}-partial.{}", extension.to_string_lossy()),
        None => format!("{stem}-partial"),
    };
    path.with_file_name(name)
}

/// Flushes the file at `partial` to disk and renames it to `path`.
fn commit(partial: &Path, path: &Path) -> std::io::Result<()> {
    File::open(partial)?.sync_all()?;
    std::fs::rename(partial, path)
}

/// Writes `contents` to `path` through a temporary file; the error names the file.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    let partial = partial_path(path);
    File::create(&partial)
        .and_then(|mut file| file.write_all(contents))
        .and_then(|()| commit(&partial, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// burn's full-precision recorder (resumable checkpoints), writing each file through a
/// temporary one. burn's recorder writes in place and ignores errors on its last flush, so a
/// written file is also read back before it replaces the old one.
#[derive(Debug, Clone, Default)]
pub struct DurableRecorder(DefaultRecorder);

impl<B: Backend> FileRecorder<B> for DurableRecorder {
    fn file_extension() -> &'static str {
        <DefaultRecorder as FileRecorder<B>>::file_extension()
    }
}

impl<B: Backend> Recorder<B> for DurableRecorder {
    type Settings = <DefaultRecorder as Recorder<B>>::Settings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, file: PathBuf) -> Result<(), RecorderError> {
        let path = file.with_extension(<Self as FileRecorder<B>>::file_extension());
        let mut partial = partial_path(&path);
        Recorder::<B>::save_item(&self.0, item, partial.clone())?;
        Recorder::<B>::load_item::<serde::de::IgnoredAny>(&self.0, &mut partial)?;
        commit(&partial, &path)
            .map_err(|e| RecorderError::Unknown(format!("cannot write {}: {e}", path.display())))
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        Recorder::<B>::load_item(&self.0, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pedconv-durable-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A record saved through a temporary file loads back; no temporary file stays; the old
    /// file is replaced.
    #[test]
    fn records_round_trip_and_leave_no_partial_file() {
        let dir = scratch("record");
        let device = Default::default();
        let path = dir.join("model-3");
        // Two draws of the process's generator: two different records.
        for _ in 0..2 {
            let linear: Linear<Flex> = LinearConfig::new(3, 2).init(&device);
            let expected = linear.weight.val();
            linear
                .save_file(path.clone(), &DurableRecorder::default())
                .unwrap();
            let loaded = LinearConfig::new(3, 2)
                .init::<Flex>(&device)
                .load_file(path.clone(), &DurableRecorder::default(), &device)
                .unwrap();
            loaded
                .weight
                .val()
                .into_data()
                .assert_eq(&expected.into_data(), true);
        }
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["model-3.mpk".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_replaced_whole() {
        let dir = scratch("file");
        let path = dir.join("report.json");
        write_file(&path, b"old").unwrap();
        write_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!dir.join("report-partial.json").exists());
        let missing = write_file(&dir.join("no/such/dir.json"), b"x").unwrap_err();
        assert!(missing.contains("no/such/dir.json"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
