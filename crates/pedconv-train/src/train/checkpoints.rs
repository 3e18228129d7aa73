//! Which checkpoints a run keeps (the last few and the best by validation top-1), and where a
//! stopped run can resume.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;

use super::best_of;
use super::progress::RunLog;

/// How long the strategy waits for an epoch's validation record, which burn-train delivers
/// through its event thread (it can reach the logger after the checkpointing call).
const RECORD_WAIT: Duration = Duration::from_secs(60);

/// Saves every epoch, then deletes those that are neither among the last `keep` nor the best by
/// validation top-1 (the earliest of equals). Knows the checkpoints already on disk when
/// resuming, which burn's strategies do not.
pub struct KeepLastAndBest {
    keep: usize,
    saved: BTreeSet<usize>,
    log: Arc<Mutex<RunLog>>,
}

impl KeepLastAndBest {
    pub fn new(keep: usize, saved: BTreeSet<usize>, log: Arc<Mutex<RunLog>>) -> Self {
        Self { keep, saved, log }
    }

    /// Once `epoch`'s record has arrived (or the wait ran out): the best epoch, and whether the
    /// run is still healthy (no NaN loss, nothing else that stopped it).
    fn state_after(&self, epoch: usize) -> (Option<usize>, bool) {
        let started = Instant::now();
        loop {
            let log = self.log.lock().expect("run log");
            let arrived = log.records.iter().any(|r| r.epoch == epoch);
            if arrived || started.elapsed() > RECORD_WAIT {
                return (
                    best_of(&log.records).map(|(best, _)| best),
                    log.stopped.is_none(),
                );
            }
            drop(log);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl CheckpointingStrategy for KeepLastAndBest {
    fn checkpointing(
        &mut self,
        epoch: usize,
        _store: &EventStoreClient,
    ) -> Vec<CheckpointingAction> {
        let (best, healthy) = self.state_after(epoch);
        if !healthy {
            // The weights of an epoch whose loss became NaN are not kept.
            return Vec::new();
        }
        self.saved.insert(epoch);
        let last: Vec<usize> = self
            .saved
            .iter()
            .rev()
            .take(self.keep.max(1))
            .copied()
            .collect();
        let stale: Vec<usize> = self
            .saved
            .iter()
            .copied()
            .filter(|e| !last.contains(e) && Some(*e) != best)
            .collect();
        let mut actions = vec![CheckpointingAction::Save];
        for epoch in stale {
            self.saved.remove(&epoch);
            actions.push(CheckpointingAction::Delete(epoch));
        }
        actions
    }
}

/// The parts of an epoch's checkpoint, as burn-train names its files.
const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// The file of `part` of `epoch`'s checkpoint in the checkpoint folder `dir`.
pub fn checkpoint_file(dir: &Path, part: &str, epoch: usize) -> PathBuf {
    dir.join(format!("{part}-{epoch}.mpk"))
}

/// The epochs with a complete checkpoint (model, optimizer and scheduler) in `dir`.
pub fn saved_epochs(dir: &Path) -> BTreeSet<usize> {
    let complete = |epoch: &usize| {
        PARTS
            .iter()
            .all(|part| checkpoint_file(dir, part, *epoch).is_file())
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?
                .strip_suffix(".mpk")?
                .parse::<usize>()
                .ok()
        })
        .filter(complete)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_epochs_need_all_three_files() {
        let dir = std::env::temp_dir().join(format!("pedconv-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "model-1",
            "optim-1",
            "scheduler-1",
            "model-2",
            "optim-2",
            "model-x",
        ] {
            std::fs::write(dir.join(format!("{name}.mpk")), b"").unwrap();
        }
        assert_eq!(saved_epochs(&dir), BTreeSet::from([1]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
