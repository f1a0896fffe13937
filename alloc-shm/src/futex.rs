//! Waiting across processes: a *shared* futex (no `FUTEX_PRIVATE_FLAG`, so a waker in another
//! process reaches it) with a timeout, on the low 32 bits of the heap's wake word. The
//! `atomic-wait` crate cannot do this: its futex is process-private and waits forever.
//!
//! Waits are cut into slices of at most [`MAX_SLICE`], after which the heap tries again: a
//! free that could not wake us (space given back by a cache flush, a span being published)
//! is then noticed within a slice, and the deadline is checked against the clock, so spurious
//! wake-ups never shorten or stretch it.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use alloc_core::primitive::AtomicU64;
use alloc_core::{WaitHost, Waited};
use rustix::thread::futex;

#[cfg(not(target_endian = "little"))]
compile_error!("the futex word is the low half of a 64-bit word: little-endian targets only");

/// Longest single futex wait before the heap is tried again.
pub const MAX_SLICE: Duration = Duration::from_millis(50);

/// The futex half of the heap's wake word.
fn futex_word(word: &AtomicU64) -> &AtomicU32 {
    // SAFETY: (1) `AtomicU64` is 8-byte aligned, so its first four bytes are a valid, aligned
    // `AtomicU32`; on a little-endian target they are the low half of the value; (2) both are
    // atomics (`UnsafeCell`s), so viewing the bytes through both is allowed; the 32-bit view is
    // only read here and by the kernel, never written, so no mixed-size write races a read.
    unsafe { &*(word as *const AtomicU64).cast::<AtomicU32>() }
}

/// Wakes every process blocked on `word`.
pub fn wake_all(word: &AtomicU64) {
    // A failed wake (only EFAULT/EINVAL, impossible for a mapped, aligned word) leaves waiters
    // to notice at the end of their slice.
    let _ = futex::wake(futex_word(word), futex::Flags::empty(), i32::MAX as u32);
}

/// A deadline-bounded wait for `Heap::alloc_blocking`.
pub struct FutexWait {
    deadline: Option<Instant>,
}

impl FutexWait {
    /// Waits until `timeout` from now; `None` (or a timeout beyond what the clock can count)
    /// waits forever.
    pub fn new(timeout: Option<Duration>) -> FutexWait {
        FutexWait { deadline: timeout.and_then(|timeout| Instant::now().checked_add(timeout)) }
    }
}

/// How long a waiter that found no waiter slot sleeps before it looks again (nobody wakes it).
pub const POLL_SLICE: Duration = Duration::from_millis(1);

impl WaitHost for FutexWait {
    fn wait(&mut self, word: &AtomicU64, seen: u64, registered: bool) -> Waited {
        let longest = if registered { MAX_SLICE } else { POLL_SLICE };
        let slice = match self.deadline {
            None => longest,
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return Waited::TimedOut;
                }
                (deadline - now).min(longest)
            }
        };
        let timeout =
            futex::Timespec { tv_sec: slice.as_secs() as i64, tv_nsec: slice.subsec_nanos() as i64 };
        // EAGAIN (the word already moved), EINTR and ETIMEDOUT all mean "look again".
        let _ = futex::wait(futex_word(word), futex::Flags::empty(), seen as u32, Some(&timeout));
        Waited::Woken
    }
}
