//! The fused ReLU + LRN kernels (`kernels.cu`) on a CUDA device: compiled
//! at start with NVRTC for the device's architecture, loaded and launched
//! through the CUDA driver API on the tensors' memory.
//!
//! Why not a crate such as cudarc: we need eight driver calls and six NVRTC
//! calls, and the one thing that matters here is *which* libnvrtc gets
//! loaded. libtorch does not put NVRTC on the search path; the copy that
//! matches it sits in the PyTorch wheel's `nvidia/*/lib` folder next to
//! `torch/lib`, and NVRTC in turn finds its builtins library only if that is
//! already loaded or on the search path. `libloading` over the C APIs keeps
//! all of that in view in one file.
//!
//! Streams: libtorch (as tch drives it) queues its work on the device's
//! default stream, and so do these launches (stream 0), so they run in
//! order with the operations around them.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::OnceLock;

use libloading::Library;
use tch::{Device, Kind, Tensor};

use super::{FusedLrnError, LrnParams};

const SOURCE: &str = include_str!("kernels.cu");

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type NvrtcResult = c_int;
type NvrtcProgram = *mut c_void;

const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// The driver calls we make, resolved once per process.
struct Driver {
    _lib: Library,
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_attribute: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch_kernel: unsafe extern "C" fn(
        CuFunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// The NVRTC calls we make.
struct Nvrtc {
    _libs: Vec<Library>,
    path: PathBuf,
    create_program: unsafe extern "C" fn(
        *mut NvrtcProgram,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    compile_program: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> NvrtcResult,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    cubin_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    cubin: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    destroy_program: unsafe extern "C" fn(*mut NvrtcProgram) -> NvrtcResult,
}

// The raw pointers in them are function addresses: safe to share.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}
unsafe impl Send for Nvrtc {}
unsafe impl Sync for Nvrtc {}

/// Copies the function pointer named `name` out of `lib`.
fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T, FusedLrnError> {
    let cname = format!("{name}\0");
    // SAFETY: the caller names the C function whose signature T spells out
    // (CUDA driver API and NVRTC headers).
    unsafe { lib.get::<T>(cname.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| FusedLrnError::Load(format!("{name}: {e}")))
}

fn driver() -> Result<&'static Driver, FusedLrnError> {
    static DRIVER: OnceLock<Result<Driver, FusedLrnError>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: loading the NVIDIA driver library runs no user code.
            let lib = unsafe { Library::new("libcuda.so.1") }
                .map_err(|e| FusedLrnError::Load(format!("libcuda.so.1: {e}")))?;
            let d = Driver {
                init: symbol(&lib, "cuInit")?,
                device_get: symbol(&lib, "cuDeviceGet")?,
                device_attribute: symbol(&lib, "cuDeviceGetAttribute")?,
                primary_ctx_retain: symbol(&lib, "cuDevicePrimaryCtxRetain")?,
                ctx_set_current: symbol(&lib, "cuCtxSetCurrent")?,
                module_load_data: symbol(&lib, "cuModuleLoadData")?,
                module_get_function: symbol(&lib, "cuModuleGetFunction")?,
                launch_kernel: symbol(&lib, "cuLaunchKernel")?,
                error_string: symbol(&lib, "cuGetErrorString")?,
                _lib: lib,
            };
            // SAFETY: cuInit takes flags 0 and may be called repeatedly.
            check(&d, "cuInit", unsafe { (d.init)(0) })?;
            Ok(d)
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn check(d: &Driver, call: &'static str, code: CuResult) -> Result<(), FusedLrnError> {
    if code == 0 {
        return Ok(());
    }
    let mut text: *const c_char = ptr::null();
    // SAFETY: cuGetErrorString points `text` at a static string or leaves it null.
    let message = unsafe {
        if (d.error_string)(code, &mut text) == 0 && !text.is_null() {
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned()
        } else {
            String::from("unknown error")
        }
    };
    Err(FusedLrnError::Driver {
        call,
        code,
        message,
    })
}

/// Where a libnvrtc that matches libtorch may be: the PyTorch wheel keeps
/// NVIDIA's libraries in `site-packages/nvidia/<package>/lib`, beside
/// `site-packages/torch/lib`; a standalone libtorch bundles its own copy.
fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut torch_dirs: Vec<PathBuf> = loaded_torch_dirs();
    if let Some(dir) = option_env!("TRAINER_LIBTORCH_LIB") {
        torch_dirs.push(PathBuf::from(dir));
    }
    let mut out = Vec::new();
    for dir in torch_dirs {
        let mut dirs = vec![dir.clone()];
        if let Some(site) = dir.parent().and_then(Path::parent) {
            if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
                dirs.extend(entries.flatten().map(|e| e.path().join("lib")));
            }
        }
        for d in dirs {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_nvrtc(p, "libnvrtc"))
                .collect();
            found.sort();
            out.extend(found.into_iter().rev());
        }
    }
    out.dedup();
    out
}

/// `libnvrtc.so.13`, `libnvrtc-d833c4f3.so.12`, ... but not the builtins or
/// the `.alt` variant.
fn is_nvrtc(path: &Path, stem: &str) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let rest = match name.strip_prefix(stem) {
        Some(r) => r,
        None => return false,
    };
    let hashed = stem == "libnvrtc" && rest.starts_with('-') && !rest.starts_with("-builtins");
    (rest.starts_with(".so") || hashed) && name.contains(".so") && !name.contains(".alt.")
}

/// Folders of the libtorch libraries mapped into this process.
fn loaded_torch_dirs() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.ends_with("/libtorch_cuda.so") || p.ends_with("/libtorch.so"))
        .filter_map(|p| Path::new(p).parent().map(Path::to_path_buf))
        .collect();
    dirs.dedup();
    dirs
}

fn nvrtc() -> Result<&'static Nvrtc, FusedLrnError> {
    static NVRTC: OnceLock<Result<Nvrtc, FusedLrnError>> = OnceLock::new();
    NVRTC
        .get_or_init(|| {
            let mut tried = Vec::new();
            let mut candidates = nvrtc_candidates();
            // Last, whatever the loader's search path holds.
            candidates.extend(
                ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
                    .into_iter()
                    .map(PathBuf::from),
            );
            for path in candidates {
                match open_nvrtc(&path) {
                    Ok(n) => return Ok(n),
                    Err(e) => tried.push(format!("{}: {e}", path.display())),
                }
            }
            Err(FusedLrnError::Load(format!(
                "no usable libnvrtc (tried {})",
                tried.join("; ")
            )))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn open_nvrtc(path: &Path) -> Result<Nvrtc, FusedLrnError> {
    let mut libs = Vec::new();
    // NVRTC dlopens its builtins by file name; one already loaded is found.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for p in entries.flatten().map(|e| e.path()) {
                if is_nvrtc(&p, "libnvrtc-builtins") {
                    // SAFETY: NVIDIA's builtins library has no initialisers that matter.
                    if let Ok(lib) = unsafe { Library::new(&p) } {
                        libs.push(lib);
                    }
                }
            }
        }
    }
    // SAFETY: as above, NVRTC's library.
    let lib = unsafe { Library::new(path) }.map_err(|e| FusedLrnError::Load(e.to_string()))?;
    let n = Nvrtc {
        create_program: symbol(&lib, "nvrtcCreateProgram")?,
        compile_program: symbol(&lib, "nvrtcCompileProgram")?,
        log_size: symbol(&lib, "nvrtcGetProgramLogSize")?,
        log: symbol(&lib, "nvrtcGetProgramLog")?,
        cubin_size: symbol(&lib, "nvrtcGetCUBINSize")?,
        cubin: symbol(&lib, "nvrtcGetCUBIN")?,
        destroy_program: symbol(&lib, "nvrtcDestroyProgram")?,
        path: path.to_path_buf(),
        _libs: {
            libs.push(lib);
            libs
        },
    };
    Ok(n)
}

/// Compiles `kernels.cu` to a cubin for `sm_<major><minor>`; the error
/// carries NVRTC's log. Needs no GPU.
pub fn compile(arch: (i32, i32)) -> Result<Vec<u8>, FusedLrnError> {
    let n = nvrtc()?;
    let source = CString::new(SOURCE).expect("no NUL in the kernel source");
    let name = CString::new("fused_lrn.cu").expect("no NUL");
    let options: Vec<CString> = [
        format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
        "--std=c++17".to_string(),
    ]
    .into_iter()
    .map(|o| CString::new(o).expect("no NUL"))
    .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut program: NvrtcProgram = ptr::null_mut();
    // SAFETY: pointers into live CStrings; the program is destroyed below.
    unsafe {
        let code = (n.create_program)(
            &mut program,
            source.as_ptr(),
            name.as_ptr(),
            0,
            ptr::null(),
            ptr::null(),
        );
        if code != 0 {
            return Err(FusedLrnError::Compile(format!(
                "nvrtcCreateProgram returned {code}"
            )));
        }
        let compiled =
            (n.compile_program)(program, option_ptrs.len() as c_int, option_ptrs.as_ptr());
        let result = if compiled == 0 {
            let mut size = 0usize;
            (n.cubin_size)(program, &mut size);
            let mut cubin = vec![0u8; size];
            (n.cubin)(program, cubin.as_mut_ptr().cast());
            Ok(cubin)
        } else {
            let mut size = 0usize;
            (n.log_size)(program, &mut size);
            let mut log = vec![0u8; size.max(1)];
            (n.log)(program, log.as_mut_ptr().cast());
            let log = String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .to_string();
            Err(FusedLrnError::Compile(format!(
                "NVRTC ({}) for sm_{}{}: {log}",
                n.path.display(),
                arch.0,
                arch.1
            )))
        };
        (n.destroy_program)(&mut program);
        result
    }
}

/// The kernels loaded on one device.
pub struct CudaKernels {
    pub device: usize,
    pub arch: (i32, i32),
    context: CuContext,
    forward_f32: CuFunction,
    backward_f32: CuFunction,
    forward_bf16: CuFunction,
    backward_bf16: CuFunction,
}

// SAFETY: driver handles may be used from any thread once the context is
// made current there, which every launch does.
unsafe impl Send for CudaKernels {}
unsafe impl Sync for CudaKernels {}

impl CudaKernels {
    /// Compiles and loads the kernels for CUDA device `index`.
    pub fn new(index: usize) -> Result<Self, FusedLrnError> {
        let d = driver()?;
        let mut device: CuDevice = 0;
        let (mut major, mut minor) = (0, 0);
        let mut context: CuContext = ptr::null_mut();
        // SAFETY: out-pointers to locals; the primary context is the one
        // libtorch's runtime calls use.
        unsafe {
            check(
                d,
                "cuDeviceGet",
                (d.device_get)(&mut device, index as c_int),
            )?;
            check(
                d,
                "cuDeviceGetAttribute",
                (d.device_attribute)(
                    &mut major,
                    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    device,
                ),
            )?;
            check(
                d,
                "cuDeviceGetAttribute",
                (d.device_attribute)(
                    &mut minor,
                    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    device,
                ),
            )?;
            check(
                d,
                "cuDevicePrimaryCtxRetain",
                (d.primary_ctx_retain)(&mut context, device),
            )?;
            check(d, "cuCtxSetCurrent", (d.ctx_set_current)(context))?;
        }
        let cubin = compile((major, minor))?;
        let mut module: CuModule = ptr::null_mut();
        // SAFETY: the cubin outlives the call (the driver copies it).
        unsafe {
            check(
                d,
                "cuModuleLoadData",
                (d.module_load_data)(&mut module, cubin.as_ptr().cast()),
            )?;
        }
        let function = |name: &str| -> Result<CuFunction, FusedLrnError> {
            let cname = CString::new(name).expect("no NUL");
            let mut f: CuFunction = ptr::null_mut();
            // SAFETY: module loaded above; the name is NUL-terminated.
            check(d, "cuModuleGetFunction", unsafe {
                (d.module_get_function)(&mut f, module, cname.as_ptr())
            })?;
            Ok(f)
        };
        Ok(Self {
            device: index,
            arch: (major, minor),
            context,
            forward_f32: function("lrn_forward_f32")?,
            backward_f32: function("lrn_backward_f32")?,
            forward_bf16: function("lrn_forward_bf16")?,
            backward_bf16: function("lrn_backward_bf16")?,
        })
    }

    /// LRN(ReLU(x)) of a channels-last NCHW tensor on this device.
    pub fn forward(&self, x: &Tensor, p: &LrnParams) -> Result<Tensor, FusedLrnError> {
        let x = channels_last(x);
        let y = empty_channels_last(&x);
        let f = self.pick(x.kind(), self.forward_f32, self.forward_bf16)?;
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
        let x = channels_last(x);
        let grad = channels_last(&grad.to_kind(x.kind()));
        let dx = empty_channels_last(&x);
        let f = self.pick(x.kind(), self.backward_f32, self.backward_bf16)?;
        self.launch(f, &[&x, &grad], &dx, p, 2)?;
        Ok(dx)
    }

    fn pick(
        &self,
        kind: Kind,
        f32: CuFunction,
        bf16: CuFunction,
    ) -> Result<CuFunction, FusedLrnError> {
        match kind {
            Kind::Float => Ok(f32),
            Kind::BFloat16 => Ok(bf16),
            other => Err(FusedLrnError::Unsupported(format!("tensors of {other:?}"))),
        }
    }

    /// One launch: a block holds `rows` pixels of all C channels.
    fn launch(
        &self,
        f: CuFunction,
        inputs: &[&Tensor],
        out: &Tensor,
        p: &LrnParams,
        shared_arrays: u32,
    ) -> Result<(), FusedLrnError> {
        let size = out.size();
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        if out.device() != Device::Cuda(self.device) {
            return Err(FusedLrnError::Unsupported(format!(
                "a tensor on {:?} for kernels on cuda:{}",
                out.device(),
                self.device
            )));
        }
        if c > 1024 || c % p.group != 0 {
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
        let mut args: Vec<*mut c_void> = pointers
            .iter_mut()
            .map(|q| (q as *mut u64).cast())
            .collect();
        for a in [&mut pixels_arg, &mut channels, &mut group, &mut half] {
            args.push((a as *mut i32).cast());
        }
        for a in [&mut k, &mut alpha, &mut beta] {
            args.push((a as *mut f32).cast());
        }
        let d = driver()?;
        // SAFETY: the argument list matches the kernel's parameters in
        // kernels.cu; the tensors stay alive in the caller until the work
        // queued on the default stream is ordered before any reuse of
        // their memory (libtorch's allocator is stream-ordered).
        unsafe {
            check(d, "cuCtxSetCurrent", (d.ctx_set_current)(self.context))?;
            check(
                d,
                "cuLaunchKernel",
                (d.launch_kernel)(
                    f,
                    blocks as c_uint,
                    1,
                    1,
                    c as c_uint,
                    rows as c_uint,
                    1,
                    shared,
                    ptr::null_mut(),
                    args.as_mut_ptr(),
                    ptr::null_mut(),
                ),
            )
        }
    }
}

/// `x` itself when its memory is channels-last (NHWC), else such a copy.
fn channels_last(x: &Tensor) -> Tensor {
    if super::is_channels_last(x) {
        x.shallow_clone()
    } else {
        x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    }
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
            let cubin = compile(arch).unwrap_or_else(|e| panic!("sm_{}{}: {e}", arch.0, arch.1));
            // An ELF image with both kernel pairs in it.
            assert_eq!(&cubin[..4], b"\x7fELF");
            for name in [
                "lrn_forward_f32",
                "lrn_backward_f32",
                "lrn_forward_bf16",
                "lrn_backward_bf16",
            ] {
                assert!(
                    cubin.windows(name.len()).any(|w| w == name.as_bytes()),
                    "{name} missing from the cubin"
                );
            }
        }
    }

    #[test]
    fn recognises_nvrtc_file_names() {
        let yes = ["libnvrtc.so.13", "libnvrtc.so", "libnvrtc-d833c4f3.so.12"];
        let no = [
            "libnvrtc-builtins.so.13.0",
            "libnvrtc.alt.so.13",
            "libnvJitLink.so.13",
        ];
        for n in yes {
            assert!(is_nvrtc(Path::new(n), "libnvrtc"), "{n}");
        }
        for n in no {
            assert!(!is_nvrtc(Path::new(n), "libnvrtc"), "{n}");
        }
        assert!(is_nvrtc(
            Path::new("/x/libnvrtc-builtins.so.13.0"),
            "libnvrtc-builtins"
        ));
        assert!(!is_nvrtc(
            Path::new("/x/libnvrtc-builtins.alt.so.13.0"),
            "libnvrtc-builtins"
        ));
    }
}
