//! `pipeline sheet`: one augmented batch as a PNG contact sheet.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use pipeline::ingest::Split;
use pipeline::loader::{Dataset, LoaderConfig};

#[derive(Args)]
pub struct SheetArgs {
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

pub fn command(args: SheetArgs) -> Result<ExitCode> {
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
