//! `trainer eval`: a checkpoint's top-1 / top-5, centre crop or ten crops.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::builder::RangedU64ValueParser;
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use pipeline::ingest::Split;
use pipeline::loader::augment::Mode;
use pipeline::loader::Dataset;
use trainer::checkpoint::{self, Checkpoint};
use trainer::eval::{evaluate, EvalOptions, EvalResult, EvalSums};
use trainer::input::InputNorm;
use trainer::learner::CROP;
use trainer::model::{AlexNet, Placement};

use crate::ranks::{join_ranks, threads, RankArgs};

#[derive(clap::Args)]
pub struct EvalArgs {
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

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Val,
}

pub fn command(args: EvalArgs) -> Result<()> {
    let (placement, dist) = join_ranks(&args.devices, &args.ranks)?;
    let (rank, world) = dist.as_ref().map_or((0, 1), |d| (d.rank(), d.world()));
    let ck = checkpoint::load(&args.checkpoint)?;
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Val => Split::Val,
    };
    let dataset = Arc::new(Dataset::open(&args.shards, split)?);
    let (net, norm) = model_and_input(&ck, &args.shards, placement)?;
    let mode = if args.ten_crop {
        Mode::Tencrop
    } else {
        Mode::Center
    };
    let bar = progress_bar(rank == 0);
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
        // The counts of all ranks: the one process's, exactly.
        let total = dist.sum(&sums.to_array())?;
        sums = EvalSums::from_array([total[0], total[1], total[2], total[3]]);
        if !dist.is_root() {
            return Ok(());
        }
    }
    print_result(&args, &ck, &sums.result());
    Ok(())
}

/// The checkpoint's net on `placement`, and the input normalisation it
/// was trained with (the train split's mean image).
fn model_and_input(
    ck: &Checkpoint,
    shards: &Path,
    placement: Placement,
) -> Result<(AlexNet, InputNorm)> {
    let train = Dataset::open(shards, Split::Train)?;
    let mean = train.mean().with_context(|| {
        format!(
            "{}: no mean.npy: run `pipeline stats` first",
            shards.display()
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
    Ok((net, norm))
}

/// Images scored so far; drawn by the first rank only.
fn progress_bar(shown: bool) -> ProgressBar {
    let bar = match shown {
        true => ProgressBar::new(0),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images [{elapsed_precise}, ETA {eta}]")
            .expect("valid template"),
    );
    bar
}

fn print_result(args: &EvalArgs, ck: &Checkpoint, result: &EvalResult) {
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
