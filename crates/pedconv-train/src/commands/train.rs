//! `pedconv train`: a run from a configuration (the built-in one by default) or the resumption
//! of a stopped run, with the command line's overrides.

use std::path::{Path, PathBuf};

use burn::config::Config;

use crate::backend::{dispatch_parallel, BackendChoice};
use crate::config::{Precision, TrainConfig};
use crate::data::DataSource;
use crate::run_dir;
use crate::train::{last_checkpoint, Training};

#[derive(clap::Args)]
pub struct TrainArgs {
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
    /// Train on this image folder (`train/` and `val/`, one sub-folder per class), or on this
    /// packed dataset (`pedconv pack`), instead of the configuration's data.
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

pub fn run(args: TrainArgs) -> Result<(), String> {
    let (mut config, output, resume_from) = match &args.resume {
        Some(dir) => {
            let config = read_config(&dir.join(run_dir::CONFIG))?;
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
            let output = args
                .output
                .clone()
                .unwrap_or_else(|| run_dir::free_run_dir("train"));
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
        config.data.source = DataSource::at(path);
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
    let saved = output.join(run_dir::CONFIG);
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
        DataSource::Packed { path } => format!("the packed {} (train)", path.display()),
        DataSource::Synthetic { train_images, .. } => format!("{train_images} synthetic images"),
    }
}
