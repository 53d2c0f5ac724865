//! Step lines in metrics.jsonl, the progress bar and the epoch's mean loss.

use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tch::{Kind, Tensor};

use super::TrainError;
use crate::dist::Dist;
use crate::metric::log::{Line, MetricsLog, StepLine};

/// Step lines, the progress bar and the epoch's mean loss.
///
/// Reading a loss back is the one point where the host waits for the
/// device, and it waits for everything queued so far, the step just launched
/// included (a copy is ordered behind all earlier work on the stream). Read
/// every step, that wait left the GPU idle while the host prepared the next
/// batch: 8.2k img/s in `trainer run` against 10.2k in `trainer bench` on an
/// H100. So losses stay on the device for `LOSS_WINDOW` steps and come back
/// in one copy; each line's img/s is its window's rate.
pub(super) struct Recorder {
    pending: Vec<(Tensor, StepLine)>,
    /// Images in the pending steps, and when the window began.
    window_images: usize,
    window_start: Instant,
    /// metrics.jsonl (None on data-parallel ranks other than 0).
    log: Option<MetricsLog>,
    /// Data-parallel: step lines carry the slowest rank's loader wait.
    dist: Option<Arc<Dist>>,
    bar: ProgressBar,
    /// Whether to print the run's header (off with --quiet).
    show: bool,
    last_flush: Instant,
    loss_sum: f64,
    loss_n: u64,
}

/// Steps whose losses are read back together.
const LOSS_WINDOW: usize = 16;

impl Recorder {
    pub fn new(
        log: Option<MetricsLog>,
        dist: Option<Arc<Dist>>,
        progress: bool,
        total: u64,
        at: u64,
    ) -> Self {
        Self {
            pending: Vec::new(),
            window_images: 0,
            window_start: Instant::now(),
            log,
            dist,
            bar: progress_bar(progress, total, at),
            show: progress,
            last_flush: Instant::now(),
            loss_sum: 0.0,
            loss_n: 0,
        }
    }

    /// Prints the line `text` makes above the bar (nothing when quiet).
    pub fn announce(&self, text: impl FnOnce() -> String) {
        if self.show {
            self.bar.suspend(|| eprintln!("{}", text()));
        }
    }

    /// Prints `text` above the bar.
    pub fn println(&self, text: String) {
        self.bar.println(text);
    }

    pub fn start_epoch(&mut self) {
        self.loss_sum = 0.0;
        self.loss_n = 0;
        self.window_start = Instant::now();
    }

    pub fn epoch_loss(&self) -> f64 {
        self.loss_sum / self.loss_n.max(1) as f64
    }

    pub fn push(&mut self, loss: Tensor, line: StepLine, images: usize) -> Result<(), TrainError> {
        self.pending.push((loss, line));
        self.window_images += images;
        if self.pending.len() >= LOSS_WINDOW {
            self.settle()?;
        }
        Ok(())
    }

    /// Reads the pending losses and writes their lines.
    pub fn settle(&mut self) -> Result<(), TrainError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let losses: Vec<&Tensor> = self.pending.iter().map(|(t, _)| t).collect();
        let values = Vec::<f64>::try_from(
            Tensor::stack(&losses, 0)
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu),
        )
        .map_err(TrainError::LossReadBack)?;
        if let Some(dist) = &self.dist {
            let waits: Vec<f64> = self.pending.iter().map(|(_, l)| l.loader_wait).collect();
            for ((_, line), slowest) in self.pending.iter_mut().zip(dist.max(&waits)?) {
                line.loader_wait = slowest;
            }
        }
        let now = Instant::now();
        let img_per_sec =
            self.window_images as f64 / (now - self.window_start).as_secs_f64().max(1e-9);
        self.window_start = now;
        self.window_images = 0;
        for ((_, mut line), loss) in std::mem::take(&mut self.pending).into_iter().zip(values) {
            line.loss = loss;
            line.img_per_sec = img_per_sec;
            self.settle_line(line)?;
        }
        // Flushed about once a second, so that `tail -f` follows the run.
        if self.last_flush.elapsed().as_secs_f64() >= 1.0 {
            self.flush()?;
        }
        Ok(())
    }

    fn settle_line(&mut self, line: StepLine) -> Result<(), TrainError> {
        if !line.loss.is_finite() {
            self.bar.abandon();
            return Err(TrainError::Diverged {
                loss: line.loss,
                step: line.step,
            });
        }
        self.loss_sum += line.loss;
        self.loss_n += 1;
        self.bar.set_position(line.step);
        self.bar.set_message(format!(
            "epoch {} loss {:.3} {:.0} img/s",
            line.epoch, line.loss, line.img_per_sec
        ));
        self.write(&Line::Step(line))
    }

    pub fn write(&mut self, line: &Line) -> Result<(), TrainError> {
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        log.write(line).map_err(|source| TrainError::Io {
            path: log.path().to_path_buf(),
            source,
        })
    }

    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.last_flush = Instant::now();
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        log.flush().map_err(|source| TrainError::Io {
            path: log.path().to_path_buf(),
            source,
        })
    }

    /// Writes what is pending and clears the bar.
    pub fn finish(&mut self) -> Result<(), TrainError> {
        self.settle()?;
        self.flush()?;
        self.bar.finish_and_clear();
        Ok(())
    }
}

fn progress_bar(show: bool, total: u64, at: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}, ETA {eta}]",
        )
        .expect("valid template"),
    );
    bar.set_position(at);
    bar
}
