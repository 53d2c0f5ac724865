//! `pipeline export`: one stored image as PNG, and what it is.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use pipeline::format::manifest::Manifest;
use pipeline::format::shard::RecordDecoder;
use pipeline::ingest::Split;
use pipeline::tools::inspect::{self, Selector};

use crate::values;

#[derive(Args)]
pub struct ExportArgs {
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

pub fn command(args: ExportArgs) -> Result<ExitCode> {
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
