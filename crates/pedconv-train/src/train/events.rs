//! TensorBoard event files of a run: `tensorboard/train/` and `tensorboard/valid/` in the run
//! directory, so that `tensorboard --logdir runs/` overlays a run's training and validation
//! curves under the same tags.
//!
//! An event file is a sequence of records, each an `Event` protobuf message (generated from
//! `proto/tensorboard.proto`) framed as TensorBoard's reader expects: the message's length as
//! a little-endian `u64`, the masked CRC32C of those 8 bytes, the message, and the masked
//! CRC32C of the message. The first event names the file's version.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use super::progress::{top_k_name, EpochRecord, LOSS, LR, TOP1};
use crate::run_dir::{self, write_file};

mod proto {
    include!(concat!(env!("OUT_DIR"), "/tensorboard.rs"));
}
use proto::{event, summary, Event, Summary};

/// The tag of the training loss logged every [`LOSS_EVERY`] iterations, whose step is the
/// run's iteration count; every other tag's step is the epoch.
pub const ITERATION_LOSS: &str = "loss_per_iteration";
/// How many training iterations apart [`ITERATION_LOSS`] is logged.
pub const LOSS_EVERY: usize = 10;

/// What TensorBoard's reader checks a record's CRC32C against: the checksum rotated and offset,
/// so that the checksum of data holding checksums stays meaningful.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `event` framed as one record.
fn record(event: &Event) -> Vec<u8> {
    let message = event.encode_to_vec();
    let length = (message.len() as u64).to_le_bytes();
    let mut bytes = Vec::with_capacity(message.len() + 16);
    bytes.extend_from_slice(&length);
    bytes.extend_from_slice(&masked_crc(&length).to_le_bytes());
    bytes.extend_from_slice(&message);
    bytes.extend_from_slice(&masked_crc(&message).to_le_bytes());
    bytes
}

/// The events of a file's records, up to the first record that is cut short or fails its
/// checksums (what a kill while writing leaves).
fn read_records(bytes: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 12 {
        let (length, tail) = rest.split_at(8);
        let size = u64::from_le_bytes(length.try_into().expect("8 bytes")) as usize;
        let Some(message) = tail.get(4..4 + size) else {
            break;
        };
        let Some(end) = tail.get(4 + size..8 + size) else {
            break;
        };
        let checksum = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        if checksum(&tail[..4]) != masked_crc(length) || checksum(end) != masked_crc(message) {
            break;
        }
        match Event::decode(message) {
            Ok(event) => events.push(event),
            Err(_) => break,
        }
        rest = &tail[8 + size..];
    }
    events
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// A scalar event.
fn scalar(tag: &str, step: usize, value: f64) -> Event {
    Event {
        wall_time: now(),
        step: step as i64,
        what: Some(event::What::Summary(Summary {
            value: vec![summary::Value {
                tag: tag.to_string(),
                value: Some(summary::value::Value::SimpleValue(value as f32)),
            }],
        })),
    }
}

fn tag_of(event: &Event) -> Option<&str> {
    match &event.what {
        Some(event::What::Summary(summary)) => summary.value.first().map(|v| v.tag.as_str()),
        _ => None,
    }
}

/// One event file, appended to record by record.
struct EventFile {
    path: PathBuf,
    file: File,
}

impl EventFile {
    /// The event file of `dir`, created with its version record, or, when resuming, the one
    /// there with only the events that `keep` accepts (rewritten through a temporary file).
    fn open(dir: &Path, resuming: bool, keep: impl Fn(&Event) -> bool) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let existing = resuming.then(|| newest_event_file(dir)).flatten();
        let path = existing.clone().unwrap_or_else(|| {
            let seconds = now() as u64;
            dir.join(format!("events.out.tfevents.{seconds}.pedconv"))
        });
        let mut events = vec![Event {
            wall_time: now(),
            step: 0,
            what: Some(event::What::FileVersion("brain.Event:2".into())),
        }];
        if let Some(existing) = &existing {
            let bytes = std::fs::read(existing)
                .map_err(|e| format!("cannot read {}: {e}", existing.display()))?;
            let mut old = read_records(&bytes).into_iter().peekable();
            if old.peek().is_some_and(|event| tag_of(event).is_none()) {
                events = vec![old.next().expect("the version record")];
            }
            events.extend(old.filter(|event| tag_of(event).is_some() && keep(event)));
        }
        let bytes: Vec<u8> = events.iter().flat_map(record).collect();
        write_file(&path, &bytes)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(Self { path, file })
    }

    fn append(&mut self, events: &[Event]) -> Result<(), String> {
        let bytes: Vec<u8> = events.iter().flat_map(record).collect();
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// The last event file of `dir` by name (the names start with the time they were created).
fn newest_event_file(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().contains("tfevents"))
        })
        .collect();
    files.sort();
    files.pop()
}

/// The run's two event files and the iteration count that steps [`ITERATION_LOSS`].
pub struct RunEvents {
    train: EventFile,
    valid: EventFile,
    /// Training iterations of the run so far, earlier runs' included when resuming.
    iterations: usize,
    /// The `k` of the top-`k` accuracy.
    top_k: usize,
}

impl RunEvents {
    /// The event files of the run directory `output`, continuing after `records` (the epochs a
    /// resumed run keeps; none for a new run): the events of later epochs, which the run will
    /// train again, are dropped.
    pub fn open(output: &Path, records: &[EpochRecord], top_k: usize) -> Result<Self, String> {
        let dir = output.join(run_dir::TENSORBOARD);
        let last_epoch = records.last().map_or(0, |record| record.epoch);
        let iterations = records.iter().map(|record| record.iterations).sum();
        let resuming = !records.is_empty();
        let keep = |event: &Event| {
            let bound = match tag_of(event) {
                Some(ITERATION_LOSS) => iterations,
                _ => last_epoch,
            };
            event.step as usize <= bound
        };
        Ok(Self {
            train: EventFile::open(&dir.join("train"), resuming, keep)?,
            valid: EventFile::open(&dir.join("valid"), resuming, keep)?,
            iterations,
            top_k,
        })
    }

    /// Counts one training iteration, logging its loss every [`LOSS_EVERY`] iterations.
    pub fn iteration(&mut self, loss: f64) -> Result<(), String> {
        self.iterations += 1;
        if self.iterations.is_multiple_of(LOSS_EVERY) {
            self.train
                .append(&[scalar(ITERATION_LOSS, self.iterations, loss)])?;
        }
        Ok(())
    }

    /// The scalars of a finished epoch, step = its number: `loss`, `top1` and `top{k}` of both
    /// splits; the learning rate, images per second and float16's loss scale with training's.
    pub fn epoch(&mut self, record: &EpochRecord) -> Result<(), String> {
        let (top_k_tag, top_k) = (format!("top{}", self.top_k), top_k_name(self.top_k));
        let tags = [("loss", LOSS), ("top1", TOP1), (&*top_k_tag, &*top_k)];
        let of = |metrics: &std::collections::BTreeMap<String, f64>, extra: Vec<Event>| {
            tags.iter()
                .filter_map(|(tag, name)| {
                    metrics
                        .get(*name)
                        .map(|&value| scalar(tag, record.epoch, value))
                })
                .chain(extra)
                .collect::<Vec<Event>>()
        };
        let mut extra = vec![scalar(
            "images_per_second",
            record.epoch,
            record.images_per_second,
        )];
        if let Some(&lr) = record.train.get(LR) {
            extra.push(scalar("learning_rate", record.epoch, lr));
        }
        if let Some(loss_scale) = record.loss_scale {
            extra.push(scalar("loss_scale", record.epoch, loss_scale.scale));
        }
        self.train.append(&of(&record.train, extra))?;
        self.valid.append(&of(&record.valid, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC32C's check value (of "123456789", 0xE3069283), and its masked form as TensorBoard's
    /// own `masked_crc32c` computes it (`tensorboard.compat.tensorflow_stub.pywrap_tensorflow`,
    /// TensorBoard 2.21).
    #[test]
    fn checksums_are_tensorboards_masked_crc32c() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    /// Records read back as written; a record cut short or altered ends the reading there.
    #[test]
    fn records_read_back_up_to_damage() {
        let events = [
            scalar("loss", 1, 2.5),
            scalar("loss", 2, 1.5),
            scalar("top1", 2, 40.0),
        ];
        let bytes: Vec<u8> = events.iter().flat_map(record).collect();
        assert_eq!(read_records(&bytes), events);
        assert_eq!(read_records(&bytes[..bytes.len() - 1]), events[..2]);
        let mut altered = bytes.clone();
        let second = record(&events[0]).len() + 14;
        altered[second] ^= 1;
        assert_eq!(read_records(&altered), events[..1]);
    }

    /// A resumed run's files keep the version record and the events up to its epoch and
    /// iteration, dropping those of the epochs it trains again.
    #[test]
    fn resuming_drops_the_events_of_later_epochs() {
        let dir = std::env::temp_dir().join(format!("pedconv-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let record = |epoch: usize| EpochRecord {
            epoch,
            train: [(LOSS.to_string(), 3.0 - epoch as f64)].into(),
            valid: [(LOSS.to_string(), 4.0 - epoch as f64)].into(),
            iterations: 20,
            ..Default::default()
        };
        let mut events = RunEvents::open(&dir, &[], 5).unwrap();
        for epoch in 1..=3 {
            for _ in 0..20 {
                events.iteration(1.0).unwrap();
            }
            events.epoch(&record(epoch)).unwrap();
        }
        drop(events);
        let resumed = RunEvents::open(&dir, &[record(1), record(2)], 5).unwrap();
        assert_eq!(resumed.iterations, 40);
        let file = newest_event_file(&dir.join(run_dir::TENSORBOARD).join("train")).unwrap();
        let kept = read_records(&std::fs::read(file).unwrap());
        assert_eq!(
            kept[0].what,
            Some(event::What::FileVersion("brain.Event:2".into()))
        );
        let steps = |tag: &str| -> Vec<i64> {
            kept.iter()
                .filter(|event| tag_of(event) == Some(tag))
                .map(|event| event.step)
                .collect()
        };
        assert_eq!(steps("loss"), [1, 2]);
        assert_eq!(steps(ITERATION_LOSS), [10, 20, 30, 40]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
