//! Build script: generates the Rust types of TensorBoard's event records
//! (`proto/tensorboard.proto`) into `$OUT_DIR/tensorboard.rs` with prost-build, compiled by
//! protox (a protobuf compiler in Rust: no `protoc` needed), as the pedconv crate does for ONNX;
//! and reads burn's version off the workspace's `Cargo.lock` for `pedconv --version`.

fn main() {
    println!("cargo:rerun-if-changed=proto/tensorboard.proto");
    let descriptors = protox::compile(["tensorboard.proto"], ["proto"])
        .unwrap_or_else(|error| panic!("cannot compile proto/tensorboard.proto: {error}"));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|error| {
            panic!("cannot generate Rust types from proto/tensorboard.proto: {error}")
        });

    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let burn = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| package_version(&text, "burn"))
        .unwrap_or_else(|| "(version unknown)".into());
    println!("cargo:rustc-env=PEDCONV_BURN_VERSION={burn}");
}

/// The version of package `name` in a `Cargo.lock`.
fn package_version(lock: &str, name: &str) -> Option<String> {
    let entry = format!("name = \"{name}\"\nversion = \"");
    let start = lock.find(&entry)? + entry.len();
    let end = lock[start..].find('"')?;
    Some(lock[start..start + end].to_string())
}
