//! `pedconv bench`: its arguments, checked, handed to the measurements of [`crate::bench`].

use std::path::PathBuf;

use pedconv::resnet::ResNetDepth;

use crate::backend::dispatch;
use crate::bench::input::InputBench;
use crate::bench::{Bench, Checkpointing};
use crate::run_dir;

use super::shared::DeviceArgs;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Where to measure; `--precision` is the whole networks' (the layers compute in f32).
    #[command(flatten)]
    on: DeviceArgs,
    /// Networks whose PEDConv layer shapes (at `--layer-image`) are measured one by one,
    /// comma-separated (`r18`, `r34`, `r50`, `r101`), or `none`. Default: `r18,r50`, or `none`
    /// with `--input`.
    #[arg(long)]
    layers: Option<String>,
    /// Batch of the per-layer measurements.
    #[arg(long, default_value_t = 8)]
    layer_batch: usize,
    /// Side of the network input whose layer shapes the per-layer measurements take (at least
    /// 32).
    #[arg(long, default_value_t = 224)]
    layer_image: usize,
    /// Networks measured whole, static and PEDConv, comma-separated, or `none`. Default: `r18`,
    /// or `none` with `--input`.
    #[arg(long)]
    networks: Option<String>,
    /// `BATCHxSIDE` settings of the whole-network measurements, comma-separated.
    #[arg(long, default_value = "16x224,64x64")]
    settings: String,
    /// Width multiplier of the networks.
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Timed repetitions, after two warm-up runs (the first's time reported apart) and one run
    /// for the peak memory; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// burn's autodiff checkpointing in the whole-network training steps.
    #[arg(long, value_enum, default_value_t = Checkpointing::None)]
    checkpointing: Checkpointing,
    /// Measure the training input pipeline alone (no model) on this image folder or packed
    /// dataset (`pedconv pack`); repeat the flag to measure several in one run.
    #[arg(long)]
    input: Vec<PathBuf>,
    /// Thread counts of the input measurements, comma-separated. Default: 1 and all cores.
    #[arg(long, value_delimiter = ',')]
    input_threads: Option<Vec<usize>>,
    /// Images per timed pass of the input measurements (the first of the training split).
    /// Default: all of them.
    #[arg(long)]
    input_images: Option<usize>,
    /// Directory for `bench.jsonl` (each row as it is measured), `bench.json` and `bench.md`.
    /// Default: the first free `runs/bench-N`.
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

/// The smallest image side a ResNet takes: its stem and stages downsample 32 times.
const SMALLEST_SIDE: usize = 32;

fn parse_settings(list: &str) -> Result<Vec<(usize, usize)>, String> {
    list.split(',')
        .map(|setting| {
            let parsed = setting
                .trim()
                .split_once(['x', '×'])
                .and_then(|(b, s)| Some((b.parse().ok()?, s.parse().ok()?)))
                .filter(|&(b, s): &(usize, usize)| b > 0 && s >= SMALLEST_SIDE);
            parsed.ok_or_else(|| {
                format!(
                    "--settings: `{setting}` is not BATCHxSIDE with a positive batch and a side \
                     of at least {SMALLEST_SIDE} (e.g. 16x224)"
                )
            })
        })
        .collect()
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    if args.reps == 0 || args.layer_batch == 0 || args.width.is_nan() || args.width <= 0.0 {
        return Err("--reps, --layer-batch and --width must be positive".into());
    }
    if args.layer_image < SMALLEST_SIDE {
        return Err(format!(
            "--layer-image: {} is smaller than a ResNet's {SMALLEST_SIDE}-pixel downsampling",
            args.layer_image
        ));
    }
    let model_default = |default: &'static str| {
        if args.input.is_empty() {
            default
        } else {
            "none"
        }
    };
    let layers = args.layers.as_deref().unwrap_or(model_default("r18,r50"));
    let networks = args.networks.as_deref().unwrap_or(model_default("r18"));
    let input = (!args.input.is_empty()).then(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = args.input_threads.clone().unwrap_or_else(|| vec![1, cores]);
        threads.dedup();
        InputBench {
            sources: args.input.clone(),
            threads,
            images: args.input_images,
            batch: 64,
            crop: 224,
            reps: args.reps,
        }
    });
    if let Some(bench) = &input {
        if bench.threads.contains(&0) || bench.images == Some(0) {
            return Err("--input-threads and --input-images must be positive".into());
        }
    }
    let job = Bench {
        layer_networks: parse_depths("--layers", layers)?,
        layer_batch: args.layer_batch,
        layer_image: args.layer_image,
        networks: parse_depths("--networks", networks)?,
        settings: parse_settings(&args.settings)?,
        width: args.width,
        reps: args.reps,
        checkpointing: args.checkpointing,
        backend: args.on.backend.name().to_string(),
        precision: args.on.precision,
        input,
        output: args
            .output
            .unwrap_or_else(|| run_dir::free_run_dir("bench")),
    };
    let output = job.output.clone();
    let report = dispatch(args.on.backend, args.on.device, job)?;
    report.write(&output)?;
    println!("{}", report.markdown());
    println!(
        "wrote {0}/bench.jsonl, {0}/bench.json and {0}/bench.md",
        output.display()
    );
    Ok(())
}
