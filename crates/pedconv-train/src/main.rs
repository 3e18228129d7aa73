//! `pedconv`: the command line of the pedconv project.

#[cfg(all(feature = "ddp", any(feature = "flex", feature = "ndarray")))]
compile_error!(
    "the `ddp` feature (burn's `distributed`) leaves the CPU backends without autodiff: build \
     with `--no-default-features --features ddp`"
);

mod backend;
mod bench;
mod config;
mod data;
mod eval;
mod export;
mod predict;
mod schedule;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::config::Config;
use clap::{Parser, Subcommand};

use backend::{dispatch, dispatch_parallel, BackendChoice};
use bench::memory::CountingAllocator;
use bench::{Bench, Checkpointing};
use config::{Precision, TrainConfig};
use data::folder::ImageFolder;
use data::DataSource;
use eval::{Evaluation, ModelSource};
use export::Export;
use pedconv::resnet::ResNetDepth;
use predict::{image_files, Predict};
use train::{last_checkpoint, Training};

#[derive(Parser)]
#[command(
    name = "pedconv",
    version,
    about = "PEDConv ResNets: train with burn-train, evaluate burn or PyTorch checkpoints, benchmark"
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
    /// The most probable classes of a model for image files (or the images in folders).
    Predict(PredictArgs),
    /// Time and peak memory of PEDConv against static convolutions, per layer and whole network.
    Bench(BenchArgs),
    /// Write a model as an ONNX file (opset 17; dynamic batch and image size) for other runtimes.
    Export(ExportArgs),
}

/// Counts the heap, for `bench`'s peak memory.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(clap::Args)]
struct TrainArgs {
    /// The experiment configuration (JSON); the built-in default when absent.
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Continue the stopped run in this directory from its last checkpoint, with its saved
    /// configuration (only --epochs, --lr, --backend, --device and --devices may be given with it).
    #[arg(
        long,
        conflicts_with_all = ["output", "batch_size", "seed", "data", "num_classes", "print_config"]
    )]
    resume: Option<PathBuf>,
    /// The run directory (config, checkpoints, metrics, report); it must not hold a run already.
    /// Default: the first free `runs/train-N`.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Train on this image folder (`train/` and `val/`, one sub-folder per class) instead of the
    /// configuration's data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Overrides the configuration's epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Overrides the configuration's batch size (images per forward and backward pass).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Overrides the configuration's learning rate (per `lr_reference_batch` images).
    #[arg(long)]
    lr: Option<f64>,
    /// Overrides the configuration's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The model's number of classes, checked against the data (by default it is taken from
    /// the data when the configuration says `classes_from_data`, as the built-in one does).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    num_classes: Option<u64>,
    /// The compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Flex)]
    backend: BackendChoice,
    /// Train on this one GPU (index), for GPU backends.
    #[arg(long, conflicts_with = "devices")]
    device: Option<usize>,
    /// Train data-parallel on these GPUs (`0,1,2,3`), each with its own shard of every epoch
    /// and `batch_size` images per pass; on a CPU backend, as many workers on the CPU. Default:
    /// the configuration's `devices`, numbered from 0.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    devices: Option<Vec<usize>>,
    /// Overrides the configuration's precision: the float type the network computes in
    /// (parameters, optimizer state, batch norms and losses stay in f32; f16 scales the loss).
    #[arg(long, value_enum, conflicts_with = "resume")]
    precision: Option<Precision>,
    /// Print the configuration (after the overrides) as JSON and exit, without training.
    #[arg(long)]
    print_config: bool,
}

fn read_config(path: &Path) -> Result<TrainConfig, String> {
    if !path.is_file() {
        return Err(format!(
            "the configuration {} does not exist",
            path.display()
        ));
    }
    TrainConfig::load(path)
        .map_err(|e| format!("cannot read the configuration {}: {e}", path.display()))
}

fn train(args: TrainArgs) -> Result<(), String> {
    let (mut config, output, resume_from) = match &args.resume {
        Some(dir) => {
            let config = read_config(&dir.join("config.json"))?;
            let epoch = last_checkpoint(dir).ok_or_else(|| {
                format!(
                    "{} holds no complete checkpoint to resume from (checkpoint/model-N.mpk, \
                     optim-N.mpk and scheduler-N.mpk)",
                    dir.display()
                )
            })?;
            (config, dir.clone(), epoch)
        }
        None => {
            let config = match &args.config {
                Some(path) => read_config(path)?,
                None => TrainConfig::builtin(),
            };
            let output = args.output.clone().unwrap_or_else(|| free_run_dir("train"));
            (config, output, 0)
        }
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
    if let Some(precision) = args.precision {
        config.precision = precision;
    }
    let devices = match (args.device, args.devices) {
        (Some(device), _) => vec![device],
        (None, Some(devices)) => devices,
        (None, None) => (0..config.devices).collect(),
    };
    if resume_from > 0 && devices.len() != config.devices {
        return Err(format!(
            "{} was trained on {trained} devices, and its shards and schedule depend on their \
             number; resume it on {trained} (--devices with {trained} indices)",
            output.display(),
            trained = config.devices
        ));
    }
    config.devices = devices.len();
    if let Some(path) = args.data {
        config.data.source = DataSource::Folder { path };
    }
    if let Some(classes) = args.num_classes {
        config.model.num_classes = classes as usize;
        config.classes_from_data = false;
    } else if config.classes_from_data {
        config.model.num_classes = config.data.source.classes()?;
    }
    config
        .validate()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    if args.print_config {
        println!("{config}");
        return Ok(());
    }
    if resume_from >= config.epochs {
        return Err(format!(
            "{} already finished its {} epochs; give a larger --epochs to train on",
            output.display(),
            config.epochs
        ));
    }
    let saved = output.join("config.json");
    if resume_from == 0 && saved.exists() {
        return Err(format!(
            "{} already holds a run (its config.json exists); choose another --output, or \
             continue it with --resume",
            output.display()
        ));
    }
    let on = match devices.as_slice() {
        [_] => args.backend.name().to_string(),
        several => format!(
            "{} devices {:?} of {} ({} per device)",
            several.len(),
            several,
            args.backend.name(),
            config.batch_size
        ),
    };
    println!(
        "{} epochs {} of {} (batch {}, {} per optimizer step, peak lr {:.4}) on {on}; run directory {}",
        if resume_from > 0 { "resuming" } else { "training" },
        if resume_from > 0 { format!("{}-{}", resume_from + 1, config.epochs) } else { config.epochs.to_string() },
        describe(&config.data.source),
        config.global_batch(),
        config.optimizer_batch(),
        config.peak_lr(),
        output.display()
    );
    dispatch_parallel(
        args.backend,
        &devices,
        Training {
            config,
            output,
            backend_name: args.backend.name().to_string(),
            resume_from,
        },
    )
}

fn describe(source: &DataSource) -> String {
    match source {
        DataSource::Builtin { train_images, .. } => format!("{train_images} built-in images"),
        DataSource::Folder { path } => path.join("train").display().to_string(),
        DataSource::Synthetic { train_images, .. } => format!("{train_images} synthetic images"),
    }
}

#[derive(clap::Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The data: a folder with a `val/` split, or the split folder itself (one sub-folder per class).
    #[arg(long)]
    data: PathBuf,
    /// The compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Flex)]
    backend: BackendChoice,
    /// The GPU index, for GPU backends.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// The float type the network computes in.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
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

/// The model of `eval`, `predict` and `export`.
#[derive(clap::Args)]
struct ModelArgs {
    /// The weights: a PyTorch checkpoint (.pth, .pth.tar, .pt; the paper's or a bare state_dict,
    /// whose architecture is read off its keys) or a burn record (.mpk: a run's model.mpk or a
    /// checkpoint/model-N.mpk, with --config).
    #[arg(long)]
    weights: PathBuf,
    /// The model's ResNetConfig (JSON) or a training run's config.json; needed for burn records,
    /// optional for PyTorch files.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Keep the batch norms (by default they are folded into the convolutions: the same
    /// logits up to rounding, faster; for `export`, fewer nodes).
    #[arg(long)]
    no_fold: bool,
}

impl From<ModelArgs> for ModelSource {
    fn from(args: ModelArgs) -> Self {
        ModelSource {
            weights: args.weights,
            config: args.config,
            fold: !args.no_fold,
        }
    }
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
            model: args.model.into(),
            folder,
            batch_size: args.batch_size,
            resize: args.resize,
            crop: args.crop,
            max_bad_fraction: args.max_bad_fraction,
            progress: !args.json,
            precision: args.precision,
            backend: args.backend.name().to_string(),
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

#[derive(clap::Args)]
struct PredictArgs {
    /// The image files, or folders searched recursively for `.jpg`, `.jpeg` and `.png` files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// How many classes to show per image, the most probable first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    top: u64,
    /// One JSON object per line, `{"path", "top": [{"class", "name", "probability"}]}`.
    #[arg(long)]
    json: bool,
    /// The compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Flex)]
    backend: BackendChoice,
    /// The GPU index, for GPU backends.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// The float type the network computes in.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// The shorter side is resized to this before the centre crop.
    #[arg(long, default_value_t = 256)]
    resize: u32,
    /// The centre crop's side.
    #[arg(long, default_value_t = 224)]
    crop: u32,
}

fn predict(args: PredictArgs) -> Result<(), String> {
    if args.crop == 0 || args.resize < args.crop {
        return Err(format!(
            "--crop must be positive and --resize ({}) at least --crop ({})",
            args.resize, args.crop
        ));
    }
    let images = image_files(&args.paths)?;
    let total = images.len();
    let unreadable = dispatch(
        args.backend,
        args.device,
        Predict {
            model: args.model.into(),
            images,
            top: args.top as usize,
            batch_size: args.batch_size as usize,
            resize: args.resize,
            crop: args.crop,
            json: args.json,
            precision: args.precision,
            backend: args.backend.name().to_string(),
        },
    )?;
    match unreadable {
        0 => Ok(()),
        n => Err(format!(
            "{n} of {total} images could not be read (named above) and were skipped"
        )),
    }
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Flex)]
    backend: BackendChoice,
    /// The GPU index, for GPU backends.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// The float type the whole networks compute in (the per-layer measurements: f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Networks whose PEDConv layer shapes (at 224×224) are measured one by one, comma-separated
    /// (`r18`, `r34`, `r50`, `r101`), or `none`.
    #[arg(long, default_value = "r18,r50")]
    layers: String,
    /// Batch of the per-layer measurements.
    #[arg(long, default_value_t = 8)]
    layer_batch: usize,
    /// Networks measured whole, static and PEDConv, comma-separated, or `none`.
    #[arg(long, default_value = "r18")]
    networks: String,
    /// `BATCHxSIDE` settings of the whole-network measurements, comma-separated.
    #[arg(long, default_value = "16x224,64x64")]
    settings: String,
    /// Width multiplier of the networks.
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Timed repetitions, after one warm-up run; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// burn's autodiff checkpointing in the whole-network training steps.
    #[arg(long, value_enum, default_value_t = Checkpointing::None)]
    checkpointing: Checkpointing,
    /// Directory for `bench.json` and `bench.md`. Default: the first free `runs/bench-N`.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn parse_depths(flag: &str, list: &str) -> Result<Vec<ResNetDepth>, String> {
    if list == "none" {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|name| {
            match name
                .trim()
                .to_ascii_lowercase()
                .trim_start_matches("resnet")
            {
                "r18" | "18" | "-18" => Ok(ResNetDepth::R18),
                "r34" | "34" | "-34" => Ok(ResNetDepth::R34),
                "r50" | "50" | "-50" => Ok(ResNetDepth::R50),
                "r101" | "101" | "-101" => Ok(ResNetDepth::R101),
                _ => Err(format!(
                    "{flag}: unknown network `{name}` (expected r18, r34, r50, r101 or none)"
                )),
            }
        })
        .collect()
}

fn parse_settings(list: &str) -> Result<Vec<(usize, usize)>, String> {
    list.split(',')
        .map(|setting| {
            let parsed = setting
                .trim()
                .split_once(['x', '×'])
                .and_then(|(b, s)| Some((b.parse().ok()?, s.parse().ok()?)))
                .filter(|&(b, s): &(usize, usize)| b > 0 && s >= 32);
            parsed.ok_or_else(|| {
                format!(
                    "--settings: `{setting}` is not BATCHxSIDE with a positive batch and a side \
                     of at least 32 (e.g. 16x224)"
                )
            })
        })
        .collect()
}

fn bench(args: BenchArgs) -> Result<(), String> {
    if args.reps == 0 || args.layer_batch == 0 || args.width.is_nan() || args.width <= 0.0 {
        return Err("--reps, --layer-batch and --width must be positive".into());
    }
    let job = Bench {
        layer_networks: parse_depths("--layers", &args.layers)?,
        layer_batch: args.layer_batch,
        networks: parse_depths("--networks", &args.networks)?,
        settings: parse_settings(&args.settings)?,
        width: args.width,
        reps: args.reps,
        checkpointing: args.checkpointing,
        backend: args.backend.name().to_string(),
        precision: args.precision,
    };
    let output = args.output.unwrap_or_else(|| free_run_dir("bench"));
    let report = dispatch(args.backend, args.device, job)?;
    report.write(&output)?;
    println!("{}", report.markdown());
    println!("wrote {0}/bench.json and {0}/bench.md", output.display());
    Ok(())
}

#[derive(clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The ONNX file to write.
    #[arg(long)]
    onnx: PathBuf,
}

fn export(args: ExportArgs) -> Result<(), String> {
    let job = Export {
        model: args.model.into(),
        onnx: args.onnx.clone(),
    };
    let exported = dispatch(BackendChoice::Flex, 0, job)?;
    println!(
        "wrote {} ({} nodes, {:.1} MB)",
        args.onnx.display(),
        exported.nodes,
        exported.bytes as f64 / 1e6
    );
    Ok(())
}

/// The first `runs/<kind>-N` that does not exist.
fn free_run_dir(kind: &str) -> PathBuf {
    (1..)
        .map(|n| PathBuf::from(format!("runs/{kind}-{n}")))
        .find(|dir| !dir.exists())
        .expect("a free run directory")
}

fn main() -> ExitCode {
    bench::memory::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Predict(args) => predict(args),
        Command::Bench(args) => bench(args),
        Command::Export(args) => export(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pedconv: error: {message}");
            ExitCode::FAILURE
        }
    }
}
