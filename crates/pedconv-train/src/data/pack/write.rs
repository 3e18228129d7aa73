//! `pedconv pack`'s work: an image folder's splits written as a pack (see [`super`]), each image
//! checked by decoding it (unreadable ones named and skipped), optionally re-encoded with its
//! longer side capped (as FFCV stores ImageNet), under a temporary name renamed at the end, so
//! that no half-written pack is ever left under the pack's name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;

use super::{Manifest, Record, SplitManifest, SplitsManifest, FORMAT, VERSION};
use crate::data::folder::{ImageFolder, Splits};
use crate::data::transform::{decode, resized_crop};

/// How a pack is written.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Images whose longer side exceeds this are resized to it (bilinear, Pillow's filter) and
    /// re-encoded as JPEG; the others are stored as they are.
    pub max_side: Option<u32>,
    /// The JPEG quality of re-encoded images.
    pub quality: u8,
    /// A shard is closed once it holds this many bytes.
    pub shard_bytes: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct PackSummary {
    /// Images written per split (train, val).
    pub images: [usize; 2],
    /// Unreadable images skipped per split.
    pub skipped: [usize; 2],
    /// Images re-encoded with their longer side capped.
    pub reencoded: usize,
    pub bytes: u64,
}

/// Images checked (decoded) in parallel at a time, then written in order.
const CHUNK: usize = 256;

/// The bytes to store for one image and their extension, or why it cannot be read.
fn prepare(path: &Path, options: &PackOptions) -> Result<(Vec<u8>, &'static str, bool), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let image = decode(&bytes, &path.display())?;
    let (width, height) = image.dimensions();
    let extension = if bytes.starts_with(&[0xFF, 0xD8]) {
        "jpg"
    } else {
        "png"
    };
    match options.max_side {
        Some(side) if width.max(height) > side => {
            let scale = f64::from(side) / f64::from(width.max(height));
            let resize = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
            let out = (resize(width), resize(height));
            let image = resized_crop(&image, (0, 0, width, height), out);
            let mut jpeg = Vec::new();
            JpegEncoder::new_with_quality(&mut jpeg, options.quality)
                .encode_image(&image)
                .map_err(|e| format!("{}: cannot re-encode: {e}", path.display()))?;
            Ok((jpeg, "jpg", true))
        }
        _ => Ok((bytes, extension, false)),
    }
}

/// The WebDataset key of an image: `class/stem`, the stem's dots made `_` (a key ends at the
/// first dot of the file name).
fn key(class: &str, path: &Path) -> String {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().replace('.', "_"));
    format!("{class}/{stem}")
}

/// A writer that counts the bytes written through it (where the tar members' data lie).
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one split's shards and index into `dir`.
struct SplitWriter<'a> {
    dir: &'a Path,
    split: &'static str,
    shard_bytes: u64,
    shards: Vec<String>,
    tar: Option<tar::Builder<Counting<BufWriter<File>>>>,
    records: Vec<Record>,
}

impl<'a> SplitWriter<'a> {
    fn new(dir: &'a Path, split: &'static str, shard_bytes: u64) -> Self {
        Self {
            dir,
            split,
            shard_bytes,
            shards: Vec::new(),
            tar: None,
            records: Vec::new(),
        }
    }

    /// Appends member `name` to the open shard and returns where its data starts.
    fn member(&mut self, name: &str, data: &[u8]) -> Result<u64, String> {
        let tar = self.tar.as_mut().expect("an open shard");
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        tar.append_data(&mut header, name, data).map_err(|e| {
            format!(
                "cannot write {name} into {}: {e}",
                self.shards.last().expect("a shard")
            )
        })?;
        // The member ends with its data, padded to 512 bytes.
        let padded = (data.len() as u64).div_ceil(512) * 512;
        Ok(tar.get_ref().written - padded)
    }

    /// Appends an image (`KEY.ext`, then `KEY.cls`) and records it, in a new shard when the
    /// open one is full.
    fn image(
        &mut self,
        key: &str,
        extension: &str,
        bytes: &[u8],
        class: usize,
    ) -> Result<(), String> {
        let full = self
            .tar
            .as_ref()
            .is_some_and(|t| t.get_ref().written >= self.shard_bytes);
        if self.tar.is_none() || full {
            self.finish_shard()?;
            let shard = format!("{}-{:06}.tar", self.split, self.shards.len());
            let path = self.dir.join(&shard);
            let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let writer = Counting {
                inner: BufWriter::new(file),
                written: 0,
            };
            self.tar = Some(tar::Builder::new(writer));
            self.shards.push(shard);
        }
        let offset = self.member(&format!("{key}.{extension}"), bytes)?;
        let shard = self.shards.len() as u32 - 1;
        self.member(&format!("{key}.cls"), class.to_string().as_bytes())?;
        self.records.push(Record {
            shard,
            class: class as u32,
            offset,
            length: bytes.len() as u64,
        });
        Ok(())
    }

    fn finish_shard(&mut self) -> Result<(), String> {
        if let Some(tar) = self.tar.take() {
            let name = self.shards.last().expect("an open shard").clone();
            tar.into_inner()
                .and_then(|writer| writer.inner.into_inner().map_err(|e| e.into_error()))
                .and_then(|file| file.sync_all())
                .map_err(|e| format!("cannot finish {name}: {e}"))?;
        }
        Ok(())
    }

    /// Closes the last shard and writes the index; the split's manifest entry.
    fn finish(mut self) -> Result<SplitManifest, String> {
        self.finish_shard()?;
        let path = self.dir.join(format!("{}.idx", self.split));
        let bytes: Vec<u8> = self.records.iter().flat_map(|r| r.to_bytes()).collect();
        std::fs::write(&path, bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(SplitManifest {
            images: self.records.len(),
            shards: self.shards,
        })
    }
}

/// Writes one split: its images checked in parallel a chunk at a time, written in order;
/// progress on stderr. Returns the manifest entry, the skipped and the re-encoded images.
fn pack_split(
    folder: &ImageFolder,
    split: &'static str,
    dir: &Path,
    options: &PackOptions,
) -> Result<(SplitManifest, usize, usize), String> {
    let mut writer = SplitWriter::new(dir, split, options.shard_bytes);
    let (mut skipped, mut reencoded) = (0, 0);
    let (started, mut reported) = (Instant::now(), Instant::now());
    let indices: Vec<usize> = (0..folder.len()).collect();
    for chunk in indices.chunks(CHUNK) {
        let prepared: Vec<_> = chunk
            .par_iter()
            .map(|&i| prepare(&folder.path(i), options))
            .collect();
        for (&i, result) in chunk.iter().zip(prepared) {
            match result {
                Ok((bytes, extension, resized)) => {
                    let class = folder.label(i);
                    let key = key(&folder.classes[class], &folder.path(i));
                    writer.image(&key, extension, &bytes, class)?;
                    reencoded += usize::from(resized);
                }
                Err(message) => {
                    eprintln!("warning: skipping an unreadable image: {message}");
                    skipped += 1;
                }
            }
        }
        let done = chunk.last().map_or(0, |i| i + 1);
        if reported.elapsed().as_secs_f64() >= 2.0 || done == folder.len() {
            reported = Instant::now();
            eprintln!(
                "{split}: {done}/{} images ({:.1}%), {skipped} skipped, {:.0} images/s",
                folder.len(),
                100.0 * done as f64 / folder.len() as f64,
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok((writer.finish()?, skipped, reencoded))
}

/// Packs the image folder `data` (its `train/` and `val/`) into a new folder `output`, written
/// under a temporary name beside it and renamed when complete.
pub fn pack(data: &Path, output: &Path, options: &PackOptions) -> Result<PackSummary, String> {
    if output.exists() {
        return Err(format!(
            "{} exists already (a pack is written to a new folder)",
            output.display()
        ));
    }
    let splits = Splits::open(data)?;
    let name = output
        .file_name()
        .ok_or_else(|| format!("{} names no folder", output.display()))?;
    let temporary: PathBuf = output.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir_all(&temporary)
        .map_err(|e| format!("cannot create {}: {e}", temporary.display()))?;
    let written = (|| {
        let (train, train_skipped, train_reencoded) =
            pack_split(&splits.train, "train", &temporary, options)?;
        let (val, val_skipped, val_reencoded) =
            pack_split(&splits.valid, "val", &temporary, options)?;
        for (split, manifest) in [("train", &train), ("val", &val)] {
            if manifest.images == 0 {
                return Err(format!(
                    "no image of {}/{split} could be read",
                    data.display()
                ));
            }
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            classes: splits.train.classes.clone(),
            splits: SplitsManifest { train, val },
        };
        let json = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
        std::fs::write(temporary.join("pack.json"), json)
            .map_err(|e| format!("cannot write pack.json: {e}"))?;
        Ok(PackSummary {
            images: [manifest.splits.train.images, manifest.splits.val.images],
            skipped: [train_skipped, val_skipped],
            reencoded: train_reencoded + val_reencoded,
            bytes: folder_bytes(&temporary),
        })
    })();
    match written {
        Ok(summary) => {
            std::fs::rename(&temporary, output).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    temporary.display(),
                    output.display()
                )
            })?;
            Ok(summary)
        }
        Err(message) => {
            let _ = std::fs::remove_dir_all(&temporary);
            Err(message)
        }
    }
}

/// The bytes of the files in `dir`.
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}
