//! One epoch of training steps, and the end of an epoch: centre-crop
//! top-1/top-5 on val, the lr schedule, a checkpoint and the curves PNG.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use pipeline::loader::augment::Mode;
use pipeline::loader::sampler::mix;

use super::setup::Run;
use super::stop::StopReason;
use super::TrainError;
use crate::checkpoint;
use crate::dist::Dist;
use crate::eval::{evaluate, EvalOptions, EvalResult, EvalSums};
use crate::input::{batch_labels, batch_pixels};
use crate::metric::log::{EpochLine, Line, StepLine};
use crate::metric::plot;

impl Run<'_> {
    /// Trains the rest of the current epoch; stops early (returning why)
    /// on Ctrl-C or at `--max-steps`.
    pub fn train_epoch(&mut self, stop: &AtomicBool) -> Result<Option<StopReason>, TrainError> {
        if self.loader.epoch() < self.state.epoch {
            self.loader.advance_epoch();
        }
        // Nothing to make ahead after the last epoch.
        self.loader
            .set_prefetch_next_epoch(self.state.epoch + 1 < self.opts.epochs);
        self.rec.start_epoch();
        let params = self.net.named_parameters();
        let mut waited = Instant::now();
        for batch in self.loader.by_ref() {
            let batch = batch?;
            let loader_wait = waited.elapsed().as_secs_f64();
            for damaged in &batch.damaged {
                eprintln!("warning: left out of training: {damaged}");
            }
            self.summary.damaged_skipped += batch.damaged.len() as u64;
            // A batch short of a damaged record has another shape than the
            // captured step: it runs eagerly.
            let short = !batch.damaged.is_empty();
            let x = self.norm.apply(batch_pixels(&batch)?, &batch.views);
            let labels = batch_labels(&batch, self.norm.device());
            drop(batch);
            // Dropout's randomness is a function of (seed, step, rank): a
            // resumed run draws exactly what the uninterrupted run would
            // have, and each rank draws its own masks (rank 0 those of one
            // process).
            tch::manual_seed(dropout_seed(
                self.state.seed,
                self.state.step,
                self.part.rank,
            ));
            let lr = self.state.schedule.lr_at(self.state.step);
            // A new lr each warm-up step would be a new CUDA-graph capture
            // each step: warm-up steps run eagerly.
            let eager = self.state.schedule.warming_up(self.state.step) || short;
            let loss = self
                .steps
                .run(&self.net, &mut self.sgd, &params, &x, &labels, lr, eager)?;
            self.state.step += 1;
            self.state.batch += 1;
            let line = StepLine {
                step: self.state.step,
                epoch: self.state.epoch,
                loss: f64::NAN, // read with the rest of its window
                lr,
                img_per_sec: f64::NAN, // the window's rate
                loader_wait,
            };
            self.rec.push(loss.detach(), line, self.state.batch_size)?;
            let interrupted = interrupted(stop, self.opts.dist.as_deref(), self.state.step)?;
            if let Some(reason) =
                StopReason::check(interrupted, self.opts.max_steps, self.state.step)
            {
                return Ok(Some(reason));
            }
            waited = Instant::now();
        }
        Ok(None)
    }

    /// After an epoch's last step: the val evaluation, the schedule, a
    /// checkpoint and (but after the last epoch) the curves.
    pub fn end_epoch(&mut self) -> Result<(), TrainError> {
        self.rec.settle()?;
        let eval = self.eval_line(false)?;
        if let Some(line) = &eval {
            self.rec.write(&Line::Epoch(line.clone()))?;
            if self.state.schedule.observe(1.0 - line.val_top1) {
                let lr = self.state.schedule.lr;
                self.rec.println(format!("lr divided by 10: now {lr}"));
            }
        }
        self.summary.last_eval = eval;
        self.state.epoch += 1;
        self.state.batch = 0;
        self.save_checkpoint()?;
        self.rec.flush()?;
        if self.state.epoch < self.opts.epochs && self.part.root {
            self.summary.curves = plot_curves(&self.opts.out); // the last epoch's: in finish
        }
        Ok(())
    }

    /// Writes a checkpoint: rank 0 does, as the others (which hold the same
    /// state) wait at a barrier, so that no rank goes on past a checkpoint
    /// that was not written.
    pub fn save_checkpoint(&mut self) -> Result<(), TrainError> {
        if self.part.root {
            let path = checkpoint::save(
                &self.checkpoints,
                &self.state,
                &self.net,
                &self.sgd,
                self.opts.keep_checkpoints,
            )?;
            self.summary.checkpoint = Some(path);
        }
        if let Some(dist) = &self.opts.dist {
            dist.barrier()?;
        }
        Ok(())
    }

    /// Centre-crop evaluation on val as an epoch line (None without val);
    /// `partial` when the epoch was cut short.
    pub fn eval_line(&self, partial: bool) -> Result<Option<EpochLine>, TrainError> {
        let Some(val) = &self.data.val else {
            return Ok(None);
        };
        let mut sums = evaluate(
            &self.net,
            &self.norm,
            val.clone(),
            &EvalOptions {
                mode: Mode::Center,
                batch_size: self.part.batch_size,
                threads: self.opts.loader_threads,
                part: (self.part.rank, self.part.world),
                limit: None,
            },
            &pipeline::progress::Silent,
        )?;
        if let Some(dist) = &self.opts.dist {
            let total = dist.sum(&sums.to_array())?;
            sums = EvalSums::from_array([total[0], total[1], total[2], total[3]]);
        }
        let EvalResult {
            top1, top5, loss, ..
        } = sums.result();
        Ok(Some(EpochLine {
            epoch: self.state.epoch,
            step: self.state.step,
            val_top1: top1,
            val_top5: top5,
            val_loss: loss,
            lr: self.state.schedule.lr,
            train_loss: self.rec.epoch_loss(),
            partial,
        }))
    }

    /// The end of the run: pending lines written, the final curves drawn.
    pub fn finish(mut self) -> Result<super::RunSummary, TrainError> {
        self.rec.finish()?;
        self.summary.steps = self.state.step;
        if self.part.root {
            self.summary.curves = plot_curves(&self.opts.out);
        }
        Ok(self.summary)
    }
}

/// Whether Ctrl-C asked to stop after `step`. Data-parallel, every rank
/// must stop after the same step (a rank that stopped alone would leave the
/// others waiting in the next all-reduce): the ranks agree, every
/// `STOP_POLL` steps, whether any of them was asked.
fn interrupted(stop: &AtomicBool, dist: Option<&Dist>, step: u64) -> Result<bool, TrainError> {
    let asked = stop.load(Ordering::SeqCst);
    match dist {
        None => Ok(asked),
        Some(d) if step.is_multiple_of(STOP_POLL) => Ok(d.any(asked)?),
        Some(_) => Ok(false),
    }
}

/// Data-parallel ranks agree on a Ctrl-C once in this many steps.
const STOP_POLL: u64 = 16;

/// The seed of dropout's masks at `step` on `rank`; rank 0's is one
/// process's.
fn dropout_seed(seed: u64, step: u64, rank: usize) -> i64 {
    let one_process = mix(seed, step);
    match rank {
        0 => one_process as i64,
        r => mix(one_process, r as u64) as i64,
    }
}

fn plot_curves(run: &Path) -> Option<PathBuf> {
    match plot::write_curves(run) {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("warning: no curves PNG: {e}");
            None
        }
    }
}
