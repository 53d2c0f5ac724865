//! Training steps replayed from a CUDA graph (`--cuda-graph`).
//!
//! At batch 128 on an H100 the host, issuing a step's few hundred kernels
//! one by one, paces the GPU. A CUDA graph records one step's kernels once
//! and replays them with a single launch. tch wraps no graph or stream API,
//! so `graph_shim.cpp` calls libtorch's (`at::cuda::CUDAGraph`), following
//! PyTorch's recipe for whole-network capture: a few eager warm-up steps on
//! a side stream (cuDNN's algorithm search and the allocator settle), then
//! one step captured there, then replays.
//!
//! What carries over unchanged: dropout is reseeded per step (a captured
//! graph reads the generator's seed and offset at each replay), our kernels
//! launch on libtorch's current stream (`current_stream`), and the loss is
//! copied out of the graph's memory after each replay. What changes: inputs
//! are copied into the graph's own input tensors first, and a new lr is a
//! new capture (the update's factors are recorded in the graph).

use std::ffi::c_void;

use tch::{Device, Tensor};

use crate::model::AlexNet;
use crate::sgd::Sgd;
use crate::train::TrainError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    #[error("CUDA graph: {0}")]
    Failed(String),
    #[error("--cuda-graph: {0}")]
    Unavailable(String),
}

#[cfg(trainer_cuda_graphs)]
mod ffi {
    use std::ffi::c_void;
    extern "C" {
        pub fn trainer_graph_new(device: i32, error: *mut u8, len: usize) -> *mut c_void;
        pub fn trainer_graph_free(c: *mut c_void);
        pub fn trainer_graph_enter(c: *mut c_void, error: *mut u8, len: usize) -> i32;
        pub fn trainer_graph_leave(c: *mut c_void, error: *mut u8, len: usize) -> i32;
        pub fn trainer_graph_capture_begin(c: *mut c_void, error: *mut u8, len: usize) -> i32;
        pub fn trainer_graph_capture_end(c: *mut c_void, error: *mut u8, len: usize) -> i32;
        pub fn trainer_graph_replay(c: *mut c_void, error: *mut u8, len: usize) -> i32;
        pub fn trainer_current_stream(device: i32) -> *mut c_void;
    }
}

/// libtorch's current stream on CUDA device `device` (null, the default
/// stream, in a build without graph support, where it never changes).
pub fn current_stream(device: usize) -> *mut c_void {
    #[cfg(trainer_cuda_graphs)]
    // SAFETY: a query of libtorch's thread-local stream for a device the
    // caller has already used.
    unsafe {
        ffi::trainer_current_stream(device as i32)
    }
    #[cfg(not(trainer_cuda_graphs))]
    {
        let _ = device;
        std::ptr::null_mut()
    }
}

/// One graph and the side stream it is captured on.
struct StepGraph {
    raw: *mut c_void,
}

#[cfg(trainer_cuda_graphs)]
impl StepGraph {
    fn new(device: usize) -> Result<Self, GraphError> {
        let mut error = vec![0u8; 512];
        // SAFETY: plain constructor; the error buffer outlives the call.
        let raw = unsafe { ffi::trainer_graph_new(device as i32, error.as_mut_ptr(), error.len()) };
        if raw.is_null() {
            return Err(GraphError::Failed(message(&error)));
        }
        Ok(Self { raw })
    }

    fn call(
        &self,
        f: unsafe extern "C" fn(*mut c_void, *mut u8, usize) -> i32,
    ) -> Result<(), GraphError> {
        let mut error = vec![0u8; 512];
        // SAFETY: `raw` is a live Capture; the error buffer outlives the call.
        if unsafe { f(self.raw, error.as_mut_ptr(), error.len()) } != 0 {
            return Err(GraphError::Failed(message(&error)));
        }
        Ok(())
    }

    /// Runs `f` with the side stream current.
    fn on_side_stream<T>(&self, f: impl FnOnce() -> T) -> Result<T, GraphError> {
        self.call(ffi::trainer_graph_enter)?;
        let out = f();
        self.call(ffi::trainer_graph_leave)?;
        Ok(out)
    }

    /// Records what `f` queues (nothing runs until `replay`).
    fn capture<T>(&self, f: impl FnOnce() -> T) -> Result<T, GraphError> {
        self.call(ffi::trainer_graph_capture_begin)?;
        let out = f();
        self.call(ffi::trainer_graph_capture_end)?;
        Ok(out)
    }

    fn replay(&self) -> Result<(), GraphError> {
        self.call(ffi::trainer_graph_replay)
    }
}

#[cfg(not(trainer_cuda_graphs))]
impl StepGraph {
    fn new(_device: usize) -> Result<Self, GraphError> {
        Err(unbuilt())
    }
    fn on_side_stream<T>(&self, _f: impl FnOnce() -> T) -> Result<T, GraphError> {
        Err(unbuilt())
    }
    fn capture<T>(&self, _f: impl FnOnce() -> T) -> Result<T, GraphError> {
        Err(unbuilt())
    }
    fn replay(&self) -> Result<(), GraphError> {
        Err(unbuilt())
    }
}

#[cfg(not(trainer_cuda_graphs))]
fn unbuilt() -> GraphError {
    GraphError::Unavailable(
        "this trainer was built without CUDA's headers (run `make setup-torch`, then rebuild)"
            .into(),
    )
}

impl Drop for StepGraph {
    fn drop(&mut self) {
        #[cfg(trainer_cuda_graphs)]
        // SAFETY: created by trainer_graph_new, freed once.
        unsafe {
            ffi::trainer_graph_free(self.raw)
        }
    }
}

#[cfg(trainer_cuda_graphs)]
fn message(error: &[u8]) -> String {
    let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
    String::from_utf8_lossy(&error[..end]).into_owned()
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
/// the update. Returns the loss and the gradients.
fn eager_step(
    net: &AlexNet,
    sgd: &mut Sgd,
    params: &[(String, &Tensor)],
    x: &Tensor,
    labels: &Tensor,
    lr: f64,
) -> Result<(Tensor, Vec<Tensor>), TrainError> {
    let (loss, grads) = net.loss_and_gradients(x, labels)?;
    sgd.step(params, &grads, lr)?;
    Ok((loss, grads))
}

/// The training steps of `trainer run` and `trainer bench`: eager, or with
/// `--cuda-graph` replayed from a capture.
pub struct Steps {
    graphed: Option<GraphedSteps>,
}

impl Steps {
    /// Eager steps, or replayed ones (`cuda_graph`) for a network on `device`.
    pub fn new(cuda_graph: bool, device: Device) -> Result<Self, GraphError> {
        let graphed = if cuda_graph {
            Some(GraphedSteps::new(device)?)
        } else {
            None
        };
        Ok(Self { graphed })
    }

    /// One step; returns the loss.
    pub fn run(
        &mut self,
        net: &AlexNet,
        sgd: &mut Sgd,
        params: &[(String, &Tensor)],
        x: &Tensor,
        labels: &Tensor,
        lr: f64,
    ) -> Result<Tensor, TrainError> {
        match self.graphed.as_mut() {
            Some(g) => g.step(net, sgd, params, x, labels, lr),
            None => Ok(eager_step(net, sgd, params, x, labels, lr)?.0),
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
    ) -> Result<Tensor, TrainError> {
        let eager = |sgd: &mut Sgd, x: &Tensor, labels: &Tensor| {
            eager_step(net, sgd, params, x, labels, lr)
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
