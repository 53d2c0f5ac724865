//! The `pipeline` command: ingest ImageNet into shards and look inside them.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use pipeline::format::manifest::Manifest;
use pipeline::format::shard::RecordDecoder;
use pipeline::ingest::codec::PreprocessOptions;
use pipeline::ingest::make_shards::{make_shards, ShardsConfig};
use pipeline::ingest::{Split, ValLabelOptions};
use pipeline::loader::{Dataset, LoaderConfig};
use pipeline::progress::Progress;
use pipeline::stats;
use pipeline::tools::inspect::{self, Selector};
use pipeline::tools::loader_bench;

/// The library's option enums as command-line values: the library has no
/// clap, so each is mirrored here (`pipeline::value_enum!`) with its help
/// text and turned into the library's own with `into()`.
mod values {
    pipeline::value_enum!(Split => pipeline::ingest::Split { Train, Val, });
    pipeline::value_enum!(Mode => pipeline::loader::augment::Mode {
        /// Random crop, mirror and lighting.
        Train,
        /// The centre window.
        Center,
        /// Four corners and centre, and their mirrors, kept together per image.
        Tencrop,
    });
    pipeline::value_enum!(Output => pipeline::loader::Output {
        /// uint8 HWC crops plus each view's parameters.
        U8,
        /// float32 CHW with mean and lighting applied.
        F32,
    });
    pipeline::value_enum!(ReadMode => pipeline::format::shard::ReadMode {
        /// `map` while the shards fit in half of this machine's memory.
        Auto,
        /// Map each shard file: frames decompressed from the page cache.
        Map,
        /// Copy each frame out of the file with one pread.
        Pread,
    });
    pipeline::value_enum!(ResizeFilter => pipeline::ingest::codec::ResizeFilter {
        /// Triangle (Pillow BILINEAR): torchvision's default for ImageNet.
        Bilinear,
        /// Catmull-Rom (Pillow BICUBIC).
        Bicubic,
        /// Lanczos, a = 3 (Pillow LANCZOS).
        Lanczos3,
    });
    pipeline::value_enum!(PixelFilter => pipeline::format::shard::PixelFilter {
        /// Bytes as they are.
        None,
        /// Each byte minus its left neighbour.
        Delta,
    });
    pipeline::value_enum!(Codec => pipeline::format::shard::Codec {
        /// zstd frames (~155 GB for ImageNet): the loader decompresses.
        Zstd,
        /// Pixels as they are (~250 GB for ImageNet): the loader crops
        /// straight from the page cache, no decode.
        Raw,
    });
    pipeline::value_enum!(MatchSearch => pipeline::format::shard::MatchSearch {
        /// zstd's own search for the level.
        Full,
        /// Few, long matches and literal Huffman coding kept (level 1 only).
        Sparse,
    });
}
use values::{Codec, MatchSearch, Mode, PixelFilter, ReadMode, ResizeFilter};

/// ImageNet (ILSVRC-2012) from its JPEG tree to shards (zstd or raw) for AlexNet.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode, rescale (shorter side 256), centre-crop 256x256 and store every
    /// image of an ILSVRC tree in shards (zstd or raw). Resumes an interrupted run.
    Shards(ShardsArgs),
    /// Check that every shard file is the one manifest.json lists in its
    /// place, every record against its checksums, and list shard files the
    /// manifest does not.
    Verify {
        /// Shard folder (holds manifest.json).
        #[arg(long, default_value = "shards")]
        shards: PathBuf,
    },
    /// Write one stored image as PNG and say what it is.
    Export(ExportArgs),
    /// Measure the loader's throughput against its decode ceiling (zstd
    /// decompression; for raw shards, checking and copying each frame).
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
        /// How threads read frames: map the shards (auto does while they
        /// fit in half the memory) or pread each frame.
        #[arg(long, value_enum, default_value_t = ReadMode::Auto)]
        read: ReadMode,
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
    /// How each image is stored: `zstd` compressed, or `raw` (1.6x the
    /// bytes; the loader reads a page-cached raw set with no decode).
    #[arg(long, value_enum, default_value_t = Codec::Zstd)]
    codec: Codec,
    /// zstd level: 1 is ~2.4x cheaper to write than 3 and, with the delta
    /// filter, compresses as well on photos [default: 1].
    #[arg(long, allow_hyphen_values = true)]
    level: Option<i32>,
    /// How hard zstd looks for repeats. `sparse` (the default at level 1)
    /// skips most of a search that delta-filtered photos rarely reward:
    /// writing 11% faster and the loader 14% faster for 2.6% more bytes.
    /// `full` is zstd's own search for the level [default: sparse at level 1,
    /// full at other levels].
    #[arg(long, value_enum)]
    zstd_search: Option<MatchSearch>,
    /// Splits to write [default: train, and val when present].
    #[arg(long, value_delimiter = ',')]
    splits: Option<Vec<values::Split>>,
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
    /// Byte filter before zstd [default: delta].
    #[arg(long, value_enum)]
    pixel_filter: Option<PixelFilter>,
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
    #[arg(long, value_enum, default_value_t = values::Split::Train)]
    split: values::Split,
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
    // A PIPELINE_SIMD this CPU cannot run is an error, not a silent fallback.
    if let Err(e) = pipeline::cpu::requested_level() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Shards(args) => run_shards(args),
        Command::Verify { shards } => run_verify(&shards),
        Command::Export(args) => run_export(args),
        Command::Stats {
            shards,
            jobs,
            bench,
            read,
        } => run_stats(&shards, jobs, bench, read.into()),
        Command::Bench(args) => run_bench(args),
        Command::Sheet(args) => run_sheet(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", pipeline::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run_shards(args: ShardsArgs) -> Result<ExitCode> {
    let mut config = ShardsConfig::new(&args.imagenet, &args.out);
    if let Some(jobs) = args.jobs {
        config.jobs = jobs;
    }
    config.codec = args.codec.into();
    if args.codec == Codec::Raw
        && (args.level.is_some() || args.zstd_search.is_some() || args.pixel_filter.is_some())
    {
        bail!("--level, --zstd-search and --pixel-filter apply to --codec zstd, not raw");
    }
    if let Some(level) = args.level {
        config.zstd_level = level;
    }
    if let Some(filter) = args.pixel_filter {
        config.pixel_filter = filter.into();
    }
    config.zstd_search = args.zstd_search.map(Into::into);
    config.splits = args
        .splits
        .map(|splits| splits.into_iter().map(Into::into).collect());
    config.per_class = args.per_class;
    config.shard_size = args.shard_size;
    config.seed = args.seed;
    config.preprocess = PreprocessOptions {
        filter: args.filter.into(),
        dct_scaling: !args.no_dct_scaling,
        ..PreprocessOptions::default()
    };
    config.val_labels = ValLabelOptions {
        labels: args.val_labels,
        id_map: args.val_id_map,
    };
    let progress = bar(
        0,
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images  {per_sec}  ETA {eta}",
    );
    let (manifest, summary) = make_shards(&config, &progress)?;
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
    // Every file of a split failed to decode: the set is of no use, and a
    // zero exit status would let a script carry on to `pipeline stats`.
    for (split, info) in &manifest.splits {
        if info.images == 0 {
            bail!(
                "{}: none of its {} files could be stored; each is named above with its \
                 reason, and in manifest.json under skipped",
                split.name(),
                info.skipped.len()
            );
        }
    }
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
    progress.finish();
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

fn run_stats(
    dir: &std::path::Path,
    jobs: Option<usize>,
    bench: bool,
    read: pipeline::format::shard::ReadMode,
) -> Result<ExitCode> {
    let manifest = Manifest::load(dir)?;
    let images = manifest.split(Split::Train).map_or(0, |s| s.images);
    // Resolved here, as `open_split_read` would, so that --bench can say
    // which ran.
    let shard_bytes = manifest
        .split(Split::Train)
        .map_or(0, |s| s.shards.iter().map(|info| info.bytes).sum());
    let read = read.resolve(shard_bytes);
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
        progress.0.reset();
        let started = std::time::Instant::now();
        result = Some(pool.install(|| stats::compute_with(dir, read, &progress))?);
        seconds.push(started.elapsed().as_secs_f64());
    }
    let (stats, mean) = result.expect("one pass at least");
    seconds.sort_by(f64::total_cmp);
    let secs = seconds[seconds.len() / 2];
    progress.finish();
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
        println!(
            "simd: {}; read: {}",
            pipeline::cpu::simd_level().name(),
            format!("{read:?}").to_lowercase()
        );
        let ceilings = inspect::ceilings(dir, &manifest, 2000, threads)?;
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
        pipeline::tools::sheet::contact_sheet(dataset, &config, args.epoch, args.columns)?;
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

/// A progress bar on a terminal, nothing otherwise (notes still print).
fn bar(len: u64, template: &str) -> Bar {
    if !std::io::stderr().is_terminal() {
        return Bar(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    Bar(bar)
}

/// The library's progress reports drawn as an indicatif bar.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn status(&self, text: String) {
        self.0.set_message(text);
    }
    fn note(&self, text: &str) {
        self.0.suspend(|| eprintln!("{text}"));
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn run_export(args: ExportArgs) -> Result<ExitCode> {
    let manifest = Manifest::load(&args.shards)?;
    let selector = match (args.record, args.name) {
        (Some(n), _) => Selector::Record(n),
        (None, Some(name)) => Selector::Name(name),
        (None, None) => bail!("give --record N or --name FILE"),
    };
    let found = inspect::locate(&args.shards, &manifest, args.split.into(), &selector)?;
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
        Split::from(args.split).name(),
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
