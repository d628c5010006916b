//! Helpers shared by the CPU kernels. Run-time choice of AVX2/FMA code for plain loops:
//! [`avx2_dispatch!`] defines a function that runs a `#[inline(always)]` body compiled a second
//! time with those features when the CPU has them (so its loops use 8-wide vectors), and the
//! portable build otherwise. Outputs written in place: [`written`] fills fresh memory without
//! zeroing it first.

use std::mem::MaybeUninit;

/// An output element not yet written.
pub(crate) type Uninit = MaybeUninit<f32>;

/// A vector of `n` floats filled by `write`. Large outputs are written (in parallel, by the
/// kernels) straight into fresh memory, because zeroing them first (`vec![0.0; n]`) is a serial
/// `memset` on the calling thread (see docs/PERF.md).
///
/// # Safety
/// `write` must initialise every one of the `n` elements it is given; the vector's length is
/// set to `n` afterwards without checking.
pub(crate) unsafe fn written(n: usize, write: impl FnOnce(&mut [Uninit])) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    write(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller guarantees that `write` set all `n` elements.
    unsafe { v.set_len(n) };
    v
}

/// An initialised buffer as outputs to overwrite.
///
/// # Safety
/// Only initialised values may be stored through the result (`MaybeUninit::write`); storing
/// `MaybeUninit::uninit()` would leave `x` holding uninitialised floats.
pub(crate) unsafe fn as_uninit(x: &mut [f32]) -> &mut [Uninit] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the caller keeps `x` initialised.
    unsafe { &mut *(x as *mut [f32] as *mut [Uninit]) }
}

/// Copy `src` into outputs not yet written.
#[inline(always)]
pub(crate) fn write(dst: &mut [Uninit], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// `avx2_dispatch!(pub fn name(args…) -> R = body;)` defines `name`, which calls `body(args…)`
/// compiled with AVX2 and FMA when the CPU supports them. `body` must be `#[inline(always)]`.
macro_rules! avx2_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use avx2_dispatch;

/// Hint the CPU to start loading `x` into L2 (not L1, where it would evict what is being
/// computed on), one hint per 64-byte line; nothing on other architectures than x86-64.
#[inline(always)]
pub(crate) fn prefetch_l2(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        // SAFETY: a prefetch is a hint: it reads nothing architecturally and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}
