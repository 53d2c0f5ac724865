//! One training step, owned in one place for `trainer run`, `trainer bench`
//! and anything later: the forward, the backward (spliced around the fused
//! LRN where it runs), and the SGD update; eager, or with `--cuda-graph`
//! replayed from one captured step.
//!
//! At batch 128 on an H100 the host, issuing a step's few hundred kernels
//! one by one, paces the GPU. A CUDA graph (`sys::graph`) records one
//! step's kernels once and replays them with a single launch.
//!
//! What carries over unchanged under replay: dropout is reseeded per step
//! (a captured graph reads the generator's seed and offset at each replay),
//! our kernels launch on libtorch's current stream (`sys::stream`), and the
//! loss is copied out of the graph's memory after each replay. What
//! changes: inputs are copied into the graph's own input tensors first, and
//! a new lr is a new capture (the update's factors are recorded in the
//! graph).

use std::sync::Arc;

use tch::{Device, Tensor};

use crate::dist::grads::{GradComm, GradReducer};
use crate::dist::{Dist, DistError};
use crate::kernels::lrn::FusedLrnError;
use crate::model::AlexNet;
use crate::optim::sgd::Sgd;
use crate::sys::cuda::CudaError;
use crate::sys::graph::{GraphError, StepGraph};

/// `--cuda-graph`: whether steps are replayed from a captured CUDA graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphChoice {
    /// On with one CUDA device where this build can capture: replay gives
    /// the eager step's losses bit for bit and is faster in every
    /// configuration measured (`benches/results/2026-11-29-h200/`).
    #[default]
    Auto,
    /// Replay, or an error where it cannot run.
    On,
    /// Eager steps.
    Off,
}

impl GraphChoice {
    /// Whether to replay, for a network on `device` (None: two devices),
    /// trained by one process (`data_parallel` false) or by several. The
    /// collectives of data-parallel steps are not captured (yet): `auto` is
    /// then eager, and `on` an error.
    pub fn resolve(self, device: Option<Device>, data_parallel: bool) -> Result<bool, GraphError> {
        match self {
            Self::On if data_parallel => Err(GraphError::Unavailable(
                "--cuda-graph on: steps of data-parallel training are not captured; use auto or off".into(),
            )),
            Self::On => Ok(true),
            Self::Off => Ok(false),
            Self::Auto => Ok(crate::sys::graph::AVAILABLE
                && !data_parallel
                && matches!(device, Some(Device::Cuda(_)))),
        }
    }
}

/// What can fail in a step.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Lrn(#[from] FusedLrnError),
    #[error("SGD update: {0}")]
    Update(#[source] CudaError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Dist(#[from] DistError),
}

/// Eager steps before the capture.
const WARMUP_STEPS: usize = 3;

/// A captured step with the tensors it reads and writes.
struct Captured {
    graph: StepGraph,
    x: Tensor,
    labels: Tensor,
    loss: Tensor,
    /// The gradients live in the graph's memory; kept with it.
    _grads: Vec<Tensor>,
    lr: f64,
}

/// One training step as written: the loss and gradients of a batch, then
/// the update. Data-parallel (`dist`), the gradients and the loss are
/// averaged over the ranks first: every rank then makes the same update,
/// the one process's on the global batch. Returns the loss and the
/// gradients.
fn eager_step(
    net: &AlexNet,
    sgd: &mut Sgd,
    params: &[(String, &Tensor)],
    x: &Tensor,
    labels: &Tensor,
    lr: f64,
    ranks: Option<(&Dist, &mut GradReducer)>,
) -> Result<(Tensor, Vec<Tensor>), StepError> {
    let (loss, grads) = match ranks {
        None => net.loss_and_gradients(x, labels)?,
        Some((dist, reducer)) => {
            // Buckets start their all-reduce as the backward makes them.
            let (loss, grads) = net.loss_and_gradients_with(x, labels, &mut |index, grads| {
                reducer.ready(dist, index, grads)
            })?;
            reducer.finish(dist, &grads)?;
            dist.average(&[&loss])?;
            (loss, grads)
        }
    };
    sgd.step(params, &grads, lr).map_err(StepError::Update)?;
    Ok((loss, grads))
}

/// The training steps of `trainer run` and `trainer bench`: eager, or with
/// `--cuda-graph` replayed from a capture.
pub struct Steps {
    graphed: Option<GraphedSteps>,
    /// Data-parallel: the ranks, and the step's gradient averaging.
    ranks: Option<(Arc<Dist>, GradReducer)>,
}

impl Steps {
    /// Eager steps, or replayed ones (`cuda_graph`) for a network on
    /// `device`; with `dist`, data-parallel (eager) steps whose gradients
    /// travel as `comm` says.
    pub fn new(
        cuda_graph: bool,
        device: Device,
        dist: Option<Arc<Dist>>,
        comm: GradComm,
    ) -> Result<Self, GraphError> {
        if cuda_graph && dist.is_some() {
            return Err(GraphError::Unavailable(
                "steps of data-parallel training are not captured".into(),
            ));
        }
        let graphed = if cuda_graph {
            Some(GraphedSteps::new(device)?)
        } else {
            None
        };
        let ranks = dist.map(|d| (d, GradReducer::new(comm)));
        Ok(Self { graphed, ranks })
    }

    /// Time the steps since the last call spent waiting for gradient sums
    /// the backward did not hide (zero for one process).
    pub fn take_comm_wait(&mut self) -> std::time::Duration {
        self.ranks
            .as_mut()
            .map_or(std::time::Duration::ZERO, |(_, r)| r.take_waited())
    }

    /// One step; returns the loss. `eager` runs it as written even where
    /// steps are replayed (the lr warm-up, whose lr changes every step).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        net: &AlexNet,
        sgd: &mut Sgd,
        params: &[(String, &Tensor)],
        x: &Tensor,
        labels: &Tensor,
        lr: f64,
        eager: bool,
    ) -> Result<Tensor, StepError> {
        match self.graphed.as_mut().filter(|_| !eager) {
            Some(g) => g.step(net, sgd, params, x, labels, lr),
            None => {
                let ranks = self.ranks.as_mut().map(|(d, r)| (&**d, r));
                Ok(eager_step(net, sgd, params, x, labels, lr, ranks)?.0)
            }
        }
    }
}

/// Training steps of one network: eager at first, then replayed.
struct GraphedSteps {
    device: usize,
    warmup: Option<StepGraph>,
    eager_left: usize,
    captured: Option<Captured>,
}

impl GraphedSteps {
    /// For a network on `device`; an error without a CUDA device or without
    /// graph support in this build.
    fn new(device: Device) -> Result<Self, GraphError> {
        let Device::Cuda(index) = device else {
            return Err(GraphError::Unavailable(format!(
                "CUDA graphs need one CUDA device, not {device:?}"
            )));
        };
        Ok(Self {
            device: index,
            warmup: Some(StepGraph::new(index)?),
            eager_left: WARMUP_STEPS,
            captured: None,
        })
    }

    /// One training step (the work of `eager_step`); returns the loss.
    fn step(
        &mut self,
        net: &AlexNet,
        sgd: &mut Sgd,
        params: &[(String, &Tensor)],
        x: &Tensor,
        labels: &Tensor,
        lr: f64,
    ) -> Result<Tensor, StepError> {
        let eager = |sgd: &mut Sgd, x: &Tensor, labels: &Tensor| {
            eager_step(net, sgd, params, x, labels, lr, None)
        };
        if self.eager_left > 0 {
            self.eager_left -= 1;
            let side = self.warmup.as_ref().expect("kept until the capture");
            let (loss, _) = side.on_side_stream(|| eager(sgd, x, labels))??;
            return Ok(loss);
        }
        if self.captured.as_ref().is_none_or(|c| c.lr != lr) {
            // The old graph's memory goes back before the new one takes its own.
            self.captured = None;
            self.warmup = None;
            let graph = StepGraph::new(self.device)?;
            let (sx, sl) = (x.copy(), labels.copy());
            let (loss, grads) = graph.capture(|| eager(sgd, &sx, &sl))??;
            self.captured = Some(Captured {
                graph,
                x: sx,
                labels: sl,
                loss,
                _grads: grads,
                lr,
            });
        }
        let c = self.captured.as_mut().expect("captured above");
        tch::no_grad(|| {
            c.x.copy_(x);
            c.labels.copy_(labels);
        });
        c.graph.replay()?;
        Ok(c.loss.copy())
    }
}
