//! The paper's SGD update (`optim::sgd`) as one CUDA kernel per parameter:
//! one read of the weight, its momentum buffer and its gradient and one
//! write of each buffer, where the tensor path runs four kernels and eleven
//! passes. At batch 512 bf16 on an H100 the update took ~1 ms of a 27 ms
//! step (`benches/alexnet_ops_profile.py`, `--sgd none`); at batch 128 its
//! ~100 launches a step weigh on a host that already paces the GPU.

use tch::{Device, Kind, Tensor};

use crate::sys::cuda::{arg, CudaError, Module};

const SOURCE: &str = include_str!("kernels.cu");
const NAME: &str = "sgd_update_f32";

#[derive(Debug, Clone, thiserror::Error)]
pub enum FusedSgdError {
    #[error("fused SGD: {0}")]
    Cuda(#[from] CudaError),
    #[error("the fused SGD kernel disagrees with the tensor update on {device}: {detail}")]
    SelfCheck { device: String, detail: String },
}

/// The update kernel loaded on one CUDA device.
pub struct FusedSgd {
    module: Module,
}

impl FusedSgd {
    /// Compiles and loads the kernel for CUDA device `index`, then checks one
    /// update against the tensor path there.
    pub fn new(index: usize) -> Result<Self, FusedSgdError> {
        let sgd = Self {
            module: Module::load(index, SOURCE, "fused_sgd.cu", &[NAME])?,
        };
        sgd.self_check()?;
        Ok(sgd)
    }

    /// Applies the update to `w` and `v` in place and returns true, or
    /// returns false (touching nothing) where the kernel does not apply:
    /// another device or type, or tensors not laid out alike and densely.
    pub fn update(
        &self,
        w: &Tensor,
        v: &Tensor,
        g: &Tensor,
        momentum: f64,
        lr: f64,
        decay: f64,
    ) -> Result<bool, CudaError> {
        let here = Device::Cuda(self.module.device);
        let alike = [v, g].iter().all(|t| {
            t.device() == here
                && t.kind() == Kind::Float
                && t.size() == w.size()
                && t.stride() == w.stride()
        });
        if w.device() != here || w.kind() != Kind::Float || !alike || !w.is_contiguous() {
            return Ok(false);
        }
        let mut n = w.numel() as i64;
        if n == 0 {
            return Ok(true);
        }
        let (mut wp, mut vp, mut gp) = (
            w.data_ptr() as u64,
            v.data_ptr() as u64,
            g.data_ptr() as u64,
        );
        let (mut m, mut neg_lr, mut neg_decay) =
            (momentum as f32, -lr as f32, (-lr * decay) as f32);
        let mut args = [
            arg(&mut wp),
            arg(&mut vp),
            arg(&mut gp),
            arg(&mut n),
            arg(&mut m),
            arg(&mut neg_lr),
            arg(&mut neg_decay),
        ];
        // Enough blocks to fill the device; the kernel strides over the rest.
        let blocks = ((n + 255) / 256).min(4096) as u32;
        // SAFETY: the arguments match sgd_update_f32's parameters; the
        // tensors are alive until after the launch in the caller.
        unsafe {
            self.module
                .launch(self.module.function(NAME), blocks, (256, 1), 0, &mut args)?;
        }
        Ok(true)
    }

    /// One update of random buffers against the tensor path's operations.
    fn self_check(&self) -> Result<(), FusedSgdError> {
        let device = Device::Cuda(self.module.device);
        let (momentum, lr, decay) = (0.9, 0.01, 5e-4);
        let w = Tensor::randn([1000, 37], (Kind::Float, device));
        let v = Tensor::randn([1000, 37], (Kind::Float, device)) * 0.01;
        let g = Tensor::randn([1000, 37], (Kind::Float, device));
        let want_v = &v * momentum + &g * -lr + &w * (-lr * decay);
        let want_w = &w + &want_v;
        let applied = self.update(&w, &v, &g, momentum, lr, decay)?;
        let err = |got: &Tensor, want: &Tensor| {
            (got - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[])
        };
        let (ew, ev) = (err(&w, &want_w), err(&v, &want_v));
        if !applied || ew.is_nan() || ev.is_nan() || ew > 1e-6 || ev > 1e-6 {
            return Err(FusedSgdError::SelfCheck {
                device: format!("{device:?}"),
                detail: format!("applied {applied}, weights off by {ew:.2e}, momentum by {ev:.2e}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_compiles_with_nvrtc() {
        let cubin = crate::sys::cuda::compile(SOURCE, "fused_sgd.cu", (9, 0)).unwrap();
        assert!(cubin.windows(NAME.len()).any(|w| w == NAME.as_bytes()));
    }
}
