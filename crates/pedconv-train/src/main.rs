//! `pedconv`: the command line of the pedconv project.

mod backend;
mod builtin;
mod config;
mod data;
mod eval;
mod schedule;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use burn::config::Config;
use clap::{Parser, Subcommand};

use backend::{dispatch, BackendChoice};
use config::TrainConfig;
use data::ImageFolder;
use eval::Evaluation;
use train::Training;

#[derive(Parser)]
#[command(
    name = "pedconv",
    version,
    about = "PEDConv ResNets: evaluate PyTorch or burn checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a ResNet with burn-train (by default a small PEDConv ResNet on the built-in data).
    Train(TrainArgs),
    /// Top-1, top-5 and loss of a model on the validation images of a folder.
    Eval(EvalArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// The experiment configuration (JSON); the built-in default when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run directory (config, checkpoints, metrics, report); it must not hold a run already.
    /// Default: the first free `runs/train-N`.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Overrides the configuration's epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Overrides the configuration's batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Overrides the configuration's learning rate (per `lr_reference_batch` images).
    #[arg(long)]
    lr: Option<f64>,
    /// Overrides the configuration's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Flex)]
    backend: BackendChoice,
    /// The GPU index, for GPU backends.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Print the configuration (after the overrides) as JSON and exit, without training.
    #[arg(long)]
    print_config: bool,
}

fn train(args: TrainArgs) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => TrainConfig::load(path)
            .map_err(|e| format!("cannot read the configuration {}: {e}", path.display()))?,
        None => TrainConfig::builtin(),
    };
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
    }
    if let Some(batch_size) = args.batch_size {
        config.batch_size = batch_size;
    }
    if let Some(lr) = args.lr {
        config.lr = lr;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    config
        .validate()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    if args.print_config {
        println!("{config}");
        return Ok(());
    }
    let output = args.output.unwrap_or_else(|| {
        (1..)
            .map(|n| PathBuf::from(format!("runs/train-{n}")))
            .find(|dir| !dir.exists())
            .expect("a free run directory")
    });
    let saved = output.join("config.json");
    if saved.exists() {
        return Err(format!(
            "{} already holds a run (its config.json exists); choose another --output",
            output.display()
        ));
    }
    std::fs::create_dir_all(&output)
        .map_err(|e| format!("cannot create {}: {e}", output.display()))?;
    config
        .save(&saved)
        .map_err(|e| format!("cannot write {}: {e}", saved.display()))?;
    println!(
        "training {} epochs of {} images (batch {}, peak lr {:.4}) on {:?}; run directory {}",
        config.epochs,
        config.data.train_images,
        config.batch_size,
        config.peak_lr(),
        args.backend,
        output.display()
    );
    dispatch(
        args.backend,
        args.device,
        Training {
            config,
            output,
            backend_name: format!("{:?}", args.backend).to_lowercase(),
        },
    )
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The weights: a PyTorch checkpoint (.pth, .pth.tar, .pt; the paper's or a bare state_dict,
    /// whose architecture is read off its keys) or a burn record (.mpk, with --config).
    #[arg(long)]
    weights: PathBuf,
    /// The model's ResNetConfig (JSON); needed for burn records, optional for PyTorch files.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data: a folder with a `val/` split, or the split folder itself (one sub-folder per class).
    #[arg(long)]
    data: PathBuf,
    /// The compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Flex)]
    backend: BackendChoice,
    /// The GPU index, for GPU backends.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// The shorter side is resized to this before the centre crop.
    #[arg(long, default_value_t = 256)]
    resize: u32,
    /// The centre crop's side.
    #[arg(long, default_value_t = 224)]
    crop: u32,
    /// Stop when more than this fraction of the images cannot be read (they are skipped and
    /// counted otherwise).
    #[arg(long, default_value_t = 0.01)]
    max_bad_fraction: f64,
    /// Print the result as one JSON object `{"top1", "top5", "loss", "images"}` (percentages).
    #[arg(long)]
    json: bool,
}

fn eval(args: EvalArgs) -> Result<(), String> {
    if args.batch_size == 0 || args.crop == 0 || args.resize < args.crop {
        return Err(format!(
            "--batch-size and --crop must be positive and --resize ({}) at least --crop ({})",
            args.resize, args.crop
        ));
    }
    let split = args.data.join("val");
    let split = if split.is_dir() {
        split
    } else {
        args.data.clone()
    };
    let folder = ImageFolder::open(&split)?;
    let report = dispatch(
        args.backend,
        args.device,
        Evaluation {
            weights: args.weights,
            config: args.config,
            folder,
            batch_size: args.batch_size,
            resize: args.resize,
            crop: args.crop,
            max_bad_fraction: args.max_bad_fraction,
            progress: !args.json,
        },
    )?;
    if args.json {
        let json = serde_json::json!({
            "top1": report.top1,
            "top5": report.top5,
            "loss": report.loss,
            "images": report.images,
        });
        println!("{json}");
    } else {
        println!(
            "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  on {} images{}",
            report.top1,
            report.top5,
            report.loss,
            report.images,
            if report.skipped > 0 {
                format!(" ({} unreadable, skipped)", report.skipped)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pedconv: error: {message}");
            ExitCode::FAILURE
        }
    }
}
