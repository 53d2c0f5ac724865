//! The `pipeline` command: ingest ImageNet into shards and look inside them.

mod bench;
mod export;
mod progress;
mod shards;
mod sheet;
mod stats;
mod values;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Shards(shards::ShardsArgs),
    /// Check that every shard file is the one manifest.json lists in its
    /// place, every record against its checksums, and list shard files the
    /// manifest does not.
    Verify(verify::VerifyArgs),
    /// Write one stored image as PNG and say what it is.
    Export(export::ExportArgs),
    /// Measure the loader's throughput against its decode ceiling (zstd
    /// decompression; for raw shards, checking and copying each frame).
    Bench(bench::BenchArgs),
    /// Draw one augmented training batch as a PNG contact sheet: each stored
    /// image with its crop window (green; magenta when mirrored) beside the
    /// crop the network sees, lighting added, mean not subtracted.
    Sheet(sheet::SheetArgs),
    /// Compute the per-pixel mean image (mean.npy) and the RGB covariance with
    /// its eigen pairs for PCA lighting (stats.json) over the train split.
    Stats(stats::StatsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A PIPELINE_SIMD this CPU cannot run is an error, not a silent fallback.
    if let Err(e) = pipeline::cpu::requested_level() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Shards(args) => shards::command(args),
        Command::Verify(args) => verify::command(args),
        Command::Export(args) => export::command(args),
        Command::Stats(args) => stats::command(args),
        Command::Bench(args) => bench::command(args),
        Command::Sheet(args) => sheet::command(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", pipeline::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
