//! `pipeline bench`: the loader's rate against its decode ceilings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use pipeline::loader::{Dataset, LoaderConfig};
use pipeline::tools::loader_bench;

use crate::values::{self, Mode, ReadMode};

#[derive(Args)]
pub struct BenchArgs {
    /// Shard folder (holds manifest.json, and stats.json/mean.npy for train
    /// mode and float32 output).
    #[arg(long, default_value = "shards")]
    shards: PathBuf,
    #[arg(long, value_enum, default_value_t = values::Split::Train)]
    split: values::Split,
    /// Loader threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Batches in flight ahead of the consumer [default: 2 x threads].
    #[arg(long)]
    prefetch: Option<usize>,
    #[arg(long, value_enum, default_value_t = Mode::Train)]
    mode: Mode,
    #[arg(long, value_enum, default_value_t = values::Output::U8)]
    output: values::Output,
    /// Epochs to run (resident memory is reported after each).
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    /// How workers read frames: map the shards (auto does while they fit in
    /// half the memory) or pread each frame.
    #[arg(long, value_enum, default_value_t = ReadMode::Auto)]
    read: ReadMode,
    /// Leave a damaged record (stored bytes that fail their checksum) out
    /// of its batch with a warning, instead of stopping.
    #[arg(long)]
    skip_damaged: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn command(args: BenchArgs) -> Result<ExitCode> {
    let dataset = std::sync::Arc::new(Dataset::open_with(
        &args.shards,
        args.split.into(),
        args.read.into(),
    )?);
    let mut config = LoaderConfig {
        batch_size: args.batch_size,
        mode: args.mode.into(),
        output: args.output.into(),
        // Epochs run back to back, as in training.
        prefetch_next_epoch: true,
        skip_damaged: args.skip_damaged,
        ..LoaderConfig::default()
    };
    if let Some(threads) = args.threads {
        config.threads = threads;
        config.prefetch = 2 * threads;
    }
    if let Some(prefetch) = args.prefetch {
        config.prefetch = prefetch;
    }
    let b = loader_bench::measure(&args.shards, dataset, &config, args.epochs)?;
    for damaged in &b.damaged_left_out {
        eprintln!("warning: left out: {damaged}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&b)?);
    } else {
        print_bench(&b);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_bench(b: &loader_bench::LoaderBench) {
    let percent = |rate: f64| 100.0 * rate / b.ceiling_images_per_sec;
    println!(
        "loader: {:.0} images/s ({} images, {} threads, batch {}, {} shards, read: {}, simd: {})",
        b.images_per_sec, b.images, b.threads, b.batch_size, b.codec, b.read, b.simd
    );
    if !b.damaged_left_out.is_empty() {
        println!(
            "damaged records left out: {} (named above)",
            b.damaged_left_out.len()
        );
    }
    let each: Vec<String> = b
        .images_per_sec_each_epoch
        .iter()
        .map(|&r| format!("{r:.0} ({:.1}%)", percent(r)))
        .collect();
    println!("each epoch: {}", each.join(", "));
    if let Some(r) = b.steady_images_per_sec {
        println!(
            "after the first epoch: {r:.0} images/s ({:.1}% of the ceiling)",
            percent(r)
        );
    }
    println!(
        "ceiling: {:.0} images/s ({} threads x {:.0} single-thread {}); ratio {:.1}%",
        b.ceiling_images_per_sec,
        b.threads,
        b.single_thread_decode_images_per_sec,
        b.decode,
        100.0 * b.ratio
    );
    println!(
        "with the read: {:.0} images/s ({} threads x {:.0} single-thread pread + {}); ratio {:.1}%",
        b.single_thread_read_and_decode_images_per_sec * b.threads as f64,
        b.threads,
        b.single_thread_read_and_decode_images_per_sec,
        b.decode,
        100.0 * b.ratio_to_read_and_decode
    );
    println!(
        "parallel ceiling: {:.0} images/s ({} threads of {} at once); ratio {:.1}%",
        b.parallel_ceiling_images_per_sec,
        b.threads,
        b.decode,
        100.0 * b.ratio_to_parallel_ceiling
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "peak private MB after each epoch: {} (bound: (prefetch + threads) x batch + 64 = {:.0})",
        list(&b.peak_private_mb_after_each_epoch),
        b.memory_bound_mb
    );
    println!(
        "peak resident MB after each epoch: {}, of which mapped files (shards, this program) at the end: {}",
        list(&b.peak_resident_mb_after_each_epoch),
        list(&b.mapped_file_mb_after_each_epoch)
    );
}
