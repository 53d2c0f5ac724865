//! Page-aligned byte buffers for decoded images and uint8 batches.
//!
//! `Vec<u8>` of this size comes from mmap and starts 16 bytes into a page,
//! so the distance between a source and a destination row varies with the
//! crop offset, and copies whose distance is a small multiple of 4 KiB
//! suffer 4K aliasing (DESIGN.md measured a row copy at ~1.9 GB/s when
//! dst - src = 16 mod 4096). Starting every buffer on a page boundary makes
//! the layout of a batch independent of the allocator, and page-aligned
//! batches can be registered with a GPU driver as pinned memory.
//!
//! Buffers of `MAP_AT_LEAST` bytes or more (uint8 batches: 38.5 MB at batch
//! 256) are anonymous maps made resident at once (`MAP_POPULATE`): the
//! kernel's pages come zeroed, where an aligned `alloc_zeroed` zeroes them
//! again in user space, and they are faulted in by one call instead of one
//! trap per 4 KiB page while the first batch is written. A batch buffer is
//! written whole, so nothing is made resident that would not be anyway.
//! (Asking for 2 MiB pages instead made the first epoch slower: the kernel
//! zeroes and compacts 2 MiB at each fault.)

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

pub const ALIGN: usize = 4096;

/// Buffers this large or larger are memory maps of their own.
const MAP_AT_LEAST: usize = 2 << 20;

/// A zero-initialised byte buffer whose first byte is 4 KiB aligned.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self::default();
        }
        let layout = Self::layout(len);
        let raw = if len >= MAP_AT_LEAST {
            map_zeroed(len)
        } else {
            // SAFETY: layout has a non-zero size.
            unsafe { alloc::alloc_zeroed(layout) }
        };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self {
            ptr,
            len,
            capacity: len,
        }
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, ALIGN).expect("buffer size fits a Layout")
    }

    /// Sets the length to `len`, keeping the first bytes; new bytes are
    /// zero. Grows the allocation only when needed.
    pub fn resize(&mut self, len: usize) {
        if len > self.capacity {
            let mut bigger = Self::zeroed(len);
            bigger[..self.len].copy_from_slice(self);
            *self = bigger;
        } else if len > self.len {
            // SAFETY: within capacity; bytes past len may hold old data.
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, len - self.len) };
            self.len = len;
        } else {
            self.len = len;
        }
    }
}

/// `len` zero bytes in a private anonymous map, already resident; null if
/// the map fails.
fn map_zeroed(len: usize) -> *mut u8 {
    // SAFETY: a new mapping; no existing memory is touched.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        raw.cast()
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
            capacity: 0,
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.capacity >= MAP_AT_LEAST {
            // SAFETY: mapped in `zeroed` with this length.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.capacity) };
        } else if self.capacity > 0 {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) };
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (dangling, len 0, when empty).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_aligned_zeroed_and_resizable() {
        let mut b = AlignedBuf::zeroed(10_000);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[9_999] = 7;
        b[5] = 3;
        b.resize(100); // shrink keeps the start
        assert_eq!((b.len(), b[5]), (100, 3));
        b.resize(10_000); // regrow within capacity: new bytes are zero again
        assert_eq!((b[5], b[9_999]), (3, 0));
        b.resize(50_000); // reallocation keeps the contents
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!((b.len(), b[5], b[49_999]), (50_000, 3, 0));
        assert!(AlignedBuf::default().is_empty());
    }

    /// The same for buffers large enough to be maps of their own, grown
    /// from the allocator's kind into a map and within it.
    #[test]
    fn mapped_buffers_are_zeroed_and_resizable() {
        let mut b = AlignedBuf::zeroed(MAP_AT_LEAST - 1);
        b[7] = 9;
        b.resize(3 * MAP_AT_LEAST + 5);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(b[7], 9);
        assert!(b[8..].iter().all(|&x| x == 0));
        let last = b.len() - 1;
        b[last] = 1;
        b.resize(MAP_AT_LEAST);
        b.resize(3 * MAP_AT_LEAST + 5); // within capacity: zero again
        assert_eq!((b[7], b[last]), (9, 0));
        b.resize(4 * MAP_AT_LEAST); // one map into a bigger one
        assert_eq!((b[7], b[4 * MAP_AT_LEAST - 1]), (9, 0));
    }
}
