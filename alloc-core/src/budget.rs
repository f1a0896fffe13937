//! A pool-wide budget: a limit on the bytes (and optionally the number) of live allocations,
//! counted the way a buddy allocator counts them, so that a pool can promise what Dragon's pools
//! promise (its whole size in one allocation, and nothing more beside it).
//!
//! A heap created with a [`Budget`] charges every allocation its size rounded up to a power of
//! two (at least [`MIN_CHARGE`], 1 byte, and at most the limit), plus one to the count when a
//! count limit is set. An allocation is made only if its charge fits next to what is charged
//! already; a refused one fails with `OutOfMemory` (so `alloc_blocking` waits for a free), a
//! request larger than the limit with `TooLarge`. So any set of power-of-two allocations whose
//! sizes add up to at most the limit fits, whatever the limit, down to 1-byte ones; a limit of
//! `2^k` holds one allocation of `2^k` bytes and nothing beside it (a 0-byte allocation too is
//! charged 1), and two 10000-byte allocations fill a limit of 32768 (each is charged 16384).
//!
//! Dragon's own pools differ at the edges, deliberately not copied: their heap is the size
//! rounded up to a power of two, and their smallest block 32 bytes. Rounding the limit up would
//! make a pool take up to twice the memory asked for; a 32-byte smallest charge would refuse
//! small allocations that add up to no more than the limit.
//!
//! The heap itself still decides where memory comes from: the budget only adds a check in
//! front of it, so the data area must be larger than the limit by the slack the heap needs
//! (spans of small blocks, caches): see the host's sizing. An allocation of 16 bytes or more
//! never takes more of the data area than its charge (classes and page runs round up by less
//! than a power of two); a smaller one takes a 16-byte block, so a heap filled with very many
//! of them can be refused by the heap before the budget (the same `OutOfMemory`). Caches keep
//! no page runs under a budget, so that freed runs are placed by first fit again rather than
//! split the free space where they were; the heap is no buddy allocator, though, and
//! fragmentation by spans of small blocks can still refuse a large run the budget admits.
//!
//! Two words hold it, one shared and one per participant, both bit-packed as charges:
//! - `header::BUDGET_USED`: what is charged now, one compare-exchange per change;
//! - `header::BUDGET_SHORT`: what the refused allocations lack, so that a charge given back after
//!   its allocation failed in the heap wakes the waiters only once it may have let one in;
//! - the participant's `BUDGET_PENDING`: a charge it is taking or giving back.
//!
//! Crashes: a participant records the charge in `BUDGET_PENDING` before it changes
//! `BUDGET_USED` and clears it after the allocation became live (or the free was done and the
//! charge given back). `reclaim_dead` gives back a dead participant's pending charge, and the
//! charge of every allocation it frees for the dead. A participant that dies between the two
//! steps can so make the count too low by one charge, never too high: the budget can only
//! become looser after a crash, never lose space for good, and the heap's own guarantees are
//! those of the heap without a budget. `check` verifies the "never too high" side.
//!
//! A host may also give an allocation's charge back before it frees the allocation
//! ([`Heap::give_back_charge`], then [`Heap::free_given_back`]): Python's Dragon semantics put
//! off the free of an allocation under live buffer views, but the budget must not wait for
//! them. The allocation stays live (and its owner's) meanwhile; only the host's
//! [`Uncharged`] token knows its charge went back, and the later free gives nothing back. A
//! crash in between is covered as any other: reclaim frees the dead owner's allocation and gives
//! its charge back once more (looser, never tighter). A free of such an allocation by anyone
//! else, not through the token (a double free of the user's making), gives the charge back a
//! second time in the same way.

use crate::crash::step;
use crate::error::Error;
use crate::heap::{AllocId, Allocation, Heap, Wake};
use crate::layout::{header, participant};
use crate::participant::Session;
use crate::primitive::Ordering;

/// The smallest charge: a 0-byte allocation is charged as a 1-byte one (so that nothing fits
/// beside an allocation of the whole limit).
pub const MIN_CHARGE: u64 = 1;
/// The largest limit: charges and limits keep their bytes in the low 48 bits.
pub const MAX_LIMIT: u64 = (1 << 47) - 1;
/// The largest count limit (the high 16 bits of a charge).
pub const MAX_COUNT_LIMIT: u64 = 0xFFFF;

const BYTES_MASK: u64 = (1 << 48) - 1;
const COUNT_SHIFT: u32 = 48;
/// `header::BUDGET_SHORT` when no allocation was refused since the waiters were last woken.
/// Otherwise it holds one more than the fewest bytes a refused allocation lacked, less the bytes
/// that failed allocations gave back since (see [`Heap::give_back_after_failure`]).
const NONE_SHORT: u64 = 0;

/// What a heap lets its allocations use at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of charges (1 to [`MAX_LIMIT`]).
    pub limit: u64,
    /// Live allocations at once (0: no count limit; at most [`MAX_COUNT_LIMIT`]).
    pub max_allocations: u64,
}

impl Budget {
    /// The header word: the limit in bits 0-47, the count limit in bits 48-63 (0 = no budget).
    pub(crate) fn encode(self) -> u64 {
        self.limit | self.max_allocations << COUNT_SHIFT
    }

    #[inline]
    pub(crate) fn decode(word: u64) -> Option<Budget> {
        (word != 0).then_some(Budget { limit: word & BYTES_MASK, max_allocations: word >> COUNT_SHIFT })
    }

    /// Whether the heap can keep this budget.
    pub(crate) fn is_valid(self) -> bool {
        (1..=MAX_LIMIT).contains(&self.limit) && self.max_allocations <= MAX_COUNT_LIMIT
    }

    /// What an allocation of `size` bytes (at most the limit) is charged, packed: bytes in bits
    /// 0-47, the count (0 or 1) in bits 48-63.
    pub(crate) fn charge(self, size: u64) -> u64 {
        let bytes = size.max(MIN_CHARGE).checked_next_power_of_two().unwrap_or(u64::MAX).min(self.limit);
        bytes | u64::from(self.max_allocations > 0) << COUNT_SHIFT
    }

    /// `used` plus `charge`, if that stays within the budget.
    fn add(self, used: u64, charge: u64) -> Option<u64> {
        let bytes = (used & BYTES_MASK) + (charge & BYTES_MASK);
        let count = (used >> COUNT_SHIFT) + (charge >> COUNT_SHIFT);
        let count_ok = self.max_allocations == 0 || count <= self.max_allocations;
        (bytes <= self.limit && count_ok).then_some(bytes | count << COUNT_SHIFT)
    }

    /// The bytes an allocation charged `charge` lacks when `used` is charged (0 when only the
    /// count limit refuses it: any charge given back makes room for it then).
    fn shortfall(self, used: u64, charge: u64) -> u64 {
        ((used & BYTES_MASK) + (charge & BYTES_MASK)).saturating_sub(self.limit)
    }

    /// `used` minus `charge`, each field stopping at 0 (after a crash the count may be low).
    fn sub(used: u64, charge: u64) -> u64 {
        let bytes = (used & BYTES_MASK).saturating_sub(charge & BYTES_MASK);
        let count = (used >> COUNT_SHIFT).saturating_sub(charge >> COUNT_SHIFT);
        bytes | count << COUNT_SHIFT
    }
}

/// A live allocation whose budget charge was given back ahead of its free
/// ([`Heap::give_back_charge`]): the only way to free it without giving the charge back twice
/// ([`Heap::free_given_back`]). Not `Clone`: one token, one free. Dropping it leaves the
/// allocation live (and uncharged) until someone frees it or its owner is reclaimed.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the allocation stays live until the token is freed"]
pub struct Uncharged {
    id: AllocId,
}

impl Uncharged {
    /// The allocation's id.
    pub fn id(&self) -> AllocId {
        self.id
    }
}

/// What is charged in a budgeted heap right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetUsed {
    /// Bytes of charges.
    pub bytes: u64,
    /// Live allocations counted (only under a count limit).
    pub allocations: u64,
}

impl<'a> Heap<'a> {
    /// The heap's budget, if it was created with one.
    #[inline]
    pub fn budget(&self) -> Option<Budget> {
        Budget::decode(self.budget_word())
    }

    /// What is charged against the budget now (zero without one).
    pub fn budget_used(&self) -> BudgetUsed {
        // ORDERING: Relaxed: a snapshot for reporting, ordering nothing.
        let used = self.region().word(header::BUDGET_USED).load(Ordering::Relaxed);
        BudgetUsed { bytes: used & BYTES_MASK, allocations: used >> COUNT_SHIFT }
    }

    /// Runs `alloc` (the allocation of `size` bytes by participant `me`) once its charge is
    /// taken from the budget; gives the charge back if it fails.
    pub(crate) fn alloc_charged(
        &self,
        budget: Budget,
        me: u64,
        size: u64,
        alloc: impl FnOnce() -> Result<Allocation, Error>,
    ) -> Result<Allocation, Error> {
        if size > budget.limit {
            return Err(Error::TooLarge { requested: size, capacity: budget.limit });
        }
        let charge = budget.charge(size);
        self.set_budget_pending(me, charge);
        step!("budget/alloc-pending");
        if !self.take_charge(budget, charge) {
            self.clear_budget_pending(me);
            return Err(Error::OutOfMemory { requested: size });
        }
        step!("budget/alloc-charged");
        let made = alloc();
        if made.is_err() {
            // Our charge may have kept a waiter from its allocation.
            let _ = self.give_back_after_failure(charge);
        }
        step!("budget/alloc-made");
        self.clear_budget_pending(me);
        made
    }

    /// Runs `free` (the free of an allocation of `size` bytes by participant `me`), then gives
    /// its charge back and wakes waiters the charge kept out.
    pub(crate) fn free_charged(
        &self,
        budget: Budget,
        me: u64,
        size: u64,
        free: impl FnOnce() -> Result<Wake, Error>,
    ) -> Result<Wake, Error> {
        let charge = budget.charge(size.min(budget.limit));
        self.set_budget_pending(me, charge);
        step!("budget/free-pending");
        let freed = free();
        step!("budget/free-freed");
        let outcome = freed.map(|wake| wake.or(self.give_back(charge)));
        step!("budget/free-given-back");
        self.clear_budget_pending(me);
        outcome
    }

    /// Gives the charge of live allocation `id` back to the budget now (waking the waiters it
    /// kept out), leaving the allocation live: for a host that must put its free off (Python's
    /// Dragon semantics, while buffer views of it are alive). Free it later with
    /// [`Heap::free_given_back`], which gives nothing back; the token is the only record that
    /// the charge went back (see the module docs for crashes and frees by others).
    ///
    /// No pending record: the allocation stays live and owned, so a participant that dies
    /// before the give-back leaves it for reclaim to free and give back exactly, and one that
    /// dies after leaves the budget looser by this charge.
    pub fn give_back_charge(&self, session: &mut Session, id: AllocId) -> Result<(Uncharged, Wake), Error> {
        let allocation = self.lookup(session, id)?;
        let wake = match self.budget() {
            None => Wake::Nobody,
            Some(budget) => self.give_back(budget.charge(allocation.size.min(budget.limit))),
        };
        step!("budget/charge-given-back");
        Ok((Uncharged { id }, wake))
    }

    /// Frees the allocation whose charge [`Heap::give_back_charge`] gave back, giving nothing
    /// back to the budget. Fails as [`Heap::free`] does if the allocation was freed meanwhile
    /// (its id is then stale).
    pub fn free_given_back(&self, session: &mut Session, uncharged: Uncharged) -> Result<Wake, Error> {
        self.free_uncharged(session, uncharged.id)
    }

    /// Gives `charge` back to the budget and wakes the waiters, if any (their next try may fit).
    pub(crate) fn give_back(&self, charge: u64) -> Wake {
        self.take_charge_back(charge);
        // The waiters are all woken: nothing recorded is owed any more. ORDERING: SeqCst: a
        // record we read was made before our wake (and a waiter bit before it is seen by it); one
        // that reads our swap is followed by a look that sees our give-back.
        self.region().word(header::BUDGET_SHORT).swap(NONE_SHORT, Ordering::SeqCst);
        self.wake_if_waiting()
    }

    /// Gives back the charge of an allocation that failed in the heap. It wakes the waiters
    /// only once the bytes failed allocations gave back since a refusal make up what the refusal
    /// lacked (see [`Heap::take_charge`]): a blocked allocator whose tries fail in the heap must
    /// not wake itself and every other waiter at each try (it did at ef1878d, and never slept),
    /// nor one that the live charges alone keep out (a flag "someone was refused" did, at
    /// 7ad448a, and two such waiters could wake each other without sleeping).
    ///
    /// Not yet exact: every failed charge counts against the record, also one taken after the
    /// refusal (which it never kept out). A failed allocation of at least what a waiter lacks
    /// therefore still wakes it at each try, and two such blocked allocators can keep each other
    /// from sleeping when each one's refusal is recorded between the other's tries (review of
    /// 4dd852f: seen under a hook that forces that order, 1-2 wakes in a second without it).
    /// Telling the charges apart needs to know which refusals saw a charge, e.g. a generation
    /// in the record read when the charge is taken.
    ///
    /// We give back, then update the record; a refused allocation records, then looks at the
    /// budget again. Both updates write (even when nothing changes), so one reads the other's:
    /// if ours comes first, the refused one's record reads it, and its look after sees our
    /// charge gone; if its record comes first, our update reads it, and if we made up what it
    /// lacked our wake sees the waiter bit it set before (a waiter's refusals after its bit are
    /// recorded before it sleeps). The loom models of `loom-tests/tests/budget.rs` fail if the
    /// refused allocation does not look again, or if our update does not write.
    fn give_back_after_failure(&self, charge: u64) -> Wake {
        self.take_charge_back(charge);
        step!("budget/failure-given-back");
        let given = charge & BYTES_MASK;
        let made_up = |short: u64| short != NONE_SHORT && short - 1 <= given;
        // ORDERING: SeqCst (Release: the refused one's record reads our give-back; Acquire: we
        // read its record and its waiter bit), and a write even when nothing changes.
        let short = self.region().word(header::BUDGET_SHORT).fetch_update(
            Ordering::SeqCst,
            Ordering::SeqCst,
            |short| Some(if made_up(short) || short == NONE_SHORT { NONE_SHORT } else { short - given }),
        );
        match short {
            Ok(short) if made_up(short) => self.wake_if_waiting(),
            _ => Wake::Nobody,
        }
    }

    /// Takes `charge` from the budget; `false` if it does not fit. A refusal is recorded (what
    /// it lacked; the record keeps the fewest bytes of all refusals since the waiters were last
    /// woken), then the budget looked at again, until the charge fits or the record covers what
    /// the last look lacked (see [`Heap::give_back_after_failure`]). Each look again follows a
    /// smaller shortfall than the last: charges given back by others meanwhile.
    fn take_charge(&self, budget: Budget, charge: u64) -> bool {
        let used = self.region().word(header::BUDGET_USED);
        let short = self.region().word(header::BUDGET_SHORT);
        let mut recorded = u64::MAX;
        loop {
            // ORDERING: SeqCst: in the waiters' Dekker order (a reclaimer that sees our charge
            // taken sees the pending record too: it reads it once we are dead).
            let Err(now) =
                used.fetch_update(Ordering::SeqCst, Ordering::Relaxed, |now| budget.add(now, charge))
            else {
                return true;
            };
            let lacked = budget.shortfall(now, charge);
            if lacked >= recorded {
                return false;
            }
            recorded = lacked;
            let record = lacked.saturating_add(1);
            // ORDERING: SeqCst (Acquire: a give-back whose update we read is seen by our look
            // again; Release: one that reads our record sees our waiter bit), and a write even
            // when a smaller shortfall stays.
            let _ = short.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |short| {
                Some(if short == NONE_SHORT || record < short { record } else { short })
            });
        }
    }

    /// Takes `charge` off the budget.
    fn take_charge_back(&self, charge: u64) {
        // ORDERING: SeqCst, before the record's update or `wake_if_waiting`'s fence: a waiter
        // either sees the charge given back on its retry, or is seen (its record, its bit).
        let _ = self.region().word(header::BUDGET_USED).fetch_update(
            Ordering::SeqCst,
            Ordering::Relaxed,
            |now| Some(Budget::sub(now, charge)),
        );
    }

    /// The bytes of the charge of an allocation of `size` bytes (0 without a budget), for
    /// `check`.
    pub(crate) fn charged_bytes_of(&self, size: u64) -> u64 {
        self.charge_of(size) & BYTES_MASK
    }

    /// Fails if the budget charges more than the live allocations (`charged` bytes, `live`
    /// of them) are charged: `check`'s invariant 6.
    pub(crate) fn check_budget(&self, charged: u64, live: u64) -> Result<(), Error> {
        let Some(budget) = self.budget() else {
            return Ok(());
        };
        let used = self.budget_used();
        if used.bytes > charged || used.bytes > budget.limit {
            return Err(Error::Corrupt {
                what: "the budget charges more bytes than its live allocations",
                page: 0,
            });
        }
        let counted = budget.max_allocations > 0;
        if counted && (used.allocations > live || used.allocations > budget.max_allocations) {
            return Err(Error::Corrupt { what: "the budget counts more allocations than are live", page: 0 });
        }
        Ok(())
    }

    /// The charge of an allocation of `size` bytes (0 without a budget), for reclaim.
    pub(crate) fn charge_of(&self, size: u64) -> u64 {
        self.budget().map_or(0, |budget| budget.charge(size.min(budget.limit)))
    }

    /// Gives back the charge dead participant `index` had pending (reclaim and repair, holding
    /// its record).
    pub(crate) fn resolve_budget_pending(&self, index: u64) -> bool {
        let word = self.participant_word(index, participant::BUDGET_PENDING);
        // ORDERING: Acquire: the dead participant's stores before it are seen.
        let pending = word.load(Ordering::Acquire);
        if pending == 0 {
            return false;
        }
        let _ = self.give_back(pending);
        // ORDERING: Release: the charge is given back before the record says so.
        word.store(0, Ordering::Release);
        true
    }

    fn set_budget_pending(&self, me: u64, charge: u64) {
        // ORDERING: Release, as PENDING (`Heap::set_pending_run`): it is read to act on only by
        // whoever holds our record once our process is dead, when every store of it is
        // visible (the taking compare-exchange after it included), or by repair and check.
        self.participant_word(me, participant::BUDGET_PENDING).store(charge, Ordering::Release);
    }

    fn clear_budget_pending(&self, me: u64) {
        // ORDERING: Release: the allocation or free is complete before the record says so.
        self.participant_word(me, participant::BUDGET_PENDING).store(0, Ordering::Release);
    }
}
