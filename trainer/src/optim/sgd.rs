//! The paper's update rule (section 5), with its momentum buffers exposed
//! so that checkpoints can hold them:
//!
//! ```text
//! v <- 0.9 v - 0.0005 * lr * w - lr * dL/dw
//! w <- w + v
//! ```
//!
//! This is not PyTorch's SGD, which keeps lr out of the buffer
//! (`v <- 0.9 v + g; w <- w - lr v`): the two agree while lr is constant,
//! but when lr drops tenfold the paper's buffer keeps its old-lr steps and
//! PyTorch's is rescaled at once. Weight decay applies to weights, not
//! biases: the rule is written for weights, and cuda-convnet, which
//! trained the paper's network, applied its weight cost to weights only.

use std::sync::Arc;

use tch::Tensor;

use crate::kernels::sgd::FusedSgd;
use crate::named_tensors::{copy_by_name, NamedTensorError};
use crate::sys::cuda::CudaError;

pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    /// One buffer per parameter, in `AlexNet::named_parameters` order.
    velocity: Vec<Tensor>,
    /// The one-kernel update, for the parameters it applies to.
    kernel: Option<Arc<FusedSgd>>,
}

impl Sgd {
    /// Zero momentum buffers shaped like `params`.
    pub fn new(params: &[(String, &Tensor)], momentum: f64, weight_decay: f64) -> Self {
        let velocity = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self {
            momentum,
            weight_decay,
            velocity,
            kernel: None,
        }
    }

    /// Updates through `kernel` where it applies (None: tensor operations).
    pub fn set_kernel(&mut self, kernel: Option<Arc<FusedSgd>>) {
        self.kernel = kernel;
    }

    /// One update of `params` that lowers `loss`.
    ///
    /// The gradients come from `Tensor::run_backward` (autograd.grad), not
    /// from `backward()`: fresh tensors that are dropped after the update,
    /// where `backward()` would add into each parameter's `.grad` and the
    /// update would then have to zero it, two more passes over all 61M
    /// values and 64 more kernel launches a step.
    ///
    /// Per parameter: three or four in-place kernels and no allocation;
    /// `addcmul_` fuses each multiply-add, its factor a 0-dim tensor made on
    /// the device (a fill kernel, where copying it from the host would make
    /// the host wait for the device).
    pub fn minimize(&mut self, loss: &Tensor, params: &[(String, &Tensor)], lr: f64) {
        let tensors: Vec<&Tensor> = params.iter().map(|(_, p)| *p).collect();
        let grads = Tensor::run_backward(&[loss], &tensors, false, false);
        self.step(params, &grads, lr)
            .expect("no kernel failure without a kernel");
    }

    /// One update from `grads` (in `params` order; undefined ones skipped).
    pub fn step(
        &mut self,
        params: &[(String, &Tensor)],
        grads: &[Tensor],
        lr: f64,
    ) -> Result<(), CudaError> {
        let mut factors: Vec<(tch::Device, Tensor, Tensor)> = Vec::new();
        tch::no_grad(|| {
            for (((name, p), v), g) in params.iter().zip(&mut self.velocity).zip(grads) {
                if !g.defined() {
                    continue;
                }
                // Decay on weights, not biases (module doc).
                let decay = if name.ends_with(".weight") {
                    self.weight_decay
                } else {
                    0.0
                };
                if let Some(k) = &self.kernel {
                    if k.update(p, v, g, self.momentum, lr, decay)? {
                        continue;
                    }
                }
                let device = p.device();
                if !factors.iter().any(|(d, _, _)| *d == device) {
                    let on = |x: f64| Tensor::full([0i64; 0], x, (tch::Kind::Float, device));
                    factors.push((device, on(-lr), on(-lr * self.weight_decay)));
                }
                let (_, neg_lr, neg_decay) = factors
                    .iter()
                    .find(|(d, _, _)| *d == device)
                    .expect("added");
                let _ = v.g_mul_scalar_(self.momentum);
                let _ = v.addcmul_(g, neg_lr);
                if decay != 0.0 {
                    let _ = v.addcmul_(p, neg_decay);
                }
                let mut w = p.shallow_clone();
                let _ = w.g_add_(v);
            }
            Ok(())
        })
    }

    /// The buffers, named `momentum.<parameter>`.
    pub fn named_buffers(&self, params: &[(String, &Tensor)]) -> Vec<(String, Tensor)> {
        params
            .iter()
            .zip(&self.velocity)
            .map(|((name, _), v)| (format!("momentum.{name}"), v.shallow_clone()))
            .collect()
    }

    /// Restores the buffers saved by `named_buffers`.
    pub fn load(
        &mut self,
        params: &[(String, &Tensor)],
        saved: &[(String, Tensor)],
    ) -> Result<(), NamedTensorError> {
        let buffers = params
            .iter()
            .zip(&mut self.velocity)
            .map(|((name, _), v)| (format!("momentum.{name}"), v));
        copy_by_name(buffers, saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Two steps, the second at a tenth of the lr, against the rule worked
    /// out by hand in f64.
    #[test]
    fn follows_the_papers_rule_across_an_lr_drop() {
        let w0 = [0.5f64, -1.0, 2.0];
        let b0 = [0.25f64];
        let w = Tensor::from_slice(&w0.map(|x| x as f32)).set_requires_grad(true);
        let b = Tensor::from_slice(&b0.map(|x| x as f32)).set_requires_grad(true);
        let params = vec![("x.weight".to_string(), &w), ("x.bias".to_string(), &b)];
        let mut sgd = Sgd::new(&params, 0.9, 5e-4);
        // loss = sum(c * w) + 3 b: constant gradients c and 3.
        let c = [1.0f64, -2.0, 0.5];
        let ct = Tensor::from_slice(&c.map(|x| x as f32));
        let (mut wr, mut br) = (w0, b0);
        let (mut vw, mut vb) = ([0f64; 3], [0f64]);
        for lr in [0.01, 0.001] {
            let loss = (&w * &ct).sum(Kind::Float) + &b * 3.0;
            sgd.minimize(&loss.sum(Kind::Float), &params, lr);
            for i in 0..3 {
                vw[i] = 0.9 * vw[i] - 5e-4 * lr * wr[i] - lr * c[i];
                wr[i] += vw[i];
            }
            vb[0] = 0.9 * vb[0] - lr * 3.0;
            br[0] += vb[0];
        }
        let got = Vec::<f32>::try_from(&w).unwrap();
        for i in 0..3 {
            assert!(
                (got[i] as f64 - wr[i]).abs() < 1e-6,
                "w[{i}] {} vs {}",
                got[i],
                wr[i]
            );
        }
        let gb = Vec::<f32>::try_from(&b).unwrap();
        assert!(
            (gb[0] as f64 - br[0]).abs() < 1e-6,
            "bias {} vs {}",
            gb[0],
            br[0]
        );
        // Nothing was accumulated into .grad (the gradients were taken, not kept).
        assert!(!w.grad().defined());
        // Buffers round-trip by name.
        let saved = sgd.named_buffers(&params);
        let mut other = Sgd::new(&params, 0.9, 5e-4);
        other.load(&params, &saved).unwrap();
        let v = Vec::<f32>::try_from(&other.velocity[0]).unwrap();
        assert!((v[1] as f64 - vw[1]).abs() < 1e-7);
        let _ = Device::Cpu;
    }
}
