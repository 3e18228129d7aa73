//! Image folders: `<split>/<class>/<image>`, as torchvision's `ImageFolder` reads them.

use std::path::{Path, PathBuf};

/// The images of one split: one sub-folder per class, classes numbered in name order (as
/// torchvision's `ImageFolder` does), images with extension `.jpg`, `.jpeg` or `.png` in any case.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub classes: Vec<String>,
    pub items: Vec<(PathBuf, usize)>,
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

impl ImageFolder {
    /// Scans `dir`, naming it in every error.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let classes = class_names(dir)?;
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let class_dir = dir.join(class);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
                .map_err(|e| format!("cannot read {}: {e}", class_dir.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            items.extend(files.into_iter().map(|p| (p, label)));
        }
        if items.is_empty() {
            return Err(format!(
                "no images (.jpg, .jpeg, .png) in the class folders of {}",
                dir.display()
            ));
        }
        Ok(Self { classes, items })
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
