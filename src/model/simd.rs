//! Run-time choice of AVX2/FMA code for plain loops: [`avx2_dispatch!`] defines a function that
//! runs a `#[inline(always)]` body compiled a second time with those features when the CPU has
//! them (so its loops use 8-wide vectors), and the portable build otherwise.

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
