//! What the command-line test binaries share: running `pedconv`, and scratch folders.

use std::path::PathBuf;
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
