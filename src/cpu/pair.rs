//! Two threads in lockstep for decoding a few sequences: a helper thread that spins between
//! jobs, so that handing it half of a tiny product costs a cache-line transfer instead of a
//! thread wake-up.
//!
//! Decoding one sequence is ~17 matrix-vector products per token, each a few tens of
//! microseconds of work. Splitting them through rayon (whose idle workers sleep) cost more
//! than it saved (docs/PERF.md); a spinning helper answers in
//! well under a microsecond. It spins only while a [`with_pair`] call runs, and yields its core
//! after a short spin when no job comes (or when the caller is slow to collect a result), so a
//! busy machine is not starved.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Spins before a waiting thread starts yielding its core.
const SPINS: u32 = 2_000;

/// The job the helper runs next, published by `epoch`.
type Job = *const (dyn Fn() + Sync);

/// A caller thread and one spinning helper; see [`with_pair`].
///
/// Sound by construction: the handle is neither `Send` nor `Sync` (a `Cell` and a raw-pointer
/// marker), so only the thread that called [`with_pair`] can reach it, and a job handed to the
/// helper (which must be `Send`) cannot capture it; a [`Pair::join`] nested inside the caller's
/// own half panics before it touches the job slot.
pub struct Pair {
    shared: Shared,
    /// Set while a join is in flight on this (the only) caller thread.
    busy: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

/// What the caller and the helper both see.
struct Shared {
    /// Bumped (Release) after `job` is written; the helper runs each new epoch's job once.
    epoch: AtomicUsize,
    /// The last epoch whose job the helper finished (Release after the job's writes).
    done: AtomicUsize,
    stop: AtomicBool,
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written only through a `Pair`, which one thread owns (it is `!Send` and
// `!Sync`) and which refuses a join while one is in flight (`busy`), and only before it
// publishes a new epoch; the helper reads it only after it observes that epoch (Acquire) and
// before it reports it done, and the caller does not write it again until then. The job itself
// is `Sync`.
unsafe impl Sync for Shared {}

/// Wait until `ready()`, spinning first and then yielding the core between checks.
fn wait(ready: impl Fn() -> bool) {
    let mut spins = 0;
    while !ready() {
        if spins < SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Pair {
    /// Run `mine` on this thread and `theirs` on the helper; return both results when both
    /// are done.
    ///
    /// # Panics
    /// When called from inside `mine` of another join on this pair (the helper may still be
    /// running that join's other half), and when either half panics.
    pub fn join<A, B, RA, RB>(&self, mine: A, theirs: B) -> (RA, RB)
    where
        A: FnOnce() -> RA,
        B: FnOnce() -> RB + Send,
        RB: Send,
    {
        assert!(
            !self.busy.replace(true),
            "Pair::join inside a join on the same pair: run the inner work on one thread"
        );
        let shared = &self.shared;
        let theirs = Mutex::new(Some(theirs));
        let result = Mutex::new(None);
        // A panic in `theirs` is caught on the helper and resumed here, as rayon::join does.
        let job = || {
            let f = theirs
                .lock()
                .expect("job lock")
                .take()
                .expect("each job runs once");
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            *result.lock().expect("result lock") = Some(r);
        };
        let job: &(dyn Fn() + Sync) = &job;
        // SAFETY: the lifetime is erased only for the helper's call, which finishes before
        // this function returns (it waits for `done` below, even if `mine` panics: see Guard).
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Job>(job) };
        let epoch = shared.epoch.load(Ordering::Relaxed) + 1;
        // SAFETY: the helper finished the previous epoch's job (every join waits for it, and
        // `busy` refused a nested one), so no one reads `job` now.
        unsafe { *shared.job.get() = Some(job) };
        shared.epoch.store(epoch, Ordering::Release);
        /// Waits for the helper even when `mine` unwinds, so the job outlives its use; then
        /// the pair takes joins again.
        struct Guard<'a>(&'a Pair, usize);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                wait(|| self.0.shared.done.load(Ordering::Acquire) >= self.1);
                self.0.busy.set(false);
            }
        }
        let guard = Guard(self, epoch);
        let a = mine();
        drop(guard);
        let b = result
            .into_inner()
            .expect("result lock")
            .expect("the helper ran the job");
        match b {
            Ok(b) => (a, b),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Shared {
    /// The helper's loop: run each new epoch's job until stopped.
    fn serve(&self) {
        let mut seen = 0;
        loop {
            wait(|| self.stop.load(Ordering::Acquire) || self.epoch.load(Ordering::Acquire) > seen);
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch == seen {
                return; // stopped, nothing pending
            }
            seen = epoch;
            // SAFETY: the caller wrote `job` before publishing this epoch (observed with
            // Acquire) and keeps the closure alive until `done` reaches it.
            let job = unsafe { (*self.job.get()).expect("a job is published with its epoch") };
            // Jobs catch their own panics (see join); one escaping would leave the caller
            // waiting forever, so abort instead.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: as above, the closure is alive until `done` is set.
                unsafe { (*job)() }
            }));
            if result.is_err() {
                std::process::abort();
            }
            self.done.store(epoch, Ordering::Release);
        }
    }
}

/// Run `f` with a [`Pair`] when this machine has at least two cores (`None` otherwise); the
/// helper thread lives for the call only.
pub fn with_pair<R>(f: impl FnOnce(Option<&Pair>) -> R) -> R {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return f(None);
    }
    let pair = Pair {
        shared: Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            job: UnsafeCell::new(None),
        },
        busy: Cell::new(false),
        _not_send: PhantomData,
    };
    let shared = &pair.shared;
    std::thread::scope(|s| {
        s.spawn(move || shared.serve());
        /// Stops the helper even when `f` unwinds, so the scope can end.
        struct Stop<'a>(&'a Shared);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.stop.store(true, Ordering::Release);
            }
        }
        let _stop = Stop(shared);
        f(Some(&pair))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn both_halves_of_every_join_run_once_and_finish_before_it_returns() {
        let total = AtomicU64::new(0);
        with_pair(|pair| {
            let Some(pair) = pair else { return }; // one-core machine: nothing to test
            for i in 0..10_000u64 {
                let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
                let (x, y) = pair.join(
                    || {
                        a.store(i, Ordering::Relaxed);
                        i + 1
                    },
                    || {
                        b.store(2 * i, Ordering::Relaxed);
                        2 * i + 1
                    },
                );
                assert_eq!(
                    (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed), x, y),
                    (i, 2 * i, i + 1, 2 * i + 1)
                );
                total.fetch_add(1, Ordering::Relaxed);
            }
        });
        let expected = if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            0
        } else {
            10_000
        };
        assert_eq!(total.load(Ordering::Relaxed), expected);
    }

    /// Compiles only while `Pair` is neither `Send` nor `Sync`: a type that implements a
    /// trait makes the `Ambiguous` call below ambiguous (the static-assertions trick), so
    /// sharing the handle with another thread stays a compile error.
    #[test]
    fn the_handle_cannot_reach_another_thread() {
        trait Ambiguous<A> {
            fn some_item() {}
        }
        impl<T: ?Sized> Ambiguous<()> for T {}
        struct IfSend;
        impl<T: ?Sized + Send> Ambiguous<IfSend> for T {}
        struct IfSync;
        impl<T: ?Sized + Sync> Ambiguous<IfSync> for T {}
        let _ = <Pair as Ambiguous<_>>::some_item;
        let _ = <&Pair as Ambiguous<_>>::some_item;
    }

    #[test]
    fn a_join_nested_in_the_callers_half_panics_and_the_pair_still_works() {
        with_pair(|pair| {
            let Some(pair) = pair else { return };
            let nested = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pair.join(|| pair.join(|| 1, || 2), || 3)
            }));
            let message = nested.expect_err("a nested join is refused");
            let text = message.downcast_ref::<&str>().copied().unwrap_or_default();
            assert!(text.contains("inside a join"), "{text}");
            assert_eq!(pair.join(|| 4, || 5), (4, 5));
        });
    }

    #[test]
    fn a_panic_on_the_helper_reaches_the_caller_and_the_pair_still_works() {
        with_pair(|pair| {
            let Some(pair) = pair else { return };
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pair.join(|| 1, || -> u32 { panic!("helper half failed") })
            }));
            let message = caught.expect_err("the panic is resumed on the caller");
            assert_eq!(message.downcast_ref::<&str>(), Some(&"helper half failed"));
            assert_eq!(pair.join(|| 2, || 3), (2, 3));
        });
    }
}
