//! Project tasks: `cargo xtask <task>`. Each task runs cargo commands; see `cargo xtask help`.

use std::process::{exit, Command};

const HELP: &str = "\
usage: cargo xtask <task>

tasks:
  test        the test suite on the CPU (flex) backend
  test-wgpu   the test suite on the wgpu backend (needs a Vulkan driver, e.g. Mesa's lavapipe)
  lint        rustfmt --check and clippy with warnings as errors
  ci          lint, test, test-wgpu: what .ci/run runs
  bench       the per-layer benchmark of the PEDConv compute paths (release build, flex)
";

fn cargo(args: &[&str]) -> Result<(), String> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn test() -> Result<(), String> {
    cargo(&["test", "--workspace"])
}

fn test_wgpu() -> Result<(), String> {
    // One test thread: with several, Mesa's software Vulkan driver occasionally crashes at exit.
    cargo(&[
        "test",
        "--workspace",
        "--features",
        "pedconv/test-wgpu",
        "--",
        "--test-threads=1",
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
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "test" => test(),
        "test-wgpu" => test_wgpu(),
        "lint" => lint(),
        "ci" => lint().and_then(|()| test()).and_then(|()| test_wgpu()),
        "bench" => cargo(&[
            "run",
            "--release",
            "--package",
            "pedconv",
            "--example",
            "layer_bench",
            "--",
        ]),
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
