//! Data-parallel training's communication: which rank this process is
//! (`env`), the process group it joins (c10d's, through `sys::dist`), and
//! the few reductions a run needs.
//!
//! The mathematics: every rank holds the same weights, trains on its part
//! (batch / world images) of the global batch, and the gradients are
//! averaged over the ranks before each update. The average of the ranks'
//! mean-loss gradients is the gradient of the mean loss over the global
//! batch, so one step is one process's step on the global batch.

mod alive;
pub mod env;
pub mod grads;

use std::sync::Arc;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::sys::dist::{Backend, CommError, ProcessGroup, Rendezvous};
pub use env::{EnvError, WorldEnv};

/// `--dist-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// NCCL when the training device is a CUDA device, else Gloo.
    #[default]
    Auto,
    Nccl,
    Gloo,
}

impl BackendChoice {
    pub fn resolve(self, device: Device) -> Backend {
        match self {
            Self::Nccl => Backend::Nccl,
            Self::Gloo => Backend::Gloo,
            Self::Auto if device.is_cuda() => Backend::Nccl,
            Self::Auto => Backend::Gloo,
        }
    }
}

/// What went wrong between the ranks. The c10d message is part of each
/// line (not a separate cause), so that it is printed once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DistError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("rank {rank} of {world}: joining the group at {addr}:{port} ({backend}): {cause}")]
    Connect {
        rank: usize,
        world: usize,
        addr: String,
        port: u16,
        backend: Backend,
        cause: CommError,
    },
    #[error("rank {rank}: {what}: {cause} ({gone})")]
    Collective {
        rank: usize,
        what: &'static str,
        cause: CommError,
        /// Which ranks stopped (`alive::who_is_gone`).
        gone: String,
    },
}

/// How long the ranks wait for each other at the rendezvous and in each
/// collective by default (`--dist-timeout`): long enough for a slow rank's
/// start-up (opening shards, compiling kernels) or an epoch's eval, short
/// enough that a rank that died or hangs is reported rather than waited for.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's rank in a group of `world` training processes.
pub struct Dist {
    pub env: WorldEnv,
    group: Arc<ProcessGroup>,
    _heartbeat: alive::Heartbeat,
    /// Where the group's tensors live (CPU for Gloo, the rank's GPU for NCCL).
    device: Device,
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rank {} of {} ({})",
            self.rank(),
            self.world(),
            self.backend()
        )
    }
}

impl Dist {
    /// Joins the group described by `env`, over `choice`'s backend for a
    /// network on `device`.
    pub fn connect(
        env: WorldEnv,
        choice: BackendChoice,
        device: Device,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        let backend = choice.resolve(device);
        let rendezvous = Rendezvous {
            host: env.master_addr.clone(),
            port: env.master_port,
            rank: env.rank,
            world: env.world,
            join_store: env.join_store,
            prefix: format!("alexnet-rs/attempt_{}/", env.attempt),
            timeout,
        };
        let group =
            ProcessGroup::connect(backend, &rendezvous).map_err(|source| DistError::Connect {
                rank: env.rank,
                world: env.world,
                addr: env.master_addr.clone(),
                port: env.master_port,
                backend,
                cause: source,
            })?;
        let device = match backend {
            Backend::Nccl => device,
            Backend::Gloo => Device::Cpu,
        };
        let group = Arc::new(group);
        let heartbeat = alive::Heartbeat::start(group.clone(), env.rank);
        Ok(Self {
            env,
            group,
            _heartbeat: heartbeat,
            device,
        })
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world(&self) -> usize {
        self.env.world
    }

    /// Rank 0 writes the run's files.
    pub fn is_root(&self) -> bool {
        self.env.rank == 0
    }

    pub fn backend(&self) -> Backend {
        self.group.backend()
    }

    /// The error of a failed collective, naming the ranks that stopped
    /// (this takes a few seconds: it watches their heartbeats).
    fn failed(&self, what: &'static str) -> impl Fn(CommError) -> DistError + '_ {
        move |cause| DistError::Collective {
            rank: self.rank(),
            what,
            cause,
            gone: alive::who_is_gone(&self.group, self.world()),
        }
    }

    /// Replaces each tensor (gradients, a loss) with its mean over the ranks.
    pub fn average(&self, tensors: &[&Tensor]) -> Result<(), DistError> {
        let staged: Vec<Tensor> = tensors.iter().map(|t| self.stage(t)).collect();
        let refs: Vec<&Tensor> = staged.iter().collect();
        self.group
            .all_reduce_sum(&refs)
            .map_err(self.failed("averaging gradients"))?;
        let scale = 1.0 / self.world() as f64;
        tch::no_grad(|| {
            for (t, s) in tensors.iter().zip(&staged) {
                if s.data_ptr() == t.data_ptr() {
                    let _ = s.shallow_clone().g_mul_scalar_(scale);
                } else {
                    t.shallow_clone().copy_(&(s * scale));
                }
            }
        });
        Ok(())
    }

    /// Every rank gets rank 0's values of `tensors` (weights and momentum at
    /// the start, so that the replicas begin equal).
    pub fn broadcast_from_root(&self, tensors: &[&Tensor]) -> Result<(), DistError> {
        let staged: Vec<Tensor> = tensors.iter().map(|t| self.stage(t)).collect();
        let refs: Vec<&Tensor> = staged.iter().collect();
        self.group
            .broadcast(&refs, 0)
            .map_err(self.failed("broadcasting rank 0's weights"))?;
        tch::no_grad(|| {
            for (t, s) in tensors.iter().zip(&staged) {
                if s.data_ptr() != t.data_ptr() {
                    t.shallow_clone().copy_(s);
                }
            }
        });
        Ok(())
    }

    /// The sums over the ranks of `values` (eval counts), in float64.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>, DistError> {
        self.reduce_values(values, ProcessGroup::all_reduce_sum, "summing counts")
    }

    /// The elementwise maxima over the ranks of `values` (the slowest
    /// rank's loader waits).
    pub fn max(&self, values: &[f64]) -> Result<Vec<f64>, DistError> {
        self.reduce_values(
            values,
            ProcessGroup::all_reduce_max,
            "comparing loader waits",
        )
    }

    /// Host values through `reduce` on the group's device, and back.
    fn reduce_values(
        &self,
        values: &[f64],
        reduce: fn(&ProcessGroup, &[&Tensor]) -> Result<(), CommError>,
        what: &'static str,
    ) -> Result<Vec<f64>, DistError> {
        let t = Tensor::from_slice(values).to_device(self.device);
        reduce(&self.group, &[&t]).map_err(self.failed(what))?;
        self.read_back(&t, what)
    }

    fn read_back(&self, t: &Tensor, what: &'static str) -> Result<Vec<f64>, DistError> {
        Vec::<f64>::try_from(&t.to_device(Device::Cpu))
            .map_err(|e| self.failed(what)(CommError::Torch(e.to_string())))
    }

    /// Whether any rank says `yes` (a stop asked for on one rank stops all
    /// at the same step).
    pub fn any(&self, yes: bool) -> Result<bool, DistError> {
        Ok(self.sum(&[f64::from(u8::from(yes))])?[0] > 0.0)
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<(), DistError> {
        self.group
            .barrier()
            .map_err(self.failed("waiting for the other ranks"))
    }

    /// `t` itself where the group can reduce it in place (on its device,
    /// contiguous, a kind c10d reduces), else a float32 copy there.
    fn stage(&self, t: &Tensor) -> Tensor {
        let in_place = t.device() == self.device
            && t.is_contiguous()
            && matches!(t.kind(), Kind::Float | Kind::Double | Kind::Int64);
        if in_place {
            t.shallow_clone()
        } else {
            t.to_device(self.device).contiguous()
        }
    }
}
