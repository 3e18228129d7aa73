//! Project tasks: `cargo xtask <task>`. Each task runs cargo commands; see `cargo xtask help`.

mod gpu_check;
mod suites;

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const HELP: &str = "\
usage: cargo xtask <task>

tasks:
  test        the README's test command: provides what the tests need (Python packages in
              a venv under target/; as root, Mesa's Vulkan driver and libjpeg-turbo's
              development files), runs every suite (CPU, wgpu, libjpeg-turbo, the
              downstream crate) and names any suite that did not run or pass
  lint        rustfmt --check and clippy with warnings as errors
  ci          lint, test: what .ci/run runs
  bench       `pedconv bench` in a release build (arguments after `bench` are passed on;
              default: flex, ResNet-18 and -50 layers, ResNet-18 at 16x224 and 64x64)
  gpu-check [--cache FILE]
              build the CUDA binaries (`pedconv`, its DDP build, the tests on CUDA),
              stripped and compressed, into gpu-check/ with run.sh, which runs them on a
              machine with an NVIDIA GPU and no internet under one deadline, writing
              docs/gpu-notes.md after every step (docs/gpu-check.md); print the command.
              --cache: the kernel and autotune cache a run returned, for a warm start
";

fn cargo(args: &[&str]) -> Result<(), String> {
    run_cargo(args, &[])
}

/// `cargo args` with extra environment variables, failing on a non-zero exit.
fn run_cargo(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().copied())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> Result<PathBuf, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the xtask crate has no parent directory".to_string())
}

fn lint() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args
        .split_first()
        .map_or(("", &[][..]), |(t, r)| (t.as_str(), r));
    let result = match task {
        "test" => suites::run(),
        "lint" => lint(),
        "ci" => lint().and_then(|()| suites::run()),
        "bench" => {
            let mut command = vec![
                "run",
                "--release",
                "--package",
                "pedconv-train",
                "--",
                "bench",
            ];
            command.extend(rest.iter().map(String::as_str));
            cargo(&command)
        }
        "gpu-check" => gpu_check::build(rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{HELP}")),
    };
    if let Err(message) = result {
        eprintln!("xtask: {message}");
        exit(1);
    }
}
