//! `pedconv train`: a run from a configuration (the built-in one by default) or the resumption
//! of a stopped run, with the command line's overrides.

use std::path::PathBuf;

use crate::backend::{dispatch_parallel, BackendChoice};
use crate::config::{FineTuneConfig, Precision, TrainConfig, TrainOnly};
use crate::data::DataSource;
use crate::model::Weights;
use crate::run_dir;
use crate::train::{check_architecture, last_checkpoint, started_from, Training};

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
    /// Start from these weights instead of a random initialisation (fine-tuning): any weights
    /// `eval` reads (the paper's checkpoint, a torchvision state_dict, a run's model.mpk or
    /// checkpoint/model-N.mpk). A configuration without `model` takes the file's network;
    /// a new classifier is made when the data's classes differ from the file's.
    #[arg(long, conflicts_with = "resume")]
    weights: Option<PathBuf>,
    /// The network of a burn record given to --weights (a ResNetConfig JSON or a run's
    /// config.json); by default the config.json of the run the record belongs to.
    #[arg(long, requires = "weights")]
    weights_config: Option<PathBuf>,
    /// Overrides fine_tune.train_only: only the classifier (head), or the classifier and the
    /// PEDConv attention branches (head-and-attention), train while the rest stays frozen.
    #[arg(long, value_enum, requires = "weights")]
    train_only: Option<TrainOnly>,
    /// Overrides fine_tune.train_only_epochs: --train-only holds for this many epochs, then
    /// every parameter trains.
    #[arg(long, requires = "train_only")]
    train_only_epochs: Option<usize>,
    /// Overrides fine_tune.pretrained_lr_multiplier: the learning rate of the parameters
    /// loaded from --weights, as a multiple of the run's.
    #[arg(long, requires = "weights")]
    pretrained_lr_multiplier: Option<f64>,
}

impl TrainArgs {
    /// The command line's fine-tuning settings over the configuration's.
    fn fine_tune(&self, config: Option<FineTuneConfig>) -> FineTuneConfig {
        let mut fine_tune = config.unwrap_or_else(FineTuneConfig::new);
        if let Some(train_only) = self.train_only {
            fine_tune.train_only = Some(train_only);
        }
        if let Some(epochs) = self.train_only_epochs {
            fine_tune.train_only_epochs = Some(epochs);
        }
        if let Some(multiplier) = self.pretrained_lr_multiplier {
            fine_tune.pretrained_lr_multiplier = multiplier;
        }
        fine_tune
    }
}

pub fn run(args: TrainArgs) -> Result<(), String> {
    let weights = match &args.weights {
        Some(path) => Some(Weights::read(path, args.weights_config.as_deref())?),
        None => None,
    };
    let (mut config, output, resume_from) = match &args.resume {
        Some(dir) => {
            let config = TrainConfig::read(&dir.join(run_dir::CONFIG), None)?;
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
            let open_model = weights.as_ref().map(|w| &w.architecture);
            let config = match &args.config {
                Some(path) => TrainConfig::read(path, open_model)?,
                // The built-in network is a default: pretrained weights bring their own.
                None => {
                    let mut builtin = TrainConfig::builtin();
                    if let Some(model) = open_model {
                        builtin.model = model.clone();
                    }
                    builtin
                }
            };
            if let Some(weights) = &weights {
                check_architecture(&config.model, &weights.architecture, &weights.path)?;
            }
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
    let devices = match (args.device, args.devices.clone()) {
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
    if let Some(path) = args.data.clone() {
        config.data.source = DataSource::at(path);
    }
    if let Some(classes) = args.num_classes {
        config.model.num_classes = classes as usize;
        config.classes_from_data = false;
    } else if config.classes_from_data {
        config.model.num_classes = config.data.source.classes()?;
    }
    if let Some(weights) = &weights {
        let mut fine_tune = args.fine_tune(config.fine_tune.take());
        fine_tune.started_from = Some(started_from(weights, &config.model)?);
        config.fine_tune = Some(fine_tune);
    } else if resume_from == 0 && config.fine_tune.is_some() {
        return Err(
            "the configuration's fine_tune settings apply to pretrained weights: give them with \
             --weights FILE"
                .to_string(),
        );
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
    if let Some(started) = config
        .fine_tune
        .as_ref()
        .and_then(|f| f.started_from.as_ref())
    {
        if resume_from == 0 {
            println!("{}", describe_start(started, config.model.num_classes));
        }
    }
    dispatch_parallel(
        args.backend,
        &devices,
        Training {
            config,
            output,
            backend_name: args.backend.name().to_string(),
            resume_from,
            weights,
        },
    )
}

/// What a fine-tuning run takes from its weights, for the log.
fn describe_start(started: &crate::config::StartedFrom, classes: usize) -> String {
    let loaded = if started.new_head {
        format!(
            "every tensor loaded but the classifier's: a new classifier for the data's {classes} \
             classes (the file's has {}), randomly initialised",
            started.file_classes
        )
    } else {
        "every tensor loaded".to_string()
    };
    let attention = if started.attention_from_file {
        ""
    } else {
        "; the file is a static network: its convolutions are the PEDConv layers' base \
         weights, and their attention branches start from a random initialisation"
    };
    format!(
        "starting from {} (sha256 {}): {loaded}{attention}",
        started.weights.display(),
        started.sha256
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
