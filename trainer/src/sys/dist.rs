//! c10d process groups, which tch does not wrap: libtorch's TCPStore for
//! the rendezvous, ProcessGroupGloo (CPU tensors) or ProcessGroupNCCL (CUDA
//! tensors) for the collectives. The C++ half is `dist_shim.cpp`.
//!
//! This is plumbing only: which ranks exist and what to reduce is
//! `crate::dist`'s business.

use std::ffi::CString;
use std::time::Duration;

use tch::Tensor;
use torch_sys::C_tensor;

/// Whether this build has the c10d shim (Gloo's headers were found: `make
/// setup-gloo`).
pub const AVAILABLE: bool = cfg!(trainer_c10d);
/// Whether this build can make NCCL groups (CUDA's and NCCL's headers too).
pub const NCCL_AVAILABLE: bool = cfg!(trainer_nccl);

/// A c10d backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, over TCP.
    Gloo,
    /// CUDA tensors, over NVLink, PCIe or the network.
    Nccl,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gloo => "gloo",
            Self::Nccl => "nccl",
        })
    }
}

/// What a c10d call reported.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommError {
    #[error(
        "this trainer was built without c10d (no Gloo headers: make setup-gloo, then rebuild)"
    )]
    Unavailable,
    #[error("{0}")]
    Bad(String),
    #[error("c10d: {0}")]
    Torch(String),
}

/// Where and how the ranks meet.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    pub host: String,
    pub port: u16,
    pub rank: usize,
    pub world: usize,
    /// A store already runs at host:port (torchrun's agent hosts one): join
    /// it rather than host one on rank 0.
    pub join_store: bool,
    /// Namespaces this run's keys in the store.
    pub prefix: String,
    /// How long the rendezvous and each collective may wait for the others.
    pub timeout: Duration,
}

#[repr(C)]
struct RawComm {
    _private: [u8; 0],
}

#[repr(C)]
struct RawWork {
    _private: [u8; 0],
}

/// Sums in flight (`ProcessGroup::start_all_reduce_sum`): wait for them
/// before reading their tensors. Dropping it unwaited waits too (the
/// collective writes into the tensors it holds), ignoring errors.
pub struct Pending {
    raw: *mut RawWork,
    _tensors: Vec<Tensor>,
}

// SAFETY: c10d's Work objects may be waited on from any thread.
unsafe impl Send for Pending {}

impl Pending {
    /// Blocks until the sums are done (Gloo), or orders the current CUDA
    /// stream after them (NCCL).
    pub fn wait(mut self) -> Result<(), CommError> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        // SAFETY: `raw` came from trainer_comm_all_reduce_start; the call
        // frees it, and Drop then sees null.
        call(|error, len| unsafe { trainer_work_wait(raw, error, len) })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            let mut error = [0u8; 256];
            // SAFETY: as in wait; frees `raw` once.
            unsafe {
                trainer_work_wait(self.raw, error.as_mut_ptr(), error.len());
            }
        }
    }
}

#[cfg(trainer_c10d)]
extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn trainer_comm_new(
        backend: i32,
        host: *const std::ffi::c_char,
        port: i32,
        rank: i32,
        world: i32,
        join_store: i32,
        prefix: *const std::ffi::c_char,
        timeout_ms: i64,
        out: *mut *mut RawComm,
        error: *mut u8,
        error_len: usize,
    ) -> i32;
    fn trainer_comm_free(comm: *mut RawComm);
    fn trainer_comm_all_reduce(
        comm: *mut RawComm,
        ts: *const *mut C_tensor,
        n: i32,
        op: i32,
        error: *mut u8,
        error_len: usize,
    ) -> i32;
    fn trainer_comm_broadcast(
        comm: *mut RawComm,
        ts: *const *mut C_tensor,
        n: i32,
        root: i32,
        error: *mut u8,
        error_len: usize,
    ) -> i32;
    fn trainer_comm_barrier(comm: *mut RawComm, error: *mut u8, error_len: usize) -> i32;
    fn trainer_comm_all_reduce_start(
        comm: *mut RawComm,
        ts: *const *mut C_tensor,
        n: i32,
        out: *mut *mut RawWork,
        error: *mut u8,
        error_len: usize,
    ) -> i32;
    fn trainer_work_wait(work: *mut RawWork, error: *mut u8, error_len: usize) -> i32;
    fn trainer_comm_store_add(
        comm: *mut RawComm,
        key: *const std::ffi::c_char,
        by: i64,
        value: *mut i64,
        error: *mut u8,
        error_len: usize,
    ) -> i32;
}

/// Builds without the shim: every entry point reports `Unavailable`.
#[cfg(not(trainer_c10d))]
mod absent {
    use super::*;
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn trainer_comm_new(
        _: i32,
        _: *const std::ffi::c_char,
        _: i32,
        _: i32,
        _: i32,
        _: i32,
        _: *const std::ffi::c_char,
        _: i64,
        _: *mut *mut RawComm,
        _: *mut u8,
        _: usize,
    ) -> i32 {
        -1
    }
    pub unsafe fn trainer_comm_free(_: *mut RawComm) {}
    pub unsafe fn trainer_comm_all_reduce(
        _: *mut RawComm,
        _: *const *mut C_tensor,
        _: i32,
        _: i32,
        _: *mut u8,
        _: usize,
    ) -> i32 {
        -1
    }
    pub unsafe fn trainer_comm_broadcast(
        _: *mut RawComm,
        _: *const *mut C_tensor,
        _: i32,
        _: i32,
        _: *mut u8,
        _: usize,
    ) -> i32 {
        -1
    }
    pub unsafe fn trainer_comm_barrier(_: *mut RawComm, _: *mut u8, _: usize) -> i32 {
        -1
    }
    pub unsafe fn trainer_comm_all_reduce_start(
        _: *mut RawComm,
        _: *const *mut C_tensor,
        _: i32,
        _: *mut *mut RawWork,
        _: *mut u8,
        _: usize,
    ) -> i32 {
        -1
    }
    pub unsafe fn trainer_work_wait(_: *mut RawWork, _: *mut u8, _: usize) -> i32 {
        -1
    }
    pub unsafe fn trainer_comm_store_add(
        _: *mut RawComm,
        _: *const std::ffi::c_char,
        _: i64,
        _: *mut i64,
        _: *mut u8,
        _: usize,
    ) -> i32 {
        -1
    }
}
#[cfg(not(trainer_c10d))]
use absent::*;

/// One process's member of a c10d process group, and the store it met at.
pub struct ProcessGroup {
    raw: *mut RawComm,
    backend: Backend,
    rank: usize,
    world: usize,
}

// SAFETY: c10d's process groups and stores are made to be called from any
// thread, concurrently (PyTorch calls one group from its Python threads and
// from DDP's reducer; each guards its state with its own locks). Which
// collective comes first must still agree across ranks: callers issue
// them from one thread.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    /// Meets the other ranks at `rv` and connects `backend`'s group. Blocks
    /// until every rank has arrived, or `rv.timeout` has passed.
    pub fn connect(backend: Backend, rv: &Rendezvous) -> Result<Self, CommError> {
        if !AVAILABLE {
            return Err(CommError::Unavailable);
        }
        let bad = |what: &str| CommError::Bad(format!("{what} holds a NUL byte"));
        let host = CString::new(rv.host.as_str()).map_err(|_| bad("the store's host"))?;
        let prefix = CString::new(rv.prefix.as_str()).map_err(|_| bad("the key prefix"))?;
        let (rank, world) = (to_i32(rv.rank, "rank")?, to_i32(rv.world, "world size")?);
        let timeout_ms = i64::try_from(rv.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut raw: *mut RawComm = std::ptr::null_mut();
        // SAFETY: the strings live through the call; on success `raw` is a
        // handle we own and free in Drop.
        call(|error, len| unsafe {
            trainer_comm_new(
                matches!(backend, Backend::Nccl) as i32,
                host.as_ptr(),
                i32::from(rv.port),
                rank,
                world,
                rv.join_store as i32,
                prefix.as_ptr(),
                timeout_ms,
                &mut raw,
                error,
                len,
            )
        })?;
        Ok(Self {
            raw,
            backend,
            rank: rv.rank,
            world: rv.world,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Replaces each tensor with its sum over the ranks. All ranks pass
    /// tensors of the same shapes, in the same order.
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<(), CommError> {
        self.all_reduce(tensors, 0)
    }

    /// Replaces each tensor with its elementwise maximum over the ranks.
    pub fn all_reduce_max(&self, tensors: &[&Tensor]) -> Result<(), CommError> {
        self.all_reduce(tensors, 1)
    }

    fn all_reduce(&self, tensors: &[&Tensor], op: i32) -> Result<(), CommError> {
        let ptrs = handles(tensors);
        // SAFETY: live tch tensors (at::Tensor*) borrowed for the call.
        call(|error, len| unsafe {
            trainer_comm_all_reduce(self.raw, ptrs.as_ptr(), ptrs.len() as i32, op, error, len)
        })
    }

    /// Starts replacing each tensor with its sum over the ranks, and
    /// returns while that goes on; see `Pending`.
    pub fn start_all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<Pending, CommError> {
        let ptrs = handles(tensors);
        let mut raw: *mut RawWork = std::ptr::null_mut();
        // SAFETY: live tch tensors; `Pending` keeps handles to them (and so
        // their storage) until the work is waited for.
        call(|error, len| unsafe {
            trainer_comm_all_reduce_start(
                self.raw,
                ptrs.as_ptr(),
                ptrs.len() as i32,
                &mut raw,
                error,
                len,
            )
        })?;
        Ok(Pending {
            raw,
            _tensors: tensors.iter().map(|t| t.shallow_clone()).collect(),
        })
    }

    /// Replaces each tensor with rank `root`'s.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), CommError> {
        let ptrs = handles(tensors);
        let root = to_i32(root, "root rank")?;
        // SAFETY: as in all_reduce_sum.
        call(|error, len| unsafe {
            trainer_comm_broadcast(self.raw, ptrs.as_ptr(), ptrs.len() as i32, root, error, len)
        })
    }

    /// Raises the store's counter `key` by `by` and returns its new value
    /// (`by` 0 reads it). The store answers while collectives fail, so the
    /// ranks can tell which of them is gone.
    pub fn store_add(&self, key: &str, by: i64) -> Result<i64, CommError> {
        let key =
            CString::new(key).map_err(|_| CommError::Bad("a store key holds a NUL byte".into()))?;
        let mut value = 0i64;
        // SAFETY: `key` lives through the call; `raw` until Drop.
        call(|error, len| unsafe {
            trainer_comm_store_add(self.raw, key.as_ptr(), by, &mut value, error, len)
        })?;
        Ok(value)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), CommError> {
        // SAFETY: `raw` is live until Drop.
        call(|error, len| unsafe { trainer_comm_barrier(self.raw, error, len) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: made by trainer_comm_new, freed once.
        unsafe { trainer_comm_free(self.raw) }
    }
}

fn handles(tensors: &[&Tensor]) -> Vec<*mut C_tensor> {
    tensors
        .iter()
        .map(|t| t.as_ptr() as *mut C_tensor)
        .collect()
}

fn to_i32(value: usize, what: &str) -> Result<i32, CommError> {
    i32::try_from(value).map_err(|_| CommError::Bad(format!("{what} {value} is too large")))
}

/// Runs a shim call with an error buffer: 0 is success, -1 a build without
/// the shim, anything else libtorch's message.
fn call(f: impl FnOnce(*mut u8, usize) -> i32) -> Result<(), CommError> {
    let mut error = vec![0u8; 2048];
    match f(error.as_mut_ptr(), error.len()) {
        0 => Ok(()),
        -1 => Err(CommError::Unavailable),
        _ => {
            let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
            Err(CommError::Torch(
                String::from_utf8_lossy(&error[..end]).trim().to_string(),
            ))
        }
    }
}

#[cfg(all(test, trainer_c10d))]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// A free TCP port on the loopback (the OS picks; closed again before
    /// the store binds it, which leaves a small window to lose it in).
    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    fn rendezvous(port: u16, rank: usize, world: usize) -> Rendezvous {
        Rendezvous {
            host: "127.0.0.1".into(),
            port,
            rank,
            world,
            join_store: false,
            prefix: "test/".into(),
            timeout: Duration::from_secs(60),
        }
    }

    /// Runs `f(rank, group)` on `world` threads, each a rank of one Gloo
    /// group, and returns their results in rank order.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(usize, &ProcessGroup) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let port = free_port();
        let threads: Vec<_> = (0..world)
            .map(|rank| {
                std::thread::spawn(move || {
                    let pg = ProcessGroup::connect(Backend::Gloo, &rendezvous(port, rank, world))
                        .expect("connect");
                    f(rank, &pg)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("rank thread"))
            .collect()
    }

    /// Sums over 2 and 3 ranks equal numpy-free arithmetic: rank r holds
    /// (r + 1) * [1..=n], so the sum is world (world + 1) / 2 * [1..=n];
    /// tensors of different shapes and kinds go in one call, and a large
    /// one (chunked by Gloo) comes back whole.
    #[test]
    fn all_reduce_sums_every_tensor_over_the_ranks() {
        for world in [2usize, 3] {
            let ok = on_ranks(world, move |rank, pg| {
                let scale = (rank + 1) as f64;
                let a = Tensor::arange_start(1, 1001, (Kind::Float, Device::Cpu)) * scale;
                let b =
                    Tensor::arange_start(1, 13, (Kind::Double, Device::Cpu)).view([3, 4]) * scale;
                let big = Tensor::full([6_000_000], scale, (Kind::Float, Device::Cpu));
                pg.all_reduce_sum(&[&a, &b, &big]).expect("all-reduce");
                let total = (world * (world + 1) / 2) as f64;
                let want_a = Tensor::arange_start(1, 1001, (Kind::Float, Device::Cpu)) * total;
                let want_b =
                    Tensor::arange_start(1, 13, (Kind::Double, Device::Cpu)).view([3, 4]) * total;
                a.equal(&want_a)
                    && b.equal(&want_b)
                    && big.min().double_value(&[]) == total
                    && big.max().double_value(&[]) == total
            });
            assert_eq!(ok, vec![true; world], "world {world}");
        }
    }

    #[test]
    fn broadcast_gives_every_rank_the_roots_tensors() {
        let got = on_ranks(3, |rank, pg| {
            let t = Tensor::full([5], rank as f64, (Kind::Float, Device::Cpu));
            let u = Tensor::full([2, 2], 10.0 + rank as f64, (Kind::Int64, Device::Cpu));
            pg.broadcast(&[&t, &u], 1).expect("broadcast");
            pg.barrier().expect("barrier");
            (
                Vec::<f32>::try_from(&t).expect("t"),
                Vec::<i64>::try_from(&u.view([-1])).expect("u"),
            )
        });
        for (t, u) in got {
            assert_eq!(t, vec![1.0; 5]);
            assert_eq!(u, vec![11; 4]);
        }
    }

    /// Two sums in flight at once, waited for in the other order.
    #[test]
    fn started_sums_complete_when_waited_for() {
        let got = on_ranks(2, |rank, pg| {
            let a = Tensor::full([1000], rank as f64 + 1.0, (Kind::Float, Device::Cpu));
            let b = Tensor::full([7], 10.0 * (rank as f64 + 1.0), (Kind::Float, Device::Cpu));
            let pa = pg.start_all_reduce_sum(&[&a]).expect("start a");
            let pb = pg.start_all_reduce_sum(&[&b]).expect("start b");
            pb.wait().expect("b");
            pa.wait().expect("a");
            (
                a.mean(Kind::Float).double_value(&[]),
                b.mean(Kind::Float).double_value(&[]),
            )
        });
        assert_eq!(got, vec![(3.0, 30.0); 2]);
    }

    #[test]
    fn all_reduce_max_takes_each_elements_largest() {
        let got = on_ranks(3, |rank, pg| {
            // rank r holds [r, 2 - r, 7]
            let t = Tensor::from_slice(&[rank as f64, 2.0 - rank as f64, 7.0]);
            pg.all_reduce_max(&[&t]).expect("max");
            Vec::<f64>::try_from(&t).expect("t")
        });
        assert_eq!(got, vec![vec![2.0, 2.0, 7.0]; 3]);
    }

    /// A rank that never arrives is a timeout naming the store, not a hang.
    #[test]
    fn a_missing_rank_times_out_with_a_message() {
        let mut rv = rendezvous(free_port(), 0, 2);
        rv.timeout = Duration::from_millis(1500);
        let err = match ProcessGroup::connect(Backend::Gloo, &rv) {
            Ok(_) => panic!("connected without rank 1"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("c10d: "), "{err}");
        assert!(err.to_lowercase().contains("time"), "{err}");
    }
}
