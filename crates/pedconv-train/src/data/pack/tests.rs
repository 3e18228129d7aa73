//! Packs written and read back: against the tar crate's own reader, damaged, and refused.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::write::{pack, PackOptions};
use super::*;
use crate::data::transform::decode;

/// A fresh folder under the system's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pedconv-pack-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An image folder: classes `cat` and `dog`, each with three JPEGs of 64×48 and one PNG, and
/// in `train/dog` a file that is no image.
fn image_folder(root: &Path) {
    for split in ["train", "val"] {
        for (class, shade) in [("cat", 40u8), ("dog", 200)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..3u8 {
                let image = RgbImage::from_fn(64, 48, |x, y| {
                    Rgb([shade, (x * 4) as u8, (y * 5 + u32::from(i)) as u8])
                });
                image.save(dir.join(format!("img.{i}.jpg"))).unwrap();
            }
            RgbImage::from_pixel(20, 30, Rgb([shade; 3]))
                .save(dir.join("flat.png"))
                .unwrap();
        }
    }
    std::fs::write(root.join("train/dog/broken.jpg"), b"\xFF\xD8not a jpeg").unwrap();
}

fn options(max_side: Option<u32>, shard_bytes: u64) -> PackOptions {
    PackOptions {
        max_side,
        quality: 90,
        shard_bytes,
    }
}

/// Every image is in a tar member `class/stem.ext` followed by `class/stem.cls`, where the tar
/// crate's reader finds the bytes and the position the index records; unreadable images are
/// skipped; shards split between images, never inside one.
#[test]
fn packs_are_webdataset_shards_with_an_exact_index() {
    let dir = scratch("exact");
    image_folder(&dir.join("data"));
    let output = dir.join("pack");
    // Shards of about one image each.
    let summary = pack(&dir.join("data"), &output, &options(None, 1500)).unwrap();
    assert_eq!(summary.images, [8, 8]);
    assert_eq!(summary.skipped, [1, 0]);
    let manifest = manifest(&output).unwrap();
    assert_eq!(manifest.classes, ["cat", "dog"]);
    assert!(manifest.splits.train.shards.len() > 1);
    let split = PackedSplit::open(&output, "train").unwrap();
    assert_eq!(split.len(), 8);
    let folder = crate::data::folder::ImageFolder::open(&dir.join("data/train")).unwrap();
    let mut image = 0;
    for shard in &manifest.splits.train.shards {
        let mut archive = tar::Archive::new(std::fs::File::open(output.join(shard)).unwrap());
        let mut entries = archive.entries().unwrap();
        while let Some(entry) = entries.next() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let record = split.record(image);
            assert_eq!(manifest.splits.train.shards[record.shard as usize], *shard);
            assert_eq!(entry.raw_file_position(), record.offset, "{name}");
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes, split.bytes(image));
            // The folder's images in order, the broken one left out.
            let source = (0..folder.len())
                .map(|i| folder.path(i))
                .filter(|p| !p.ends_with("broken.jpg"))
                .nth(image)
                .unwrap();
            assert_eq!(bytes, std::fs::read(&source).unwrap(), "{name}");
            let class = &manifest.classes[split.label(image)];
            let stem = source
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .replace('.', "_");
            let extension = source.extension().unwrap().to_string_lossy().to_string();
            assert_eq!(name, format!("{class}/{stem}.{extension}"));
            assert!(split.name(image).to_string().contains(&name));
            let mut cls = entries.next().unwrap().unwrap();
            assert_eq!(
                cls.path().unwrap().display().to_string(),
                format!("{class}/{stem}.cls")
            );
            let mut label = String::new();
            cls.read_to_string(&mut label).unwrap();
            assert_eq!(label, split.label(image).to_string());
            image += 1;
        }
    }
    assert_eq!(image, 8);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `max_side` re-encodes the larger images only, their longer side capped.
#[test]
fn a_capped_pack_reencodes_large_images() {
    let dir = scratch("capped");
    image_folder(&dir.join("data"));
    let output = dir.join("pack");
    let summary = pack(&dir.join("data"), &output, &options(Some(32), 1 << 30)).unwrap();
    assert_eq!(summary.reencoded, 12, "the 64×48 JPEGs, not the 20×30 PNGs");
    let split = PackedSplit::open(&output, "val").unwrap();
    let sizes: Vec<(u32, u32)> = (0..split.len())
        .map(|i| decode(split.bytes(i), &i).unwrap().dimensions())
        .collect();
    assert_eq!(sizes.iter().filter(|&&s| s == (32, 24)).count(), 6);
    assert_eq!(sizes.iter().filter(|&&s| s == (20, 30)).count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An existing output is refused and kept; a folder without images leaves no partial pack; a
/// damaged index or image is an error that names it.
#[test]
fn bad_packs_are_refused_and_named() {
    let dir = scratch("bad");
    image_folder(&dir.join("data"));
    let output = dir.join("pack");
    pack(&dir.join("data"), &output, &options(None, 1 << 30)).unwrap();
    let again = pack(&dir.join("data"), &output, &options(None, 1 << 30)).unwrap_err();
    assert!(again.contains("exists already"), "{again}");
    assert!(manifest(&output).is_ok());

    std::fs::create_dir_all(dir.join("empty/train/a")).unwrap();
    std::fs::create_dir_all(dir.join("empty/val/a")).unwrap();
    std::fs::write(dir.join("empty/train/a/x.jpg"), b"junk").unwrap();
    std::fs::write(dir.join("empty/val/a/y.jpg"), b"junk").unwrap();
    let error = pack(
        &dir.join("empty"),
        &dir.join("none"),
        &options(None, 1 << 30),
    )
    .unwrap_err();
    assert!(error.contains("could be read"), "{error}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !left.iter().any(|n| n.to_string_lossy().contains("partial")),
        "{left:?}"
    );

    // An image's bytes overwritten: the decoder's error names the image.
    let split = PackedSplit::open(&output, "val").unwrap();
    let record = split.record(1);
    let shard = output.join(&manifest(&output).unwrap().splits.val.shards[record.shard as usize]);
    let mut bytes = std::fs::read(&shard).unwrap();
    let start = record.offset as usize + 2;
    bytes[start..start + 200].fill(0x55);
    drop(split);
    std::fs::write(&shard, bytes).unwrap();
    let split = PackedSplit::open(&output, "val").unwrap();
    let name = split.name(1).to_string();
    let error = decode(split.bytes(1), &split.name(1)).unwrap_err();
    assert!(
        error.starts_with(&name) && name.contains("cat/img_0.jpg"), // the second of cat/ in name order
        "{error}"
    );

    // A cut index.
    let index = output.join("val.idx");
    let cut = std::fs::read(&index).unwrap();
    std::fs::write(&index, &cut[..cut.len() - 5]).unwrap();
    let error = PackedSplit::open(&output, "val").err().unwrap();
    assert!(
        error.contains("val.idx") && error.contains("damaged"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
