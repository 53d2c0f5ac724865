//! The paper's learning-rate heuristic (section 5): start at 0.01, divide
//! by 10 when the validation error stops improving at the current rate;
//! the paper did so three times. "Stops improving" = no new best error for
//! `patience` epochs in a row.
//!
//! `--warmup-epochs` (not in the paper; Goyal et al. 2017, for large
//! batches): the lr rises linearly over the first `warmup_steps` steps, to
//! the rate at step `warmup_steps`; the heuristic above is unchanged.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    /// Epochs without a new best before a drop.
    pub patience: u32,
    pub max_drops: u32,
    pub drops: u32,
    pub best_error: Option<f64>,
    pub epochs_since_best: u32,
    /// Steps of linear warm-up (0: none, the paper's recipe).
    #[serde(default)]
    pub warmup_steps: u64,
}

impl Schedule {
    pub fn new(lr: f64, patience: u32, max_drops: u32) -> Self {
        Self {
            lr,
            patience: patience.max(1),
            max_drops,
            drops: 0,
            best_error: None,
            epochs_since_best: 0,
            warmup_steps: 0,
        }
    }

    /// With `steps` steps of linear warm-up.
    pub fn with_warmup(mut self, steps: u64) -> Self {
        self.warmup_steps = steps;
        self
    }

    /// The lr of step `step` (0-based): `lr` times (step + 1) /
    /// warmup_steps during the warm-up, `lr` after.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            self.lr * (step + 1) as f64 / self.warmup_steps as f64
        } else {
            self.lr
        }
    }

    /// Whether step `step` is in the warm-up.
    pub fn warming_up(&self, step: u64) -> bool {
        step < self.warmup_steps
    }

    /// Records one epoch's validation error; returns true when that
    /// divided the learning rate.
    pub fn observe(&mut self, val_error: f64) -> bool {
        if self.best_error.is_none_or(|best| val_error < best) {
            self.best_error = Some(val_error);
            self.epochs_since_best = 0;
            return false;
        }
        self.epochs_since_best += 1;
        if self.epochs_since_best >= self.patience && self.drops < self.max_drops {
            self.lr /= 10.0;
            self.drops += 1;
            self.epochs_since_best = 0; // give the new rate its own patience
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_after_patience_epochs_without_improvement_at_most_three_times() {
        let mut s = Schedule::new(0.01, 2, 3);
        let errors = [
            0.9, 0.8, 0.8, 0.81, 0.7, 0.75, 0.72, 0.71, 0.70, 0.7, 0.7, 0.7, 0.7, 0.7,
        ];
        let drops: Vec<bool> = errors.iter().map(|&e| s.observe(e)).collect();
        // 0.8 twice without a new best -> drop at index 3; 0.7 is the best
        // from index 4; no new best at 5, 6 -> drop; 7 and 8 are no better
        // than 0.70 -> drop; then the cap of three holds.
        let at: Vec<usize> = drops
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at, vec![3, 6, 8]);
        assert!((s.lr - 1e-5).abs() < 1e-12);
        assert_eq!(s.drops, 3);
    }

    #[test]
    fn warm_up_rises_linearly_to_the_rate() {
        let s = Schedule::new(0.4, 3, 3).with_warmup(4);
        let lrs: Vec<f64> = (0..6).map(|t| s.lr_at(t)).collect();
        assert_eq!(lrs, vec![0.1, 0.2, 0.30000000000000004, 0.4, 0.4, 0.4]);
        assert!(s.warming_up(3) && !s.warming_up(4));
        assert_eq!(Schedule::new(0.01, 3, 3).lr_at(0), 0.01);
    }

    #[test]
    fn improving_errors_never_drop() {
        let mut s = Schedule::new(0.01, 1, 3);
        for i in 0..50 {
            assert!(!s.observe(1.0 - i as f64 / 100.0));
        }
        assert_eq!(s.lr, 0.01);
    }
}
