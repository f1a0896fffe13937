//! Blocking allocation: waiting for a free in any process.
//!
//! A blocked allocator registers in a *waiter slot*: one of 56 bits of the `STATUS` header word
//! (so the free path learns "somebody waits" from the load it makes anyway), owned through a
//! word of the waiter-owner table that names the waiter's process and its incarnation. The
//! owner word is taken first (compare-exchange from 0) and given back last; the bit is set after
//! it, before every wait. A free that finds bits set takes *all* of them down as it wakes the
//! waiters, and each waiter sets its bit again before it waits again: so a waiter that stopped
//! or died costs the frees one wake-up, not one per free. `reclaim_dead` gives the slots of
//! dead processes back (see `reclaim`). Nothing counts waiters that nobody can take back.
//!
//! The Dekker pair with `wake_if_waiting`: the waiter reads the wake word, sets its bit, fences
//! (SeqCst) and tries again; a freer makes room, fences, and reads the status word. Either the
//! freer sees the bit and bumps the wake word past what the waiter read (its futex wait returns
//! at once), or the waiter's retry sees the room. The wake word is read before the bit: a free
//! that takes the bit down for room this waiter cannot use (a small block, a charge not yet given
//! back) then still moves the word past what it read, and the waiter sets its bit again; read
//! after, that wake-up would count as seen with the bit gone, and the free that made room for
//! it would wake nobody (`tests/wait_wake.rs`, and the loom model of a budget's give-back). When
//! all 56 slots are taken, a waiter polls in short slices.

use crate::crash::step;
use crate::error::Error;
use crate::heap::{AllocOptions, Allocation, Heap};
use crate::layout::{header, status, WAITER_SLOTS};
use crate::participant::Session;
use crate::primitive::{fence, AtomicU64, Ordering};

/// The outcome of one wait in [`Heap::alloc_blocking`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// The word changed or the wait ended early: try again.
    Woken,
    /// The host's deadline passed.
    TimedOut,
}

/// How a host blocks. alloc-shm implements it with a shared (not private) futex with a timeout.
pub trait WaitHost {
    /// Blocks while `word` still holds `seen` (in its low 32 bits), until woken or the host's
    /// deadline passes. `registered` is false when the caller found no waiter slot: nobody will
    /// wake it, so the host should wait only a short slice. Spurious returns are fine.
    fn wait(&mut self, word: &AtomicU64, seen: u64, registered: bool) -> Waited;
}

impl Heap<'_> {
    /// Like [`Heap::alloc`], but when the pool is full waits through `host` for a free in any
    /// process. The host's deadline ends the wait with [`Error::TimedOut`].
    pub fn alloc_blocking(
        &self,
        session: &mut Session,
        size: u64,
        options: AllocOptions,
        host: &mut impl WaitHost,
    ) -> Result<Allocation, Error> {
        loop {
            match self.alloc(session, size, options) {
                Err(Error::OutOfMemory { .. }) => {}
                other => return other,
            }
            // The wake word before we announce ourselves: a free that takes our bit down (and
            // wakes us) after we set it bumps the word past what we read, so our wait returns at
            // once. Read after the bit, a wake-up for room we cannot use would be counted as seen
            // and our bit gone: the next free, whose room we could use, would wake nobody.
            // ORDERING: SeqCst, before our bit in the waiter bits' order (see `wake_if_waiting`).
            let seen = self.wake_word().load(Ordering::SeqCst);
            // Announce ourselves before the last try, so a free that the try misses sees us.
            let slot = self.claim_waiter_slot(session);
            step!("wait/slot-claimed");
            if let Some(slot) = slot {
                // ORDERING: SeqCst, part of the Dekker pair with `wake_if_waiting` (fence below).
                self.status_word().fetch_or(slot_bit(slot), Ordering::SeqCst);
                step!("wait/registered");
            }
            // ORDERING: SeqCst fence pairs with the fence in `wake_if_waiting` (Dekker): either
            // that free's load sees our bit, or our retry below sees its freed space.
            fence(Ordering::SeqCst);
            let outcome = match self.alloc(session, size, options) {
                Err(Error::OutOfMemory { .. }) => host.wait(self.wake_word(), seen, slot.is_some()),
                other => {
                    self.release_waiter_slot(slot);
                    return other;
                }
            };
            self.release_waiter_slot(slot);
            if outcome == Waited::TimedOut {
                return match self.alloc(session, size, options) {
                    Err(Error::OutOfMemory { requested }) => Err(Error::TimedOut { requested }),
                    other => other,
                };
            }
        }
    }

    fn status_word(&self) -> &AtomicU64 {
        self.region().word(header::STATUS)
    }

    pub(crate) fn waiter_owner(&self, slot: usize) -> &AtomicU64 {
        self.region().word(self.geometry().waiter_word + slot)
    }

    /// Takes a free waiter slot for the session's process, if one is free.
    fn claim_waiter_slot(&self, session: &Session) -> Option<usize> {
        let owner = waiter_owner_word(session.process, session.incarnation);
        (0..WAITER_SLOTS).find(|&slot| {
            // ORDERING: Acquire on success: the slot's last holder cleared its bit before it
            // gave the slot back (Release).
            self.waiter_owner(slot).compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed).is_ok()
        })
    }

    fn release_waiter_slot(&self, slot: Option<usize>) {
        if let Some(slot) = slot {
            // ORDERING: SeqCst, the order of the waiter bits everywhere.
            self.status_word().fetch_and(!slot_bit(slot), Ordering::SeqCst);
            step!("wait/unregistered");
            // ORDERING: Release: the bit is clear before the slot can be taken again.
            self.waiter_owner(slot).store(0, Ordering::Release);
        }
    }
}

pub(crate) fn slot_bit(slot: usize) -> u64 {
    1 << (slot as u32 + status::WAITER_SHIFT)
}

/// The waiter-owner word of a slot held by process `process` of incarnation `incarnation`.
pub(crate) fn waiter_owner_word(process: u64, incarnation: u64) -> u64 {
    process | incarnation << 16
}

/// A waiter-owner word held by participant `participant` while it clears a dead waiter's slot.
pub(crate) fn clearing_word(participant: u64) -> u64 {
    1 << 63 | participant
}
