//! What a run shows and records: per-epoch means of every metric (kept by [`EpochLog`], burn's
//! metric logger interface), one line per epoch when the output is not a terminal, burn's
//! dashboard when it is, and the stop on a NaN loss.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::train::logger::MetricLogger;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::Interrupter;
use serde::{Deserialize, Serialize};

use super::curves::curves_svg;
use super::events::RunEvents;
use super::loss_scale::{locked, LossScale, SharedLossScale};
use crate::run_dir::{self, write_file};

/// burn-train's metric names.
pub const LOSS: &str = "Loss";
pub const TOP1: &str = "Accuracy";

/// burn-train's name of the top-`k` accuracy.
pub fn top_k_name(k: usize) -> String {
    format!("Top-K Accuracy @ TopK({k})")
}
pub const LR: &str = "Learning Rate";

/// One epoch's figures, as printed and reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Metric name → mean over the epoch's images (the learning rate: over its iterations).
    pub train: BTreeMap<String, f64>,
    pub valid: BTreeMap<String, f64>,
    /// Seconds of the training part of the epoch.
    pub train_seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// Training iterations (forward and backward passes) of the epoch.
    #[serde(default)]
    pub iterations: usize,
    /// float16's loss scale at the end of the epoch (float16 runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

impl EpochRecord {
    fn get(map: &BTreeMap<String, f64>, name: &str) -> f64 {
        map.get(name).copied().unwrap_or(f64::NAN)
    }

    /// Validation top-1, in percent.
    pub fn valid_top1(&self) -> f64 {
        Self::get(&self.valid, TOP1)
    }

    /// The progress line of the epoch, of `epochs`, with the top-`k` accuracy.
    pub fn line(&self, epochs: usize, k: usize) -> String {
        format!(
            "epoch {:>3}/{epochs} | train loss {:.4} top-1 {:5.1}% | valid loss {:.4} top-1 {:5.1}% top-{k} {:5.1}% | lr {:.4} | {:.1} img/s",
            self.epoch,
            Self::get(&self.train, LOSS),
            Self::get(&self.train, TOP1),
            Self::get(&self.valid, LOSS),
            self.valid_top1(),
            Self::get(&self.valid, &top_k_name(k)),
            Self::get(&self.train, LR),
            self.images_per_second,
        ) + &self
            .loss_scale
            .map(|s| format!(" | loss scale {}", s.scale))
            .unwrap_or_default()
    }
}

/// Sums of one split's metrics over the current epoch: name → (Σ value · count, Σ count).
type Sums = HashMap<String, (f64, usize)>;

fn means(sums: &Sums) -> BTreeMap<String, f64> {
    sums.iter()
        .map(|(name, (sum, count))| (name.clone(), sum / (*count).max(1) as f64))
        .collect()
}

/// What an epoch's training part measured, kept until its validation ends.
#[derive(Default)]
struct TrainPart {
    means: BTreeMap<String, f64>,
    seconds: f64,
    images_per_second: f64,
    iterations: usize,
}

/// The state shared by the logger, the checkpointing strategy and the run.
pub struct RunLog {
    /// Finished epochs, earlier runs' included when resuming.
    pub records: Vec<EpochRecord>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// If a NaN or infinite training loss has been seen.
    nan_seen: bool,
    names: HashMap<MetricId, String>,
    train: Sums,
    valid: Sums,
    /// The training half of the epoch whose validation runs.
    train_record: Option<TrainPart>,
    epoch_started: Instant,
    epochs: usize,
    top_k: usize,
    print_lines: bool,
    /// `epochs.jsonl`: one JSON record per finished epoch, rewritten as each finishes.
    journal: PathBuf,
    /// The run's TensorBoard event files, appended to as iterations and epochs finish.
    events: RunEvents,
    /// `curves.svg`: loss and top-1 per epoch, rewritten as each epoch finishes.
    curves: PathBuf,
    /// Training iterations of the current epoch so far.
    iterations: usize,
    interrupter: Interrupter,
    /// float16's loss scale, recorded with every epoch.
    loss_scale: Option<SharedLossScale>,
}

/// Where a run's records go: its directory, and whether to print a line per epoch.
pub struct RunFiles<'a> {
    pub output: &'a Path,
    pub print_lines: bool,
}

impl RunLog {
    /// The log of a run in `files.output` continuing after `records` (none for a new run);
    /// opens the run's TensorBoard event files.
    pub fn new(
        records: Vec<EpochRecord>,
        epochs: usize,
        top_k: usize,
        files: RunFiles,
        interrupter: Interrupter,
        loss_scale: Option<SharedLossScale>,
    ) -> Result<Self, String> {
        let events = RunEvents::open(files.output, &records, top_k)?;
        Ok(Self {
            records,
            stopped: None,
            nan_seen: false,
            names: HashMap::new(),
            train: Sums::new(),
            valid: Sums::new(),
            train_record: None,
            epoch_started: Instant::now(),
            epochs,
            top_k,
            print_lines: files.print_lines,
            journal: files.output.join(run_dir::JOURNAL),
            events,
            curves: files.output.join(run_dir::CURVES),
            iterations: 0,
            interrupter,
            loss_scale,
        })
    }

    /// Stops the run, keeping the first reason.
    pub fn stop(&mut self, reason: String) {
        if self.stopped.is_none() {
            self.interrupter.stop(Some(&reason));
            self.stopped = Some(reason);
        }
    }

    fn log(&mut self, update: MetricsUpdate, split: &Split) {
        for numeric in update.entries_numeric {
            let (value, count) = match numeric.numeric_entry {
                NumericEntry::Value(v) => (v, 1),
                NumericEntry::Aggregated {
                    aggregated_value,
                    count,
                } => (aggregated_value, count),
            };
            let name = self
                .names
                .get(&numeric.entry.metric_id)
                .cloned()
                .unwrap_or_default();
            if *split == Split::Train && name == LOSS {
                self.iterations += 1;
                if let Err(e) = self.events.iteration(value) {
                    self.stop(e);
                }
                if !value.is_finite() && !self.nan_seen {
                    self.nan_seen = true;
                    let epoch = self.records.last().map_or(0, |r| r.epoch) + 1;
                    self.stop(format!(
                        "the training loss became {value} in epoch {epoch}; the weights of that \
                         epoch are not saved"
                    ));
                }
            }
            let sums = match split {
                Split::Train => &mut self.train,
                Split::Valid => &mut self.valid,
                Split::Test(_) => continue,
            };
            let sum = sums.entry(name).or_insert((0.0, 0));
            sum.0 += value * count as f64;
            sum.1 += count;
        }
    }

    fn end_epoch(&mut self, summary: EpochSummary) {
        match summary.split {
            Split::Train => {
                let seconds = self.epoch_started.elapsed().as_secs_f64();
                let images = self.train.get(TOP1).map_or(0, |s| s.1);
                let iterations = std::mem::take(&mut self.iterations);
                self.train_record = Some(TrainPart {
                    means: means(&self.train),
                    seconds,
                    images_per_second: images as f64 / seconds,
                    iterations,
                });
                self.train.clear();
            }
            Split::Valid => {
                let train = self.train_record.take().unwrap_or_default();
                let record = EpochRecord {
                    epoch: summary.epoch_number,
                    train: train.means,
                    valid: means(&self.valid),
                    train_seconds: train.seconds,
                    images_per_second: train.images_per_second,
                    iterations: train.iterations,
                    loss_scale: self.loss_scale.as_ref().map(|shared| *locked(shared)),
                };
                self.valid.clear();
                if self.print_lines {
                    println!("{}", record.line(self.epochs, self.top_k));
                }
                // The event files first: a checkpoint of the epoch, written after this, then
                // implies that they hold it.
                let written = self.events.epoch(&record);
                self.records.push(record);
                let written = written
                    .and_then(|()| rewrite_journal(&self.journal, &self.records))
                    .and_then(|()| write_file(&self.curves, curves_svg(&self.records).as_bytes()));
                if let Err(e) = written {
                    self.stop(e);
                }
                self.epoch_started = Instant::now();
            }
            Split::Test(_) => {}
        }
    }
}

/// `record` as one line of the journal.
fn journal_line(record: &EpochRecord) -> serde_json::Result<String> {
    serde_json::to_string(record).map(|line| line + "\n")
}

/// Replaces the journal with `records` (through a temporary file: a kill leaves the old
/// journal or the new one).
pub fn rewrite_journal(path: &Path, records: &[EpochRecord]) -> Result<(), String> {
    let text: String = records
        .iter()
        .map(journal_line)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    write_file(path, text.as_bytes())
}

/// The records of an earlier run, up to and including `last_epoch`.
pub fn read_journal(path: &PathBuf, last_epoch: usize) -> Result<Vec<EpochRecord>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut records = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record: EpochRecord = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), number + 1))?;
        if record.epoch <= last_epoch {
            records.retain(|r: &EpochRecord| r.epoch != record.epoch);
            records.push(record);
        }
    }
    Ok(records)
}

/// burn's metric logger interface over the shared [`RunLog`] (it replaces burn's file logger,
/// whose epoch numbering restarts at 1 when a run resumes).
pub struct EpochLog(pub Arc<Mutex<RunLog>>);

impl MetricLogger for EpochLog {
    fn log(&mut self, update: MetricsUpdate, _epoch: usize, split: &Split) {
        self.0.lock().expect("run log").log(update, split);
    }

    /// The mean of `name` over `epoch` (a finished epoch, numbered from the run's start).
    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        let log = self.0.lock().expect("run log");
        let value = log.records.iter().find(|r| r.epoch == epoch).and_then(|r| {
            match split {
                Split::Train => r.train.get(name),
                Split::Valid => r.valid.get(name),
                Split::Test(_) => None,
            }
            .copied()
        });
        Ok(value.map(NumericEntry::Value).into_iter().collect())
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        let mut log = self.0.lock().expect("run log");
        log.names.insert(definition.metric_id, definition.name);
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        self.0.lock().expect("run log").end_epoch(summary);
    }
}

/// How often a long epoch reports its progress when the output is not a terminal.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// When the output is not a terminal: a progress line every [`PROGRESS_EVERY`] within an
/// epoch (the epoch lines come from [`EpochLog`]).
pub struct LineRenderer {
    last_line: Instant,
}

impl Default for LineRenderer {
    fn default() -> Self {
        Self {
            last_line: Instant::now(),
        }
    }
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, _state: MetricState) {}

    fn update_valid(&mut self, _state: MetricState) {}

    fn render_train(&mut self, item: TrainingProgress, _progress: Vec<ProgressType>) {
        let Some(progress) = item.progress else {
            return;
        };
        if self.last_line.elapsed() >= PROGRESS_EVERY {
            println!(
                "  epoch {}: {}/{} images",
                item.global_progress.items_processed,
                progress.items_processed,
                progress.items_total
            );
            self.last_line = Instant::now();
        }
    }

    fn render_valid(&mut self, _item: TrainingProgress, _progress: Vec<ProgressType>) {}
}

impl MetricsRendererEvaluation for LineRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _progress: Vec<ProgressType>) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}
