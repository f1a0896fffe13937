//! The one place atomics come from. Every other module imports them from here, so that the loom
//! build (`--cfg shmpool_loom` together with the `loom` feature) swaps all of them at once.

#[cfg(all(shmpool_loom, feature = "loom"))]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(all(shmpool_loom, feature = "loom")))]
pub use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// A fence for the compiler only: keeps the compiler from moving memory accesses across it.
/// Under loom (which models no compiler) it is a full fence, since most models use symmetric
/// fences; with `--cfg shmpool_loom_signal_fence` it is what it is between threads, nothing, for
/// the models of asymmetric pools outside retirement (`loom-tests/tests/asymmetric.rs`).
#[inline]
pub fn compiler_fence() {
    #[cfg(all(shmpool_loom, feature = "loom", not(shmpool_loom_signal_fence)))]
    fence(Ordering::SeqCst);
    #[cfg(not(all(shmpool_loom, feature = "loom")))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Orders the read-modify-write just before it before the loads after it (store-load order), as
/// a sequentially consistent fence does. On x86-64 a read-modify-write is a locked instruction,
/// a full barrier already, so only the compiler needs telling; elsewhere, and under loom (which
/// models sequentially consistent fences but not sequentially consistent accesses), it is the
/// fence. Right after a read-modify-write it orders that against later loads; elsewhere it
/// orders less than a fence on x86-64 (callers there must not need store-load order).
#[inline]
pub fn store_load_fence() {
    #[cfg(any(not(target_arch = "x86_64"), all(shmpool_loom, feature = "loom")))]
    fence(Ordering::SeqCst);
    #[cfg(all(target_arch = "x86_64", not(all(shmpool_loom, feature = "loom"))))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Tells a spinning CAS loop that another participant won; loom needs to be told to switch
/// threads, the hardware only needs the pause hint.
#[inline]
pub fn spin_hint() {
    #[cfg(all(shmpool_loom, feature = "loom"))]
    loom::thread::yield_now();
    #[cfg(not(all(shmpool_loom, feature = "loom")))]
    core::hint::spin_loop();
}
