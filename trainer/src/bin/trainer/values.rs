//! The library's option enums as command-line values: the library has no
//! clap, so each is mirrored here (`pipeline::value_enum!`) with its help
//! text and turned into the library's own with `into()`.

use clap::ValueEnum;
use trainer::model::Precision;

pipeline::value_enum!(Init => trainer::model::Init {
    /// N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7.
    Paper,
    /// He et al. (2015) with unit-variance inputs: learns in short runs.
    Kaiming,
});
pipeline::value_enum!(KernelChoice => trainer::kernels::KernelChoice {
    /// On with one CUDA device where they compile and pass their check.
    Auto,
    /// libtorch's operations only.
    Off,
    /// Ours, or an error where they cannot run.
    On,
});
pipeline::value_enum!(GraphChoice => trainer::step::GraphChoice {
    /// On with one CUDA device where this build can capture.
    Auto,
    /// Replay, or an error where it cannot run.
    On,
    /// Eager steps.
    Off,
});
pipeline::value_enum!(GradComm => trainer::dist::grads::GradComm {
    /// float32, as computed.
    F32,
    /// bfloat16: half the bytes, the sum rounded to 8 mantissa bits.
    Bf16,
});
pipeline::value_enum!(DistBackend => trainer::dist::BackendChoice {
    /// NCCL when the devices are CUDA devices, else Gloo.
    Auto,
    /// CUDA tensors over NVLink, PCIe or the network.
    Nccl,
    /// CPU tensors over TCP (CPU training, tests).
    Gloo,
});

#[derive(Clone, Copy, ValueEnum)]
pub enum Amp {
    /// Convolutions, products and LRN in bfloat16 (weights and loss float32).
    Bf16,
}

pub fn precision(amp: Option<Amp>) -> Precision {
    match amp {
        Some(Amp::Bf16) => Precision::Bf16,
        None => Precision::F32,
    }
}
