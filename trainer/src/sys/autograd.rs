//! Autograd calls that tch does not wrap.

use tch::Tensor;
use torch_sys::C_tensor;

/// libtorch's exception from an autograd call, with its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("autograd: {message}")]
pub struct AutogradError {
    pub message: String,
}

extern "C" {
    fn trainer_autograd_grad(
        outputs: *const *mut C_tensor,
        grad_outputs: *const *mut C_tensor,
        n_outputs: i32,
        inputs: *const *mut C_tensor,
        n_inputs: i32,
        results: *mut *mut C_tensor,
        error: *mut u8,
        error_len: usize,
    ) -> i32;
}

/// The gradients of `inputs` given the gradients `grad_outputs` of
/// `outputs` (torch.autograd.grad with grad_outputs), freeing the graph.
/// An input that `outputs` do not depend on gets an undefined tensor.
/// tch's `run_backward` differentiates scalars only, which would need a
/// scalar stand-in such as <output, grad> and its extra passes.
pub fn grad(
    outputs: &[&Tensor],
    grad_outputs: &[&Tensor],
    inputs: &[&Tensor],
) -> Result<Vec<Tensor>, AutogradError> {
    assert_eq!(outputs.len(), grad_outputs.len(), "one gradient per output");
    let ptrs = |ts: &[&Tensor]| -> Vec<*mut C_tensor> {
        ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
    };
    let (outs, grads, ins) = (ptrs(outputs), ptrs(grad_outputs), ptrs(inputs));
    let mut results: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); inputs.len()];
    let mut error = vec![0u8; 1024];
    // SAFETY: the pointers are live tch tensors (torch::Tensor*) borrowed for
    // the call; on success each result is a new torch::Tensor* that we own,
    // as tch's own calls return them.
    let code = unsafe {
        trainer_autograd_grad(
            outs.as_ptr(),
            grads.as_ptr(),
            outs.len() as i32,
            ins.as_ptr(),
            ins.len() as i32,
            results.as_mut_ptr(),
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code != 0 {
        let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
        return Err(AutogradError {
            message: String::from_utf8_lossy(&error[..end]).into_owned(),
        });
    }
    // SAFETY: see above; each pointer is handed to exactly one Tensor.
    Ok(results
        .into_iter()
        .map(|p| unsafe { Tensor::from_ptr(p) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// y = w * x (elementwise) with dL/dy = g gives dL/dw = g * x and
    /// dL/dx = g * w; an input y does not depend on is undefined; a bad
    /// call is an error, not a crash.
    #[test]
    fn gradients_given_output_gradients() {
        let draw =
            |shape: &[i64], seed| crate::random::randn_on(shape, seed, Kind::Double, Device::Cpu);
        let w = draw(&[3, 4], 1).set_requires_grad(true);
        let x = draw(&[3, 4], 2).set_requires_grad(true);
        let unused = draw(&[2], 3).set_requires_grad(true);
        let g = draw(&[3, 4], 4);
        let y = &w * &x;
        let got = grad(&[&y], &[&g], &[&w, &x, &unused]).unwrap();
        assert!(got[0].allclose(&(&g * &x), 1e-12, 1e-12, false));
        assert!(got[1].allclose(&(&g * &w), 1e-12, 1e-12, false));
        assert!(!got[2].defined());
        // The graph is freed: a second pass fails with libtorch's message.
        let again = grad(&[&y], &[&g], &[&w]);
        assert!(again
            .unwrap_err()
            .message
            .contains("backward through the graph a second time"));
        // A gradient of the wrong shape is refused.
        let y = &w * &x;
        let bad = grad(
            &[&y],
            &[&Tensor::ones([5], (Kind::Double, Device::Cpu))],
            &[&w],
        );
        assert!(bad.is_err());
    }
}
