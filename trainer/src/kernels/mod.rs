//! Which of our own CUDA kernels a run uses (`--kernels`): the fused
//! ReLU + LRN with its hand-written backward (`lrn`) and the one-pass
//! SGD update (`sgd`). Both compute what libtorch's operations
//! compute; each is compiled at start and checked against them on the
//! device before the first step.

pub mod lrn;
pub mod sgd;

use std::sync::Arc;

use tch::Device;

use lrn::{FusedLrn, FusedLrnError};
use sgd::{FusedSgd, FusedSgdError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// On with one CUDA device, where they compile and pass their start-up
    /// check (else a warning says why, and libtorch's operations run).
    #[default]
    Auto,
    /// libtorch's operations only: the model's band LRN under autograd and
    /// the update as tensor operations.
    Off,
    /// Ours, or an error where they cannot run. On the CPU the LRN runs its
    /// formulas as tensor operations (no faster; for tests).
    On,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Lrn(#[from] FusedLrnError),
    #[error(transparent)]
    Sgd(#[from] FusedSgdError),
}

/// The kernels in use; `None` where libtorch's operations run.
#[derive(Clone, Default)]
pub struct Kernels {
    pub lrn: Option<FusedLrn>,
    pub sgd: Option<Arc<FusedSgd>>,
}

impl Kernels {
    /// For logs: "LRN: fused, CUDA kernels (...); SGD: fused".
    pub fn describe(&self) -> String {
        let lrn = self.lrn.as_ref().map_or("band, autograd".to_string(), |f| {
            format!("fused, {}", f.describe())
        });
        let sgd = if self.sgd.is_some() {
            "one kernel"
        } else {
            "tensor operations"
        };
        format!("LRN: {lrn}; SGD update: {sgd}")
    }

    /// "on" when any of ours runs, for bench lines.
    pub fn label(&self) -> &'static str {
        if self.lrn.is_some() || self.sgd.is_some() {
            "on"
        } else {
            "off"
        }
    }
}

impl KernelChoice {
    /// The kernels for a network on `device` (None: its columns on two
    /// devices), and for `Auto` a warning for each one that could not be
    /// used.
    pub fn resolve(self, device: Option<Device>) -> Result<(Kernels, Vec<String>), KernelError> {
        let cuda = match device {
            Some(Device::Cuda(i)) => Some(i),
            _ => None,
        };
        let mut warnings = Vec::new();
        let kernels = match (self, device) {
            (Self::Off, _) => Kernels::default(),
            (Self::Auto, _) => match cuda {
                None => Kernels::default(),
                Some(i) => {
                    let lrn = FusedLrn::for_device(Device::Cuda(i))
                        .map_err(|e| warnings.push(format!("{e}; using the band LRN")))
                        .ok();
                    let sgd = FusedSgd::new(i)
                        .map_err(|e| warnings.push(format!("{e}; updating with tensor operations")))
                        .ok()
                        .map(Arc::new);
                    Kernels { lrn, sgd }
                }
            },
            (Self::On, Some(d)) => Kernels {
                lrn: Some(FusedLrn::for_device(d)?),
                sgd: cuda.map(FusedSgd::new).transpose()?.map(Arc::new),
            },
            (Self::On, None) => return Err(FusedLrnError::two_devices().into()),
        };
        Ok((kernels, warnings))
    }
}
