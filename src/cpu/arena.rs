//! Large float buffers on transparent huge pages where Linux allows them, for the decoder's
//! weights and KV cache.
//!
//! Decoding reads both as many short runs a step, tens of MB in all. On 4 KB pages every run
//! costs TLB misses, which under virtualisation are nested page walks; with 2 MB pages the
//! whole of it needs a few dozen TLB entries. `Floats::zeroed` maps fresh anonymous memory
//! (zero and untouched until written, like `calloc`'s large blocks), aligned to 2 MB, and asks
//! for huge pages with `madvise(MADV_HUGEPAGE)`; that honours the system's setting
//! (`/sys/kernel/mm/transparent_hugepage/enabled` at `madvise` or `always`) and is a no-op
//! where it is `never`. Elsewhere, or below 2 MB, it is a plain vector. `Floats::reused` hands
//! out a dropped buffer of the same length again, for the decoder's weights, which are
//! repacked at every `generate` call.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// A huge page.
#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;

/// `len` floats, starting at least on a 64-byte line.
pub struct Floats {
    store: Store,
    len: usize,
    /// Where it goes when dropped, if anywhere.
    recycle: Option<&'static Spares>,
}

/// Buffers of dropped [`Floats::reused`], at most [`SPARES`]: a decoder is built at every
/// `generate` call, and reusing its weights' buffer saves mapping, faulting in and zeroing
/// the whole model each time, a large share of a short call (docs/PERF.md).
pub struct Spares(Mutex<Vec<Floats>>);
const SPARES: usize = 2;

/// The process's kept buffers.
static SPARE: Spares = Spares::new();

impl Default for Spares {
    fn default() -> Spares {
        Spares::new()
    }
}

impl Spares {
    /// An empty list (`const`, for the process's static one).
    pub const fn new() -> Spares {
        Spares(Mutex::new(Vec::new()))
    }

    /// Free every kept buffer (a phase that needs the memory for something else follows).
    pub fn release(&self) {
        let mut freed: Vec<Floats> = std::mem::take(&mut *self.kept());
        for f in &mut freed {
            f.recycle = None;
        }
        drop(freed);
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Floats>> {
        // A panic while holding the lock leaves the list valid.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Store {
    /// A private anonymous mapping of `bytes` at `base`; the floats start at `start`.
    #[cfg(target_os = "linux")]
    Mapped {
        base: *mut libc::c_void,
        bytes: usize,
        start: *mut f32,
    },
    /// A vector, the floats starting `offset` elements in (the first on a 64-byte line).
    Heap { buf: Vec<f32>, offset: usize },
}

// SAFETY: a Floats owns its memory exclusively (the mapping is never shared or aliased), so it
// may move to and be read from other threads like a Vec<f32>.
unsafe impl Send for Floats {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Floats {}

impl Floats {
    /// `len` floats to be overwritten, whose values are unspecified: the buffer of a dropped
    /// `reused` of the same length where one is kept, else fresh zeroed memory.
    pub fn reused(len: usize) -> Floats {
        Floats::reused_from(&SPARE, len)
    }

    /// Free the buffers [`Floats::reused`] keeps (see [`Spares::release`]).
    pub fn release_reused() {
        SPARE.release();
    }

    /// [`Floats::reused`] with the buffers kept in `spares`.
    pub fn reused_from(spares: &'static Spares, len: usize) -> Floats {
        let kept = {
            let mut kept = spares.kept();
            let at = kept.iter().position(|f| f.len == len);
            at.map(|i| kept.swap_remove(i))
        };
        let mut f = kept.unwrap_or_else(|| Floats::zeroed(len));
        f.recycle = Some(spares);
        f
    }

    /// `len` zeroed floats.
    pub fn zeroed(len: usize) -> Floats {
        #[cfg(target_os = "linux")]
        if let Some(f) = Floats::mapped(len) {
            return f;
        }
        let buf = vec![0.0f32; len + 15];
        let offset = buf.as_ptr().align_offset(64).min(15);
        Floats {
            store: Store::Heap { buf, offset },
            len,
            recycle: None,
        }
    }

    /// A 2 MB-aligned mapping advised for huge pages, for buffers of at least 2 MB.
    #[cfg(target_os = "linux")]
    fn mapped(len: usize) -> Option<Floats> {
        let want = len.checked_mul(4)?;
        if want < HUGE {
            return None;
        }
        let bytes = want.checked_add(HUGE)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let skip = base.align_offset(HUGE);
        // SAFETY: skip < HUGE, so the aligned start and the `want` bytes after it lie inside
        // the mapping of want + HUGE bytes.
        let start = unsafe { base.cast::<u8>().add(skip) };
        // SAFETY: the range lies inside the mapping (above); advice changes no contents, and
        // its failure (THP not built in) only leaves 4 KB pages.
        unsafe {
            libc::madvise(
                start.cast(),
                want.next_multiple_of(HUGE).min(bytes - skip),
                libc::MADV_HUGEPAGE,
            )
        };
        Some(Floats {
            store: Store::Mapped {
                base,
                bytes,
                start: start.cast(),
            },
            len,
            recycle: None,
        })
    }
}

impl Deref for Floats {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.store {
            #[cfg(target_os = "linux")]
            // SAFETY: the mapping holds `len` floats from `start`, zero-initialised by the
            // kernel, and lives as long as self.
            Store::Mapped { start, .. } => unsafe { std::slice::from_raw_parts(*start, self.len) },
            Store::Heap { buf, offset } => &buf[*offset..*offset + self.len],
        }
    }
}

impl DerefMut for Floats {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.store {
            #[cfg(target_os = "linux")]
            // SAFETY: as in deref; &mut self makes this the only access.
            Store::Mapped { start, .. } => unsafe {
                std::slice::from_raw_parts_mut(*start, self.len)
            },
            Store::Heap { buf, offset } => &mut buf[*offset..*offset + self.len],
        }
    }
}

impl Drop for Floats {
    fn drop(&mut self) {
        if let Some(spares) = self.recycle {
            let store = std::mem::replace(
                &mut self.store,
                Store::Heap {
                    buf: Vec::new(),
                    offset: 0,
                },
            );
            let kept = Floats {
                store,
                len: self.len,
                recycle: Some(spares),
            };
            let mut evicted = {
                let mut spare = spares.kept();
                spare.push(kept);
                (spare.len() > SPARES).then(|| spare.remove(0))
            };
            // Freed outside the lock, and for good (not kept again).
            if let Some(old) = evicted.as_mut() {
                old.recycle = None;
            }
            return;
        }
        #[cfg(target_os = "linux")]
        if let Store::Mapped { base, bytes, .. } = self.store {
            // SAFETY: the mapping was created in `mapped` with this base and length and is
            // unmapped only here; no slice of it outlives self.
            unsafe { libc::munmap(base, bytes) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Floats, Spares};

    #[test]
    fn buffers_start_zeroed_on_a_line_and_keep_what_is_written() {
        // Below and above the 2 MB from which Linux maps them on huge pages.
        for len in [0, 1, 1000, (2 << 20) / 4, 3_000_017] {
            let mut f = Floats::zeroed(len);
            assert_eq!(f.len(), len);
            assert_eq!(f.as_ptr() as usize % 64, 0, "len {len}");
            assert!(f.iter().all(|&x| x == 0.0));
            for (i, x) in f.iter_mut().enumerate() {
                *x = i as f32;
            }
            let moved = std::thread::spawn(move || f).join().unwrap();
            assert!(moved.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
    }

    #[test]
    fn a_dropped_reused_buffer_is_handed_out_again_for_the_same_length() {
        // Its own list of kept buffers, which no other test touches.
        let spares: &'static Spares = Box::leak(Box::new(Spares::new()));
        let len = 1_234_567;
        let mut a = Floats::reused_from(spares, len);
        a[7] = 7.0;
        let at = a.as_ptr();
        drop(a);
        let b = Floats::reused_from(spares, len);
        assert_eq!((b.as_ptr(), b[7], b.len()), (at, 7.0, len));
        // Other lengths get their own memory; more drops than SPARES keep only the last ones.
        let c = Floats::reused_from(spares, len + 1);
        assert_ne!(c.as_ptr(), at);
        let others: Vec<Floats> = (2..2 + super::SPARES + 1)
            .map(|i| Floats::reused_from(spares, len + i))
            .collect();
        drop(b);
        drop(others);
        assert_eq!(spares.kept().len(), super::SPARES);
        drop(c);
        assert_eq!(spares.kept().len(), super::SPARES);
        // Released: nothing kept, and the next buffer is fresh zeroed memory.
        spares.release();
        assert!(spares.kept().is_empty());
        let d = Floats::reused_from(spares, len);
        assert_eq!(d[7], 0.0);
    }
}
