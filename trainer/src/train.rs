//! `trainer run`: the training loop.
//!
//! Each step takes the next batch from the pipeline loader (random crop,
//! mirror and PCA lighting on the CPU, uint8 hand-over), normalises it on
//! the device, runs forward and backward, and applies the paper's SGD rule.
//! After each epoch: centre-crop top-1/top-5 on val, the lr schedule, a
//! checkpoint and the curves PNG. Ctrl-C (or --max-steps) checkpoints and
//! stops; `--resume` continues from the latest checkpoint exactly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use pipeline::augment::Mode;
use pipeline::ingest::Split;
use pipeline::loader::{BufferPool, Dataset, Loader, LoaderConfig, LoaderError, Output};
use pipeline::sampler::{mix, Order, Sampler};
use tch::{Kind, Tensor};

use crate::checkpoint::{self, CheckpointError, RunSettings, TrainState};
use crate::cuda::CudaError;
use crate::eval::{evaluate, EvalOptions, EvalResult};
use crate::fused_lrn::FusedLrnError;
use crate::graph::Steps;
use crate::input::{batch_labels, batch_pixels, unit_variance_scale, InputNorm};
use crate::kernels::{KernelChoice, KernelError};
use crate::metrics::{EpochLine, Line, MetricsLog, StepLine};
use crate::model::{AlexNet, Init, ModelConfig, Placement, Precision};
use crate::plot;
use crate::schedule::Schedule;
use crate::sgd::Sgd;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Lrn(#[from] FusedLrnError),
    #[error(transparent)]
    Kernels(#[from] KernelError),
    #[error("SGD update: {0}")]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
}

/// Everything `trainer run` is told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub shards: PathBuf,
    /// The run folder: metrics.jsonl, checkpoints/, curves.png.
    pub out: PathBuf,
    pub placement: Placement,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub patience: u32,
    pub max_drops: u32,
    pub init: Init,
    pub width_mult: f64,
    pub max_steps: Option<u64>,
    pub precision: Precision,
    /// Our CUDA kernels or libtorch's operations (speed only: both
    /// compute the same step).
    pub kernels: KernelChoice,
    /// Replay each step from a captured CUDA graph (one CUDA device).
    pub cuda_graph: bool,
    pub seed: u64,
    pub loader_threads: usize,
    pub resume: bool,
    pub keep_checkpoints: usize,
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps: u64,
    pub last_eval: Option<EpochLine>,
    pub interrupted: bool,
    pub checkpoint: Option<PathBuf>,
    pub curves: Option<PathBuf>,
}

/// The side of the crops the network sees (paper: 224).
pub const CROP: usize = 224;

struct Data {
    train: Arc<Dataset>,
    val: Option<Arc<Dataset>>,
    classes: i64,
}

fn open_data(shards: &Path) -> Result<Data, TrainError> {
    let train = Dataset::open(shards, Split::Train)?;
    if train.mean().is_none() || train.stats().is_none() {
        return Err(TrainError::Config(format!(
            "{}: no mean.npy/stats.json: run `pipeline stats --shards {}` first",
            shards.display(),
            shards.display()
        )));
    }
    let val = match train.manifest.split(Split::Val) {
        Some(_) => Some(Arc::new(Dataset::open(shards, Split::Val)?)),
        None => None,
    };
    let classes = train.manifest.classes.len() as i64;
    Ok(Data {
        train: Arc::new(train),
        val,
        classes,
    })
}

/// The state a run starts from: fresh, or the latest checkpoint.
fn start_state(
    opts: &RunOptions,
    data: &Data,
) -> Result<(TrainState, Option<checkpoint::Checkpoint>), TrainError> {
    let ckpt_dir = opts.out.join("checkpoints");
    let manifest_id = data.train.manifest.id.clone();
    if opts.resume {
        let ck = checkpoint::load(&ckpt_dir)?;
        if ck.state.manifest_id != manifest_id {
            return Err(TrainError::Config(format!(
                "{}: trained on shard set {}, but {} is {}",
                ck.path.display(),
                ck.state.manifest_id,
                opts.shards.display(),
                manifest_id
            )));
        }
        let mut state = ck.state.clone();
        // `opts` holds the run's own settings unless some were given again
        // (trainer.rs fills the rest from this checkpoint): those are now the
        // run's. Checkpoints from before settings were kept get them too.
        state.settings = Some(settings_of(opts));
        return Ok((state, Some(ck)));
    }
    if checkpoint::latest(&ckpt_dir)?.is_some() {
        return Err(TrainError::Config(format!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            opts.out.display()
        )));
    }
    let stats = data.train.stats().expect("checked in open_data");
    let input_scale = match opts.init {
        Init::Paper => None,
        Init::Kaiming => Some(unit_variance_scale(stats)),
    };
    let state = TrainState {
        step: 0,
        epoch: 0,
        batch: 0,
        schedule: Schedule::new(opts.lr, opts.patience, opts.max_drops),
        seed: opts.seed,
        model: ModelConfig {
            width_mult: opts.width_mult,
            ..ModelConfig::paper(data.classes)
        },
        init: opts.init,
        precision: opts.precision,
        batch_size: opts.batch_size,
        input_scale,
        manifest_id,
        settings: Some(settings_of(opts)),
    };
    Ok((state, None))
}

/// What `--resume` reuses of this run's flags.
fn settings_of(opts: &RunOptions) -> RunSettings {
    RunSettings {
        shards: std::fs::canonicalize(&opts.shards).unwrap_or_else(|_| opts.shards.clone()),
        epochs: opts.epochs,
        momentum: opts.momentum,
        weight_decay: opts.weight_decay,
    }
}

pub fn run(opts: &RunOptions, stop: &AtomicBool) -> Result<RunSummary, TrainError> {
    let data = open_data(&opts.shards)?;
    std::fs::create_dir_all(&opts.out).map_err(|source| TrainError::Io {
        path: opts.out.clone(),
        source,
    })?;
    let (mut state, resumed) = start_state(opts, &data)?;
    let mut net = AlexNet::new(
        state.model,
        state.init,
        mix(state.seed, 0x1417) as i64,
        opts.placement,
        state.precision,
    );
    let (kernels, warnings) = opts.kernels.resolve(opts.placement)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    net.set_fused_lrn(kernels.lrn.clone())?;
    let mut sgd = Sgd::new(&net.named_parameters(), opts.momentum, opts.weight_decay);
    sgd.set_kernel(kernels.sgd.clone());
    if let Some(ck) = &resumed {
        let bad = |reason: String| CheckpointError::Invalid {
            path: ck.path.clone(),
            reason,
        };
        net.load(&ck.weights).map_err(bad)?;
        sgd.load(&net.named_parameters(), &ck.momentum)
            .map_err(bad)?;
    }
    let log =
        MetricsLog::open(&opts.out, resumed.as_ref().map(|c| c.state.step)).map_err(|source| {
            TrainError::Io {
                path: opts.out.join(crate::metrics::FILE),
                source,
            }
        })?;
    let side = data.train.side();
    let mean = data.train.mean().expect("checked in open_data");
    let norm = InputNorm::new(mean, side, CROP, state.input_scale, opts.placement.first());
    let loader_config = LoaderConfig {
        batch_size: state.batch_size,
        threads: opts.loader_threads.max(1),
        prefetch: 2 * opts.loader_threads.max(1),
        mode: Mode::Train,
        output: Output::U8,
        crop: CROP,
        seed: state.seed,
        order: Order::Random,
        drop_last: true,
        // The workers start the next epoch while this one's last batches
        // train and the eval runs.
        prefetch_next_epoch: true,
        ..LoaderConfig::default()
    };
    let pool = BufferPool::for_config(&loader_config);
    let steps_per_epoch = Sampler::new(
        data.train.shard_lens(),
        state.seed,
        Order::Random,
        (0, 1),
        state.batch_size,
        true,
    )
    .map_err(LoaderError::from)?
    .batches_per_epoch();
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "{}: fewer training images ({}) than one batch ({})",
            opts.shards.display(),
            data.train.len(),
            state.batch_size
        )));
    }
    let total = (opts.epochs * steps_per_epoch as u64).min(opts.max_steps.unwrap_or(u64::MAX));
    let mut rec = Recorder {
        pending: Vec::new(),
        window_images: 0,
        window_start: Instant::now(),
        log,
        bar: progress_bar(opts.progress, total, state.step),
        last_flush: Instant::now(),
        loss_sum: 0.0,
        loss_n: 0,
    };
    if opts.progress {
        rec.bar.suspend(|| {
            eprintln!(
                "{}: train {} images ({steps_per_epoch} steps of {} an epoch), val {}; \
             AlexNet {:.1}M parameters (width {}, {:?} init, {:?}) on {:?}; {}; step {} of {total}",
                opts.shards.display(),
                data.train.len(),
                state.batch_size,
                data.val
                    .as_ref()
                    .map_or("none".to_string(), |v| format!("{} images", v.len())),
                net.parameter_count() as f64 / 1e6,
                state.model.width_mult,
                state.init,
                state.precision,
                opts.placement,
                kernels.describe(),
                state.step,
            )
        });
    }
    let params = net.named_parameters();
    let mut steps = Steps::new(opts.cuda_graph, opts.placement.first())?;
    let mut summary = RunSummary {
        steps: state.step,
        last_eval: None,
        interrupted: false,
        checkpoint: None,
        curves: None,
    };
    let ckpt_dir = opts.out.join("checkpoints");
    let mut loader = Loader::with_pool(
        data.train.clone(),
        loader_config,
        pool,
        state.epoch,
        state.batch,
    )?;
    while state.epoch < opts.epochs {
        if loader.epoch() < state.epoch {
            loader.advance_epoch();
        }
        // Nothing to make ahead after the last epoch.
        loader.set_prefetch_next_epoch(state.epoch + 1 < opts.epochs);
        rec.start_epoch();
        let mut waited = Instant::now();
        for batch in loader.by_ref() {
            let batch = batch?;
            let loader_wait = waited.elapsed().as_secs_f64();
            let x = norm.apply(batch_pixels(&batch)?, &batch.views);
            let labels = batch_labels(&batch, norm.device());
            drop(batch);
            // Dropout's randomness is a function of (seed, step): a resumed
            // run draws exactly what the uninterrupted run would have.
            tch::manual_seed(mix(state.seed, state.step) as i64);
            let loss = steps.run(&net, &mut sgd, &params, &x, &labels, state.schedule.lr)?;
            state.step += 1;
            state.batch += 1;
            let line = StepLine {
                step: state.step,
                epoch: state.epoch,
                loss: f64::NAN, // read with the rest of its window
                lr: state.schedule.lr,
                img_per_sec: f64::NAN, // the window's rate
                loader_wait,
            };
            rec.push(loss.detach(), line, state.batch_size)?;
            let hit_max = opts.max_steps.is_some_and(|m| state.step >= m);
            if stop.load(Ordering::SeqCst) || hit_max {
                rec.settle()?;
                summary.interrupted = !hit_max;
                summary.checkpoint = Some(checkpoint::save(
                    &ckpt_dir,
                    &state,
                    &net,
                    &sgd,
                    opts.keep_checkpoints,
                )?);
                if hit_max {
                    let eval = eval_line(&net, &norm, &data, opts, &state, rec.epoch_loss(), true)?;
                    if let Some(line) = &eval {
                        rec.write(&Line::Epoch(line.clone()))?;
                    }
                    summary.last_eval = eval;
                }
                return rec.finish(opts, summary, state.step);
            }
            waited = Instant::now();
        }
        rec.settle()?;
        let eval = eval_line(&net, &norm, &data, opts, &state, rec.epoch_loss(), false)?;
        if let Some(line) = &eval {
            rec.write(&Line::Epoch(line.clone()))?;
            if state.schedule.observe(1.0 - line.val_top1) {
                rec.bar
                    .println(format!("lr divided by 10: now {}", state.schedule.lr));
            }
        }
        summary.last_eval = eval;
        state.epoch += 1;
        state.batch = 0;
        summary.checkpoint = Some(checkpoint::save(
            &ckpt_dir,
            &state,
            &net,
            &sgd,
            opts.keep_checkpoints,
        )?);
        rec.flush()?;
        if state.epoch < opts.epochs {
            summary.curves = plot_curves(&opts.out); // the last epoch's: in finish
        }
    }
    rec.finish(opts, summary, state.step)
}

/// Step lines, the progress bar and the epoch's mean loss.
///
/// Reading a loss back is the one point where the host waits for the
/// device, and it waits for everything queued so far, the step just launched
/// included (a copy is ordered behind all earlier work on the stream). Read
/// every step, that wait left the GPU idle while the host prepared the next
/// batch: 8.2k img/s in `trainer run` against 10.2k in `trainer bench` on an
/// H100. So losses stay on the device for `LOSS_WINDOW` steps and come back
/// in one copy; each line's img/s is its window's rate.
struct Recorder {
    pending: Vec<(Tensor, StepLine)>,
    /// Images in the pending steps, and when the window began.
    window_images: usize,
    window_start: Instant,
    log: MetricsLog,
    bar: ProgressBar,
    last_flush: Instant,
    loss_sum: f64,
    loss_n: u64,
}

/// Steps whose losses are read back together.
const LOSS_WINDOW: usize = 16;

impl Recorder {
    fn start_epoch(&mut self) {
        self.loss_sum = 0.0;
        self.loss_n = 0;
        self.window_start = Instant::now();
    }

    fn epoch_loss(&self) -> f64 {
        self.loss_sum / self.loss_n.max(1) as f64
    }

    fn push(&mut self, loss: Tensor, line: StepLine, images: usize) -> Result<(), TrainError> {
        self.pending.push((loss, line));
        self.window_images += images;
        if self.pending.len() >= LOSS_WINDOW {
            self.settle()?;
        }
        Ok(())
    }

    /// Reads the pending losses and writes their lines.
    fn settle(&mut self) -> Result<(), TrainError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let losses: Vec<&Tensor> = self.pending.iter().map(|(t, _)| t).collect();
        let values = Vec::<f64>::try_from(
            Tensor::stack(&losses, 0)
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu),
        )
        .map_err(|e| TrainError::Config(format!("reading the losses back: {e}")))?;
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
            return Err(TrainError::Config(format!(
                "the loss is {} at step {}: training diverged (a lower --lr, or --init kaiming for short runs)",
                line.loss, line.step
            )));
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

    fn write(&mut self, line: &Line) -> Result<(), TrainError> {
        self.log.write(line).map_err(|source| TrainError::Io {
            path: self.log.path().to_path_buf(),
            source,
        })
    }

    fn flush(&mut self) -> Result<(), TrainError> {
        self.last_flush = Instant::now();
        self.log.flush().map_err(|source| TrainError::Io {
            path: self.log.path().to_path_buf(),
            source,
        })
    }

    fn finish(
        mut self,
        opts: &RunOptions,
        mut summary: RunSummary,
        steps: u64,
    ) -> Result<RunSummary, TrainError> {
        self.settle()?;
        self.flush()?;
        self.bar.finish_and_clear();
        summary.steps = steps;
        summary.curves = plot_curves(&opts.out);
        Ok(summary)
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

/// Centre-crop evaluation on val as an epoch line (None without val).
fn eval_line(
    net: &AlexNet,
    norm: &InputNorm,
    data: &Data,
    opts: &RunOptions,
    state: &TrainState,
    train_loss: f64,
    partial: bool,
) -> Result<Option<EpochLine>, TrainError> {
    let Some(val) = &data.val else {
        return Ok(None);
    };
    let EvalResult {
        top1, top5, loss, ..
    } = evaluate(
        net,
        norm,
        val.clone(),
        &EvalOptions {
            mode: Mode::Center,
            batch_size: state.batch_size,
            threads: opts.loader_threads,
        },
        None,
    )?;
    Ok(Some(EpochLine {
        epoch: state.epoch,
        step: state.step,
        val_top1: top1,
        val_top5: top5,
        val_loss: loss,
        lr: state.schedule.lr,
        train_loss,
        partial,
    }))
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
