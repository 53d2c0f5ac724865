//! `trainer run`: the training loop, in the pieces burn-train's learner
//! has:
//!
//! - `setup`: the shards, the state to start from (fresh or the latest
//!   checkpoint), the network, optimiser, kernels and loader.
//! - `epoch`: one epoch of steps, then its end: centre-crop top-1/top-5 on
//!   val, the lr schedule, a checkpoint and the curves PNG.
//! - `stop`: Ctrl-C or `--max-steps`: a checkpoint (and with
//!   `--max-steps` a val evaluation), then the end of the run.
//! - `recorder`: step lines, the progress bar and the epoch's mean loss.
//!
//! Each step takes the next batch from the pipeline loader (random crop,
//! mirror and PCA lighting on the CPU, uint8 hand-over), normalises it on
//! the device and runs one `crate::step`. `--resume` continues from the
//! latest checkpoint exactly.
//!
//! Data-parallel (`RunOptions::dist`), every rank runs this loop on its part
//! of each global batch; the step averages the gradients, the ranks agree
//! on a Ctrl-C every few steps, evaluation counts are summed over the
//! ranks, and rank 0 alone writes the run folder.

mod epoch;
mod recorder;
mod setup;
mod stop;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pipeline::loader::LoaderError;

use crate::checkpoint::CheckpointError;
use crate::dist::grads::GradComm;
use crate::dist::{Dist, DistError};
use crate::kernels::lrn::FusedLrnError;
use crate::kernels::{KernelChoice, KernelError};
use crate::metric::log::EpochLine;
use crate::model::{Init, Placement, Precision};
use crate::step::{GraphChoice, StepError};
use crate::sys::graph::GraphError;

pub use setup::CROP;

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
    #[error("{shards}: no mean.npy/stats.json: run `pipeline stats --shards {shards}` first")]
    NoStats { shards: PathBuf },
    #[error("{shards}: fewer training images ({images}) than one batch ({batch_size})")]
    TooFewImages {
        shards: PathBuf,
        images: usize,
        batch_size: usize,
    },
    #[error("{checkpoint}: trained on shard set {trained_on}, but {shards} is {shard_set}")]
    OtherShardSet {
        checkpoint: PathBuf,
        trained_on: String,
        shards: PathBuf,
        shard_set: String,
    },
    #[error("{0} already holds a run: pass --resume to continue it, or choose another --out")]
    RunExists(PathBuf),
    #[error(
        "the loss is {loss} at step {step}: training diverged (a lower --lr, or --init kaiming for short runs)"
    )]
    Diverged { loss: f64, step: u64 },
    #[error("reading the losses back from the device: {0}")]
    LossReadBack(#[source] tch::TchError),
    #[error(transparent)]
    Lrn(#[from] FusedLrnError),
    #[error(transparent)]
    Kernels(#[from] KernelError),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error("--batch-size {batch_size} is the global batch: it must split evenly over the {world} ranks (a multiple of {world})")]
    BatchNotDivisible { batch_size: usize, world: usize },
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
    /// Epochs of linear lr warm-up (0: none, the paper's recipe).
    pub warmup_epochs: f64,
    pub init: Init,
    /// Dropout rate on fc6's and fc7's inputs (the paper: 0.5).
    pub dropout: f64,
    pub width_mult: f64,
    pub max_steps: Option<u64>,
    pub precision: Precision,
    /// Our CUDA kernels or libtorch's operations (speed only: both
    /// compute the same step).
    pub kernels: KernelChoice,
    /// Replay each step from a captured CUDA graph (one CUDA device).
    pub cuda_graph: GraphChoice,
    pub seed: u64,
    pub loader_threads: usize,
    pub resume: bool,
    pub keep_checkpoints: usize,
    /// Leave damaged training records out (with a warning) instead of
    /// stopping.
    pub skip_damaged: bool,
    pub progress: bool,
    /// This process's rank among data-parallel processes (None: the only one).
    pub dist: Option<Arc<Dist>>,
    /// Data-parallel: the type gradients are averaged in.
    pub grad_comm: GradComm,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps: u64,
    pub last_eval: Option<EpochLine>,
    pub interrupted: bool,
    pub checkpoint: Option<PathBuf>,
    pub curves: Option<PathBuf>,
    /// Training records left out as damaged (`skip_damaged`), by this run.
    pub damaged_skipped: u64,
}

/// Trains as `opts` says until the last epoch, `--max-steps`, or `stop`
/// (set by Ctrl-C), and returns what the run did.
pub fn run(opts: &RunOptions, stop: &AtomicBool) -> Result<RunSummary, TrainError> {
    let mut run = setup::Run::start(opts)?;
    if let Some(max) = opts.max_steps.filter(|&m| run.state.step >= m) {
        // A resumed run already there: no step, no new checkpoint.
        if opts.dist.as_ref().is_none_or(|d| d.is_root()) {
            eprintln!(
                "{}: at step {} already (--max-steps {max}): nothing to train",
                opts.out.display(),
                run.state.step
            );
        }
        return run.finish();
    }
    while run.state.epoch < opts.epochs {
        if let Some(reason) = run.train_epoch(stop)? {
            return run.stop(reason);
        }
        run.end_epoch()?;
    }
    run.finish()
}
