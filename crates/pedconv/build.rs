//! Build script: with the `onnx` feature, generates the Rust types of ONNX's protobuf schema
//! (`proto/onnx.proto`, see `proto/README.md`) into `$OUT_DIR/onnx.rs`. The schema is compiled
//! by protox, a protobuf compiler written in Rust, so no `protoc` binary is needed.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    #[cfg(feature = "onnx")]
    generate_onnx_types();
}

#[cfg(feature = "onnx")]
fn generate_onnx_types() {
    let descriptors = protox::compile(["onnx.proto"], ["proto"])
        .unwrap_or_else(|error| panic!("cannot compile proto/onnx.proto: {error}"));
    prost_build::Config::new()
        // The schema's comments are written for protobuf, not rustdoc (some would run as
        // doctests); proto/onnx.proto is the documentation of these types.
        .disable_comments(["."])
        .compile_fds(descriptors)
        .unwrap_or_else(|error| {
            panic!("cannot generate Rust types from proto/onnx.proto: {error}")
        });
}
