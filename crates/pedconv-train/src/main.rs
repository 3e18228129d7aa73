//! `pedconv`: the command line of the pedconv project.

#[cfg(all(feature = "ddp", any(feature = "flex", feature = "ndarray")))]
compile_error!(
    "the `ddp` feature (burn's `distributed`) leaves the CPU backends without autodiff: build \
     with `--no-default-features --features ddp`"
);

mod backend;
mod bench;
mod commands;
mod config;
mod data;
mod model;
mod run_dir;
mod schedule;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use backend::BackendChoice;
use bench::memory::CountingAllocator;

/// `pedconv --version`: this crate's version, burn's, the backends and the JPEG decoder
/// compiled in.
fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        use clap::ValueEnum;
        let backends: Vec<&str> = BackendChoice::value_variants()
            .iter()
            .filter(|choice| choice.compiled())
            .map(|choice| choice.name())
            .collect();
        let gpu = cfg!(any(feature = "wgpu", feature = "cuda"));
        format!(
            "{} (burn {}; backends: {}{}{}; JPEGs decoded by {})",
            env!("CARGO_PKG_VERSION"),
            env!("PEDCONV_BURN_VERSION"),
            backends.join(", "),
            match (gpu, cfg!(feature = "fusion")) {
                (true, true) => "; GPU backends with burn's fusion",
                (true, false) => "; GPU backends without fusion",
                _ => "",
            },
            if cfg!(feature = "ddp") {
                "; CUDA distributed data parallel"
            } else {
                ""
            },
            data::transform::JPEG_DECODER,
        )
    })
}

#[derive(Parser)]
#[command(
    name = "pedconv",
    version = version_text(),
    about = "PEDConv ResNets: train with burn-train, evaluate burn or PyTorch checkpoints, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a ResNet with burn-train (by default a small PEDConv ResNet on the built-in data).
    Train(commands::train::TrainArgs),
    /// Top-1, top-5 and loss of a model on the validation images of a folder.
    Eval(commands::eval::EvalArgs),
    /// The most probable classes of a model for image files (or the images in folders).
    Predict(commands::predict::PredictArgs),
    /// Time and peak memory of PEDConv against static convolutions, per layer and whole network.
    Bench(commands::bench::BenchArgs),
    /// Write a model as an ONNX file (opset 17; dynamic batch and image size) for other runtimes.
    Export(commands::export::ExportArgs),
    /// Write an image folder as a packed dataset (WebDataset tar shards with an index) that
    /// training reads without opening a file per image.
    Pack(commands::pack::PackArgs),
}

/// Counts the heap, for `bench`'s peak memory.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> ExitCode {
    bench::memory::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Predict(args) => commands::predict::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Pack(args) => commands::pack::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pedconv: error: {message}");
            ExitCode::FAILURE
        }
    }
}
