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

/// For the crate's unit tests: process identities, and a hook that stops a thread for good or
/// pauses it at a named step.
#[cfg(test)]
pub(crate) mod testing {
    use crate::participant::ProcessIdentity;

    /// A made-up identity for process `pid`.
    pub(crate) fn identity(pid: u32) -> ProcessIdentity {
        ProcessIdentity { pid, start_time: 1000 + pid as u64, namespace: 1 }
    }

    /// 1 MiB of zeroed memory for a unit test's heaps, which borrow it.
    pub(crate) struct Memory {
        words: Vec<u64>,
        base: *mut u8,
    }

    impl Memory {
        pub(crate) fn new() -> Memory {
            let mut words = vec![0u64; (1 << 20) / 8];
            let base = words.as_mut_ptr().cast::<u8>();
            Memory { words, base }
        }

        /// The first byte, for a test that writes an allocation's bytes as its owner would.
        pub(crate) fn base(&self) -> *mut u8 {
            self.base
        }

        fn region(&self) -> crate::Region<'_> {
            // SAFETY: the vector is never resized, so `base` stays valid for as long as `self`
            // is borrowed; it is used only through regions over it, and through `base` by tests
            // acting as an allocation's owner.
            unsafe { crate::Region::from_raw(self.base, self.words.len() * 8) }.expect("aligned")
        }

        /// A new heap over the whole memory.
        pub(crate) fn create(&self) -> crate::Heap<'_> {
            crate::Heap::create_default(self.region()).expect("fits")
        }

        /// Another view of the heap already created there (as another process maps it).
        pub(crate) fn open(&self) -> crate::Heap<'_> {
            crate::Heap::open_default(self.region()).expect("open")
        }
    }

    #[cfg(feature = "crash-points")]
    pub(crate) use hooks::*;

    #[cfg(feature = "crash-points")]
    mod hooks {
        use std::cell::Cell;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Mutex, MutexGuard, Once};

        /// The payload a thread stopped for good unwinds with.
        pub(crate) struct Stopped;

        thread_local! {
            static STOP_AT: Cell<Option<&'static str>> = const { Cell::new(None) };
            static PAUSE_AT: Cell<Option<&'static str>> = const { Cell::new(None) };
        }
        static PAUSED: AtomicBool = AtomicBool::new(false);
        static RESUME: AtomicBool = AtomicBool::new(false);
        /// One process-wide hook: the tests that install it take turns.
        static TURN: Mutex<()> = Mutex::new(());

        fn hook(name: &'static str) {
            if STOP_AT.with(|at| at.get() == Some(name)) {
                STOP_AT.with(|at| at.set(None));
                std::panic::panic_any(Stopped);
            }
            if PAUSE_AT.with(|at| at.get() == Some(name)) {
                PAUSE_AT.with(|at| at.set(None));
                PAUSED.store(true, Ordering::SeqCst);
                while !RESUME.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            }
        }

        /// The hook installed for one test; removed when dropped.
        pub(crate) struct Installed {
            _turn: MutexGuard<'static, ()>,
        }

        impl Drop for Installed {
            fn drop(&mut self) {
                crate::crash::clear_hook();
            }
        }

        /// Installs the hook (waiting for other tests' turns), with nothing armed.
        pub(crate) fn install() -> Installed {
            static QUIET: Once = Once::new();
            QUIET.call_once(|| {
                let default = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    if info.payload().downcast_ref::<Stopped>().is_none() {
                        default(info);
                    }
                }));
            });
            let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            PAUSED.store(false, Ordering::SeqCst);
            RESUME.store(false, Ordering::SeqCst);
            crate::crash::set_hook(hook);
            Installed { _turn: turn }
        }

        /// The calling thread stops for good (unwinds with [`Stopped`]) when it reaches `step`.
        pub(crate) fn stop_at(step: &'static str) {
            STOP_AT.with(|at| at.set(Some(step)));
        }

        /// The calling thread pauses when it reaches `step`, until [`resume`].
        pub(crate) fn pause_at(step: &'static str) {
            PAUSE_AT.with(|at| at.set(Some(step)));
        }

        /// Waits until the thread armed with [`pause_at`] has paused.
        pub(crate) fn wait_until_paused() {
            while !PAUSED.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }

        /// Lets the paused thread go on.
        pub(crate) fn resume() {
            RESUME.store(true, Ordering::SeqCst);
        }
    }
}
