//! A shard that shrinks while it is memory-mapped (truncated or rewritten
//! in place by another program; ours only ever replace shards by a rename,
//! which leaves the mapped file whole) makes a read of its missing pages
//! fault with SIGBUS, which kills the process without a word and without a
//! checkpoint. Here every mapped shard is registered with its address
//! range, and a SIGBUS handler that finds the faulting address in one of
//! them prints which shard and why, and exits with `EXIT_CODE`. A fault
//! anywhere else goes to the handler that was there before (Rust's own, or
//! the default).
//!
//! The handler may only do async-signal-safe things: it scans a fixed table
//! of atomics (no lock, no allocation), writes with write(2) and leaves
//! with _exit(2). Each registered path's bytes are leaked (a few dozen
//! bytes a shard), so that the handler never reads freed memory.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// The exit status after a mapped shard faulted (sysexits' EX_IOERR).
pub const EXIT_CODE: i32 = 74;

/// Mapped shards watched at once; more are mapped unwatched.
const SLOTS: usize = 16384;

struct Slot {
    /// Start address of the mapping (0: free).
    start: AtomicUsize,
    end: AtomicUsize,
    path: AtomicPtr<u8>,
    path_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // the array's initialiser
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    path: AtomicPtr::new(std::ptr::null_mut()),
    path_len: AtomicUsize::new(0),
};
static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
/// Serialises `watch` and `unwatch` (the handler reads without it).
static EDIT: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();
/// The SIGBUS action before ours, for faults that are not ours.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

/// Watches `len` bytes mapped at `start` from the shard at `path`.
pub fn watch(start: *const u8, len: usize, path: &Path) {
    INSTALL.call_once(install);
    let bytes: &'static mut [u8] =
        Box::leak(path.as_os_str().as_bytes().to_vec().into_boxed_slice());
    let _guard = EDIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(slot) = TABLE.iter().find(|s| s.start.load(Ordering::Acquire) == 0) {
        slot.path.store(bytes.as_mut_ptr(), Ordering::Relaxed);
        slot.path_len.store(bytes.len(), Ordering::Relaxed);
        slot.end.store(start as usize + len, Ordering::Relaxed);
        // Published last: the handler reads the rest only after this.
        slot.start.store(start as usize, Ordering::Release);
    }
}

/// Stops watching the mapping at `start` (before it is unmapped).
pub fn unwatch(start: *const u8) {
    let _guard = EDIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(slot) = TABLE
        .iter()
        .find(|s| s.start.load(Ordering::Acquire) == start as usize)
    {
        slot.start.store(0, Ordering::Release);
    }
}

fn install() {
    // SAFETY: sigaction with a zeroed struct filled as the man page says;
    // the previous action is kept (leaked) for the handler to chain to.
    unsafe {
        let mut ours: libc::sigaction = std::mem::zeroed();
        ours.sa_sigaction = on_sigbus as *const () as usize;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut ours.sa_mask);
        let previous = Box::into_raw(Box::new(std::mem::zeroed::<libc::sigaction>()));
        if libc::sigaction(libc::SIGBUS, &ours, previous) == 0 {
            PREVIOUS.store(previous, Ordering::Release);
        }
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let address = unsafe { (*info).si_addr() } as usize;
    for slot in TABLE.iter() {
        let start = slot.start.load(Ordering::Acquire);
        if start != 0 && start <= address && address < slot.end.load(Ordering::Relaxed) {
            let path = slot.path.load(Ordering::Relaxed);
            let len = slot.path_len.load(Ordering::Relaxed);
            // SAFETY: write(2) and _exit(2) are async-signal-safe; the path
            // bytes were leaked by `watch` and are never freed.
            unsafe {
                say(b"error: ");
                libc::write(2, path.cast(), len);
                say(
                    b": the shard shrank while it was mapped (truncated or rewritten in place \
                      by another program?), and a record past its new end could not be read. \
                      Copy or make the shard again (`pipeline verify` checks a folder).\n",
                );
                libc::_exit(EXIT_CODE);
            }
        }
    }
    // Not one of ours: as if we were not here.
    // SAFETY: PREVIOUS was filled by sigaction before ours was installed.
    unsafe { chain(sig, info, context) }
}

unsafe fn say(text: &[u8]) {
    libc::write(2, text.as_ptr().cast(), text.len());
}

/// Hands a fault to the action before ours: its handler, or (default or
/// ignored) the default restored, so that the faulting access, retried on
/// return, ends the process as it would have without us.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.load(Ordering::Acquire);
    if !previous.is_null() {
        let action = (*previous).sa_sigaction;
        if action != libc::SIG_DFL && action != libc::SIG_IGN {
            if (*previous).sa_flags & libc::SA_SIGINFO != 0 {
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(action);
                handler(sig, info, context);
            } else {
                let handler: extern "C" fn(libc::c_int) = std::mem::transmute(action);
                handler(sig);
            }
            return;
        }
    }
    let mut default: libc::sigaction = std::mem::zeroed();
    default.sa_sigaction = libc::SIG_DFL;
    libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::{Command, Output};

    /// In a child process (the fault ends it): maps the file at `path`,
    /// watches that mapping (or, if not `own`, an unrelated buffer),
    /// shrinks the file and reads past its new end.
    fn shrink_and_read(path: &Path, own: bool) -> ! {
        let file = std::fs::File::open(path).expect("open");
        // SAFETY: read-only map of a file this test owns.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
        let other = [0u8; 8];
        if own {
            watch(map.as_ptr(), map.len(), path);
        } else {
            watch(other.as_ptr(), other.len(), Path::new("not-this-one"));
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(100))
            .expect("truncate");
        let last = std::hint::black_box(map[map.len() - 1]);
        panic!("read {last} past the end without a fault");
    }

    /// In the parent: a 1 MiB file `name` in a fresh folder, and this test
    /// binary run again on the test `test` alone, with `env` naming the file.
    fn run_child(test: &str, env: &str, name: &str) -> (tempfile::TempDir, PathBuf, Output) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, vec![7u8; 1 << 20]).expect("write");
        let out = Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", test, "--nocapture"])
            .env(env, &path)
            .output()
            .expect("child");
        (dir, path, out)
    }

    /// Map a file, shrink it, read past its new end: the shard is named.
    #[test]
    fn a_shrunk_mapping_is_named_with_its_own_exit_status() {
        if let Some(path) = std::env::var_os("MAP_FAULT_CHILD") {
            shrink_and_read(Path::new(&path), true);
        }
        let (_dir, path, out) = run_child(
            "format::map_fault::tests::a_shrunk_mapping_is_named_with_its_own_exit_status",
            "MAP_FAULT_CHILD",
            "train-00003.shard",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_CODE), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "error: {}: the shard shrank while it was mapped",
                path.display()
            )),
            "{stderr}"
        );
    }

    /// A fault outside every watched mapping is not ours: the process dies
    /// of SIGBUS as it would have.
    #[test]
    fn other_faults_are_left_to_the_previous_handler() {
        if let Some(path) = std::env::var_os("MAP_FAULT_OTHER") {
            shrink_and_read(Path::new(&path), false);
        }
        let (_dir, _path, out) = run_child(
            "format::map_fault::tests::other_faults_are_left_to_the_previous_handler",
            "MAP_FAULT_OTHER",
            "f",
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
    }
}
