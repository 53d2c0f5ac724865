//! `trainer launch`: this node's ranks of a data-parallel run.

use std::ffi::OsString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use trainer::launch::{launch, LaunchOptions};

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Ranks on this node: one per GPU (or per GPU pair with `--devices pairs`).
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Nodes in the run; start `trainer launch` on each.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index, 0 to nnodes - 1 (node 0 hosts the ranks' store).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of node 0, where the ranks meet.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port on node 0 [default: a free port when there is one node; give it
    /// with more].
    #[arg(long)]
    master_port: Option<u16>,
    /// The trainer command each rank runs, after `--`: `run ...`, `eval ...`
    /// or `bench ...`.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

pub fn command(args: LaunchArgs) -> Result<()> {
    let program = std::env::current_exe().context("finding the trainer's own path")?;
    let opts = LaunchOptions {
        program,
        args: args.command,
        nproc_per_node: args.nproc_per_node,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr,
        master_port: args.master_port,
    };
    // Each Ctrl-C is counted here and forwarded to the ranks by `launch`.
    let interrupts = Arc::new(AtomicUsize::new(0));
    let counter = interrupts.clone();
    ctrlc::set_handler(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .context("cannot install the Ctrl-C handler")?;
    if let Err(e) = launch(&opts, &interrupts) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
    Ok(())
}
