//! Dynamic loss scaling for float16 training, as PyTorch's `GradScaler` does it: the loss is
//! multiplied by a scale before the backward pass, so that small gradients do not vanish in
//! float16, and the gradients divided by it after. The scale doubles after
//! [`GROWTH_INTERVAL`] passes whose gradients were all finite, and halves when one overflowed,
//! whose pass then changes nothing.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// The first scale (PyTorch's).
pub const INITIAL_SCALE: f64 = 65536.0;
/// Finite passes in a row before the scale doubles (PyTorch's).
pub const GROWTH_INTERVAL: usize = 2000;

/// The scale and how many passes in a row have had finite gradients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    pub finite_passes: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: INITIAL_SCALE,
            finite_passes: 0,
        }
    }
}

impl LossScale {
    /// Takes note of a pass whose gradients were `finite` or not.
    pub fn update(&mut self, finite: bool) {
        if !finite {
            self.scale /= 2.0;
            self.finite_passes = 0;
            return;
        }
        self.finite_passes += 1;
        if self.finite_passes == GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.finite_passes = 0;
        }
    }
}

/// The scale shared by a model's copies (one per device) and the run's log.
pub type SharedLossScale = Arc<Mutex<LossScale>>;

/// `shared`, locked (a panic elsewhere cannot leave it half-written: it is two numbers).
pub fn locked(shared: &SharedLossScale) -> MutexGuard<'_, LossScale> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_finite_passes() {
        let mut scale = LossScale::default();
        for _ in 0..GROWTH_INTERVAL - 1 {
            scale.update(true);
        }
        assert_eq!(scale.scale, INITIAL_SCALE);
        scale.update(false);
        assert_eq!((scale.scale, scale.finite_passes), (INITIAL_SCALE / 2.0, 0));
        for _ in 0..GROWTH_INTERVAL {
            scale.update(true);
        }
        assert_eq!((scale.scale, scale.finite_passes), (INITIAL_SCALE, 0));
    }
}
