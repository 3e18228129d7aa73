//! `pedconv predict`: the most probable classes of a model for each of a set of image files,
//! with the class names a training run recorded (`classes.json`) or ImageNet's.

use std::path::{Path, PathBuf};

use crate::backend::{dispatch, BackendJob, JobBackend};
use crate::config::Precision;
use crate::data::folder::is_image;
use crate::data::transform::eval_image;
use crate::model::{decode_batch, is_pytorch, logits_of, ModelSource};
use crate::run_dir;

use super::shared::{DeviceArgs, InputArgs, ModelArgs};

#[derive(clap::Args)]
pub struct PredictArgs {
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
    #[command(flatten)]
    on: DeviceArgs,
    #[command(flatten)]
    input: InputArgs,
}

pub fn run(args: PredictArgs) -> Result<(), String> {
    let input = args.input.validate()?;
    let images = image_files(&args.paths)?;
    let total = images.len();
    let unreadable = dispatch(
        args.on.backend,
        args.on.device,
        Predict {
            model: args.model.into(),
            images,
            top: args.top as usize,
            input,
            json: args.json,
            precision: args.on.precision,
            backend: args.on.backend.name().to_string(),
        },
    )?;
    match unreadable {
        0 => Ok(()),
        n => Err(format!(
            "{n} of {total} images could not be read (named above) and were skipped"
        )),
    }
}

/// ImageNet's class names in the order of its 1000 outputs (torchvision's list).
const IMAGENET_CLASSES: &str = include_str!("../../assets/imagenet_classes.json");

/// A prediction job to run on a backend; it prints each batch's predictions as they come.
struct Predict {
    pub model: ModelSource,
    /// The image files, in the order they are printed.
    pub images: Vec<PathBuf>,
    /// How many classes to show per image.
    pub top: usize,
    pub input: InputArgs,
    /// One JSON object per line instead of a table.
    pub json: bool,
    /// The float type the network computes in, on the backend of this name.
    pub precision: Precision,
    pub backend: String,
}

/// The image files of `paths`: files as given, folders searched recursively for the extensions
/// `eval` reads (`.jpg`, `.jpeg`, `.png` in any case), in name order.
fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), String> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read the folder {}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, found)?;
            } else if is_image(&path) {
                found.push(path);
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut found)?;
        } else if path.exists() {
            found.push(path.clone());
        } else {
            return Err(format!("{} does not exist", path.display()));
        }
    }
    if found.is_empty() {
        return Err("no image files (.jpg, .jpeg, .png) among the given paths".into());
    }
    Ok(found)
}

/// The names of the model's `classes` outputs: the `classes.json` of the run the weights or the
/// configuration come from (the run directory, or the one above its `checkpoint/`), else
/// ImageNet's for a 1000-class PyTorch checkpoint, else none.
fn class_names(predict: &Predict, classes: usize) -> Option<Vec<String>> {
    let source = &predict.model;
    let run_dirs = source
        .config
        .iter()
        .chain([&source.weights])
        .filter_map(|path| path.parent())
        .flat_map(|dir| {
            [
                Some(dir),
                dir.parent().filter(|_| dir.ends_with("checkpoint")),
            ]
        })
        .flatten();
    for dir in run_dirs {
        let path = dir.join(run_dir::CLASSES);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match serde_json::from_str::<Vec<String>>(&text) {
            Ok(names) if names.len() == classes => return Some(names),
            Ok(names) => eprintln!(
                "warning: {} names {} classes, the model has {classes}; showing class numbers",
                path.display(),
                names.len()
            ),
            Err(e) => eprintln!("warning: cannot read {}: {e}", path.display()),
        }
        return None;
    }
    (classes == 1000 && is_pytorch(&source.weights))
        .then(|| serde_json::from_str(IMAGENET_CLASSES).expect("the built-in ImageNet names"))
}

/// The `k` most probable classes of a row of logits, with their softmax probabilities.
fn top_classes(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut ranked: Vec<(usize, f64)> = exps.into_iter().map(|e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

/// One image's prediction, as printed.
fn render(path: &Path, top: &[(usize, f64)], names: Option<&[String]>, json: bool) -> String {
    let name = |class: usize| names.map(|names| names[class].as_str());
    if json {
        let top: Vec<serde_json::Value> = top
            .iter()
            .map(|&(class, probability)| {
                serde_json::json!({"class": class, "name": name(class), "probability": probability})
            })
            .collect();
        serde_json::json!({"path": path.display().to_string(), "top": top}).to_string()
    } else {
        let mut text = path.display().to_string();
        for &(class, probability) in top {
            text += &format!("\n  {:6.2} %  {class:>4}", 100.0 * probability);
            if let Some(name) = name(class) {
                text += &format!("  {name}");
            }
        }
        text
    }
}

impl BackendJob for Predict {
    /// The number of images that could not be read.
    type Output = usize;

    fn run<B: JobBackend>(self, device: B::Device) -> Result<usize, String> {
        self.precision.check::<B>(&self.backend, &device)?;
        let (config, model) = self.model.load::<B>(&device)?;
        let classes = config.num_classes;
        let names = class_names(&self, classes);
        let mut unreadable = 0;
        for chunk in self.images.chunks(self.input.batch_size as usize) {
            let (resize, crop) = (self.input.resize, self.input.crop);
            let (input, read) = decode_batch::<B>(chunk.len(), crop, &device, |i| {
                eval_image(&chunk[i], resize, crop)
            });
            unreadable += chunk.len() - read.len();
            let Some(input) = input else {
                continue;
            };
            let logits = logits_of(&model, input, self.precision)?;
            for (row, &position) in logits.chunks(classes).zip(&read) {
                let top = top_classes(row, self.top);
                println!(
                    "{}",
                    render(&chunk[position], &top, names.as_deref(), self.json)
                );
            }
        }
        Ok(unreadable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_classes_are_softmax_ranked() {
        // softmax([ln 1, ln 3, ln 6]) = [0.1, 0.3, 0.6].
        let logits = [0.0, 3f32.ln(), 6f32.ln()];
        let top = top_classes(&logits, 2);
        assert_eq!((top[0].0, top[1].0), (2, 1));
        assert!((top[0].1 - 0.6).abs() < 1e-6 && (top[1].1 - 0.3).abs() < 1e-6);
        assert_eq!(top_classes(&logits, 9).len(), 3);
    }

    #[test]
    fn imagenet_names_are_the_thousand_classes() {
        let names: Vec<String> = serde_json::from_str(IMAGENET_CLASSES).unwrap();
        assert_eq!(names.len(), 1000);
        assert_eq!(
            (names[0].as_str(), names[999].as_str()),
            ("tench", "toilet tissue")
        );
    }

    #[test]
    fn predictions_render_as_json_lines_and_tables() {
        let names = vec!["cat".to_string(), "dog".to_string()];
        let top = [(1, 0.75), (0, 0.25)];
        let line = render(Path::new("a.png"), &top, Some(&names), true);
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["top"][0]["name"], "dog");
        assert_eq!(parsed["top"][1]["class"], 0);
        let unnamed = render(Path::new("a.png"), &top, None, true);
        assert!(unnamed.contains(r#""name":null"#), "{unnamed}");
        let table = render(Path::new("a.png"), &top, Some(&names), false);
        assert_eq!(table, "a.png\n   75.00 %     1  dog\n   25.00 %     0  cat");
    }
}
