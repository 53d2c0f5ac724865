//! `trainer`: AlexNet training (`run`), the paper's evaluation (`eval`), a
//! training-speed benchmark (`bench`), and the ranks of a data-parallel run
//! (`launch`).

mod bench;
mod eval;
mod launch;
mod ranks;
mod run;
mod values;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Run(run::RunArgs),
    /// Top-1 / top-5 of a checkpoint: the centre crop, or the paper's ten crops.
    Eval(eval::EvalArgs),
    /// Training images per second on synthetic data (no loader).
    Bench(bench::BenchArgs),
    /// Start this node's ranks of a data-parallel run, as torchrun does:
    /// `trainer launch --nproc-per-node 8 -- run --shards shards --out runs/dp8`.
    /// torchrun and SLURM's srun work as well: `run`, `eval` and `bench`
    /// read their variables (see docs/distributed.md).
    Launch(launch::LaunchArgs),
    /// Redraw a run folder's curves.png from its metrics.jsonl.
    Plot {
        /// The run folder (--out of `trainer run`).
        #[arg(long)]
        run: PathBuf,
    },
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
        Command::Run(args) => run::command(args),
        Command::Eval(args) => eval::command(args),
        Command::Bench(args) => bench::command(args),
        Command::Launch(args) => launch::command(args),
        Command::Plot { run } => {
            let path = trainer::metric::plot::write_curves(&run)?;
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}
