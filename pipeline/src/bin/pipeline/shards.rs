//! `pipeline shards`: an ILSVRC tree to shards, and the run's summary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use pipeline::format::manifest::Manifest;
use pipeline::ingest::codec::PreprocessOptions;
use pipeline::ingest::make_shards::{make_shards, ShardsConfig, Summary};
use pipeline::ingest::ValLabelOptions;

use crate::progress::bar;
use crate::values::{self, Codec, MatchSearch, PixelFilter, ResizeFilter};

#[derive(Args)]
pub struct ShardsArgs {
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

pub fn command(args: ShardsArgs) -> Result<ExitCode> {
    let config = config_of(args)?;
    let progress = bar(
        0,
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images  {per_sec}  ETA {eta}",
    );
    let (manifest, summary) = make_shards(&config, &progress)?;
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    print_summary(&manifest, &summary);
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

/// The library's configuration from the flags; the zstd flags are
/// refused with the raw codec, which has no use for them.
fn config_of(args: ShardsArgs) -> Result<ShardsConfig> {
    if args.codec == Codec::Raw
        && (args.level.is_some() || args.zstd_search.is_some() || args.pixel_filter.is_some())
    {
        bail!("--level, --zstd-search and --pixel-filter apply to --codec zstd, not raw");
    }
    let mut config = ShardsConfig::new(&args.imagenet, &args.out);
    if let Some(jobs) = args.jobs {
        config.jobs = jobs;
    }
    config.codec = args.codec.into();
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
    Ok(config)
}

/// A line per split, and the run's totals.
fn print_summary(manifest: &Manifest, summary: &Summary) {
    for (split, info) in &manifest.splits {
        println!(
            "{:<5} {:>9} images in {:>5} shards, {} skipped",
            split.name(),
            info.images,
            info.shards.len(),
            info.skipped.len()
        );
    }
    let secs = summary.elapsed.as_secs_f64();
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
}
