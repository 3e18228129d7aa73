//! `cargo xtask gpu-check`: the CUDA binaries, built on a machine without a GPU, and the script
//! that runs them on one with an NVIDIA GPU and no internet.
//!
//! Built into `gpu-check/` (ignored by git): `pedconv` with the CUDA backend and burn's fusion,
//! its DDP build (`--features ddp`), the downstream crate (`tests/downstream`) on burn's
//! default `Cuda`, the library's unit tests (their GPU backend is then CUDA)
//! and its CUDA suite (`suite-cuda`), release-built, stripped and gzipped, and `run.sh`
//! (`gpu-check-run.sh` here), which says what it runs, in what order and under which deadline.
//! `docs/gpu-check.md` is the user's account of it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::run_cargo;

/// Where the check is built, relative to the workspace root.
const DIR: &str = "gpu-check";
/// Its own target directory: the CUDA builds share nothing with the default features' build.
const TARGET: &str = "target/gpu-check";
/// What the folder and the tracked tree may hold together at most, so that they travel to a GPU
/// machine.
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
    // What a run of the check here left (its unpacked binaries, logs and cache) does not travel.
    for leftover in ["work", "cache"] {
        let path = Path::new(DIR).join(leftover);
        if path.exists() {
            fs::remove_dir_all(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
    }
    let bin = Path::new(DIR).join("bin");
    fs::create_dir_all(&bin).map_err(|e| format!("cannot create {}: {e}", bin.display()))?;

    for (name, features) in [("pedconv", "cuda,fusion"), ("pedconv-ddp", "ddp")] {
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
    // A user's crate with burn's default features, on `burn::backend::Cuda`.
    run_cargo(
        &[
            "build",
            "--release",
            "--manifest-path",
            "tests/downstream/Cargo.toml",
            "--no-default-features",
            "--features",
            "burn-defaults,cuda",
            "--target-dir",
            TARGET,
        ],
        &STRIPPED,
    )?;
    let built = Path::new(TARGET).join("release/pedconv-downstream");
    compress(&built, &bin.join("downstream.gz"))?;
    let tests = test_executables()?;
    for (name, path) in &tests {
        compress(path, &bin.join(format!("{name}.gz")))?;
    }
    let script = Path::new(DIR).join("run.sh");
    fs::write(&script, RUN_SH).map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    make_executable(&script)?;

    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let (size, tracked) = (folder_size(Path::new(DIR))?, tracked_size()?);
    if size + tracked > LIMIT_BYTES {
        return Err(format!(
            "{DIR}/ holds {:.1} MiB and the tracked tree {:.1} MiB, more than the {} MiB they \
             may take to a GPU machine together",
            mib(size),
            mib(tracked),
            LIMIT_BYTES >> 20
        ));
    }
    eprintln!(
        "{DIR}/: {:.1} MiB, with the tracked tree {:.1} MiB. On a machine with an NVIDIA GPU, \
         from the repository's root:",
        mib(size),
        mib(size + tracked)
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

/// Builds the library's unit tests and its CUDA suite, and returns their executables as
/// `(lib-tests | suite, path)`, read off cargo's JSON messages.
fn test_executables() -> Result<Vec<(String, PathBuf)>, String> {
    let args = [
        "test",
        "--release",
        "--package",
        "pedconv",
        "--features",
        "cuda",
        "--lib",
        "--test",
        "suite-cuda",
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
        } else if line.contains("\"name\":\"suite-cuda\"") {
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

/// The bytes of the files git tracks.
fn tracked_size() -> Result<u64, String> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(format!("`git ls-files` failed ({})", output.status));
    }
    let mut total = 0;
    for name in output
        .stdout
        .split(|&byte| byte == 0)
        .filter(|n| !n.is_empty())
    {
        let path = Path::new(std::str::from_utf8(name).map_err(|e| e.to_string())?);
        // A tracked file deleted from the work tree does not travel.
        total += fs::metadata(path).map_or(0, |meta| meta.len());
    }
    Ok(total)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// On a machine without an NVIDIA GPU the script ends within a minute, exits non-zero and
    /// leaves notes (in the tree and in `$OUT`) that give each GPU step's reason for not
    /// running. It runs on copies of the binaries' archives: no step executes them here.
    #[test]
    fn without_a_gpu_the_script_says_why_each_step_did_not_run() {
        if Command::new("nvidia-smi").arg("-L").output().is_ok() {
            eprintln!("skipped: this machine has nvidia-smi");
            return;
        }
        let tree = std::env::temp_dir().join(format!("gpu-check-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tree);
        let bin = tree.join("gpu-check/bin");
        let out = tree.join("out");
        for dir in [&bin, &out, &tree.join("configs")] {
            fs::create_dir_all(dir).unwrap();
        }
        let root = workspace_root().unwrap();
        let config = "configs/pedconv-resnet18-synthetic.json";
        fs::copy(root.join(config), tree.join(config)).unwrap();
        for name in ["pedconv", "pedconv-ddp", "downstream", "lib-tests", "suite"] {
            let plain = bin.join(name);
            fs::write(&plain, "not a program").unwrap();
            compress(&plain, &bin.join(format!("{name}.gz"))).unwrap();
        }
        let script = tree.join("gpu-check/run.sh");
        fs::write(&script, RUN_SH).unwrap();

        let start = Instant::now();
        let mut child = Command::new("bash")
            .arg(&script)
            .env("OUT", &out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the script ran for more than a minute");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(!status.success(), "the script succeeded without a GPU");

        let notes = fs::read_to_string(tree.join("docs/gpu-notes.md")).unwrap();
        assert!(notes.contains("nvidia-smi: not found"), "{notes}");
        for gpu_step in [
            "kernels",
            "train",
            "train-ddp",
            "downstream",
            "bench-bf16",
            "torch-bench",
            "bench",
            "suite",
        ] {
            let row = format!("| {gpu_step} | not run: no NVIDIA GPU (nvidia-smi not found) |");
            assert!(notes.contains(&row), "no row `{row}` in:\n{notes}");
        }
        assert_eq!(
            fs::read_to_string(out.join("gpu-notes.md")).unwrap(),
            notes,
            "the notes are published to $OUT"
        );
        assert!(out.join("logs.tar.gz").is_file());
        fs::remove_dir_all(&tree).unwrap();
    }
}
