//! Named steps: every point where an operation changes shared state has a name, and a test-only
//! hook can stop a participant exactly there (crash-point testing, in the spirit of
//! FoundationDB's simulation and Lightning's crash-consistency tests).
//!
//! `step!("free/state-claimed")` compiles to nothing unless the `crash-points` feature is on.
//! With it, it calls the hook installed by [`set_hook`] (a process-wide function pointer; the
//! hook decides, e.g. from thread-local state, whether this participant stops here). A hook that
//! unwinds (panics) simulates a participant that stops forever at that instruction: the core has
//! no destructors that touch shared memory, so nothing after the step runs.

#[cfg(feature = "crash-points")]
use core::sync::atomic::{AtomicUsize, Ordering};

#[cfg(feature = "crash-points")]
static HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs `hook`, called with the name of every step reached (by every thread).
#[cfg(feature = "crash-points")]
pub fn set_hook(hook: fn(&'static str)) {
    HOOK.store(hook as usize, Ordering::SeqCst);
}

/// Removes the hook.
#[cfg(feature = "crash-points")]
pub fn clear_hook() {
    HOOK.store(0, Ordering::SeqCst);
}

/// Called by `step!`.
#[cfg(feature = "crash-points")]
#[inline(never)]
pub fn reached(name: &'static str) {
    let hook = HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: the only non-zero values stored are `fn(&'static str)` pointers (`set_hook`).
        let hook: fn(&'static str) = unsafe { core::mem::transmute::<usize, fn(&'static str)>(hook) };
        hook(name);
    }
}

/// Marks a named step (see the module docs).
macro_rules! step {
    ($name:literal) => {
        #[cfg(feature = "crash-points")]
        $crate::crash::reached($name);
    };
}
pub(crate) use step;

/// Taken by unit tests that install a hook (one process-wide hook: they must not overlap).
#[cfg(all(test, feature = "crash-points"))]
pub(crate) static TEST_HOOK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
