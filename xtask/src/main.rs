//! Project tasks: `cargo xtask <task>`. Each task runs cargo commands; see `cargo xtask help`.

mod gpu_check;

use std::process::{exit, Command};

const HELP: &str = "\
usage: cargo xtask <task>

tasks:
  test        the tests: the suite on flex and on wgpu (needs a Vulkan driver, e.g. Mesa's
              lavapipe), and the downstream crate (tests/downstream) on wgpu
  lint        rustfmt --check and clippy with warnings as errors
  ci          lint, test: what .ci/run runs
  bench       `pedconv bench` in a release build (arguments after `bench` are passed on;
              default: flex, ResNet-18 and -50 layers, ResNet-18 at 16x224 and 64x64)
  gpu-check   build the CUDA binaries (`pedconv`, its DDP build, the tests on CUDA),
              stripped and compressed, into gpu-check/ with run.sh, which runs them on a
              machine with an NVIDIA GPU and no internet under one deadline, writing
              docs/gpu-notes.md after every step (docs/gpu-check.md); print the command
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

fn test() -> Result<(), String> {
    cargo(&["test", "--workspace"])?;
    downstream()
}

/// The downstream crate, a user's crate with burn's default features, trained on wgpu.
fn downstream() -> Result<(), String> {
    cargo(&[
        "run",
        "--manifest-path",
        "tests/downstream/Cargo.toml",
        "--target-dir",
        "target",
    ])
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
        "test" => test(),
        "lint" => lint(),
        "ci" => lint().and_then(|()| test()),
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
        "gpu-check" => gpu_check::build(),
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
