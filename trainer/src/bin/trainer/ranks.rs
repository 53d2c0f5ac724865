//! Where this process computes, and how it joins the other ranks of a
//! data-parallel run when a launcher started it.

use std::sync::Arc;

use anyhow::{bail, Result};
use tch::Device;
use trainer::dist::{Dist, WorldEnv};
use trainer::model::Placement;

use crate::values::DistBackend;

/// How a rank started by a launcher (`trainer launch`, torchrun, srun)
/// joins the others; without a launcher they do nothing.
#[derive(clap::Args)]
pub struct RankArgs {
    /// Data-parallel: the c10d backend between the ranks.
    #[arg(long, value_enum, default_value = "auto")]
    dist_backend: DistBackend,
    /// Data-parallel: seconds the ranks wait for each other (to meet, and
    /// in each collective) before a rank that died or hangs ends the run.
    #[arg(long, default_value_t = 300)]
    dist_timeout: u64,
}

/// This process's placement, and its rank's group when a launcher
/// (`trainer launch`, torchrun, srun) started it as one of several.
pub fn join_ranks(devices: &str, ranks: &RankArgs) -> Result<(Placement, Option<Arc<Dist>>)> {
    let (backend, timeout_secs) = (ranks.dist_backend, ranks.dist_timeout);
    let env =
        WorldEnv::from_process().map_err(|e| anyhow::anyhow!("the launcher's variables: {e}"))?;
    let placement = parse_devices(devices, env.as_ref().map_or(0, |e| e.local_rank))?;
    // One rank alone is one process, unless a backend was asked for by
    // name: then it runs the data-parallel path (its overhead, measured).
    let Some(env) = env.filter(|e| e.world > 1 || backend != DistBackend::Auto) else {
        return Ok((placement, None));
    };
    if timeout_secs == 0 {
        bail!("--dist-timeout must be at least 1 second");
    }
    let timeout = std::time::Duration::from_secs(timeout_secs);
    let dist = Dist::connect(env, backend.into(), placement.first(), timeout)?;
    Ok((placement, Some(Arc::new(dist))))
}

/// `auto`, `cpu`, `cuda`, `cuda:N`, `pairs`, or two devices separated by a
/// comma; `auto` and `pairs` pick the GPUs of local rank `local`.
fn parse_devices(text: &str, local: usize) -> Result<Placement> {
    let text = match text.trim() {
        "auto" if tch::Cuda::is_available() => format!("cuda:{local}"),
        "auto" => "cpu".to_string(),
        "pairs" => format!("cuda:{},cuda:{}", 2 * local, 2 * local + 1),
        other => other.to_string(),
    };
    let text = text.as_str();
    let devices = text
        .split(',')
        .map(|d| match d.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Device::Cuda(i)),
                _ => bail!("--devices: `{other}` is not cpu, cuda or cuda:N"),
            },
        })
        .collect::<Result<Vec<_>>>()?;
    for d in &devices {
        if let Device::Cuda(i) = d {
            if !tch::Cuda::is_available() {
                bail!(
                    "--devices {text}: libtorch sees no CUDA device (no GPU, no driver, or a CPU-only libtorch; see README troubleshooting)"
                );
            }
            let count = tch::Cuda::device_count() as usize;
            if *i >= count {
                bail!("--devices {text}: cuda:{i} does not exist ({count} CUDA devices seen)");
            }
        }
    }
    match devices[..] {
        [d] => Ok(Placement::One(d)),
        [a, b] => Ok(Placement::Split(a, b)),
        _ => bail!(
            "--devices takes one device or two (the paper's two columns), got {}",
            devices.len()
        ),
    }
}

/// Loader threads: as given, else the cores shared among this node's ranks.
pub fn threads(arg: Option<usize>, dist: Option<&Dist>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ranks_here = dist.map_or(1, |d| d.env.local_world);
    arg.unwrap_or((cores / ranks_here).max(1))
}
