//! One CUDA graph and the side stream it is captured on, through libtorch's
//! `at::cuda::CUDAGraph` (`graph_shim.cpp`; tch wraps no graph or stream
//! API). `crate::step` uses it to replay whole training steps.
//!
//! The recipe is PyTorch's for whole-network capture: a few eager warm-up
//! steps on the side stream (cuDNN's algorithm search and the allocator
//! settle), then one step captured there, then replays on the current
//! stream.

use std::ffi::c_void;

/// Whether this build can capture graphs (it was compiled against CUDA's
/// headers; `make setup-torch` installs them).
pub const AVAILABLE: bool = cfg!(trainer_cuda_graphs);

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
    }
}

/// One graph and the side stream it is captured on (CUDA device only).
pub struct StepGraph {
    raw: *mut c_void,
}

#[cfg(trainer_cuda_graphs)]
impl StepGraph {
    pub fn new(device: usize) -> Result<Self, GraphError> {
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
    pub fn on_side_stream<T>(&self, f: impl FnOnce() -> T) -> Result<T, GraphError> {
        self.call(ffi::trainer_graph_enter)?;
        let out = f();
        self.call(ffi::trainer_graph_leave)?;
        Ok(out)
    }

    /// Records what `f` queues (nothing runs until `replay`).
    pub fn capture<T>(&self, f: impl FnOnce() -> T) -> Result<T, GraphError> {
        self.call(ffi::trainer_graph_capture_begin)?;
        let out = f();
        self.call(ffi::trainer_graph_capture_end)?;
        Ok(out)
    }

    pub fn replay(&self) -> Result<(), GraphError> {
        self.call(ffi::trainer_graph_replay)
    }
}

#[cfg(not(trainer_cuda_graphs))]
impl StepGraph {
    pub fn new(_device: usize) -> Result<Self, GraphError> {
        Err(unbuilt())
    }
    pub fn on_side_stream<T>(&self, _f: impl FnOnce() -> T) -> Result<T, GraphError> {
        Err(unbuilt())
    }
    pub fn capture<T>(&self, _f: impl FnOnce() -> T) -> Result<T, GraphError> {
        Err(unbuilt())
    }
    pub fn replay(&self) -> Result<(), GraphError> {
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
