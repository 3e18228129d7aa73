//! The learning-rate schedule: linear warm-up, then cosine decay, stepped once per iteration.

use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

/// `lr(t)` for iteration `t = 1, 2, …`: `peak · t / warmup` during the warm-up, then
/// `peak · (1 + cos(π · (t - warmup) / (total - warmup))) / 2`, reaching 0 at `total`.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupCosine {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    /// Iterations done (restored on resume).
    pub iteration: usize,
}

impl WarmupCosine {
    pub fn new(peak: f64, warmup: usize, total: usize) -> Self {
        Self {
            peak,
            warmup,
            total,
            iteration: 0,
        }
    }

    /// The rate of iteration `t` (1-based).
    pub fn rate(&self, t: usize) -> f64 {
        if t <= self.warmup {
            return self.peak * t as f64 / self.warmup as f64;
        }
        let decay = (self.total - self.warmup).max(1) as f64;
        let progress = ((t - self.warmup) as f64 / decay).min(1.0);
        0.5 * self.peak * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

impl LrScheduler for WarmupCosine {
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

    /// Values at chosen steps, against the formulas: warm-up 10 of 110 iterations, peak 0.4.
    #[test]
    fn warmup_then_cosine() {
        let mut schedule = WarmupCosine::new(0.4, 10, 110);
        let rates: Vec<f64> = (0..110).map(|_| schedule.step()).collect();
        assert!((rates[0] - 0.04).abs() < 1e-12); // t = 1: 0.4 · 1/10
        assert!((rates[9] - 0.4).abs() < 1e-12); // end of warm-up
        assert!((rates[59] - 0.2).abs() < 1e-12); // t = 60: half-way through the decay, cos(π/2)
        assert!((rates[34] - 0.2 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs() < 1e-12); // t = 35
        assert!(rates[109].abs() < 1e-12); // t = 110: the end
        assert_eq!(schedule.iteration, 110);
    }
}
