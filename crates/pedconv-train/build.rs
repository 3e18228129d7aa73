//! Build script: generates the Rust types of TensorBoard's event records
//! (`proto/tensorboard.proto`) into `$OUT_DIR/tensorboard.rs` with prost-build, compiled by
//! protox (a protobuf compiler in Rust: no `protoc` needed), as the pedconv crate does for ONNX;
//! reads burn's version off the workspace's `Cargo.lock` for `pedconv --version`; and with the
//! `libjpeg-turbo` feature compiles the C side of the JPEG decoder against the system's
//! libjpeg-turbo; in release builds on Linux, has the linker compress the binary's line tables.

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

    #[cfg(feature = "libjpeg-turbo")]
    compile_libjpeg_side();
    compress_release_line_tables();
}

/// In release builds on Linux, the linker compresses the `pedconv` binary's debug sections
/// with zlib, which Rust's backtraces read, and leaves out the local symbols: the line tables
/// that name this workspace's files, lines and functions in a backtrace (the dependencies have
/// none, `[profile.release]`) shrink to about a third, and the symbol table, whose names the
/// line tables repeat, goes.
fn compress_release_line_tables() {
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var("PROFILE").is_ok_and(|profile| profile == "release") {
        println!("cargo:rustc-link-arg-bins=-Wl,--compress-debug-sections=zlib");
        println!("cargo:rustc-link-arg-bins=-Wl,--discard-all");
    }
}

/// Compiles `src/data/transform/libjpeg.c` and links libjpeg-turbo, found by pkg-config.
#[cfg(feature = "libjpeg-turbo")]
fn compile_libjpeg_side() {
    const SOURCE: &str = "src/data/transform/libjpeg.c";
    println!("cargo:rerun-if-changed={SOURCE}");
    let library = pkg_config::probe_library("libjpeg").unwrap_or_else(|error| {
        panic!(
            "the libjpeg-turbo feature needs libjpeg-turbo's development files \
             (Debian: libjpeg62-turbo-dev; Ubuntu: libjpeg-turbo8-dev; Fedora: \
             libjpeg-turbo-devel; macOS: brew install jpeg-turbo), found by pkg-config: {error}"
        )
    });
    cc::Build::new()
        .file(SOURCE)
        .includes(&library.include_paths)
        .warnings(true)
        .extra_warnings(true)
        .compile("pedconv_libjpeg");
}

/// The version of package `name` in a `Cargo.lock`.
fn package_version(lock: &str, name: &str) -> Option<String> {
    let entry = format!("name = \"{name}\"\nversion = \"");
    let start = lock.find(&entry)? + entry.len();
    let end = lock[start..].find('"')?;
    Some(lock[start..start + end].to_string())
}
