//! `pedconv pack`: an image folder's splits as a packed dataset (see [`crate::data::pack`]).

use std::path::PathBuf;

use crate::data::pack::write::{pack, PackOptions};

#[derive(clap::Args)]
pub struct PackArgs {
    /// The image folder: `train/` and `val/`, one sub-folder per class.
    #[arg(long)]
    data: PathBuf,
    /// The pack to write: a new folder of tar shards, their index and `pack.json`.
    #[arg(long)]
    output: PathBuf,
    /// Re-encode the images whose longer side exceeds this many pixels, resized to it (as FFCV
    /// stores ImageNet: smaller files, faster decoding, less detail for large crops). Default:
    /// every image stored as it is.
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..))]
    max_side: Option<u32>,
    /// The JPEG quality of re-encoded images.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
    /// Shards are closed at this many MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    shard_mib: u64,
}

pub fn run(args: PackArgs) -> Result<(), String> {
    let options = PackOptions {
        max_side: args.max_side,
        quality: args.quality,
        shard_bytes: args.shard_mib << 20,
    };
    let summary = pack(&args.data, &args.output, &options)?;
    println!(
        "wrote {}: {} training and {} validation images ({} skipped as unreadable, {} re-encoded), \
         {:.1} MB",
        args.output.display(),
        summary.images[0],
        summary.images[1],
        summary.skipped[0] + summary.skipped[1],
        summary.reencoded,
        summary.bytes as f64 / 1e6
    );
    Ok(())
}
