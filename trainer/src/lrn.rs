//! Local response normalisation, the paper's section 3.3:
//!
//! ```text
//! b_i = a_i / (k + alpha * sum_j a_j^2)^beta
//! ```
//!
//! the sum over the n = 5 maps around i *within the column* (each GPU normalised
//! its own maps), with k = 2, alpha = 1e-4, beta = 0.75. We follow the
//! paper's formula: alpha is NOT divided by n. cuda-convnet, Caffe and
//! PyTorch's LocalResponseNorm divide it by n (so PyTorch's alpha=1e-4 means
//! 2e-5 here); we keep the published equation, which is the specification
//! this project reproduces. The sum is one 1x1 convolution of a^2 with a
//! fixed banded (block-diagonal per column) matrix, with k as its bias: a
//! single GEMM on the GPU, where PyTorch's avg_pool3d-based LRN is what
//! makes the PyTorch reference slow. That is the definition; on one CUDA
//! device, training steps compute the same ReLU + LRN with fused kernels and
//! a hand-written backward (`crate::kernels::lrn`), which take its
//! constants as `LrnParams`.

use tch::{Device, Tensor};

/// Local response normalisation (paper section 3.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lrn {
    /// Maps in the sum (n).
    pub size: i64,
    pub k: f64,
    /// Multiplies the plain sum of squares (not divided by `size`).
    pub alpha: f64,
    pub beta: f64,
}

impl Lrn {
    pub const PAPER: Lrn = Lrn {
        size: 5,
        k: 2.0,
        alpha: 1e-4,
        beta: 0.75,
    };
}

/// The LRN constants and the column size, as the kernels take them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrnParams {
    /// Maps per column: the window never crosses a column boundary.
    pub group: i64,
    /// Maps on each side in the window (n / 2).
    pub half: i64,
    pub k: f64,
    pub alpha: f64,
    pub beta: f64,
}

impl LrnParams {
    pub fn new(lrn: Lrn, group: i64) -> Self {
        Self {
            group,
            half: lrn.size / 2,
            k: lrn.k,
            alpha: lrn.alpha,
            beta: lrn.beta,
        }
    }
}

/// The 1x1-convolution weight that sums squares over `lrn.size` adjacent
/// maps within each of `groups` groups of `channels / groups` maps, times
/// alpha; its bias is k.
pub fn lrn_band(channels: i64, groups: i64, lrn: Lrn, device: Device) -> Tensor {
    let per_group = channels / groups;
    let half = lrn.size / 2;
    let mut band = vec![0f32; (channels * channels) as usize];
    for i in 0..channels {
        for j in 0..channels {
            if i / per_group == j / per_group && (i - j).abs() <= half {
                band[(i * channels + j) as usize] = lrn.alpha as f32;
            }
        }
    }
    Tensor::from_slice(&band)
        .view([channels, channels, 1, 1])
        .to_device(device)
}

/// b = a / (k + sum(alpha * a^2 over the band))^beta.
pub fn local_response_norm(x: &Tensor, band: &Tensor, lrn: Lrn) -> Tensor {
    let channels = band.size()[0];
    let k = Tensor::full([channels], lrn.k, (x.kind(), x.device()));
    let denom = x
        .square()
        .conv2d(&band.to_kind(x.kind()), Some(&k), [1], [0], [1], 1);
    x * denom.pow_tensor_scalar(-lrn.beta)
}
