//! `pipeline verify`: every shard file and record against the manifest
//! and the checksums.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use pipeline::format::manifest::Manifest;
use pipeline::progress::Progress;
use pipeline::tools::inspect;

use crate::progress::bar;

#[derive(Args)]
pub struct VerifyArgs {
    /// Shard folder (holds manifest.json).
    #[arg(long, default_value = "shards")]
    shards: PathBuf,
}

pub fn command(args: VerifyArgs) -> Result<ExitCode> {
    let dir = args.shards.as_path();
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
