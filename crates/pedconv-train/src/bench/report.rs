//! The bench's report: each row appended to `bench.jsonl` as it is measured, and the whole as
//! `bench.json` and markdown tables with the PEDConv/static ratios.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{BenchReport, NetworkRow};
use crate::data::transform::JPEG_DECODER;

/// `bench.jsonl`: one JSON object a line, each row of the report with its `kind` (`layer` or
/// `network`), written and flushed as soon as it is measured.
pub struct RowLog {
    path: PathBuf,
    file: File,
}

impl RowLog {
    /// Creates `dir` where needed and `dir/bench.jsonl`, empty.
    pub fn create(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("bench.jsonl");
        let file =
            File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Self { path, file })
    }

    pub fn append(&mut self, kind: &str, row: &impl Serialize) -> Result<(), String> {
        let mut value = serde_json::to_value(row).map_err(|e| e.to_string())?;
        if let serde_json::Value::Object(fields) = &mut value {
            fields.insert("kind".into(), kind.into());
        }
        writeln!(self.file, "{value}")
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// `value / base` to two places, or `–` where the base is below `smallest` (a peak too small for
/// the millisecond sampling to compare).
fn ratio(value: f64, base: f64, smallest: f64) -> String {
    if base >= smallest && base > 0.0 {
        format!("{:.2}", value / base)
    } else {
        "–".into()
    }
}

/// The smallest peak, in MiB, that a peak is compared with.
const SMALLEST_PEAK_MIB: f64 = 0.5;

impl BenchReport {
    /// Markdown tables: per layer (each operator against the static convolution of the same
    /// shape), then per network (PEDConv against static at the same batch and resolution).
    pub fn markdown(&self) -> String {
        let on_device = self
            .layers
            .iter()
            .map(|row| row.forward_backward)
            .chain(self.networks.iter().map(|row| row.train_step))
            .any(|measure| measure.device_peak_mib.is_some());
        let mut out = format!(
            "Backend {}, {} threads, median of {} repetitions after two warm-up runs (first = \
             the first run, compilation and autotuning included); peak = {}, during a run \
             after the warm-ups.\n",
            self.backend,
            self.threads,
            self.reps,
            if on_device {
                "device memory in use above the inputs and parameters, sampled every millisecond"
            } else {
                "heap above the inputs and parameters"
            }
        );
        if !self.layers.is_empty() {
            out += &format!(
                "\n### Layers (batch {}, width {}, the layer shapes of {}² images)\n\n| network | layer | × | operator | forward ms | ×static | fwd+bwd ms | ×static | peak fwd+bwd MiB | ×static |\n| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
                self.layer_batch, self.width, self.layer_image
            );
            for row in &self.layers {
                let base = self
                    .layers
                    .iter()
                    .find(|r| {
                        r.network == row.network && r.layer == row.layer && r.operator == "static"
                    })
                    .expect("a static row per layer");
                let auto = match (
                    row.operator == row.auto_inference,
                    row.operator == row.auto_training,
                ) {
                    (true, true) => " (Auto)",
                    (true, false) => " (Auto in inference)",
                    (false, true) => " (Auto in training)",
                    (false, false) => "",
                };
                out += &format!(
                    "| {} | {} | {} | {}{auto} | {:.2} | {} | {:.2} | {} | {:.1} | {} |\n",
                    row.network,
                    row.layer,
                    row.count,
                    row.operator,
                    row.forward.millis,
                    ratio(row.forward.millis, base.forward.millis, 0.0),
                    row.forward_backward.millis,
                    ratio(
                        row.forward_backward.millis,
                        base.forward_backward.millis,
                        0.0
                    ),
                    row.forward_backward.peak(),
                    ratio(
                        row.forward_backward.peak(),
                        base.forward_backward.peak(),
                        SMALLEST_PEAK_MIB
                    ),
                );
            }
        }
        if !self.input.is_empty() {
            out += &self.input_markdown();
        }
        if !self.networks.is_empty() {
            out += &format!(
                "\n### Networks (width {}, computing in {}, autodiff checkpointing {:?}; inference with the batch norms folded)\n\n| network | batch | image | model | train img/s | ×static | train peak MiB | ×static | inference img/s | ×static | inference peak MiB | first train / inference ms |\n| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
                self.width,
                self.precision.name(),
                self.checkpointing
            );
            let mut groups: BTreeMap<(String, usize, usize), Vec<&NetworkRow>> = BTreeMap::new();
            for row in &self.networks {
                groups
                    .entry((row.network.clone(), row.batch, row.image_size))
                    .or_default()
                    .push(row);
            }
            for rows in groups.values() {
                let base = rows
                    .iter()
                    .find(|r| r.model == "static")
                    .expect("a static row");
                for row in rows {
                    out += &format!(
                        "| {} | {} | {}² | {} | {:.2} | {} | {:.0} | {} | {:.2} | {} | {:.0} | {:.0} / {:.0} |\n",
                        row.network,
                        row.batch,
                        row.image_size,
                        row.model,
                        row.train_images_per_second,
                        ratio(
                            row.train_images_per_second,
                            base.train_images_per_second,
                            0.0
                        ),
                        row.train_step.peak(),
                        ratio(
                            row.train_step.peak(),
                            base.train_step.peak(),
                            SMALLEST_PEAK_MIB
                        ),
                        row.inference_images_per_second,
                        ratio(
                            row.inference_images_per_second,
                            base.inference_images_per_second,
                            0.0
                        ),
                        row.inference.peak(),
                        row.train_step.first_millis,
                        row.inference.first_millis,
                    );
                }
            }
        }
        out
    }

    /// The input pipeline's tables: images per second with where the CPU time goes, and the
    /// folder scans.
    fn input_markdown(&self) -> String {
        let mut out = format!("\n### Input pipeline (random resized crop, flip, [AutoAugment], 8-bit batches, JPEGs decoded by {JPEG_DECODER}; CPU ms per image by stage, summed over threads)\n\n| source | threads | AutoAugment | images | img/s | read | decode | crop+resize | augment | assemble |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in &self.input {
            let ms = row.stages_ms;
            out += &format!(
                "| {} {} | {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                row.source,
                row.path.display(),
                row.threads,
                row.auto_augment,
                row.images,
                row.images_per_second,
                ms.read,
                ms.decode,
                ms.crop_resize,
                ms.augment,
                ms.assemble
            );
        }
        if !self.scan.is_empty() {
            out += "\n| folder scanned (train/) | images | seconds | list MiB | s per million images | MiB per million images |\n| --- | ---: | ---: | ---: | ---: | ---: |\n";
            for row in &self.scan {
                out += &format!(
                    "| {} | {} | {:.3} | {:.2} | {:.2} | {:.1} |\n",
                    row.path.display(),
                    row.images,
                    row.seconds,
                    row.list_bytes as f64 / (1 << 20) as f64,
                    row.seconds_per_million,
                    row.mib_per_million
                );
            }
        }
        out
    }

    /// Writes `bench.json` and `bench.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        for (name, text) in [("bench.json", json), ("bench.md", self.markdown())] {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }
}
