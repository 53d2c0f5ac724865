//! Kernels of our own on CUDA devices: CUDA C++ compiled at run time with
//! NVRTC for the device at hand, loaded and launched through the CUDA
//! driver API on libtorch's tensors (`kernels::lrn`, `kernels::sgd`).
//!
//! Why not a crate such as cudarc: we need nine driver calls and seven NVRTC
//! calls, and the one thing that matters here is *which* libnvrtc gets
//! loaded. libtorch does not put NVRTC on the search path; the copy that
//! matches it sits in the PyTorch wheel's `nvidia/*/lib` folder next to
//! `torch/lib`, and NVRTC in turn finds its builtins library only if that is
//! already loaded or on the search path. `libloading` over the C APIs keeps
//! all of that in view in one file.
//!
//! Streams: these launches go to libtorch's current stream for the device
//! (`sys::stream::current_stream`: the default stream, except inside a
//! CUDA-graph capture), so they run in order with the operations around
//! them.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::OnceLock;

use libloading::Library;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaError {
    #[error("cannot load the CUDA libraries for our kernels: {0}")]
    Load(String),
    #[error("cannot compile our CUDA kernels: {0}")]
    Compile(String),
    #[error("{call} failed with CUDA error {code}: {message}")]
    Driver {
        call: &'static str,
        code: i32,
        message: String,
    },
}

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
fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T, CudaError> {
    let cname = format!("{name}\0");
    // SAFETY: the caller names the C function whose signature T spells out
    // (CUDA driver API and NVRTC headers).
    unsafe { lib.get::<T>(cname.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| CudaError::Load(format!("{name}: {e}")))
}

fn driver() -> Result<&'static Driver, CudaError> {
    static DRIVER: OnceLock<Result<Driver, CudaError>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: loading the NVIDIA driver library runs no user code.
            let lib = unsafe { Library::new("libcuda.so.1") }
                .map_err(|e| CudaError::Load(format!("libcuda.so.1: {e}")))?;
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

fn check(d: &Driver, call: &'static str, code: CuResult) -> Result<(), CudaError> {
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
    Err(CudaError::Driver {
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

fn nvrtc() -> Result<&'static Nvrtc, CudaError> {
    static NVRTC: OnceLock<Result<Nvrtc, CudaError>> = OnceLock::new();
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
            Err(CudaError::Load(format!(
                "no usable libnvrtc (tried {})",
                tried.join("; ")
            )))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn open_nvrtc(path: &Path) -> Result<Nvrtc, CudaError> {
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
    let lib = unsafe { Library::new(path) }.map_err(|e| CudaError::Load(e.to_string()))?;
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

/// Compiles CUDA C++ `source` (named `name` in messages) to a cubin for
/// `sm_<major><minor>`; the error carries NVRTC's log. Needs no GPU.
pub fn compile(source: &str, name: &str, arch: (i32, i32)) -> Result<Vec<u8>, CudaError> {
    let n = nvrtc()?;
    let source = CString::new(source).expect("no NUL in the kernel source");
    let name = CString::new(name).expect("no NUL");
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
            return Err(CudaError::Compile(format!(
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
            Err(CudaError::Compile(format!(
                "{} with NVRTC ({}) for sm_{}{}: {log}",
                name.to_string_lossy(),
                n.path.display(),
                arch.0,
                arch.1
            )))
        };
        (n.destroy_program)(&mut program);
        result
    }
}

/// CUDA device `index` and its compute capability (major, minor).
fn device_and_arch(d: &Driver, index: usize) -> Result<(CuDevice, (i32, i32)), CudaError> {
    let mut device: CuDevice = 0;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: out-pointers to locals.
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
    }
    Ok((device, (major, minor)))
}

/// Makes `device`'s primary context, the one libtorch's runtime calls use,
/// current on this thread.
fn make_primary_context_current(d: &Driver, device: CuDevice) -> Result<CuContext, CudaError> {
    let mut context: CuContext = ptr::null_mut();
    // SAFETY: an out-pointer to a local; the context is retained first.
    unsafe {
        check(
            d,
            "cuDevicePrimaryCtxRetain",
            (d.primary_ctx_retain)(&mut context, device),
        )?;
        check(d, "cuCtxSetCurrent", (d.ctx_set_current)(context))?;
    }
    Ok(context)
}

/// Loads a compiled cubin into the current context.
fn load_cubin(d: &Driver, cubin: &[u8]) -> Result<CuModule, CudaError> {
    let mut module: CuModule = ptr::null_mut();
    // SAFETY: the cubin outlives the call (the driver copies it).
    unsafe {
        check(
            d,
            "cuModuleLoadData",
            (d.module_load_data)(&mut module, cubin.as_ptr().cast()),
        )?;
    }
    Ok(module)
}

/// The kernel `name` of a loaded module.
fn module_function(d: &Driver, module: CuModule, name: &str) -> Result<CuFunction, CudaError> {
    let cname = CString::new(name).expect("kernel names are literals without NUL");
    let mut f: CuFunction = ptr::null_mut();
    // SAFETY: module loaded by `load_cubin`; the name is NUL-terminated.
    check(d, "cuModuleGetFunction", unsafe {
        (d.module_get_function)(&mut f, module, cname.as_ptr())
    })?;
    Ok(f)
}

/// A compiled source loaded on one device, with the functions asked for.
pub struct Module {
    pub device: usize,
    /// Compute capability (major, minor) the cubin was built for.
    pub arch: (i32, i32),
    context: CuContext,
    functions: Vec<(&'static str, CuFunction)>,
}

/// A kernel of a `Module`.
#[derive(Clone, Copy)]
pub struct Function(CuFunction);

// SAFETY: driver handles may be used from any thread once the context is
// made current there, which every launch does.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// Compiles `source` for CUDA device `index` and loads `names` from it.
    pub fn load(
        index: usize,
        source: &str,
        file: &str,
        names: &[&'static str],
    ) -> Result<Self, CudaError> {
        let d = driver()?;
        let (device, arch) = device_and_arch(d, index)?;
        let context = make_primary_context_current(d, device)?;
        let cubin = compile(source, file, arch)?;
        let module = load_cubin(d, &cubin)?;
        let functions = names
            .iter()
            .map(|&name| Ok((name, module_function(d, module, name)?)))
            .collect::<Result<_, CudaError>>()?;
        Ok(Self {
            device: index,
            arch,
            context,
            functions,
        })
    }

    /// The kernel called `name` (one of those loaded).
    pub fn function(&self, name: &str) -> Function {
        let (_, f) = self
            .functions
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("kernel {name} was not loaded"));
        Function(*f)
    }

    /// Queues `f` on libtorch's current stream for the device (the default
    /// stream, or the capturing one inside a CUDA-graph capture).
    ///
    /// # Safety
    /// `args` must point at values matching the kernel's parameters, and the
    /// memory the kernel touches must stay allocated until it has run (for
    /// libtorch tensors, alive until after the launch: its allocator is
    /// stream-ordered on the same stream).
    pub unsafe fn launch(
        &self,
        f: Function,
        grid: u32,
        block: (u32, u32),
        shared_bytes: u32,
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        let d = driver()?;
        check(d, "cuCtxSetCurrent", (d.ctx_set_current)(self.context))?;
        check(
            d,
            "cuLaunchKernel",
            (d.launch_kernel)(
                f.0,
                grid,
                1,
                1,
                block.0,
                block.1,
                1,
                shared_bytes,
                crate::sys::stream::current_stream(self.device),
                args.as_mut_ptr(),
                ptr::null_mut(),
            ),
        )
    }
}

/// A pointer to `value` as a kernel argument.
pub fn arg<T>(value: &mut T) -> *mut c_void {
    (value as *mut T).cast()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A syntax error comes back with NVRTC's log, naming the file.
    #[test]
    fn compile_errors_carry_the_log() {
        let err = compile(
            "extern \"C\" __global__ void f() { nope; }",
            "broken.cu",
            (9, 0),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("broken.cu") && err.contains("nope"), "{err}");
    }
}
