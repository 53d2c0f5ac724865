//! Stopping before the last epoch: Ctrl-C (the binary sets the flag) or
//! `--max-steps`. Either way the run checkpoints first, so `--resume`
//! continues exactly; `--max-steps` also evaluates on val.

use super::setup::Run;
use super::{RunSummary, TrainError};
use crate::metric::log::Line;

/// Why a run stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Ctrl-C.
    Interrupted,
    /// `--max-steps` reached.
    MaxSteps,
}

impl StopReason {
    /// After step `step`, `interrupted` or not: whether to stop, and why.
    pub fn check(interrupted: bool, max_steps: Option<u64>, step: u64) -> Option<Self> {
        if max_steps.is_some_and(|m| step >= m) {
            Some(Self::MaxSteps)
        } else if interrupted {
            Some(Self::Interrupted)
        } else {
            None
        }
    }
}

impl Run<'_> {
    /// Checkpoints (and at `--max-steps` evaluates), then ends the run.
    pub fn stop(mut self, reason: StopReason) -> Result<RunSummary, TrainError> {
        self.rec.settle()?;
        self.summary.interrupted = reason == StopReason::Interrupted;
        self.save_checkpoint()?;
        if reason == StopReason::MaxSteps {
            let eval = self.eval_line(true)?;
            if let Some(line) = &eval {
                self.rec.write(&Line::Epoch(line.clone()))?;
            }
            self.summary.last_eval = eval;
        }
        self.finish()
    }
}
