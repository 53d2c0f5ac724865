//! ReLU + local response normalisation with a hand-written backward, as
//! one pass over the maps each way.
//!
//! The model's own LRN (`lrn::local_response_norm`) is a banded 1x1
//! convolution of a^2, then pow and a product, differentiated by autograd:
//! on the GPU that is a dozen memory-bound passes over conv1's and conv2's
//! outputs a step, a quarter of the training time on an H100. Here the
//! forward reads x and writes y once, and the backward reads x and dL/dy and
//! writes dL/dx once, recomputing the window sums instead of storing them:
//!
//! ```text
//! a = max(x, 0)       S_c = sum of a_j^2, j within n/2 of c in c's column
//! D_c = (k + alpha S_c)^-beta          y_c = a_c D_c
//! dL/dx_c = [x_c > 0] (g_c D_c - 2 alpha beta a_c sum_{i near c} g_i a_i D_i / (k + alpha S_i))
//! ```
//!
//! Two back ends compute exactly that: CUDA kernels compiled at start with
//! NVRTC (`cuda.rs`, `kernels.cu`), and the same formulas as tensor
//! operations (any device; the reference the kernels are checked against,
//! and what CPU runs use so that the tests exercise the model's spliced
//! backward). tch has no custom autograd functions, so the model splices
//! the backward in itself (`AlexNet::loss_and_gradients`).

pub mod cuda;

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::lrn::{Lrn, LrnParams};

#[derive(Debug, Clone, thiserror::Error)]
pub enum FusedLrnError {
    #[error("fused LRN: {0}")]
    Cuda(#[from] crate::sys::cuda::CudaError),
    #[error("the fused LRN does not handle {0}")]
    Unsupported(String),
    #[error("around the fused LRN: {0}")]
    Autograd(#[from] crate::sys::autograd::AutogradError),
    #[error("the fused LRN kernels disagree with the formula on {device}: {detail}")]
    SelfCheck { device: String, detail: String },
}

impl FusedLrnError {
    /// The splice is written for the grouped net on one device.
    pub fn two_devices() -> Self {
        Self::Unsupported("columns on two devices (use --kernels off)".into())
    }
}

/// Which implementation runs the two passes.
#[derive(Clone)]
enum Backend {
    Tensors,
    Cuda(Arc<cuda::CudaKernels>),
}

/// ReLU + LRN with its backward, for tensors on one device.
#[derive(Clone)]
pub struct FusedLrn {
    backend: Backend,
    /// What the start-up check against the tensor form found (CUDA only).
    checked: Option<String>,
}

impl FusedLrn {
    /// The tensor-operation form (any device).
    pub fn tensors() -> Self {
        Self {
            backend: Backend::Tensors,
            checked: None,
        }
    }

    /// The right form for `device`: on CUDA the kernels, compiled now and
    /// checked against the tensor form on that device before use.
    pub fn for_device(device: Device) -> Result<Self, FusedLrnError> {
        match device {
            Device::Cuda(i) => {
                let mut fused = Self {
                    backend: Backend::Cuda(Arc::new(cuda::CudaKernels::new(i)?)),
                    checked: None,
                };
                fused.checked = Some(fused.self_check(device)?);
                Ok(fused)
            }
            _ => Ok(Self::tensors()),
        }
    }

    /// What runs, for logs: "CUDA kernels (sm_90; ...)" or "tensor operations".
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Tensors => "tensor operations".into(),
            Backend::Cuda(k) => format!(
                "CUDA kernels (sm_{}{}; {})",
                k.arch().0,
                k.arch().1,
                self.checked.as_deref().unwrap_or("unchecked")
            ),
        }
    }

    /// LRN(ReLU(x)) for an NCHW tensor; no autograd history.
    pub fn forward(&self, x: &Tensor, p: &LrnParams) -> Result<Tensor, FusedLrnError> {
        tch::no_grad(|| match &self.backend {
            Backend::Tensors => Ok(forward_tensors(x, p)),
            Backend::Cuda(k) => k.forward(x, p),
        })
    }

    /// dL/dx given x and `grad` = dL/dy; no autograd history.
    pub fn backward(
        &self,
        x: &Tensor,
        grad: &Tensor,
        p: &LrnParams,
    ) -> Result<Tensor, FusedLrnError> {
        tch::no_grad(|| match &self.backend {
            Backend::Tensors => Ok(backward_tensors(x, grad, p)),
            Backend::Cuda(k) => k.backward(x, grad, p),
        })
    }

    /// Both passes against the tensor form on `device`, in float32 and
    /// bfloat16, on conv1- and conv2-like shapes and magnitudes.
    /// Returns the largest errors seen, as a phrase for the logs.
    fn self_check(&self, device: Device) -> Result<String, FusedLrnError> {
        let (mut f32_worst, mut bf16_worst) = (0f64, 0f64);
        for (channels, group, kind, tolerance) in [
            (96, 48, Kind::Float, 1e-4),
            (256, 128, Kind::Float, 1e-4),
            (96, 48, Kind::BFloat16, 2e-2),
            (24, 12, Kind::BFloat16, 2e-2),
        ] {
            let errors = compare_with_tensors(self, channels, group, kind, device)?;
            for (pass, err) in ["forward", "backward"].into_iter().zip(errors) {
                if err.is_nan() || err > tolerance {
                    return Err(FusedLrnError::SelfCheck {
                        device: format!("{device:?}"),
                        detail: format!(
                            "{pass}, {channels} maps in columns of {group}, {kind:?}: \
                             largest error {err:.3e} of the largest value (allowed {tolerance:.0e})"
                        ),
                    });
                }
                let worst = if kind == Kind::Float {
                    &mut f32_worst
                } else {
                    &mut bf16_worst
                };
                *worst = worst.max(err);
            }
        }
        Ok(format!(
            "agree with the formula to {f32_worst:.1e} in float32, {bf16_worst:.1e} in bfloat16"
        ))
    }
}

/// Largest |ours - tensor form| of each pass relative to the largest
/// |tensor form|, on random channels-last maps; the reference is computed
/// in float32 from the same (rounded) inputs.
pub fn compare_with_tensors(
    fused: &FusedLrn,
    channels: i64,
    group: i64,
    kind: Kind,
    device: Device,
) -> Result<[f64; 2], FusedLrnError> {
    let p = LrnParams::new(Lrn::PAPER, group);
    let maps = |scale: f64| {
        (Tensor::randn([3, 7, 9, channels], (Kind::Float, device)) * scale)
            .permute([0, 3, 1, 2])
            .to_kind(kind)
    };
    // Large enough that alpha * S moves the denominator well off k.
    let x = maps(60.0);
    let g = maps(1.0);
    let y = fused.forward(&x, &p)?;
    let dx = fused.backward(&x, &g, &p)?;
    let xf = x.to_kind(Kind::Float);
    let gf = g.to_kind(Kind::Float);
    let relative = |ours: &Tensor, reference: &Tensor| -> f64 {
        let diff = (ours.to_kind(Kind::Float) - reference).abs().max();
        let scale = reference.abs().max();
        diff.double_value(&[]) / scale.double_value(&[]).max(1e-30)
    };
    Ok([
        relative(&y, &forward_tensors(&xf, &p)),
        relative(&dx, &backward_tensors(&xf, &gf, &p)),
    ])
}

/// Memory laid out as NHWC for an NCHW-shaped tensor.
pub fn is_channels_last(x: &Tensor) -> bool {
    let s = x.size();
    if s.len() != 4 {
        return false;
    }
    let (c, h, w) = (s[1], s[2], s[3]);
    x.stride() == [h * w * c, 1, w * c, c]
}

/// Sum over the window of `half` maps each side, within columns of `group`.
fn window_sum(v: &Tensor, p: &LrnParams) -> Tensor {
    let s = v.size();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let columns = c / p.group;
    let padded = v
        .reshape([n, columns, p.group, h, w])
        .constant_pad_nd([0, 0, 0, 0, p.half, p.half]);
    // A copy: `+=` adds in place, and into a view it would write `padded`.
    let mut sum = padded.narrow(2, 0, p.group).copy();
    for shift in 1..=2 * p.half {
        sum += padded.narrow(2, shift, p.group);
    }
    sum.reshape([n, c, h, w])
}

/// The forward formula as tensor operations, in float32 for bfloat16 input.
pub fn forward_tensors(x: &Tensor, p: &LrnParams) -> Tensor {
    let kind = x.kind();
    let a = x.to_kind(Kind::Float).relu();
    let denom = window_sum(&a.square(), p) * p.alpha + p.k;
    (&a * denom.pow_tensor_scalar(-p.beta)).to_kind(kind)
}

/// The backward formula as tensor operations.
pub fn backward_tensors(x: &Tensor, grad: &Tensor, p: &LrnParams) -> Tensor {
    let kind = x.kind();
    let x = x.to_kind(Kind::Float);
    let g = grad.to_kind(Kind::Float);
    let a = x.relu();
    let denom = window_sum(&a.square(), p) * p.alpha + p.k;
    let d = denom.pow_tensor_scalar(-p.beta);
    let terms = window_sum(&(&g * &a * &d / &denom), p);
    let dx = &g * &d - &a * terms * (2.0 * p.alpha * p.beta);
    (dx * x.gt(0.0).to_kind(Kind::Float)).to_kind(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lrn::{local_response_norm, lrn_band};

    fn params(group: i64) -> LrnParams {
        LrnParams::new(Lrn::PAPER, group)
    }

    /// The forward formula equals the model's banded LRN after a ReLU, and
    /// the hand-written backward equals autograd's gradient of it, in
    /// float64 so that only the formulas are compared.
    #[test]
    fn formulas_match_autograd_of_the_band_lrn() {
        for (channels, group, layout_nhwc) in [(12, 6, true), (10, 10, false), (16, 4, true)] {
            let p = params(group);
            let mut x = crate::random::randn_on(
                &[2, channels, 5, 4],
                3 + channels as u64,
                Kind::Double,
                Device::Cpu,
            ) * 40.0;
            if layout_nhwc {
                x = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            }
            let x = x.set_requires_grad(true);
            let g = crate::random::randn_on(
                &[2, channels, 5, 4],
                4 + channels as u64,
                Kind::Double,
                Device::Cpu,
            );
            let band = lrn_band(channels, channels / group, Lrn::PAPER, Device::Cpu);
            let y = local_response_norm(&x.relu(), &band, Lrn::PAPER);
            let dx = Tensor::run_backward(&[(&y * &g).sum(Kind::Double)], &[&x], false, false);
            let x = x.detach();
            let ours = forward_tensors(&x, &p);
            let ours_dx = backward_tensors(&x, &g, &p);
            // Relative to the largest value; the band holds alpha as a
            // float32, 3e-8 off 1e-4.
            let err = |a: &Tensor, b: &Tensor| {
                (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
            };
            assert!(err(&ours, &y.detach()) < 1e-6, "forward {}", err(&ours, &y));
            assert!(
                err(&ours_dx, &dx[0]) < 1e-6,
                "backward {}",
                err(&ours_dx, &dx[0])
            );
            // The windows matter: with alpha a thousand times larger than the
            // paper's the normaliser dominates, and the check still holds.
            let strong = LrnParams { alpha: 0.1, ..p };
            let lrn = Lrn {
                alpha: 0.1,
                ..Lrn::PAPER
            };
            let band = lrn_band(channels, channels / group, lrn, Device::Cpu);
            let xg = x.set_requires_grad(true);
            let y = local_response_norm(&xg.relu(), &band, lrn);
            let dx = Tensor::run_backward(&[(&y * &g).sum(Kind::Double)], &[&xg], false, false);
            let ours_dx = backward_tensors(&xg.detach(), &g, &strong);
            assert!(
                err(&ours_dx, &dx[0]) < 1e-6,
                "strong backward {}",
                err(&ours_dx, &dx[0])
            );
        }
    }

    #[test]
    fn recognises_channels_last_memory() {
        let nchw = Tensor::zeros([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        assert!(!is_channels_last(&nchw));
        let nhwc = Tensor::zeros([2, 4, 5, 3], (Kind::Float, Device::Cpu)).permute([0, 3, 1, 2]);
        assert!(is_channels_last(&nhwc));
    }
}
