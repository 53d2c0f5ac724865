//! Averaging a step's gradients over the ranks, in buckets, while the
//! backward still runs.
//!
//! As PyTorch's DDP does: gradients are packed into flat buckets of about
//! `BUCKET_BYTES`, and each bucket's all-reduce starts as soon as its
//! gradients exist (`ready`), so that the transfer overlaps the rest of the
//! backward. The network's backward gives conv3 to fc8 (over 99% of the
//! 61M parameters) first, then conv2, then conv1. `finish` waits for the
//! sums, divides by the world size and unpacks them into the gradients.
//!
//! `GradComm::Bf16` packs the buckets in bfloat16: half the bytes on the
//! wire, the sum rounded to 8 bits of mantissa.

use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::{Dist, DistError};
use crate::sys::dist::{CommError, Pending};

/// Bucket size, as DDP's default (25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// `--grad-comm`: the type gradients travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradComm {
    #[default]
    F32,
    Bf16,
}

impl GradComm {
    fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

/// A bucket in flight: which gradients it packs, its flat buffer, the sum.
struct InFlight {
    index: Vec<usize>,
    flat: Tensor,
    pending: Pending,
}

/// One step's gradient averaging; reused step after step.
pub struct GradReducer {
    comm: GradComm,
    in_flight: Vec<InFlight>,
    /// The first error of a `ready` call, reported by `finish`.
    failed: Option<CommError>,
    /// Time `finish` spent waiting for sums, since the last `take_waited`.
    waited: Duration,
}

impl GradReducer {
    pub fn new(comm: GradComm) -> Self {
        Self {
            comm,
            in_flight: Vec::new(),
            failed: None,
            waited: Duration::ZERO,
        }
    }

    /// Starts summing the gradients `grads` (of parameters `index`) over
    /// the ranks, in buckets. Every rank calls it with the same indices in
    /// the same order (the backward's order), so buckets match.
    pub fn ready(&mut self, dist: &Dist, index: &[usize], grads: &[&Tensor]) {
        if self.failed.is_some() {
            return;
        }
        for range in buckets(grads, self.comm.bytes()) {
            let parts: Vec<Tensor> = grads[range.clone()]
                .iter()
                .map(|g| g.detach().reshape([-1]).to_kind(self.comm.kind()))
                .collect();
            let flat = Tensor::cat(&parts, 0).to_device(dist.device);
            match dist.group.start_all_reduce_sum(&[&flat]) {
                Ok(pending) => self.in_flight.push(InFlight {
                    index: index[range].to_vec(),
                    flat,
                    pending,
                }),
                Err(e) => {
                    self.failed = Some(e);
                    return;
                }
            }
        }
    }

    /// Waits for every bucket and writes the ranks' mean into `grads` (all
    /// of the step's gradients, in parameter order).
    pub fn finish(&mut self, dist: &Dist, grads: &[Tensor]) -> Result<(), DistError> {
        let failed = dist.failed("averaging gradients");
        if let Some(e) = self.failed.take() {
            self.in_flight.clear();
            return Err(failed(e));
        }
        let scale = 1.0 / dist.world() as f64;
        let started = Instant::now();
        for bucket in self.in_flight.drain(..) {
            bucket.pending.wait().map_err(&failed)?;
            let sizes: Vec<i64> = bucket
                .index
                .iter()
                .map(|&i| grads[i].numel() as i64)
                .collect();
            let mean = bucket.flat.to_device(grads[bucket.index[0]].device()) * scale;
            for (&i, part) in bucket.index.iter().zip(mean.split_with_sizes(&sizes, 0)) {
                let g = &grads[i];
                tch::no_grad(|| g.shallow_clone().copy_(&part.view_as(g).to_kind(g.kind())));
            }
        }
        self.waited += started.elapsed();
        Ok(())
    }

    /// Time spent waiting in `finish` since the last call: the part of the
    /// all-reduce the backward did not hide (on the host's clock).
    pub fn take_waited(&mut self) -> Duration {
        std::mem::take(&mut self.waited)
    }
}

/// Consecutive runs of `grads` of at most `BUCKET_BYTES` each at
/// `bytes_per_value` (a larger gradient alone).
fn buckets(grads: &[&Tensor], bytes_per_value: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, g) in grads.iter().enumerate() {
        let bytes = g.numel() * bytes_per_value;
        if i > start && size + bytes > BUCKET_BYTES {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += bytes;
    }
    if start < grads.len() {
        out.push(start..grads.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_at_most_the_cap_and_big_tensors_alone() {
        let mib = |m: i64| Tensor::zeros([m << 18], (Kind::Float, tch::Device::Cpu)); // m MiB
        let ts = [mib(10), mib(10), mib(10), mib(100), mib(1), mib(1)];
        let refs: Vec<&Tensor> = ts.iter().collect();
        assert_eq!(buckets(&refs, 4), vec![0..2, 2..3, 3..4, 4..6]);
        // In bfloat16 the first three fit one bucket.
        assert_eq!(buckets(&refs, 2), vec![0..3, 3..4, 4..6]);
        assert!(buckets(&[], 4).is_empty());
    }
}
