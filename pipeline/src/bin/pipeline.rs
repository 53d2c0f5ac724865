//! The `pipeline` command: ingest ImageNet into shards and look inside them.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use pipeline::augment::Mode;
use pipeline::codec::{PreprocessOptions, ResizeFilter};
use pipeline::ingest::{Split, ValLabelOptions};
use pipeline::inspect::{self, Selector};
use pipeline::loader::{BufferPool, Dataset, Loader, LoaderConfig, Output};
use pipeline::make_shards::{make_shards, ShardsConfig};
use pipeline::manifest::Manifest;
use pipeline::shard::{MatchSearch, PixelFilter, ReadMode, RecordDecoder};
use pipeline::stats;

/// ImageNet (ILSVRC-2012) from its JPEG tree to zstd shards for AlexNet.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode, rescale (shorter side 256), centre-crop 256x256 and store every
    /// image of an ILSVRC tree in zstd shards. Resumes an interrupted run.
    Shards(ShardsArgs),
    /// Check every record of a shard folder against its checksum.
    Verify {
        /// Shard folder (holds manifest.json).
        #[arg(long, default_value = "shards")]
        shards: PathBuf,
    },
    /// Write one stored image as PNG and say what it is.
    Export(ExportArgs),
    /// Measure the loader's throughput against the zstd decompression ceiling.
    Bench(BenchArgs),
    /// Draw one augmented training batch as a PNG contact sheet: each stored
    /// image with its crop window (green; magenta when mirrored) beside the
    /// crop the network sees, lighting added, mean not subtracted.
    Sheet(SheetArgs),
    /// Compute the per-pixel mean image (mean.npy) and the RGB covariance with
    /// its eigen pairs for PCA lighting (stats.json) over the train split.
    Stats {
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
    },
}

#[derive(Args)]
struct ShardsArgs {
    /// ILSVRC-2012 root: holds train/<wnid>/*.JPEG and val/ (sorted into
    /// <wnid>/ folders, or flat with LOC_val_solution.csv or
    /// ILSVRC2012_validation_ground_truth.txt beside it).
    #[arg(long, value_name = "DIR")]
    imagenet: PathBuf,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR", default_value = "shards")]
    out: PathBuf,
    /// Worker threads [default: all cores].
    #[arg(long)]
    jobs: Option<usize>,
    /// zstd level: 1 is ~2.4x cheaper to write than 3 and, with the delta
    /// filter, compresses as well on photos.
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    level: i32,
    /// How hard zstd looks for repeats. `sparse` (the default at level 1)
    /// skips most of a search that delta-filtered photos rarely reward:
    /// writing 11% faster and the loader 14% faster for 2.6% more bytes.
    /// `full` is zstd's own search for the level [default: sparse at level 1,
    /// full at other levels].
    #[arg(long, value_enum)]
    zstd_search: Option<MatchSearch>,
    /// Splits to write [default: train, and val when present].
    #[arg(long, value_delimiter = ',')]
    splits: Option<Vec<Split>>,
    /// Keep at most K images per class (the first in name order): quick subsets.
    #[arg(long, value_name = "K")]
    per_class: Option<usize>,
    /// Images per shard file.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// Seed of the train split's shuffled order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Antialiasing filter of the rescale (Pillow's BILINEAR, BICUBIC, LANCZOS).
    #[arg(long, value_enum, default_value_t = ResizeFilter::Bilinear)]
    filter: ResizeFilter,
    /// Byte filter before zstd.
    #[arg(long, value_enum, default_value_t = PixelFilter::Delta)]
    pixel_filter: PixelFilter,
    /// Decode every JPEG at full size (no DCT-domain downscaling of large photos).
    #[arg(long)]
    no_dct_scaling: bool,
    /// Labels of a flat val/ folder: LOC_val_solution.csv or
    /// ILSVRC2012_validation_ground_truth.txt [default: found beside the tree].
    #[arg(long, value_name = "FILE")]
    val_labels: Option<PathBuf>,
    /// ILSVRC2012_ID to wnid mapping for the ground-truth form: one wnid per
    /// line in ID order, or "ID wnid" lines [default: ILSVRC2012_mapping.txt].
    #[arg(long, value_name = "FILE")]
    val_id_map: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Shard folder (holds manifest.json, and stats.json/mean.npy for train
    /// mode and float32 output).
    #[arg(long, default_value = "shards")]
    shards: PathBuf,
    #[arg(long, value_enum, default_value_t = Split::Train)]
    split: Split,
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
    #[arg(long, value_enum, default_value_t = Output::U8)]
    output: Output,
    /// Epochs to run (resident memory is reported after each).
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    /// How workers read frames: map the shards (auto does while they fit in
    /// half the memory) or pread each frame.
    #[arg(long, value_enum, default_value_t = ReadMode::Auto)]
    read: ReadMode,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SheetArgs {
    /// Shard folder, with stats.json (for the lighting).
    #[arg(long, default_value = "shards")]
    shards: PathBuf,
    #[arg(long, value_name = "FILE.png", default_value = "sheet.png")]
    out: PathBuf,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Cells per row.
    #[arg(long, default_value_t = 4)]
    columns: usize,
    /// Loader seed and epoch: which batch, with which draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    epoch: u64,
}

#[derive(Args)]
struct ExportArgs {
    /// Shard folder (holds manifest.json).
    #[arg(long, default_value = "shards")]
    shards: PathBuf,
    #[arg(long, value_enum, default_value_t = Split::Train)]
    split: Split,
    /// Position of the record in the split.
    #[arg(long, conflicts_with = "name", required_unless_present = "name")]
    record: Option<u64>,
    /// Source file name, as stored or just its last component.
    #[arg(long)]
    name: Option<String>,
    /// PNG file to write.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Shards(args) => run_shards(args),
        Command::Verify { shards } => run_verify(&shards),
        Command::Export(args) => run_export(args),
        Command::Stats {
            shards,
            jobs,
            bench,
        } => run_stats(&shards, jobs, bench),
        Command::Bench(args) => run_bench(args),
        Command::Sheet(args) => run_sheet(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_shards(args: ShardsArgs) -> Result<ExitCode> {
    let mut config = ShardsConfig::new(&args.imagenet, &args.out);
    if let Some(jobs) = args.jobs {
        config.jobs = jobs;
    }
    config.zstd_level = args.level;
    config.zstd_search = args.zstd_search;
    config.splits = args.splits;
    config.per_class = args.per_class;
    config.shard_size = args.shard_size;
    config.seed = args.seed;
    config.pixel_filter = args.pixel_filter;
    config.preprocess = PreprocessOptions {
        filter: args.filter,
        dct_scaling: !args.no_dct_scaling,
        ..PreprocessOptions::default()
    };
    config.val_labels = ValLabelOptions {
        labels: args.val_labels,
        id_map: args.val_id_map,
    };
    config.progress = std::io::stderr().is_terminal();
    let (manifest, summary) = make_shards(&config)?;
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    let secs = summary.elapsed.as_secs_f64();
    for (split, info) in &manifest.splits {
        println!(
            "{:<5} {:>9} images in {:>5} shards, {} skipped",
            split.name(),
            info.images,
            info.shards.len(),
            info.skipped.len()
        );
    }
    println!(
        "written {} (kept {} from an earlier run), skipped {}, {:.1} MB in shards, \
         compression {:.2}x, {:.1} s ({:.0} images/s)",
        summary.written,
        summary.kept,
        summary.skipped,
        summary.shard_bytes as f64 / 1e6,
        summary.compression_ratio(),
        secs,
        summary.written as f64 / secs.max(1e-9),
    );
    println!("manifest: {}", config.out.join("manifest.json").display());
    Ok(ExitCode::SUCCESS)
}

fn run_verify(dir: &std::path::Path) -> Result<ExitCode> {
    let manifest = Manifest::load(dir)?;
    let shards: u64 = manifest
        .splits
        .values()
        .map(|s| s.shards.len() as u64)
        .sum();
    let progress = bar(shards, "{wide_bar} {pos}/{len} shards  {msg}");
    let report = inspect::verify(dir, &progress)?;
    progress.finish_and_clear();
    for problem in &report.problems {
        eprintln!("bad: {problem}");
    }
    if report.problems.is_empty() {
        println!(
            "ok: {} records in {} shards verified",
            report.records, report.shards
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "FAILED: {} problems in {} records of {} shards",
            report.problems.len(),
            report.records,
            report.shards
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Passes `pipeline stats --bench` times (the median is reported).
const STATS_BENCH_PASSES: usize = 5;

fn run_stats(dir: &std::path::Path, jobs: Option<usize>, bench: bool) -> Result<ExitCode> {
    let manifest = Manifest::load(dir)?;
    let images = manifest.split(Split::Train).map_or(0, |s| s.images);
    let threads =
        jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("thread pool")?;
    let progress = bar(
        images,
        "{wide_bar} {pos}/{len} images  {per_sec}  ETA {eta}",
    );
    // --bench repeats the pass (same output each time) and reports the
    // median: one pass over a small set lasts a fraction of a second, and
    // this is a shared machine.
    let mut seconds = Vec::new();
    let mut result = None;
    for _ in 0..if bench { STATS_BENCH_PASSES } else { 1 } {
        progress.reset();
        let started = std::time::Instant::now();
        result = Some(pool.install(|| stats::compute(dir, &progress))?);
        seconds.push(started.elapsed().as_secs_f64());
    }
    let (stats, mean) = result.expect("one pass at least");
    seconds.sort_by(f64::total_cmp);
    let secs = seconds[seconds.len() / 2];
    progress.finish_and_clear();
    stats::write(dir, &stats, &mean)?;
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
    let rate = stats.images as f64 / secs.max(1e-9);
    println!("{:.1} s, {rate:.0} images/s with {threads} threads", secs);
    if bench {
        let rates: Vec<String> = seconds
            .iter()
            .map(|s| format!("{:.0}", stats.images as f64 / s.max(1e-9)))
            .collect();
        println!("passes (images/s, sorted by time): {}", rates.join(", "));
        let ceilings = pipeline::inspect::ceilings(dir, &manifest, 2000)?;
        let percent = |ceiling: f64| 100.0 * rate / (threads as f64 * ceiling);
        println!(
            "single-thread zstd decompress: {:.0} images/s; pass = {:.0}% of {threads} x that",
            ceilings.zstd,
            percent(ceilings.zstd)
        );
        println!(
            "single-thread pread + zstd: {:.0} images/s; pass = {:.0}% of {threads} x that",
            ceilings.read_and_zstd,
            percent(ceilings.read_and_zstd)
        );
    }
    println!(
        "wrote {} and {}",
        dir.join(stats::MEAN_FILE).display(),
        dir.join(stats::STATS_FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_sheet(args: SheetArgs) -> Result<ExitCode> {
    let dataset = std::sync::Arc::new(Dataset::open(&args.shards, Split::Train)?);
    let config = LoaderConfig {
        batch_size: args.batch_size.max(1),
        seed: args.seed,
        ..LoaderConfig::default()
    };
    let classes = dataset.manifest.classes.clone();
    let (sheet, entries) =
        pipeline::sheet::contact_sheet(dataset, &config, args.epoch, args.columns)?;
    sheet
        .save(&args.out)
        .with_context(|| format!("{}: cannot write the PNG", args.out.display()))?;
    println!("cell  x   y  mirrored  lighting (R, G, B)       class");
    for (i, e) in entries.iter().enumerate() {
        let name = classes
            .get(e.label as usize)
            .map_or("?", |c| c.name.as_str());
        let [r, g, b] = e.view.light;
        println!(
            "{i:>4} {:>3} {:>3}  {:<8}  ({r:+6.2}, {g:+6.2}, {b:+6.2})  {name}",
            e.view.x,
            e.view.y,
            if e.view.flip { "yes" } else { "no" }
        );
    }
    println!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn run_bench(args: BenchArgs) -> Result<ExitCode> {
    let dataset = std::sync::Arc::new(Dataset::open_with(&args.shards, args.split, args.read)?);
    let mut config = LoaderConfig {
        batch_size: args.batch_size,
        mode: args.mode,
        output: args.output,
        // Epochs run back to back, as in training.
        prefetch_next_epoch: true,
        ..LoaderConfig::default()
    };
    if let Some(threads) = args.threads {
        config.threads = threads;
        config.prefetch = 2 * threads;
    }
    if let Some(prefetch) = args.prefetch {
        config.prefetch = prefetch;
    }
    let epochs = run_epochs(&dataset, &config, args.epochs)?;
    let images = epochs.images();
    let epoch_rates = epochs.rates();
    let steady_rate = epochs.steady_rate();
    let (rss_mb, private_mb, mapped_mb) = (epochs.resident_mb, epochs.private_mb, epochs.mapped_mb);
    let read = format!("{:?}", dataset.read_mode()).to_lowercase();
    let rate = images as f64 / epochs.seconds;
    // After the loader, so that the peak memory above is the loader's: the
    // ceiling holds 2,000 frames (~240 MB of ImageNet) in memory, and the
    // allocator keeps much of that resident after they are freed.
    let ceilings = pipeline::inspect::ceilings(&args.shards, &dataset.manifest, 2000)?;
    let ceiling = ceilings.zstd;
    let ceiling_total = ceiling * config.threads as f64;
    let read_total = ceilings.read_and_zstd * config.threads as f64;
    let value_bytes = if config.output == Output::F32 { 4 } else { 1 };
    let batch_mb = (config.batch_size
        * config.mode.views_per_image()
        * config.crop
        * config.crop
        * 3
        * value_bytes) as f64
        / 1e6;
    let bound_mb = (config.prefetch + config.threads) as f64 * batch_mb + 64.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "images_per_sec": rate,
                "images_per_sec_each_epoch": epoch_rates,
                "ceiling_images_per_sec": ceiling_total,
                "ratio": rate / ceiling_total,
                "steady_images_per_sec": steady_rate,
                "steady_ratio": steady_rate.map(|r| r / ceiling_total),
                "single_thread_zstd_images_per_sec": ceiling,
                "single_thread_read_and_zstd_images_per_sec": ceilings.read_and_zstd,
                "ratio_to_read_and_zstd": rate / read_total,
                "threads": config.threads,
                "prefetch": config.prefetch,
                "batch_size": config.batch_size,
                "mode": format!("{:?}", config.mode).to_lowercase(),
                "output": format!("{:?}", config.output).to_lowercase(),
                "images": images,
                "read": read,
                "peak_resident_mb_after_each_epoch": rss_mb,
                "peak_private_mb_after_each_epoch": private_mb,
                "mapped_file_mb_after_each_epoch": mapped_mb,
                "memory_bound_mb": bound_mb,
            })
        );
    } else {
        println!(
            "loader: {rate:.0} images/s ({images} images, {} threads, batch {}, read: {read})",
            config.threads, config.batch_size
        );
        let each: Vec<String> = epoch_rates
            .iter()
            .map(|r| format!("{r:.0} ({:.1}%)", 100.0 * r / ceiling_total))
            .collect();
        println!("each epoch: {}", each.join(", "));
        if let Some(r) = steady_rate {
            println!(
                "after the first epoch: {r:.0} images/s ({:.1}% of the ceiling)",
                100.0 * r / ceiling_total
            );
        }
        println!(
            "ceiling: {ceiling_total:.0} images/s ({} threads x {ceiling:.0} single-thread zstd); ratio {:.1}%",
            config.threads,
            100.0 * rate / ceiling_total
        );
        println!(
            "with the read: {read_total:.0} images/s ({} threads x {:.0} single-thread pread + zstd); ratio {:.1}%",
            config.threads,
            ceilings.read_and_zstd,
            100.0 * rate / read_total
        );
        let list = |v: &[f64]| {
            v.iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "peak private MB after each epoch: {} (bound: (prefetch + threads) x batch + 64 = {bound_mb:.0})",
            list(&private_mb)
        );
        println!(
            "peak resident MB after each epoch: {}, of which mapped files (shards, this program) at the end: {}",
            list(&rss_mb),
            list(&mapped_mb)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `run_epochs` measured, one entry per epoch.
struct EpochFigures {
    /// From starting the loader to its last batch.
    seconds: f64,
    /// Images and seconds of each epoch alone: the first one also fills the
    /// pipeline, first touches the batch buffers and maps the shards' pages.
    epochs: Vec<(u64, f64)>,
    /// Peak resident set so far.
    resident_mb: Vec<f64>,
    /// Peak private memory so far (sampled at every batch).
    private_mb: Vec<f64>,
    /// Mapped file pages at the epoch's end.
    mapped_mb: Vec<f64>,
}

/// Runs a loader for `epochs` epochs back to back and measures each.
fn run_epochs(
    dataset: &std::sync::Arc<Dataset>,
    config: &LoaderConfig,
    epochs: u64,
) -> Result<EpochFigures> {
    let run_started = std::time::Instant::now();
    let pool = BufferPool::for_config(config);
    let mut loader = Loader::with_pool(dataset.clone(), config.clone(), pool, 0, 0)?;
    let mut f = EpochFigures {
        seconds: 0.0,
        epochs: Vec::new(),
        resident_mb: Vec::new(),
        private_mb: Vec::new(),
        mapped_mb: Vec::new(),
    };
    let mut private_peak = 0f64;
    for epoch in 0..epochs {
        if epoch > 0 {
            loader.advance_epoch();
        }
        // As the trainer does: no batches made for an epoch after the last.
        loader.set_prefetch_next_epoch(epoch + 1 < epochs);
        let (started, mut images) = (std::time::Instant::now(), 0u64);
        for batch in loader.by_ref() {
            images += batch?.records.len() as u64;
            // /proc keeps no peak of private memory alone: sample it at
            // every batch (~20 us; a batch takes ~25 ms here).
            private_peak = private_peak.max(memory_mb("RssAnon:"));
        }
        f.epochs
            .push((images, started.elapsed().as_secs_f64().max(1e-9)));
        f.resident_mb.push(memory_mb("VmHWM:"));
        f.private_mb.push(private_peak);
        f.mapped_mb.push(memory_mb("RssFile:"));
    }
    // Before the drop, which waits for the batches made ahead.
    f.seconds = run_started.elapsed().as_secs_f64().max(1e-9);
    Ok(f)
}

impl EpochFigures {
    fn images(&self) -> u64 {
        self.epochs.iter().map(|&(images, _)| images).sum()
    }

    /// Images/s of each epoch alone.
    fn rates(&self) -> Vec<f64> {
        self.epochs.iter().map(|&(n, s)| n as f64 / s).collect()
    }

    /// Images/s of the epochs after the first, together: the steady state
    /// (None with a single epoch).
    fn steady_rate(&self) -> Option<f64> {
        let later = self.epochs.get(1..).filter(|l| !l.is_empty())?;
        let images: u64 = later.iter().map(|&(n, _)| n).sum();
        let seconds: f64 = later.iter().map(|&(_, s)| s).sum();
        Some(images as f64 / seconds)
    }
}

/// One memory figure of this process from /proc/self/status, in MB; 0
/// where there is none. `VmHWM:` is the peak resident memory so far;
/// `RssAnon:` the resident private memory (heap, stacks: what the loader's
/// configuration bounds); `RssFile:` resident pages of mapped files (the
/// shards in map mode, and this program's code).
fn memory_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A progress bar on a terminal, nothing otherwise.
fn bar(len: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn run_export(args: ExportArgs) -> Result<ExitCode> {
    let manifest = Manifest::load(&args.shards)?;
    let selector = match (args.record, args.name) {
        (Some(n), _) => Selector::Record(n),
        (None, Some(name)) => Selector::Name(name),
        (None, None) => bail!("give --record N or --name FILE"),
    };
    let found = inspect::locate(&args.shards, &manifest, args.split, &selector)?;
    let header = *found.shard.header();
    let mut pixels = vec![0; header.image_len()];
    RecordDecoder::new().context("zstd")?.decode(
        &found.shard,
        found.index_in_shard,
        &mut pixels,
        true,
    )?;
    let entry = &found.shard.records()[found.index_in_shard];
    let image = image::RgbImage::from_raw(header.width, header.height, pixels)
        .context("stored image has the wrong size")?;
    image
        .save_with_format(&args.out, image::ImageFormat::Png)
        .with_context(|| format!("{}: cannot write PNG", args.out.display()))?;
    let class = manifest.classes.get(entry.label as usize);
    println!(
        "split={} record={} label={} wnid={} class={:?} source={} shard={} png={}",
        args.split.name(),
        found.record,
        entry.label,
        class.map_or("?", |c| c.wnid.as_str()),
        class.map_or("?", |c| c.name.as_str()),
        entry.name,
        found.shard.path().display(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
