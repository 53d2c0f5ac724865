//! `trainer`: AlexNet training (`run`), the paper's evaluation (`eval`), a
//! training-speed benchmark (`bench`), and the ranks of a data-parallel run
//! (`launch`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::builder::RangedU64ValueParser;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use pipeline::ingest::Split;
use pipeline::loader::augment::Mode;
use pipeline::loader::Dataset;
use tch::Device;
use trainer::bench::{bench, compare_lrn, BenchOptions};
use trainer::checkpoint;
use trainer::dist::{Dist, WorldEnv};
use trainer::eval::{evaluate, EvalOptions, EvalSums};
use trainer::input::InputNorm;
use trainer::launch::{launch, LaunchOptions};
use trainer::learner::{run, RunOptions, CROP};
use trainer::model::{AlexNet, Placement, Precision};

/// The library's option enums as command-line values: the library has no
/// clap, so each is mirrored here (`pipeline::value_enum!`) with its help
/// text and turned into the library's own with `into()`.
mod values {
    pipeline::value_enum!(Init => trainer::model::Init {
        /// N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7.
        Paper,
        /// He et al. (2015) with unit-variance inputs: learns in short runs.
        Kaiming,
    });
    pipeline::value_enum!(KernelChoice => trainer::kernels::KernelChoice {
        /// On with one CUDA device where they compile and pass their check.
        Auto,
        /// libtorch's operations only.
        Off,
        /// Ours, or an error where they cannot run.
        On,
    });
    pipeline::value_enum!(GraphChoice => trainer::step::GraphChoice {
        /// On with one CUDA device where this build can capture.
        Auto,
        /// Replay, or an error where it cannot run.
        On,
        /// Eager steps.
        Off,
    });
    pipeline::value_enum!(GradComm => trainer::dist::grads::GradComm {
        /// float32, as computed.
        F32,
        /// bfloat16: half the bytes, the sum rounded to 8 mantissa bits.
        Bf16,
    });
    pipeline::value_enum!(DistBackend => trainer::dist::BackendChoice {
        /// NCCL when the devices are CUDA devices, else Gloo.
        Auto,
        /// CUDA tensors over NVLink, PCIe or the network.
        Nccl,
        /// CPU tensors over TCP (CPU training, tests).
        Gloo,
    });
}
use values::{DistBackend, GradComm, GraphChoice, Init, KernelChoice};

#[derive(Parser)]
#[command(
    version,
    about = "AlexNet (Krizhevsky, Sutskever & Hinton, 2012) on libtorch: train, evaluate, benchmark",
    after_help = "Start with `pipeline shards` and `pipeline stats`, then `trainer run --shards DIR --out RUN`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train on a shard folder (made by `pipeline shards`, with `pipeline stats` run).
    Run(RunArgs),
    /// Top-1 / top-5 of a checkpoint: the centre crop, or the paper's ten crops.
    Eval(EvalArgs),
    /// Training images per second on synthetic data (no loader).
    Bench(BenchArgs),
    /// Start this node's ranks of a data-parallel run, as torchrun does:
    /// `trainer launch --nproc-per-node 8 -- run --shards shards --out runs/dp8`.
    /// torchrun and SLURM's srun work as well: `run`, `eval` and `bench`
    /// read their variables (see docs/distributed.md).
    Launch(LaunchArgs),
    /// Redraw a run folder's curves.png from its metrics.jsonl.
    Plot {
        /// The run folder (--out of `trainer run`).
        #[arg(long)]
        run: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Amp {
    /// Convolutions, products and LRN in bfloat16 (weights and loss float32).
    Bf16,
}

fn precision(amp: Option<Amp>) -> Precision {
    match amp {
        Some(Amp::Bf16) => Precision::Bf16,
        None => Precision::F32,
    }
}

#[derive(clap::Args)]
struct RunArgs {
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

#[derive(clap::Args)]
struct EvalArgs {
    /// A checkpoint folder, or a run folder (its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value = "shards")]
    shards: PathBuf,
    #[arg(long, value_enum, default_value_t = SplitArg::Val)]
    split: SplitArg,
    /// The paper's test: softmax averaged over 4 corners + centre and mirrors.
    #[arg(long)]
    ten_crop: bool,
    /// `auto`, `cpu`, `cuda:N`, or two devices for the two-column split
    /// (data-parallel: as in `trainer run`).
    #[arg(long, default_value = "auto")]
    devices: String,
    #[command(flatten)]
    ranks: RankArgs,
    /// Images per batch (per rank).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Score only the split's first N images, in stored order (the same
    /// N whatever the number of ranks): a quick look at a checkpoint.
    /// Default: every image.
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    max_images: Option<usize>,
    /// Loader worker threads (default: all cores, shared between the
    /// ranks on one machine).
    #[arg(long)]
    loader_threads: Option<usize>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// How a rank started by a launcher (`trainer launch`, torchrun, srun)
/// joins the others; without a launcher they do nothing.
#[derive(clap::Args)]
struct RankArgs {
    /// Data-parallel: the c10d backend between the ranks.
    #[arg(long, value_enum, default_value = "auto")]
    dist_backend: DistBackend,
    /// Data-parallel: seconds the ranks wait for each other (to meet, and
    /// in each collective) before a rank that died or hangs ends the run.
    #[arg(long, default_value_t = 300)]
    dist_timeout: u64,
}

#[derive(clap::Args)]
struct LaunchArgs {
    /// Ranks on this node: one per GPU (or per GPU pair with `--devices pairs`).
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Nodes in the run; start `trainer launch` on each.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index, 0 to nnodes - 1 (node 0 hosts the ranks' store).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of node 0, where the ranks meet.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port on node 0 [default: a free port when there is one node; give it
    /// with more].
    #[arg(long)]
    master_port: Option<u16>,
    /// The trainer command each rank runs, after `--`: `run ...`, `eval ...`
    /// or `bench ...`.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Val,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// `auto`, `cpu`, `cuda:N`, or two devices for the two-column split.
    #[arg(long, default_value = "auto")]
    devices: String,
    #[arg(long, default_value_t = 128)]
    batch_size: i64,
    #[arg(long, value_enum)]
    amp: Option<Amp>,
    #[arg(long, default_value_t = 1.0)]
    width_mult: f64,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// As in `trainer run --kernels`.
    #[arg(long, value_enum, default_value = "auto")]
    kernels: KernelChoice,
    /// As in `trainer run --cuda-graph`.
    #[arg(long, value_enum, default_value = "auto", num_args = 0..=1, default_missing_value = "on")]
    cuda_graph: GraphChoice,
    #[command(flatten)]
    ranks: RankArgs,
    /// Under a launcher: as in `trainer run`.
    #[arg(long, value_enum, default_value = "f32")]
    grad_comm: GradComm,
    /// First compare one step's loss and gradients with the fused LRN and
    /// with the band LRN at these sizes (Kaiming init, dropout off), each
    /// against the band step in float64; fails when the fused step is
    /// further from it than twice the band step.
    #[arg(long)]
    check_lrn: bool,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
}

/// `auto`, `cpu`, `cuda`, `cuda:N`, `pairs`, or two devices separated by a
/// comma; `auto` and `pairs` pick the GPUs of local rank `local`.
fn parse_devices(text: &str, local: usize) -> Result<Placement> {
    let text = match text.trim() {
        "auto" if tch::Cuda::is_available() => format!("cuda:{local}"),
        "auto" => "cpu".to_string(),
        "pairs" => format!("cuda:{},cuda:{}", 2 * local, 2 * local + 1),
        other => other.to_string(),
    };
    let text = text.as_str();
    let devices = text
        .split(',')
        .map(|d| match d.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Device::Cuda(i)),
                _ => bail!("--devices: `{other}` is not cpu, cuda or cuda:N"),
            },
        })
        .collect::<Result<Vec<_>>>()?;
    for d in &devices {
        if let Device::Cuda(i) = d {
            if !tch::Cuda::is_available() {
                bail!(
                    "--devices {text}: libtorch sees no CUDA device (no GPU, no driver, or a CPU-only libtorch; see README troubleshooting)"
                );
            }
            let count = tch::Cuda::device_count() as usize;
            if *i >= count {
                bail!("--devices {text}: cuda:{i} does not exist ({count} CUDA devices seen)");
            }
        }
    }
    match devices[..] {
        [d] => Ok(Placement::One(d)),
        [a, b] => Ok(Placement::Split(a, b)),
        _ => bail!(
            "--devices takes one device or two (the paper's two columns), got {}",
            devices.len()
        ),
    }
}

/// Loader threads: as given, else the cores shared among this node's ranks.
fn threads(arg: Option<usize>, dist: Option<&Dist>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ranks_here = dist.map_or(1, |d| d.env.local_world);
    arg.unwrap_or((cores / ranks_here).max(1))
}

/// float32 matrix products (the FC layers) may use TF32 tensor cores, as
/// libtorch already lets cuDNN do for float32 convolutions and as the
/// PyTorch reference benchmark sets `allow_tf32`. libtorch reads this
/// variable once, when its global context is first made; set it to 0 to
/// keep IEEE float32 products.
const TF32_MATMUL_ENV: &str = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE";

fn main() -> std::process::ExitCode {
    if std::env::var_os(TF32_MATMUL_ENV).is_none() {
        std::env::set_var(TF32_MATMUL_ENV, "1");
    }
    let cli = Cli::parse();
    // The loader's kernels: a PIPELINE_SIMD this CPU cannot run is an
    // error, not a silent fallback.
    if let Err(e) = pipeline::cpu::requested_level() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match command(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause said once.
            eprintln!("error: {}", pipeline::error_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn command(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run_cmd(args),
        Command::Eval(args) => eval_cmd(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Launch(args) => launch_cmd(args),
        Command::Plot { run } => {
            let path = trainer::metric::plot::write_curves(&run)?;
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}

/// This process's placement, and its rank's group when a launcher
/// (`trainer launch`, torchrun, srun) started it as one of several.
fn join_ranks(devices: &str, ranks: &RankArgs) -> Result<(Placement, Option<Arc<Dist>>)> {
    let (backend, timeout_secs) = (ranks.dist_backend, ranks.dist_timeout);
    let env =
        WorldEnv::from_process().map_err(|e| anyhow::anyhow!("the launcher's variables: {e}"))?;
    let placement = parse_devices(devices, env.as_ref().map_or(0, |e| e.local_rank))?;
    // One rank alone is one process, unless a backend was asked for by
    // name: then it runs the data-parallel path (its overhead, measured).
    let Some(env) = env.filter(|e| e.world > 1 || backend != DistBackend::Auto) else {
        return Ok((placement, None));
    };
    if timeout_secs == 0 {
        bail!("--dist-timeout must be at least 1 second");
    }
    let timeout = std::time::Duration::from_secs(timeout_secs);
    let dist = Dist::connect(env, backend.into(), placement.first(), timeout)?;
    Ok((placement, Some(Arc::new(dist))))
}

fn run_cmd(args: RunArgs) -> Result<()> {
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
    // A resumed run keeps its own shards, epochs and SGD constants unless
    // they are given again.
    let stored = if args.resume {
        let (newest_intact, _) = checkpoint::resume_point(&args.out.join("checkpoints"))?;
        checkpoint::load_state(&newest_intact)?.settings
    } else {
        None
    };
    let shards = args
        .shards
        .or_else(|| stored.as_ref().map(|s| s.shards.clone()))
        .unwrap_or_else(|| PathBuf::from("shards"));
    let (placement, dist) = join_ranks(&args.devices, &args.ranks)?;
    let root = dist.as_ref().is_none_or(|d| d.is_root());
    let opts = RunOptions {
        shards,
        out: args.out,
        placement,
        epochs: args
            .epochs
            .or(stored.as_ref().map(|s| s.epochs))
            .unwrap_or(90),
        batch_size: args.batch_size,
        lr: args.lr,
        momentum: args
            .momentum
            .or(stored.as_ref().map(|s| s.momentum))
            .unwrap_or(0.9),
        weight_decay: args
            .weight_decay
            .or(stored.as_ref().map(|s| s.weight_decay))
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
    };
    if placement.first().is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let summary = run(&opts, &stop)?;
    if !root {
        // Rank 0 reports for all.
        if summary.interrupted {
            std::process::exit(130);
        }
        return Ok(());
    }
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
        std::process::exit(130);
    }
    Ok(())
}

fn eval_cmd(args: EvalArgs) -> Result<()> {
    let (placement, dist) = join_ranks(&args.devices, &args.ranks)?;
    let (rank, world) = dist.as_ref().map_or((0, 1), |d| (d.rank(), d.world()));
    let ck = checkpoint::load(&args.checkpoint)?;
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Val => Split::Val,
    };
    let dataset = Arc::new(Dataset::open(&args.shards, split)?);
    let train = Dataset::open(&args.shards, Split::Train)?;
    let mean = train.mean().with_context(|| {
        format!(
            "{}: no mean.npy: run `pipeline stats` first",
            args.shards.display()
        )
    })?;
    let mut net = AlexNet::new(
        ck.state.model,
        ck.state.init,
        0,
        placement,
        ck.state.precision,
    );
    net.load(&ck.weights)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ck.path.display()))?;
    let norm = InputNorm::new(
        mean,
        train.side(),
        CROP,
        ck.state.input_scale,
        placement.first(),
    );
    let mode = if args.ten_crop {
        Mode::Tencrop
    } else {
        Mode::Center
    };
    let bar = match rank {
        0 => ProgressBar::new(0),
        _ => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images [{elapsed_precise}, ETA {eta}]")
            .expect("valid template"),
    );
    let mut sums = evaluate(
        &net,
        &norm,
        dataset,
        &EvalOptions {
            mode,
            batch_size: args.batch_size,
            threads: threads(args.loader_threads, dist.as_deref()),
            part: (rank, world),
            limit: args.max_images,
        },
        &Bar(bar.clone()),
    )?;
    bar.finish_and_clear();
    if let Some(dist) = &dist {
        let total = dist.sum(&sums.to_array())?;
        sums = EvalSums::from_array([total[0], total[1], total[2], total[3]]);
        if !dist.is_root() {
            return Ok(());
        }
    }
    let result = sums.result();
    let crops = if args.ten_crop {
        "ten-crop"
    } else {
        "centre crop"
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": ck.path, "step": ck.state.step, "crops": crops,
                "images": result.images, "top1": result.top1, "top5": result.top5, "loss": result.loss,
            })
        );
    } else {
        println!(
            "{} (step {}), {} images, {crops}: top-1 {:.2}%  top-5 {:.2}%  (error {:.2}% / {:.2}%)  loss {:.4}",
            ck.path.display(),
            ck.state.step,
            result.images,
            100.0 * result.top1,
            100.0 * result.top5,
            100.0 * (1.0 - result.top1),
            100.0 * (1.0 - result.top5),
            result.loss
        );
    }
    Ok(())
}

fn launch_cmd(args: LaunchArgs) -> Result<()> {
    let program = std::env::current_exe().context("finding the trainer's own path")?;
    let opts = LaunchOptions {
        program,
        args: args.command,
        nproc_per_node: args.nproc_per_node,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr,
        master_port: args.master_port,
    };
    // Each Ctrl-C is counted here and forwarded to the ranks by `launch`.
    let interrupts = Arc::new(AtomicUsize::new(0));
    let counter = interrupts.clone();
    ctrlc::set_handler(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .context("cannot install the Ctrl-C handler")?;
    if let Err(e) = launch(&opts, &interrupts) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
    Ok(())
}

fn bench_cmd(args: BenchArgs) -> Result<()> {
    let (placement, dist) = join_ranks(&args.devices, &args.ranks)?;
    if args.batch_size <= 0 || args.steps == 0 {
        bail!("--batch-size and --steps must be positive");
    }
    let (kernels, warnings) =
        trainer::kernels::KernelChoice::from(args.kernels).resolve(placement.single())?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("{}", kernels.describe());
    let label = kernels.label();
    let opts = BenchOptions {
        placement,
        batch_size: args.batch_size,
        precision: precision(args.amp),
        width_mult: args.width_mult,
        warmup: args.warmup,
        steps: args.steps,
        kernels,
        cuda_graph: trainer::step::GraphChoice::from(args.cuda_graph)
            .resolve(placement.single(), dist.is_some())?,
        dist: dist.clone(),
        grad_comm: args.grad_comm.into(),
    };
    if args.check_lrn {
        let Some(fused) = opts.kernels.lrn.clone() else {
            bail!("--check-lrn compares the fused LRN, which is not in use here");
        };
        let c = compare_lrn(&opts, fused)?;
        let (band_worst, fused_worst) = (c.worst(|d| d.band), c.worst(|d| d.fused));
        println!(
            "LRN CHECK bs={} loss band={:.6} fused={:.6} f64-band={:.6}; gradients, largest \
             |g - g_ref| / |g_ref| against the f64 band step: band {:.2e} ({}), fused {:.2e} ({})",
            args.batch_size,
            c.loss[0],
            c.loss[1],
            c.loss[2],
            band_worst.1,
            band_worst.0,
            fused_worst.1,
            fused_worst.0
        );
        if let Err(why) = c.verdict(opts.precision) {
            bail!("--check-lrn: the fused LRN step disagrees with the band step: {why}");
        }
    }
    let result = bench(&opts)?;
    let amp = if args.amp.is_some() { "bf16" } else { "fp32" };
    let ranks = match &dist {
        Some(d) => format!(
            " rank={} world={} backend={} grad_comm={:?} comm_wait_ms={:.2} comm_share={:.3}",
            d.rank(),
            d.world(),
            d.backend(),
            opts.grad_comm,
            result.comm_wait_ms,
            result.comm_wait_ms / result.step_ms
        ),
        None => String::new(),
    };
    println!(
        "BENCH paper-alexnet-2col devices={placement:?} bs={} {amp} kernels={label} graph={} width={} img/s={:.0} step_ms={:.2}{ranks}",
        args.batch_size, u8::from(opts.cuda_graph), args.width_mult, result.img_per_sec, result.step_ms
    );
    Ok(())
}

/// The library's progress reports drawn as an indicatif bar.
struct Bar(ProgressBar);

impl pipeline::progress::Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn note(&self, text: &str) {
        self.0.suspend(|| eprintln!("{text}"));
    }
}
