//! One span of small blocks and its anchor (after Michael, PLDI 2004).
//!
//! A span is `SPAN_PAGES` pages holding `n` blocks of one class. At its start sit two in-span
//! arrays: one state word per block ([`BlockState`]) and one owner half-word per block; the
//! blocks follow. Free blocks form a list threaded through their state words (never through
//! user bytes, so a late write into a freed block cannot corrupt the list), and the anchor word
//! holds the list head, the free count, the listed/retired flags and a 36-bit tag.
//!
//! Invariants (checked by `Heap::check` on a quiescent heap):
//! - `count` equals the length of the free list; every block on it has a non-live state word;
//!   every block off it is live.
//! - A retired span has `count == n`, is not listed, and its pages are no longer claimed.
//! - A listed span is in its class stack (or is being pushed there by whoever set the flag).
//!
//! Every anchor change bumps the tag, and `init` carries the tag over from the previous
//! incarnation, so a compare-exchange prepared against an older anchor never succeeds.

use crate::error::Error;
use crate::layout::{Anchor, BlockState};
use crate::primitive::{AtomicU64, Ordering};

/// The anchor and state array of one span.
#[derive(Clone, Copy)]
pub struct Span<'a> {
    anchor: &'a AtomicU64,
    states: &'a [AtomicU64],
}

/// What a push did to the span's listed flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Pushed {
    /// The span was already listed (or retired): nothing more to do.
    Done,
    /// The span was unlisted and this push listed it: the caller must push it on its class stack.
    MustList,
}

impl<'a> Span<'a> {
    /// Most blocks one [`Span::pop_batch`] takes.
    pub const MAX_BATCH: usize = 64;

    /// A span whose anchor is `anchor` and whose block states are `states` (one per block).
    pub fn new(anchor: &'a AtomicU64, states: &'a [AtomicU64]) -> Span<'a> {
        Span { anchor, states }
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.states.len() as u64
    }

    /// The current anchor (a snapshot).
    pub fn anchor(&self) -> Anchor {
        // ORDERING: Acquire pairs with the Release of the last push, so the free list it built
        // (state words) is visible to a reader walking it.
        Anchor::decode(self.anchor.load(Ordering::Acquire))
    }

    /// The state word of block `index`.
    pub fn state(&self, index: u64) -> &'a AtomicU64 {
        &self.states[index as usize]
    }

    /// Sets up a span the caller holds exclusively: every block free with generation `base`,
    /// chained in index order, unlisted. The caller publishes it afterwards (page info).
    pub fn init(&self, base: u64) {
        let blocks = self.blocks();
        for index in 0..blocks {
            let next = if index + 1 < blocks { index + 1 } else { Anchor::NULL };
            let state = BlockState { live: false, gen: base, alloc_type: 0, low: next };
            // ORDERING: Release, like every store to a state word: see `pop_batch`.
            self.states[index as usize].store(state.encode(), Ordering::Release);
        }
        let old = Anchor::decode(self.anchor.load(Ordering::Relaxed));
        let fresh = Anchor { head: 0, count: blocks, listed: false, retired: false, tag: old.tag }.bumped();
        // ORDERING: Release publishes the state words above to any thread that later reads this
        // anchor with Acquire (a stale hint-holder's pop, `check`).
        self.anchor.store(fresh.encode(), Ordering::Release);
    }

    /// Takes a free block off the list. `still_valid` is asked after each anchor load and may
    /// veto the pop (the span was reused for another class). Returns the block index, or `None`
    /// when the span has no free block, is retired, or was vetoed.
    pub fn pop(&self, still_valid: impl Fn() -> bool) -> Result<Option<u64>, Error> {
        // ORDERING: Acquire pairs with the Release of the push (or init) that built the list, so
        // the next link in the head block's state word is the one that push wrote.
        let mut current = self.anchor.load(Ordering::Acquire);
        loop {
            let anchor = Anchor::decode(current);
            if anchor.retired || anchor.count == 0 || !still_valid() {
                return Ok(None);
            }
            if anchor.head >= self.blocks() || anchor.count > self.blocks() {
                return Err(Error::Corrupt { what: "span anchor out of range", page: 0 });
            }
            let next = BlockState::decode(self.states[anchor.head as usize].load(Ordering::Relaxed)).low;
            let popped = Anchor { head: next, count: anchor.count - 1, ..anchor }.bumped();
            // ORDERING: Acquire on success orders the previous holder's use of this block (made
            // before its Release push) before ours. If the head block was taken and given back
            // meanwhile, the tag differs and this fails (ABA).
            match self.anchor.compare_exchange_weak(
                current,
                popped.encode(),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Some(anchor.head)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes up to `max` (at most [`Span::MAX_BATCH`]) free blocks off the list with one
    /// compare-exchange and hands each index to `take`. The links walked before the exchange
    /// are trustworthy when it succeeds: any pop or push in between would have bumped the tag
    /// and made it fail. Returns how many blocks were taken (0 when empty, retired or vetoed,
    /// as in [`Span::pop`]).
    pub fn pop_batch(
        &self,
        max: u64,
        still_valid: impl Fn() -> bool,
        mut take: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let blocks = self.blocks();
        let mut taken = [0u16; Self::MAX_BATCH];
        // ORDERING: Acquire, as in `pop`: the links of the whole list were published by the
        // Release pushes that built it.
        let mut current = self.anchor.load(Ordering::Acquire);
        loop {
            let anchor = Anchor::decode(current);
            if anchor.retired || anchor.count == 0 || max == 0 || !still_valid() {
                return Ok(0);
            }
            if anchor.count > blocks {
                return Err(Error::Corrupt { what: "span free count exceeds its blocks", page: 0 });
            }
            let taking = anchor.count.min(max).min(Self::MAX_BATCH as u64) as usize;
            let mut after = anchor.head;
            let mut torn = false;
            for slot in taken.iter_mut().take(taking) {
                if after >= blocks {
                    torn = true;
                    break;
                }
                *slot = after as u16;
                // ORDERING: Acquire pairs with the Release of every store to a state word (and the
                // release sequences their compare-exchanges continue). A block's word changes
                // only after someone popped it; so if we read a changed word, that pop happens
                // before the anchor reload below, which then cannot return the old anchor.
                after = BlockState::decode(self.states[after as usize].load(Ordering::Acquire)).low;
            }
            if torn {
                // The walk is speculative: a block on it may have been taken (and its state word
                // reused) since the anchor was read. Only a list that is bad under an unchanged
                // anchor is corrupt.
                // ORDERING: Acquire, after the Acquire reads of the walk (see above).
                let now = self.anchor.load(Ordering::Acquire);
                if now == current {
                    return Err(Error::Corrupt { what: "span free list leaves its span", page: 0 });
                }
                current = now;
                continue;
            }
            let popped = Anchor { head: after, count: anchor.count - taking as u64, ..anchor }.bumped();
            // ORDERING: Acquire on success, as in `pop`.
            match self.anchor.compare_exchange_weak(
                current,
                popped.encode(),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // The recorded blocks are ours now (in a corrupted heap whose list loops, an
                    // index may repeat; the caller sees it twice and must cope).
                    for &index in &taken[..taking] {
                        take(index as u64);
                    }
                    return Ok(taking as u64);
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Puts block `index` (whose state the caller already turned non-live, keeping `gen`) back
    /// on the list. Lists the span if it was unlisted.
    pub fn push(&self, index: u64, gen: u64) -> Pushed {
        let mut current = self.anchor.load(Ordering::Relaxed);
        loop {
            let anchor = Anchor::decode(current);
            let freed = BlockState { live: false, gen, alloc_type: 0, low: anchor.head };
            // ORDERING: Release, like every store to a state word: see `pop_batch`.
            self.states[index as usize].store(freed.encode(), Ordering::Release);
            let pushed = Anchor { head: index, count: anchor.count + 1, listed: true, ..anchor }.bumped();
            // ORDERING: Release publishes the freer's last use of the block and the link just
            // written to the next pop's Acquire.
            match self.anchor.compare_exchange_weak(
                current,
                pushed.encode(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) if anchor.listed || anchor.retired => return Pushed::Done,
                Ok(_) => return Pushed::MustList,
                Err(actual) => current = actual,
            }
        }
    }

    /// Lists the span if it has free blocks and is neither listed nor retired. `still_valid` is
    /// asked after each anchor load, as in [`Span::pop`]. Returns `MustList` when the caller
    /// must now push it on its class stack.
    pub fn relist(&self, still_valid: impl Fn() -> bool) -> Pushed {
        let mut current = self.anchor.load(Ordering::Relaxed);
        loop {
            let anchor = Anchor::decode(current);
            if anchor.listed || anchor.retired || anchor.count == 0 || !still_valid() {
                return Pushed::Done;
            }
            let listed = Anchor { listed: true, ..anchor }.bumped();
            match self.anchor.compare_exchange_weak(
                current,
                listed.encode(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Pushed::MustList,
                Err(actual) => current = actual,
            }
        }
    }

    /// Clears the listed flag of a span just popped off its class stack; returns the new anchor.
    pub fn unlist(&self) -> Anchor {
        let mut current = self.anchor.load(Ordering::Relaxed);
        loop {
            let unlisted = Anchor { listed: false, ..Anchor::decode(current) }.bumped();
            // ORDERING: Acquire so that the returned count reflects blocks pushed before it.
            match self.anchor.compare_exchange_weak(
                current,
                unlisted.encode(),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return unlisted,
                Err(actual) => current = actual,
            }
        }
    }

    /// Retires an unlisted span whose blocks are all free. On `true` the caller holds the span
    /// exclusively and gives its pages back.
    pub fn try_retire(&self) -> bool {
        let blocks = self.blocks();
        let mut current = self.anchor.load(Ordering::Relaxed);
        loop {
            let anchor = Anchor::decode(current);
            if anchor.count != blocks || anchor.listed || anchor.retired {
                return false;
            }
            let retired = Anchor { retired: true, ..anchor }.bumped();
            // ORDERING: Acquire orders every freer's use of its block (Release push) before the
            // span's memory is handed to someone else.
            match self.anchor.compare_exchange_weak(
                current,
                retired.encode(),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// The highest generation any block of the span has reached (span held exclusively).
    pub fn max_gen(&self) -> u64 {
        self.states
            .iter()
            .map(|state| BlockState::decode(state.load(Ordering::Relaxed)).gen)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;

    fn span_storage(blocks: usize) -> (AtomicU64, Vec<AtomicU64>) {
        (AtomicU64::new(0), (0..blocks).map(|_| AtomicU64::new(0)).collect())
    }

    #[test]
    fn pops_every_block_once_then_reports_empty() {
        let (anchor, states) = span_storage(5);
        let span = Span::new(&anchor, &states);
        span.init(7);
        let mut seen = Vec::new();
        while let Some(index) = span.pop(|| true).expect("valid") {
            seen.push(index);
        }
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(span.anchor().count, 0);
    }

    #[test]
    fn first_push_into_an_unlisted_span_asks_to_list_it() {
        let (anchor, states) = span_storage(3);
        let span = Span::new(&anchor, &states);
        span.init(0);
        let a = span.pop(|| true).expect("valid").expect("free block");
        let b = span.pop(|| true).expect("valid").expect("free block");
        assert_eq!(span.push(a, 1), Pushed::MustList);
        assert_eq!(span.push(b, 1), Pushed::Done);
        assert!(!span.try_retire(), "listed spans are not retired");
        let unlisted = span.unlist();
        assert_eq!(unlisted.count, 3);
        assert!(span.try_retire());
        assert_eq!(span.pop(|| true), Ok(None));
        assert_eq!(span.relist(|| true), Pushed::Done);
    }

    #[test]
    fn a_batch_pop_takes_blocks_in_list_order_and_leaves_the_rest() {
        let (anchor, states) = span_storage(5);
        let span = Span::new(&anchor, &states);
        span.init(0);
        let mut taken = Vec::new();
        assert_eq!(span.pop_batch(3, || true, |index| taken.push(index)), Ok(3));
        assert_eq!(taken, vec![0, 1, 2]);
        assert_eq!(span.anchor().count, 2);
        assert_eq!(span.pop_batch(10, || true, |index| taken.push(index)), Ok(2));
        assert_eq!(taken, vec![0, 1, 2, 3, 4]);
        assert_eq!(span.pop(|| true), Ok(None));
    }

    #[test]
    fn a_vetoed_pop_takes_nothing() {
        let (anchor, states) = span_storage(2);
        let span = Span::new(&anchor, &states);
        span.init(0);
        assert_eq!(span.pop(|| false), Ok(None));
        assert_eq!(span.anchor().count, 2);
    }

    #[test]
    fn init_carries_the_tag_over() {
        let (anchor, states) = span_storage(2);
        let span = Span::new(&anchor, &states);
        span.init(0);
        let first = span.anchor().tag;
        span.init(0);
        assert!(span.anchor().tag > first);
    }
}
