//! `pipeline stats`: the mean image and the RGB eigen pairs, and with
//! `--bench` the pass against its decode ceilings.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use pipeline::format::manifest::Manifest;
use pipeline::ingest::Split;
use pipeline::progress::Progress;
use pipeline::stats;
use pipeline::tools::inspect;

use crate::progress::bar;
use crate::values::ReadMode;

#[derive(Args)]
pub struct StatsArgs {
    /// Shard folder (holds manifest.json); the outputs are written there.
    #[arg(long, default_value = "shards")]
    shards: PathBuf,
    /// Worker threads [default: all cores].
    #[arg(long)]
    jobs: Option<usize>,
    /// Also measure the single-thread zstd decompression rate of the same
    /// shards and report the pass against threads x that ceiling (the
    /// pass is run 5 times; the median counts).
    #[arg(long)]
    bench: bool,
    /// How threads read frames: map the shards (auto does while they
    /// fit in half the memory) or pread each frame.
    #[arg(long, value_enum, default_value_t = ReadMode::Auto)]
    read: ReadMode,
}

/// Passes `pipeline stats --bench` times (the median is reported).
const STATS_BENCH_PASSES: usize = 5;

pub fn command(args: StatsArgs) -> Result<ExitCode> {
    let dir = args.shards.as_path();
    let manifest = Manifest::load(dir)?;
    let train = manifest.split(Split::Train);
    // Resolved here, as `open_split_read` would, so that --bench can say
    // which ran.
    let shard_bytes = train.map_or(0, |s| s.shards.iter().map(|info| info.bytes).sum());
    let read = pipeline::format::shard::ReadMode::from(args.read).resolve(shard_bytes);
    let threads = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let images = train.map_or(0, |s| s.images);
    let passes = if args.bench { STATS_BENCH_PASSES } else { 1 };
    let (stats, mean, seconds) = timed_passes(dir, read, threads, images, passes)?;
    stats::write(dir, &stats, &mean)?;
    print_stats(&stats);
    // The median pass.
    let rate = stats.images as f64 / seconds[seconds.len() / 2].max(1e-9);
    println!(
        "{:.1} s, {rate:.0} images/s with {threads} threads",
        seconds[seconds.len() / 2]
    );
    if args.bench {
        let each: Vec<f64> = seconds
            .iter()
            .map(|s| stats.images as f64 / s.max(1e-9))
            .collect();
        print_against_ceilings(dir, &manifest, read, threads, rate, &each)?;
    }
    println!(
        "wrote {} and {}",
        dir.join(stats::MEAN_FILE).display(),
        dir.join(stats::STATS_FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The statistics of `passes` passes over the train split (each gives the
/// same), and each pass's seconds, sorted. --bench repeats the pass and
/// reports the median: one pass over a small set lasts a fraction of a
/// second, and machines are shared.
fn timed_passes(
    dir: &Path,
    read: pipeline::format::shard::ReadMode,
    threads: usize,
    images: u64,
    passes: usize,
) -> Result<(stats::Stats, Vec<f32>, Vec<f64>)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("thread pool")?;
    let progress = bar(
        images,
        "{wide_bar} {pos}/{len} images  {per_sec}  ETA {eta}",
    );
    let mut seconds = Vec::new();
    let mut result = None;
    for _ in 0..passes {
        progress.0.reset();
        let started = std::time::Instant::now();
        result = Some(pool.install(|| stats::compute_with(dir, read, &progress))?);
        seconds.push(started.elapsed().as_secs_f64());
    }
    progress.finish();
    let (stats, mean) = result.context("no pass")?;
    seconds.sort_by(f64::total_cmp);
    Ok((stats, mean, seconds))
}

fn print_stats(stats: &stats::Stats) {
    println!(
        "{} images, {} pixels; channel mean (R, G, B) = ({:.3}, {:.3}, {:.3})",
        stats.images,
        stats.pixels,
        stats.channel_mean[0],
        stats.channel_mean[1],
        stats.channel_mean[2]
    );
    println!("eigenvalue     eigenvector (R, G, B)");
    for (value, vector) in stats.eigenvalues.iter().zip(&stats.eigenvectors) {
        println!(
            "{value:>10.3}     ({:>7.4}, {:>7.4}, {:>7.4})",
            vector[0], vector[1], vector[2]
        );
    }
}

/// `rate` (the median pass) against `threads` x one thread decoding, with
/// and without the read, and against `threads` threads decoding at once.
fn print_against_ceilings(
    dir: &Path,
    manifest: &Manifest,
    read: pipeline::format::shard::ReadMode,
    threads: usize,
    rate: f64,
    each_pass: &[f64],
) -> Result<()> {
    let rates: Vec<String> = each_pass.iter().map(|r| format!("{r:.0}")).collect();
    println!("passes (images/s, sorted by time): {}", rates.join(", "));
    println!(
        "simd: {}; read: {}",
        pipeline::cpu::simd_level().name(),
        format!("{read:?}").to_lowercase()
    );
    let ceilings = inspect::ceilings(dir, manifest, 2000, threads)?;
    let decode = inspect::Ceilings::decode_name(manifest.codec);
    let percent = |ceiling: f64| 100.0 * rate / (threads as f64 * ceiling);
    println!(
        "single-thread {decode}: {:.0} images/s; pass = {:.0}% of {threads} x that",
        ceilings.decode,
        percent(ceilings.decode)
    );
    println!(
        "single-thread pread + {decode}: {:.0} images/s; pass = {:.0}% of {threads} x that",
        ceilings.read_and_decode,
        percent(ceilings.read_and_decode)
    );
    println!(
        "{threads} threads of {decode} at once: {:.0} images/s; pass = {:.0}% of that",
        ceilings.parallel_decode,
        100.0 * rate / ceilings.parallel_decode
    );
    Ok(())
}
