//! `trainer bench`: training images per second on synthetic data.

use anyhow::{bail, Result};
use trainer::bench::{bench, compare_lrn, BenchOptions};

use crate::ranks::{join_ranks, RankArgs};
use crate::values::{precision, Amp, GradComm, GraphChoice, KernelChoice};

#[derive(clap::Args)]
pub struct BenchArgs {
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

pub fn command(args: BenchArgs) -> Result<()> {
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
        check_lrn(&opts)?;
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

/// Compares one step's loss and gradients with the fused LRN and with the
/// band LRN against the band step in float64, and fails when the fused
/// step is the further off (see `--check-lrn`).
fn check_lrn(opts: &BenchOptions) -> Result<()> {
    let Some(fused) = opts.kernels.lrn.clone() else {
        bail!("--check-lrn compares the fused LRN, which is not in use here");
    };
    let c = compare_lrn(opts, fused)?;
    let (band_worst, fused_worst) = (c.worst(|d| d.band), c.worst(|d| d.fused));
    println!(
        "LRN CHECK bs={} loss band={:.6} fused={:.6} f64-band={:.6}; gradients, largest \
         |g - g_ref| / |g_ref| against the f64 band step: band {:.2e} ({}), fused {:.2e} ({})",
        opts.batch_size,
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
    Ok(())
}
