//! The learning-rate schedule: linear warm-up, then a cosine, linear or step decay, stepped once
//! per iteration (burn-train steps the scheduler once per forward and backward pass).

use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

use crate::config::LrDecay;

/// `lr(t)` for iteration `t = 1, 2, …, total`: `peak · t / warmup` during the warm-up; after it,
/// with `p = (t - warmup) / (total - warmup)`, `peak · (1 + cos(π p)) / 2` (cosine),
/// `peak · (1 - p)` (linear), or `peak · gamma^k` where `k` milestones lie before `t` (step).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
    /// Iterations done (restored on resume).
    pub iteration: usize,
}

/// [`LrDecay`] in iterations.
#[derive(Clone, Debug, PartialEq)]
pub enum Decay {
    Cosine,
    Linear,
    /// The rate is multiplied by `gamma` after each of these iterations.
    Step {
        milestones: Vec<usize>,
        gamma: f64,
    },
}

impl Schedule {
    /// The schedule of `epochs` epochs of `iterations_per_epoch` iterations.
    pub fn new(
        peak: f64,
        warmup_epochs: usize,
        epochs: usize,
        iterations_per_epoch: usize,
        decay: &LrDecay,
    ) -> Self {
        let decay = match decay {
            LrDecay::Cosine => Decay::Cosine,
            LrDecay::Linear => Decay::Linear,
            LrDecay::Step { milestones, gamma } => Decay::Step {
                milestones: milestones
                    .iter()
                    .map(|m| m * iterations_per_epoch)
                    .collect(),
                gamma: *gamma,
            },
        };
        Self {
            peak,
            warmup: warmup_epochs * iterations_per_epoch,
            total: epochs * iterations_per_epoch,
            decay,
            iteration: 0,
        }
    }

    /// The rate of iteration `t` (1-based).
    pub fn rate(&self, t: usize) -> f64 {
        if t <= self.warmup {
            return self.peak * t as f64 / self.warmup as f64;
        }
        let progress =
            ((t - self.warmup) as f64 / (self.total - self.warmup).max(1) as f64).min(1.0);
        match &self.decay {
            Decay::Cosine => 0.5 * self.peak * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Linear => self.peak * (1.0 - progress),
            Decay::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| t > m).count();
                self.peak * gamma.powi(passed as i32)
            }
        }
    }
}

impl LrScheduler for Schedule {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        self.iteration += 1;
        self.rate(self.iteration)
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.iteration
    }

    fn load_record<B: Backend>(mut self, iteration: usize) -> Self {
        self.iteration = iteration;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn rates(decay: LrDecay) -> Vec<f64> {
        // Peak 0.4, 1 warm-up epoch and 11 epochs of 10 iterations.
        let mut schedule = Schedule::new(0.4, 1, 11, 10, &decay);
        let rates = (0..110).map(|_| schedule.step()).collect();
        assert_eq!(schedule.iteration, 110);
        rates
    }

    /// Values at chosen iterations, against the formulas; `rates[t - 1]` is iteration `t`.
    #[test]
    fn warmup_then_cosine() {
        let rates = rates(LrDecay::Cosine);
        assert!((rates[0] - 0.04).abs() < 1e-12); // t = 1: 0.4 · 1/10
        assert!((rates[9] - 0.4).abs() < 1e-12); // end of warm-up
        assert!((rates[59] - 0.2).abs() < 1e-12); // t = 60: half-way, cos(π/2) = 0
        assert!((rates[34] - 0.2 * (1.0 + (PI / 4.0).cos())).abs() < 1e-12); // t = 35
        assert!(rates[109].abs() < 1e-12); // t = 110: the end
    }

    #[test]
    fn warmup_then_linear() {
        let rates = rates(LrDecay::Linear);
        assert!((rates[4] - 0.2).abs() < 1e-12); // t = 5, warm-up
        assert!((rates[34] - 0.4 * 0.75).abs() < 1e-12); // t = 35: p = 25/100
        assert!((rates[59] - 0.2).abs() < 1e-12);
        assert!(rates[109].abs() < 1e-12);
    }

    /// Milestones at epochs 3 and 6: iterations 31–60 at 0.1 · peak, 61– at 0.01 · peak.
    #[test]
    fn warmup_then_steps() {
        let rates = rates(LrDecay::Step {
            milestones: vec![3, 6],
            gamma: 0.1,
        });
        assert!((rates[9] - 0.4).abs() < 1e-12);
        assert!((rates[29] - 0.4).abs() < 1e-12); // t = 30, last of epoch 3
        assert!((rates[30] - 0.04).abs() < 1e-12); // t = 31
        assert!((rates[60] - 0.004).abs() < 1e-12); // t = 61
        assert!((rates[109] - 0.004).abs() < 1e-12);
    }
}
