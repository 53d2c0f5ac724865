//! The fused ReLU + LRN kernels (`kernels.cu`) on a CUDA device.

use tch::{Device, Kind, Tensor};

use super::FusedLrnError;
use crate::lrn::LrnParams;
use crate::sys::cuda::{arg, Function, Module};

const SOURCE: &str = include_str!("kernels.cu");
const NAMES: [&str; 4] = [
    "lrn_forward_f32",
    "lrn_backward_f32",
    "lrn_forward_bf16",
    "lrn_backward_bf16",
];

/// The kernels loaded on one device.
pub struct CudaKernels {
    module: Module,
}

impl CudaKernels {
    /// Compiles and loads the kernels for CUDA device `index`.
    pub fn new(index: usize) -> Result<Self, FusedLrnError> {
        Ok(Self {
            module: Module::load(index, SOURCE, "fused_lrn.cu", &NAMES)?,
        })
    }

    /// Compute capability the kernels were built for.
    pub fn arch(&self) -> (i32, i32) {
        self.module.arch
    }

    /// LRN(ReLU(x)) of a channels-last NCHW tensor on this device.
    pub fn forward(&self, x: &Tensor, p: &LrnParams) -> Result<Tensor, FusedLrnError> {
        let x = channels_last(x)?;
        let y = empty_channels_last(&x);
        let f = self.pick(x.kind(), "forward")?;
        self.launch(f, &[&x], &y, p, 1)?;
        Ok(y)
    }

    /// dL/dx of LRN(ReLU(x)) given `grad` = dL/dy.
    pub fn backward(
        &self,
        x: &Tensor,
        grad: &Tensor,
        p: &LrnParams,
    ) -> Result<Tensor, FusedLrnError> {
        let x = channels_last(x)?;
        let grad = channels_last(&grad.to_kind(x.kind()))?;
        let dx = empty_channels_last(&x);
        let f = self.pick(x.kind(), "backward")?;
        self.launch(f, &[&x, &grad], &dx, p, 2)?;
        Ok(dx)
    }

    fn pick(&self, kind: Kind, pass: &str) -> Result<Function, FusedLrnError> {
        let suffix = match kind {
            Kind::Float => "f32",
            Kind::BFloat16 => "bf16",
            other => return Err(FusedLrnError::Unsupported(format!("tensors of {other:?}"))),
        };
        Ok(self.module.function(&format!("lrn_{pass}_{suffix}")))
    }

    /// One launch: a block holds `rows` pixels of all C channels.
    fn launch(
        &self,
        f: Function,
        inputs: &[&Tensor],
        out: &Tensor,
        p: &LrnParams,
        shared_arrays: u32,
    ) -> Result<(), FusedLrnError> {
        let size = out.size();
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        // The kernel indexes every input as it indexes `out`: anything else
        // would read out of bounds, so it is refused here.
        let here = Device::Cuda(self.module.device);
        for t in inputs.iter().chain([&out]) {
            if t.device() != here || t.size() != size || t.kind() != out.kind() {
                return Err(FusedLrnError::Unsupported(format!(
                    "a {:?} {:?} tensor on {:?} beside a {:?} {size:?} output for kernels on {here:?}",
                    t.kind(),
                    t.size(),
                    t.device(),
                    out.kind()
                )));
            }
        }
        if c > 1024 || p.group < 1 || c % p.group != 0 || p.half < 0 {
            return Err(FusedLrnError::Unsupported(format!(
                "{c} channels in columns of {}",
                p.group
            )));
        }
        let pixels = n * h * w;
        let pixels_i32 = i32::try_from(pixels)
            .map_err(|_| FusedLrnError::Unsupported(format!("{pixels} pixels in one batch")))?;
        if pixels == 0 {
            return Ok(());
        }
        let rows = (256 / c).max(1);
        let blocks = (pixels + rows - 1) / rows;
        let shared = shared_arrays * (rows * c * 4) as u32;
        let mut pointers: Vec<u64> = inputs.iter().map(|t| t.data_ptr() as u64).collect();
        pointers.push(out.data_ptr() as u64);
        let (mut channels, mut group, mut half) = (c as i32, p.group as i32, p.half as i32);
        let (mut k, mut alpha, mut beta) = (p.k as f32, p.alpha as f32, p.beta as f32);
        let mut pixels_arg = pixels_i32;
        let mut args: Vec<_> = pointers.iter_mut().map(arg).collect();
        args.extend([
            arg(&mut pixels_arg),
            arg(&mut channels),
            arg(&mut group),
            arg(&mut half),
        ]);
        args.extend([arg(&mut k), arg(&mut alpha), arg(&mut beta)]);
        // SAFETY: the argument list matches the kernel's parameters in
        // kernels.cu; the tensors outlive the launch in the caller.
        unsafe {
            self.module
                .launch(f, blocks as u32, (c as u32, rows as u32), shared, &mut args)?;
        }
        Ok(())
    }
}

/// `x` itself when its memory is channels-last (NHWC), else such a copy.
fn channels_last(x: &Tensor) -> Result<Tensor, FusedLrnError> {
    if x.dim() != 4 {
        return Err(FusedLrnError::Unsupported(format!(
            "a tensor of shape {:?} (maps are N, C, H, W)",
            x.size()
        )));
    }
    Ok(if super::is_channels_last(x) {
        x.shallow_clone()
    } else {
        x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    })
}

fn empty_channels_last(like: &Tensor) -> Tensor {
    let s = like.size();
    Tensor::empty([s[0], s[2], s[3], s[1]], (like.kind(), like.device())).permute([0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels compile for the H100 (sm_90) and an older card (sm_80)
    /// with the NVRTC that ships beside libtorch; no GPU needed.
    #[test]
    fn kernels_compile_with_nvrtc() {
        for arch in [(9, 0), (8, 0)] {
            let cubin = crate::sys::cuda::compile(SOURCE, "fused_lrn.cu", arch)
                .unwrap_or_else(|e| panic!("sm_{}{}: {e}", arch.0, arch.1));
            // An ELF image with both kernel pairs in it.
            assert_eq!(&cubin[..4], b"\x7fELF");
            for name in NAMES {
                assert!(
                    cubin.windows(name.len()).any(|w| w == name.as_bytes()),
                    "{name} missing from the cubin"
                );
            }
        }
    }
}
