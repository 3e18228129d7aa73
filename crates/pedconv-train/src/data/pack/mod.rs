//! Packed datasets: a folder's splits as WebDataset tar shards (what timm, OpenCLIP and
//! `webdataset` read), with a sidecar index for random access, memory-mapped, so that a loader
//! reads an image without opening a file per image and each epoch's order stays a function of
//! the seed and the epoch.
//!
//! ```text
//! PACK/pack.json          {"format": "pedconv-pack", "version": 1, "classes": [...],
//!                          "splits": {"train": {"images": N, "shards": ["train-000000.tar", ...]},
//!                                     "val": {...}}}
//! PACK/train-000000.tar   for each image, in the folder's order: `KEY.jpg` (or `.png`: the
//!                         encoded image) then `KEY.cls` (its class number, decimal); KEY is
//!                         `class-folder/file-stem` (dots in the stem made `_`)
//! PACK/train.idx          per image, 24 bytes little-endian: shard (u32), class (u32), offset
//!                         of the image's bytes in the shard (u64), their length (u64)
//! PACK/val-*.tar, val.idx the same for the validation split
//! ```
//!
//! [`write`] makes one from an image folder (`pedconv pack`).

pub mod write;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

/// `pack.json`'s `format`.
const FORMAT: &str = "pedconv-pack";
/// `pack.json`'s `version`.
const VERSION: u32 = 1;
/// The bytes of one index record.
const RECORD: usize = 24;

/// `pack.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The class names, in class-number order.
    pub classes: Vec<String>,
    pub splits: SplitsManifest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitsManifest {
    pub train: SplitManifest,
    pub val: SplitManifest,
}

/// A split's images and shard files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    pub images: usize,
    pub shards: Vec<String>,
}

/// Where an image lies: one index record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub shard: u32,
    pub class: u32,
    pub offset: u64,
    pub length: u64,
}

impl Record {
    pub fn to_bytes(self) -> [u8; RECORD] {
        let mut bytes = [0; RECORD];
        bytes[0..4].copy_from_slice(&self.shard.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.class.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.length.to_le_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let word = |range: std::ops::Range<usize>| -> [u8; 8] {
            let mut word = [0; 8];
            word[..range.len()].copy_from_slice(&bytes[range]);
            word
        };
        Self {
            shard: u64::from_le_bytes(word(0..4)) as u32,
            class: u64::from_le_bytes(word(4..8)) as u32,
            offset: u64::from_le_bytes(word(8..16)),
            length: u64::from_le_bytes(word(16..24)),
        }
    }
}

/// Reads and checks `PACK/pack.json`.
pub fn manifest(pack: &Path) -> Result<Manifest, String> {
    let path = pack.join("pack.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (a packed dataset is a folder that `pedconv pack` wrote)",
            path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a pack manifest: {e}", path.display()))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(format!(
            "{}: format {} version {}, where this build reads {FORMAT} version {VERSION}",
            path.display(),
            manifest.format,
            manifest.version
        ));
    }
    if manifest.classes.is_empty() {
        return Err(format!("{}: no classes", path.display()));
    }
    Ok(manifest)
}

/// Maps `path` into memory, naming it in errors. The pack must not change while it is read
/// (`pedconv pack` never writes into an existing pack).
fn map(path: &Path) -> Result<Mmap, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the mapping is read-only, and packs are written once, under a temporary name.
    unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map {}: {e}", path.display()))
}

/// One split of a pack, memory-mapped: the index and the shards.
#[derive(Clone)]
pub struct PackedSplit {
    pack: PathBuf,
    split: String,
    shard_names: Vec<String>,
    shards: Arc<Vec<Mmap>>,
    index: Arc<Mmap>,
}

impl PackedSplit {
    /// Opens split `split` (`train` or `val`) of the pack at `pack`, and checks that every
    /// record lies inside its shard and names a class of the pack.
    pub fn open(pack: &Path, split: &str) -> Result<Self, String> {
        let manifest = manifest(pack)?;
        let listed = match split {
            "train" => &manifest.splits.train,
            _ => &manifest.splits.val,
        };
        let index_path = pack.join(format!("{split}.idx"));
        let index = map(&index_path)?;
        if index.len() != listed.images * RECORD {
            return Err(format!(
                "{}: {} bytes, where pack.json's {} images take {} (the pack is damaged)",
                index_path.display(),
                index.len(),
                listed.images,
                listed.images * RECORD
            ));
        }
        let shards = listed
            .shards
            .iter()
            .map(|name| map(&pack.join(name)))
            .collect::<Result<Vec<_>, _>>()?;
        let opened = Self {
            pack: pack.to_path_buf(),
            split: split.to_string(),
            shard_names: listed.shards.clone(),
            shards: Arc::new(shards),
            index: Arc::new(index),
        };
        for image in 0..opened.len() {
            let record = opened.record(image);
            let inside = opened
                .shards
                .get(record.shard as usize)
                .is_some_and(|shard| {
                    record.offset.saturating_add(record.length) <= shard.len() as u64
                });
            if !inside || record.class as usize >= manifest.classes.len() {
                return Err(format!(
                    "{}: image {image}'s record {record:?} lies outside its shard or names no \
                     class (the pack is damaged)",
                    index_path.display()
                ));
            }
        }
        Ok(opened)
    }

    pub fn len(&self) -> usize {
        self.index.len() / RECORD
    }

    fn record(&self, image: usize) -> Record {
        Record::from_bytes(&self.index[image * RECORD..(image + 1) * RECORD])
    }

    pub fn label(&self, image: usize) -> usize {
        self.record(image).class as usize
    }

    /// The encoded bytes of image `image` (inside its shard: [`PackedSplit::open`] checked).
    pub fn bytes(&self, image: usize) -> &[u8] {
        let record = self.record(image);
        let shard = &self.shards[record.shard as usize];
        &shard[record.offset as usize..(record.offset + record.length) as usize]
    }

    /// The image for messages (written only when shown): its shard, member name and position.
    pub fn name(&self, image: usize) -> impl std::fmt::Display + '_ {
        ImageName { split: self, image }
    }
}

/// A packed image for messages: the pack, the split, the position, the member and its shard.
struct ImageName<'a> {
    split: &'a PackedSplit,
    image: usize,
}

impl std::fmt::Display for ImageName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (split, image) = (self.split, self.image);
        let record = split.record(image);
        let shard = &split.shards[record.shard as usize];
        let member = (record.offset as usize)
            .checked_sub(512)
            .and_then(|start| {
                tar::Header::from_byte_slice(&shard[start..start + 512])
                    .path()
                    .ok()
            })
            .map_or_else(|| "?".to_string(), |path| path.display().to_string());
        write!(
            f,
            "{}: image {image} of {} ({member} in {})",
            split.pack.display(),
            split.split,
            split.shard_names[record.shard as usize]
        )
    }
}

#[cfg(test)]
mod tests;
