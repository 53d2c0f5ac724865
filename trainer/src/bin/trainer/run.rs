//! `trainer run`: training, its options and its closing report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use trainer::checkpoint::{self, RunSettings};
use trainer::learner::{run, RunOptions, RunSummary};

use crate::ranks::{join_ranks, threads, RankArgs};
use crate::values::{precision, Amp, GradComm, GraphChoice, Init, KernelChoice};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Shard folder with train (and val) splits, mean.npy and stats.json
    /// [default: shards; with --resume, the run's own].
    #[arg(long)]
    shards: Option<PathBuf>,
    /// Run folder: metrics.jsonl, checkpoints/, curves.png.
    #[arg(long, default_value = "runs/alexnet")]
    out: PathBuf,
    /// `auto` (cuda:0 when libtorch sees a GPU, else cpu), `cpu`, `cuda:0`,
    /// or `cuda:0,cuda:1` for the paper's two-GPU split. Data-parallel,
    /// `auto` is cuda:LOCAL_RANK, and `pairs` the two-GPU split on GPUs
    /// 2 LOCAL_RANK and 2 LOCAL_RANK + 1.
    #[arg(long, default_value = "auto")]
    devices: String,
    #[command(flatten)]
    ranks: RankArgs,
    /// Data-parallel runs: the type gradients are averaged in over the
    /// ranks (bf16 halves the bytes sent).
    #[arg(long, value_enum, default_value = "f32")]
    grad_comm: GradComm,
    /// Epochs to train [default: 90; with --resume, the run's own].
    #[arg(long)]
    epochs: Option<u64>,
    /// Images per step, over all data-parallel ranks together (each rank
    /// takes batch-size / ranks).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Dropout on fc6's and fc7's inputs (the paper: 0.5).
    #[arg(long, default_value_t = 0.5)]
    dropout: f64,
    /// Initial learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// [default: 0.9; with --resume, the run's own]
    #[arg(long)]
    momentum: Option<f64>,
    /// Applied to weights, not biases (see trainer/src/optim/sgd.rs)
    /// [default: 5e-4; with --resume, the run's own].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Epochs without a new best val error before the lr is divided by 10.
    #[arg(long, default_value_t = 3)]
    patience: u32,
    /// Most lr divisions (the paper: three).
    #[arg(long, default_value_t = 3)]
    max_drops: u32,
    /// Epochs over which the lr rises linearly to --lr (the paper: none).
    /// For large global batches: raise --lr with the batch (the linear
    /// scaling rule) and warm up for ~5 epochs (Goyal et al., 2017).
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f64,
    /// `paper`: N(0, 0.01), biases 1 in conv2/4/5, fc6/7. `kaiming`: He init
    /// with unit-variance inputs, a deviation that learns in short runs.
    #[arg(long, value_enum, default_value_t = Init::Paper)]
    init: Init,
    /// Scales every layer's width (quick CPU runs: 0.25).
    #[arg(long, default_value_t = 1.0)]
    width_mult: f64,
    /// Stop (with a checkpoint and a val evaluation) after this many steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Mixed precision.
    #[arg(long, value_enum)]
    amp: Option<Amp>,
    /// Our CUDA kernels for the memory-bound parts of a training step:
    /// ReLU + LRN fused with a hand-written backward, and the SGD update in
    /// one pass (compiled at start with NVRTC, checked against libtorch's
    /// operations on the device). `off`: libtorch's operations only (the
    /// band LRN under autograd).
    #[arg(long, value_enum, default_value = "auto")]
    kernels: KernelChoice,
    /// Capture one training step in a CUDA graph and replay it for the
    /// others: the host then issues one launch a step instead of hundreds,
    /// and the losses are the eager step's, bit for bit. `auto`: on with
    /// one CUDA device; a bare `--cuda-graph` means `on`.
    #[arg(long, value_enum, default_value = "auto", num_args = 0..=1, default_missing_value = "on")]
    cuda_graph: GraphChoice,
    /// Seeds the weights, the data order, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Loader worker threads (default: all cores, shared between the
    /// ranks on one machine).
    #[arg(long)]
    loader_threads: Option<usize>,
    /// Continue the run in --out from its latest checkpoint. The model,
    /// batch size, init, precision, lr schedule and seed are the run's own;
    /// --shards, --epochs, --momentum and --weight-decay default to the
    /// run's own.
    #[arg(long)]
    resume: bool,
    /// Checkpoints kept (newest first).
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// A training record whose stored bytes fail their checksum is left
    /// out of its batch with a warning naming it, and counted, instead of
    /// stopping the run (the default: fix the shard, `pipeline verify`
    /// lists every damaged record).
    #[arg(long)]
    skip_damaged: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn command(args: RunArgs) -> Result<()> {
    check(&args)?;
    let stop = stop_on_ctrl_c()?;
    let stored = if args.resume {
        stored_settings(&args.out)?
    } else {
        None
    };
    let opts = options(args, stored)?;
    if opts.placement.first().is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let summary = run(&opts, &stop)?;
    // Rank 0 reports for all.
    if opts.dist.as_ref().is_none_or(|d| d.is_root()) {
        report(&opts, &summary);
    }
    if summary.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// The mistakes clap's types let through, each refused with its option.
fn check(args: &RunArgs) -> Result<()> {
    if args.batch_size == 0 || args.width_mult <= 0.0 || args.lr <= 0.0 {
        bail!("--batch-size, --width-mult and --lr must be positive");
    }
    if !(args.warmup_epochs >= 0.0 && args.warmup_epochs.is_finite()) {
        bail!("--warmup-epochs must be 0 or more");
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout must be at least 0 and below 1");
    }
    if args.max_steps == Some(0) {
        bail!("--max-steps must be at least 1 (it counts steps from the start of the run)");
    }
    Ok(())
}

/// The flag the training loop reads between steps: the first Ctrl-C asks
/// for a checkpoint after the current step, a second one quits at once.
fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: stopping without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: checkpointing after this step (again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// The settings a run being resumed was started with, from its newest
/// intact checkpoint (none in checkpoints written before they were kept).
fn stored_settings(out: &std::path::Path) -> Result<Option<RunSettings>> {
    let (newest_intact, _) = checkpoint::resume_point(&out.join("checkpoints"))?;
    Ok(checkpoint::load_state(&newest_intact)?.settings)
}

/// The library's options from the command line. A resumed run keeps its
/// own shards, epochs and SGD constants unless they are given again.
fn options(args: RunArgs, stored: Option<RunSettings>) -> Result<RunOptions> {
    let (placement, dist) = join_ranks(&args.devices, &args.ranks)?;
    let stored = stored.as_ref();
    Ok(RunOptions {
        shards: args
            .shards
            .or_else(|| stored.map(|s| s.shards.clone()))
            .unwrap_or_else(|| PathBuf::from("shards")),
        out: args.out,
        placement,
        epochs: args.epochs.or(stored.map(|s| s.epochs)).unwrap_or(90),
        batch_size: args.batch_size,
        lr: args.lr,
        momentum: args.momentum.or(stored.map(|s| s.momentum)).unwrap_or(0.9),
        weight_decay: args
            .weight_decay
            .or(stored.map(|s| s.weight_decay))
            .unwrap_or(5e-4),
        patience: args.patience,
        max_drops: args.max_drops,
        warmup_epochs: args.warmup_epochs,
        init: args.init.into(),
        dropout: args.dropout,
        width_mult: args.width_mult,
        max_steps: args.max_steps,
        precision: precision(args.amp),
        kernels: args.kernels.into(),
        cuda_graph: args.cuda_graph.into(),
        seed: args.seed,
        loader_threads: threads(args.loader_threads, dist.as_deref()),
        resume: args.resume,
        keep_checkpoints: args.keep_checkpoints,
        skip_damaged: args.skip_damaged,
        progress: !args.quiet,
        dist,
        grad_comm: args.grad_comm.into(),
    })
}

/// What the run did and where its files are, and how to go on when it
/// was interrupted.
fn report(opts: &RunOptions, summary: &RunSummary) {
    println!("steps: {}", summary.steps);
    if summary.damaged_skipped > 0 {
        println!(
            "damaged records left out: {} (named above; `pipeline verify` lists them all)",
            summary.damaged_skipped
        );
    }
    if let Some(e) = &summary.last_eval {
        println!(
            "val (centre crop) after step {}: top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  lr {}",
            e.step,
            100.0 * e.val_top1,
            100.0 * e.val_top5,
            e.val_loss,
            e.lr
        );
    }
    if let Some(c) = &summary.checkpoint {
        println!("checkpoint: {}", c.display());
    }
    println!(
        "metrics: {}",
        opts.out.join(trainer::metric::log::FILE).display()
    );
    if let Some(c) = &summary.curves {
        println!("curves: {}", c.display());
    }
    if summary.interrupted {
        let how = match opts.dist {
            Some(_) => "launch the same ranks with",
            None => "continue with",
        };
        println!(
            "interrupted: {how} `trainer run --resume --out {}`",
            opts.out.display()
        );
    }
}
