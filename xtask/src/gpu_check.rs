//! `cargo xtask gpu-check`: the CUDA binaries, built on a machine without a GPU, and the script
//! that runs them on one with an NVIDIA GPU and no internet.
//!
//! Built into `gpu-check/` (ignored by git): `pedconv` with the CUDA backend, its DDP build
//! (`--features ddp`), the library's unit tests and its suite with the `test-cuda` feature (the
//! suite's backend is then CUDA), release-built, stripped and gzipped, and `run.sh`. The script
//! runs the tests, `pedconv bench --backend cuda` (layers at batch 32; ResNet-18 at 64×224²,
//! 128×112² and 128×224², float32 and bfloat16) and one epoch of training on synthetic images
//! (`configs/pedconv-resnet18-synthetic.json`), once with the DDP build, and writes what it saw to
//! `docs/gpu-notes.md`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::run_cargo;

/// Where the check is built, relative to the workspace root.
const DIR: &str = "gpu-check";
/// Its own target directory: the CUDA builds share nothing with the default features' build.
const TARGET: &str = "target/gpu-check";
/// What the folder may hold at most, so that it travels to a GPU machine with the tree.
const LIMIT_BYTES: u64 = 64 << 20;

/// Release builds stripped of symbols and debug information.
const STRIPPED: [(&str, &str); 2] = [
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    ("CARGO_PROFILE_RELEASE_STRIP", "symbols"),
];

pub fn build() -> Result<(), String> {
    let root = workspace_root()?;
    std::env::set_current_dir(&root)
        .map_err(|e| format!("cannot enter {}: {e}", root.display()))?;
    let bin = Path::new(DIR).join("bin");
    fs::create_dir_all(&bin).map_err(|e| format!("cannot create {}: {e}", bin.display()))?;

    for (name, features) in [("pedconv", "cuda"), ("pedconv-ddp", "ddp")] {
        run_cargo(
            &[
                "build",
                "--release",
                "--package",
                "pedconv-train",
                "--no-default-features",
                "--features",
                features,
                "--target-dir",
                TARGET,
            ],
            &STRIPPED,
        )?;
        let built = Path::new(TARGET).join("release/pedconv");
        compress(&built, &bin.join(format!("{name}.gz")))?;
    }
    let tests = test_executables()?;
    for (name, path) in &tests {
        compress(path, &bin.join(format!("{name}.gz")))?;
    }
    let script = Path::new(DIR).join("run.sh");
    fs::write(&script, RUN_SH).map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    make_executable(&script)?;

    let size = folder_size(Path::new(DIR))?;
    if size > LIMIT_BYTES {
        return Err(format!(
            "{DIR}/ holds {:.1} MiB, more than the {} MiB it may take to a GPU machine",
            size as f64 / (1 << 20) as f64,
            LIMIT_BYTES >> 20
        ));
    }
    eprintln!(
        "{DIR}/: {:.1} MiB. On a machine with an NVIDIA GPU, from the repository's root:",
        size as f64 / (1 << 20) as f64
    );
    println!("bash {DIR}/run.sh");
    Ok(())
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> Result<PathBuf, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the xtask crate has no parent directory".to_string())
}

/// Builds the library's unit tests and its suite with `test-cuda`, and returns their
/// executables as `(lib-tests | suite, path)`, read off cargo's JSON messages.
fn test_executables() -> Result<Vec<(String, PathBuf)>, String> {
    let args = [
        "test",
        "--release",
        "--package",
        "pedconv",
        "--features",
        "test-cuda",
        "--lib",
        "--test",
        "suite",
        "--no-run",
        "--message-format=json",
        "--target-dir",
        TARGET,
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let output = Command::new(env!("CARGO"))
        .args(args)
        .envs(STRIPPED)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo {}` failed ({})",
            args.join(" "),
            output.status
        ));
    }
    let messages = String::from_utf8_lossy(&output.stdout);
    let mut found = Vec::new();
    for line in messages.lines() {
        let Some(path) = json_string(line, "\"executable\":\"") else {
            continue;
        };
        let name = if line.contains("\"kind\":[\"lib\"]") {
            "lib-tests"
        } else if line.contains("\"name\":\"suite\"") {
            "suite"
        } else {
            continue;
        };
        found.push((name.to_string(), PathBuf::from(path)));
    }
    if found.len() != 2 {
        return Err(format!(
            "expected the lib and suite test executables from cargo, found {found:?}"
        ));
    }
    Ok(found)
}

/// The string value that follows `key` on `line` (cargo's paths: no escapes on Unix).
fn json_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let end = line[start..].find('"')?;
    Some(&line[start..start + end])
}

/// `gzip -9` of `from` into `to`.
fn compress(from: &Path, to: &Path) -> Result<(), String> {
    let file = fs::File::create(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let status = Command::new("gzip")
        .args(["-9", "--stdout"])
        .arg(from)
        .stdout(file)
        .status()
        .map_err(|e| format!("cannot run gzip: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("gzip of {} failed ({status})", from.display()))
    }
}

fn make_executable(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make {} executable: {e}", path.display()))?;
    }
    let _ = path;
    Ok(())
}

fn folder_size(dir: &Path) -> Result<u64, String> {
    let mut total = 0;
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let meta = entry
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
        total += if meta.is_dir() {
            folder_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The script the GPU machine runs, from the repository's root.
const RUN_SH: &str = include_str!("gpu-check-run.sh");
