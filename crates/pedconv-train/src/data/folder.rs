//! Image folders: `<split>/<class>/<image>`, as torchvision's `ImageFolder` reads them.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

/// The images of one split: one sub-folder per class, classes numbered in name order (as
/// torchvision's `ImageFolder` does), images with extension `.jpg`, `.jpeg` or `.png` in any case,
/// in name order within a class.
///
/// Sized for ImageNet's 1.28 M images: the scan takes each file's type from its directory entry
/// (no `stat` but for symbolic links), and the file names lie one after another in one buffer
/// (about 40 bytes an image, where a `PathBuf` each takes about 100).
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The split's folder.
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// The images' file names, one after another, class by class.
    names: Vec<u8>,
    /// Where each image's name ends in `names`.
    name_ends: Vec<u64>,
    /// The number of images of the classes up to each one (so class `c` holds images
    /// `class_ends[c - 1]..class_ends[c]`).
    class_ends: Vec<usize>,
}

/// Whether `path` has an image extension that `eval`, `train` and `predict` read.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// The class folders of `dir` in name order (their order numbers the classes), naming `dir` in
/// every error.
pub fn class_names(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the data folder {}: {e}", dir.display()))?;
    let mut classes: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(format!(
            "{} has no class folders (expected one sub-folder of images per class)",
            dir.display()
        ));
    }
    Ok(classes)
}

/// The image files of the class folder `dir`, in name order.
fn image_names(dir: &Path) -> Result<Vec<OsString>, String> {
    let mut names = Vec::new();
    for entry in
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?
    {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !is_image(Path::new(&name)) {
            continue;
        }
        let is_file = match entry.file_type() {
            Ok(kind) if kind.is_symlink() => entry.path().is_file(),
            Ok(kind) => kind.is_file(),
            Err(_) => false,
        };
        if is_file {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

impl ImageFolder {
    /// Scans `dir` (its class folders in parallel), naming it in every error.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let classes = class_names(dir)?;
        let per_class: Vec<Vec<OsString>> = classes
            .par_iter()
            .map(|class| image_names(&dir.join(class)))
            .collect::<Result<_, _>>()?;
        let images: usize = per_class.iter().map(Vec::len).sum();
        if images == 0 {
            return Err(format!(
                "no images (.jpg, .jpeg, .png) in the class folders of {}",
                dir.display()
            ));
        }
        let mut folder = Self {
            root: dir.to_path_buf(),
            classes,
            names: Vec::new(),
            name_ends: Vec::with_capacity(images),
            class_ends: Vec::with_capacity(per_class.len()),
        };
        for names in per_class {
            for name in names {
                folder.names.extend_from_slice(name.as_encoded_bytes());
                folder.name_ends.push(folder.names.len() as u64);
            }
            folder.class_ends.push(folder.name_ends.len());
        }
        folder.names.shrink_to_fit();
        Ok(folder)
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.name_ends.len()
    }

    /// Image `index`'s class.
    pub fn label(&self, index: usize) -> usize {
        self.class_ends.partition_point(|&end| end <= index)
    }

    /// Image `index`'s file name.
    pub fn name(&self, index: usize) -> &OsStr {
        let start = index.checked_sub(1).map_or(0, |i| self.name_ends[i]) as usize;
        let bytes = &self.names[start..self.name_ends[index] as usize];
        // SAFETY: `bytes` is one whole name that `as_encoded_bytes` gave, copied unchanged.
        unsafe { OsStr::from_encoded_bytes_unchecked(bytes) }
    }

    /// Image `index`'s path.
    pub fn path(&self, index: usize) -> PathBuf {
        let class = &self.classes[self.label(index)];
        self.root.join(class).join(self.name(index))
    }

    /// The heap bytes of the image list (names, their ends and the class boundaries).
    pub fn heap_bytes(&self) -> usize {
        self.names.capacity()
            + self.name_ends.capacity() * std::mem::size_of::<u64>()
            + self.class_ends.capacity() * std::mem::size_of::<usize>()
    }
}

/// The training and validation splits of a data folder (`train/` and `val/`), with the same
/// classes.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: ImageFolder,
    pub valid: ImageFolder,
}

/// `root/name`, a split folder, or an error that says what a data folder must hold.
fn split_dir(root: &Path, name: &str) -> Result<PathBuf, String> {
    if !root.is_dir() {
        return Err(format!("the data folder {} does not exist", root.display()));
    }
    let dir = root.join(name);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "{} has no `{name}/` folder (expected `train/` and `val/`, each with one sub-folder \
             per class)",
            root.display()
        ))
    }
}

/// The number of classes of the data folder `root` (the class folders of `root/train`), without
/// scanning the images.
pub fn class_count(root: &Path) -> Result<usize, String> {
    Ok(class_names(&split_dir(root, "train")?)?.len())
}

impl Splits {
    /// Opens `root/train` and `root/val`, and checks that they hold the same classes.
    pub fn open(root: &Path) -> Result<Self, String> {
        let split = |name: &str| ImageFolder::open(&split_dir(root, name)?);
        let (train, valid) = (split("train")?, split("val")?);
        if train.classes != valid.classes {
            let only = |a: &ImageFolder, b: &ImageFolder| {
                a.classes
                    .iter()
                    .filter(|c| !b.classes.contains(c))
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            return Err(format!(
                "the classes of {root}/train ({} folders) and {root}/val ({} folders) differ: \
                 only in train: {:?}; only in val: {:?}",
                train.classes.len(),
                valid.classes.len(),
                only(&train, &valid),
                only(&valid, &train),
                root = root.display(),
            ));
        }
        Ok(Self { train, valid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Classes in name order, images in name order within each (only image files, symbolic
    /// links to files included), each image's path and class recovered from the packed names.
    #[test]
    fn scans_classes_and_images_in_name_order() {
        let dir = std::env::temp_dir().join(format!("pedconv-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (class, files) in [
            ("b", &["z.JPG", "a.png", "notes.txt"][..]),
            ("a", &["m.jpeg"]),
        ] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for file in files {
                std::fs::write(dir.join(class).join(file), b"x").unwrap();
            }
        }
        std::fs::create_dir_all(dir.join("b/sub.jpg")).unwrap(); // a folder, not an image
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.join("a/m.jpeg"), dir.join("b/link.jpg")).unwrap();
        let folder = ImageFolder::open(&dir).unwrap();
        assert_eq!(folder.classes, ["a", "b"]);
        let listed: Vec<(PathBuf, usize)> = (0..folder.len())
            .map(|i| (folder.path(i), folder.label(i)))
            .collect();
        let mut expected = vec![(dir.join("a/m.jpeg"), 0), (dir.join("b/a.png"), 1)];
        #[cfg(unix)]
        expected.push((dir.join("b/link.jpg"), 1));
        expected.push((dir.join("b/z.JPG"), 1));
        assert_eq!(listed, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
