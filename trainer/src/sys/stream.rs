//! libtorch's current CUDA stream, for launches of our own that must run
//! in order with libtorch's operations (and inside a CUDA-graph capture,
//! on the capture's stream). The query lives in `graph_shim.cpp`.

use std::ffi::c_void;

#[cfg(trainer_cuda_graphs)]
extern "C" {
    fn trainer_current_stream(device: i32) -> *mut c_void;
}

/// libtorch's current stream on CUDA device `device` (null, the default
/// stream, in a build without graph support, where it never changes).
pub fn current_stream(device: usize) -> *mut c_void {
    #[cfg(trainer_cuda_graphs)]
    // SAFETY: a query of libtorch's thread-local stream for a device the
    // caller has already used.
    unsafe {
        trainer_current_stream(device as i32)
    }
    #[cfg(not(trainer_cuda_graphs))]
    {
        let _ = device;
        std::ptr::null_mut()
    }
}
