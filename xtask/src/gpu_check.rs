//! `cargo xtask gpu-check`: the CUDA binaries, built on a machine without a GPU, and the script
//! that runs them on one with an NVIDIA GPU and no internet.
//!
//! Built into `gpu-check/` (ignored by git: it reaches a GPU machine only when copied with the
//! tree): `pedconv` with the CUDA backend and burn's fusion (every `pedconv` step of the check
//! runs it), its DDP build (`--features ddp`), the downstream crate (`tests/downstream`) on
//! burn's default `Cuda`, the library's unit tests (their GPU backend is then CUDA) and its
//! CUDA suite (`suite-cuda`), release-built for the GPU machine's CUDA version, stripped and
//! gzipped, and `run.sh` (`gpu-check-run.sh` here), which says what it runs, in what order and
//! under which deadline. `--cache FILE` puts the kernel and autotune cache a run returned
//! (`gpu-cache.tar.gz`) into the folder, so that the next run starts warm.
//! `docs/gpu-check.md` is the user's account of it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{run_cargo, workspace_root};

/// Where the check is built, relative to the workspace root.
const DIR: &str = "gpu-check";
/// Its own target directory: the CUDA builds share nothing with the default features' build.
const TARGET: &str = "target/gpu-check";
/// What the folder and the tracked tree may hold together at most, so that they travel to a GPU
/// machine.
const LIMIT_BYTES: u64 = 64 << 20;

/// The CUDA version of the GPU machines' toolkit (`nvcc` 13.0), for cudarc's bindings
/// (`CUDARC_CUDA_VERSION`; without it and without `nvcc` here, cudarc binds the newest version
/// it knows, whose newer symbols an older library lacks). An exported `CUDARC_CUDA_VERSION`
/// wins.
const CUDA_VERSION: &str = "13000";

/// How the check is built: release builds stripped of symbols and debug information, with
/// cudarc's bindings for the GPU machine's CUDA version.
fn build_env() -> Vec<(&'static str, String)> {
    let cuda = std::env::var("CUDARC_CUDA_VERSION").unwrap_or_else(|_| CUDA_VERSION.into());
    vec![
        ("CARGO_PROFILE_RELEASE_DEBUG", "false".into()),
        ("CARGO_PROFILE_RELEASE_STRIP", "symbols".into()),
        ("CUDARC_CUDA_VERSION", cuda),
    ]
}

/// `cargo xtask gpu-check [--cache FILE]`.
pub fn build(args: &[String]) -> Result<(), String> {
    let cache = match args {
        [] => None,
        [flag, file] if flag == "--cache" => {
            Some(fs::canonicalize(file).map_err(|e| format!("cannot read the cache {file}: {e}"))?)
        }
        _ => {
            return Err(format!(
                "usage: cargo xtask gpu-check [--cache FILE], not {args:?}"
            ))
        }
    };
    let root = workspace_root()?;
    std::env::set_current_dir(&root)
        .map_err(|e| format!("cannot enter {}: {e}", root.display()))?;
    // What a run of the check here left (its unpacked binaries and logs) does not travel; its
    // cache does, unless a returned one replaces it (run.sh drops compiled kernels that other
    // binaries compiled).
    let mut leftovers = vec!["work"];
    if cache.is_some() {
        leftovers.push("cache");
    }
    for leftover in leftovers {
        let path = Path::new(DIR).join(leftover);
        if path.exists() {
            fs::remove_dir_all(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
    }
    let env = build_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
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
            &env,
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
        &env,
    )?;
    let built = Path::new(TARGET).join("release/pedconv-downstream");
    compress(&built, &bin.join("downstream.gz"))?;
    let tests = test_executables(&env)?;
    for (name, path) in &tests {
        compress(path, &bin.join(format!("{name}.gz")))?;
    }
    let script = Path::new(DIR).join("run.sh");
    fs::write(&script, RUN_SH).map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    make_executable(&script)?;
    if let Some(file) = &cache {
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(file)
            .arg("-C")
            .arg(DIR)
            .status()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        if !status.success() || !Path::new(DIR).join("cache").is_dir() {
            return Err(format!(
                "{} is not a cache the check returned (gpu-cache.tar.gz holds cache/)",
                file.display()
            ));
        }
    }

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
        "{DIR}/: {:.1} MiB, with the tracked tree {:.1} MiB. {DIR}/ is ignored by git: copy it \
         with the tree to the machine with the NVIDIA GPU (with the device tool, name `{DIR}` \
         in `carry`). There, from the repository's root (with OUT set to a folder that comes \
         back, the device tool's own):",
        mib(size),
        mib(size + tracked)
    );
    println!("bash {DIR}/run.sh");
    eprintln!(
        "It returns gpu-notes.md (copy it to docs/), logs.tar.gz and gpu-cache.tar.gz; \
         `cargo xtask gpu-check --cache gpu-cache.tar.gz` makes the next run start warm."
    );
    Ok(())
}

/// Builds the library's unit tests and its CUDA suite, and returns their executables as
/// `(lib-tests | suite, path)`, read off cargo's JSON messages.
fn test_executables(env: &[(&str, &str)]) -> Result<Vec<(String, PathBuf)>, String> {
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
        .envs(env.iter().copied())
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

    /// The steps of the check, in their order.
    const STEPS: [&str; 12] = [
        "preflight",
        "kernels",
        "torch-golden",
        "torch-bench",
        "bench",
        "table",
        "learn",
        "profile",
        "layers",
        "suite",
        "downstream",
        "train-ddp",
    ];

    /// A stand-in for every program the check runs: it logs its name and arguments to
    /// `$ORDER_LOG`, writes what the real one would (bench rows, a training report, a cache
    /// entry), and, where its step is `$SLOW_STEP`, prints a partial result and sleeps past any
    /// budget.
    const STAND_IN: &str = r#"#!/usr/bin/env bash
name=$(basename "$0")
echo "$name $*" >> "$ORDER_LOG"
slow() { [ "${SLOW_STEP:-}" = "$1" ] && { echo "partial output of $1"; sleep 1000; }; }
output() { while [ $# -gt 1 ]; do [ "$1" = --output ] && { echo "$2"; return; }; shift; done; }
case "$name $1" in
    "nvidia-smi -L") echo "GPU 0: stand-in" ;;
    "nvidia-smi "*) echo "name, memory.total"; echo "stand-in, 1 MiB" ;;
    "python3 -c") [[ "$2" == *torch.__version__* ]] && echo "PyTorch stand-in" ;;
    "python3 -") cat > /dev/null; echo "| 1 | 2.0 | 50.0 | 9 |" ;;
    "python3 "*)
        case "$*" in
            *check-golden*) echo "golden: every case within tolerance" ;;
            *" bench "*)
                mkdir -p torch
                echo "| 128 | 224² | bf16 | PyTorch | stand-in row |" > torch/side-by-side.md
                slow torch-bench ;;
            *" table "*) echo "| merged table |" >> torch/side-by-side.md ;;
            *cubecl_profile.py*) echo "| \`stand-in kernel\` | 1.0 | 1 | 100.0 |" ;;
        esac ;;
    "pedconv bench" | "pedconv train" | "pedconv-ddp train")
        dir=$(output "$@")
        mkdir -p "$dir" "$CUDA_CACHE_PATH"
        echo "$name" > "$CUDA_CACHE_PATH/$name-$dir"
        echo '{"kind": "network"}' > "$dir/bench.jsonl"
        slow "$dir" ;;
    *) echo "test result: ok. 1 passed" ;;
esac
exit 0
"#;

    /// A copy of the check's folder in a temporary tree, every binary a stand-in (also
    /// `nvidia-smi` and `python3`, first on the returned `PATH`): `(tree, $OUT, PATH)`.
    fn rehearsal(name: &str) -> (PathBuf, PathBuf, std::ffi::OsString) {
        let tree = std::env::temp_dir().join(format!("gpu-check-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tree);
        let (bin, out, tools) = (
            tree.join("gpu-check/bin"),
            tree.join("out"),
            tree.join("tools"),
        );
        for dir in [&bin, &out, &tools] {
            fs::create_dir_all(dir).unwrap();
        }
        for name in ["pedconv", "pedconv-ddp", "downstream", "lib-tests", "suite"] {
            let plain = tools.join(name);
            fs::write(&plain, STAND_IN).unwrap();
            compress(&plain, &bin.join(format!("{name}.gz"))).unwrap();
            fs::remove_file(&plain).unwrap();
        }
        for name in ["nvidia-smi", "python3"] {
            fs::write(tools.join(name), STAND_IN).unwrap();
            make_executable(&tools.join(name)).unwrap();
        }
        fs::write(tree.join("gpu-check/run.sh"), RUN_SH).unwrap();
        let mut paths = vec![tools];
        paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap()));
        (tree, out, std::env::join_paths(paths).unwrap())
    }

    /// Runs the rehearsal's script, killing it past `limit`: its exit status and duration.
    fn run_script(
        tree: &Path,
        env: &[(&str, &std::ffi::OsStr)],
        limit: Duration,
    ) -> (bool, Duration) {
        let start = Instant::now();
        let mut child = Command::new("bash")
            .arg(tree.join("gpu-check/run.sh"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.success(), start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("the script ran for more than {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The notes' step rows, in order: `(step, outcome)`.
    fn step_rows(notes: &str) -> Vec<(String, String)> {
        notes
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split(" | ").collect();
                let step = cells.first()?.strip_prefix("| ")?;
                (cells.len() == 2 && STEPS.contains(&step)).then(|| {
                    (
                        step.to_string(),
                        cells[1].trim_end_matches(" |").to_string(),
                    )
                })
            })
            .collect()
    }

    /// With every program answering at once, the steps run in their order, each once, all
    /// pass, and the notes, the logs and the cache reach `$OUT`.
    #[test]
    fn the_steps_run_in_their_order() {
        let (tree, out, path) = rehearsal("order");
        let order = tree.join("order.log");
        let (passed, _) = run_script(
            &tree,
            &[
                ("OUT", out.as_os_str()),
                ("PATH", &path),
                ("ORDER_LOG", order.as_os_str()),
            ],
            Duration::from_secs(60),
        );
        let notes = fs::read_to_string(out.join("gpu-notes.md")).unwrap();
        let rows = step_rows(&notes);
        let names: Vec<&str> = rows.iter().map(|(step, _)| step.as_str()).collect();
        assert_eq!(names, STEPS, "{notes}");
        assert!(
            rows.iter()
                .all(|(_, outcome)| outcome.starts_with("passed")),
            "{notes}"
        );
        assert!(passed, "{notes}");
        // The programs behind the steps, in the steps' order.
        let calls = fs::read_to_string(&order).unwrap();
        let expected = [
            "lib-tests on_the_gpu",
            "python3 ",
            "check-golden",
            " bench --settings 128x224 --precision bf16",
            "pedconv bench --backend cuda --layers none",
            " table --torch torch --pedconv bench",
            "pedconv train --backend cuda",
            "python3 -",
            "--output .",
            "cubecl_profile.py",
            "--layers r18,r50",
            "suite golden_parity",
            "downstream",
            "pedconv-ddp train",
        ];
        let mut rest = calls.as_str();
        for call in expected {
            let at = rest
                .find(call)
                .unwrap_or_else(|| panic!("no `{call}` after:\n{rest}"));
            rest = &rest[at + call.len()..];
        }
        assert!(notes.contains("| merged table |"), "{notes}");
        assert!(notes.contains("stand-in kernel"), "{notes}");
        let cache = list_tar(&out.join("gpu-cache.tar.gz"));
        assert!(cache.contains("cache/nv/pedconv-bench"), "{cache}");
        assert!(list_tar(&out.join("logs.tar.gz")).contains("logs/learn.log"));
        fs::remove_dir_all(&tree).unwrap();
    }

    /// A step that overruns is killed at the deadline; its log and partial results, the
    /// cache so far and the notes reach `$OUT`, and the steps after it are reported as not
    /// run for the deadline.
    #[test]
    fn the_deadline_holds_and_keeps_what_was_seen() {
        let (tree, out, path) = rehearsal("deadline");
        let order = tree.join("order.log");
        let deadline = 12;
        let (passed, took) = run_script(
            &tree,
            &[
                ("OUT", out.as_os_str()),
                ("PATH", &path),
                ("ORDER_LOG", order.as_os_str()),
                ("SLOW_STEP", "torch-bench".as_ref()),
                ("GPU_CHECK_DEADLINE", deadline.to_string().as_ref()),
            ],
            Duration::from_secs(60),
        );
        assert!(!passed);
        // The deadline, `timeout`'s grace period of 5 s, and the notes written after it.
        assert!(took < Duration::from_secs(deadline + 8), "{took:?}");
        let notes = fs::read_to_string(out.join("gpu-notes.md")).unwrap();
        let rows = step_rows(&notes);
        let outcome = |step: &str| &rows.iter().find(|(s, _)| s == step).unwrap().1;
        assert!(outcome("kernels").starts_with("passed"), "{notes}");
        assert!(outcome("torch-bench").starts_with("TIMED OUT"), "{notes}");
        for later in &STEPS[4..] {
            assert_eq!(
                outcome(later),
                &format!("not run: the deadline ({deadline} s) was reached"),
                "{notes}"
            );
        }
        assert!(notes.contains("stand-in row"), "the partial table: {notes}");
        let logs = list_tar(&out.join("logs.tar.gz"));
        assert!(logs.contains("logs/torch-bench.log"), "{logs}");
        let log = Command::new("tar")
            .args(["-xzOf"])
            .arg(out.join("logs.tar.gz"))
            .arg("./logs/torch-bench.log")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&log.stdout).contains("partial output of torch-bench"));
        assert!(out.join("gpu-cache.tar.gz").is_file());
        fs::remove_dir_all(&tree).unwrap();
    }

    fn list_tar(file: &Path) -> String {
        let output = Command::new("tar").arg("-tzf").arg(file).output().unwrap();
        assert!(output.status.success(), "cannot list {}", file.display());
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

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
        for dir in [&bin, &out] {
            fs::create_dir_all(dir).unwrap();
        }
        for name in ["pedconv", "pedconv-ddp", "downstream", "lib-tests", "suite"] {
            let plain = bin.join(name);
            fs::write(&plain, "not a program").unwrap();
            compress(&plain, &bin.join(format!("{name}.gz"))).unwrap();
        }
        fs::write(tree.join("gpu-check/run.sh"), RUN_SH).unwrap();

        let (passed, _) = run_script(&tree, &[("OUT", out.as_os_str())], Duration::from_secs(60));
        assert!(!passed, "the script succeeded without a GPU");

        let notes = fs::read_to_string(tree.join("docs/gpu-notes.md")).unwrap();
        assert!(notes.contains("nvidia-smi: not found"), "{notes}");
        let rows = step_rows(&notes);
        for gpu_step in [
            "kernels",
            "torch-bench",
            "bench",
            "learn",
            "profile",
            "layers",
            "suite",
            "downstream",
            "train-ddp",
        ] {
            assert!(
                rows.contains(&(
                    gpu_step.to_string(),
                    "not run: no NVIDIA GPU (nvidia-smi not found)".to_string()
                )),
                "no row for {gpu_step} in:\n{notes}"
            );
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
