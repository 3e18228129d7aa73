//! The fine-tuning part of the experiment configuration: which weights a run starts from,
//! which parameters train, and at what rate.

use std::path::PathBuf;

use burn::config::Config;
use serde::{Deserialize, Serialize};

/// How a run trains from pretrained weights (`pedconv train --weights FILE`). The defaults
/// train every parameter at the configuration's learning rate, as training from scratch does.
#[derive(Config, Debug, PartialEq)]
pub struct FineTuneConfig {
    /// Only these parameters train while the backbone is frozen; `None`: every parameter trains.
    #[config(default = "None")]
    pub train_only: Option<TrainOnly>,
    /// The epochs, from the first, that `train_only` holds; every parameter trains after them.
    /// `None`: it holds throughout.
    #[config(default = "None")]
    pub train_only_epochs: Option<usize>,
    /// The learning rate of the parameters loaded from the weights, as a multiple of the run's
    /// (a new head and freshly initialised attention branches take the run's rate).
    #[config(default = 1.0)]
    pub pretrained_lr_multiplier: f64,
    /// The weights the run started from and what it found in them, recorded in the run's
    /// `config.json` when it starts (for its report and a resumed run); left out of a
    /// configuration one writes.
    #[config(default = "None")]
    pub started_from: Option<StartedFrom>,
}

/// The parameters that train while the rest of the network is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TrainOnly {
    /// The classifier.
    Head,
    /// The classifier and the PEDConv attention branches (with their decoders).
    HeadAndAttention,
}

/// What a fine-tuning run started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartedFrom {
    /// The weights file, as given.
    pub weights: PathBuf,
    /// Its SHA-256, in hexadecimal.
    pub sha256: String,
    /// The classes of the file's classifier.
    pub file_classes: usize,
    /// Whether the classifier was initialised anew, for the data's classes.
    pub new_head: bool,
    /// Whether the attention branches came from the file (a PEDConv network) rather than being
    /// initialised anew (static weights as the base of PEDConv layers).
    pub attention_from_file: bool,
}

impl FineTuneConfig {
    /// Checks the values, naming the first wrong one.
    pub fn validate(&self) -> Result<(), String> {
        let multiplier = self.pretrained_lr_multiplier;
        if !(multiplier.is_finite() && multiplier >= 0.0) {
            return Err(format!(
                "fine_tune.pretrained_lr_multiplier must be finite and non-negative, got {multiplier}"
            ));
        }
        if self.train_only.is_none() && self.train_only_epochs.is_some() {
            return Err(
                "fine_tune.train_only_epochs needs fine_tune.train_only (head or \
                 head-and-attention)"
                    .to_string(),
            );
        }
        Ok(())
    }
}
