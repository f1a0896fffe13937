//! One span of small blocks and its anchor (after Michael, PLDI 2004).
//!
//! A span is `SPAN_PAGES` pages holding `n` blocks of one class. At its start sit two in-span
//! arrays: one state word `S` per block ([`BlockState`]) and one extra word `X` per block
//! ([`Extra`]); the blocks follow. Free blocks form a list threaded through their state words
//! (never through user bytes, so a late write into a freed block cannot corrupt the list), and
//! the anchor word (out of band, in page metadata) holds the list head, the free count, the
//! retiring state and a 38-bit tag.
//!
//! Every caller holds a hazard on the span (see `heap`), so the span cannot be retired and its
//! in-span words are metadata for the whole call.
//!
//! Invariants (checked by `Heap::check` on a quiescent heap):
//! - `count` equals the length of the free list; every block on it is free; every block off it
//!   is live or cached, or is held by a participant in the middle of a push or pop.
//! - A retiring span has `count == n`.
//!
//! Every anchor change bumps the tag, and `init` carries the tag over from the previous
//! incarnation, so a compare-exchange prepared against an older anchor never succeeds.

use crate::error::Error;
use crate::layout::{gen, Anchor, BlockState, Extra, Kind};
use crate::primitive::{AtomicU32, AtomicU64, Ordering};

/// The anchor, state words and extra words of one span.
#[derive(Clone, Copy)]
pub struct Span<'a> {
    anchor: &'a AtomicU64,
    states: &'a [AtomicU64],
    extras: &'a [AtomicU32],
}

/// What a push did to the free count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Free blocks on the list before the push.
    pub before: u64,
    /// Free blocks on the list after it.
    pub after: u64,
}

impl<'a> Span<'a> {
    /// A span whose anchor is `anchor` and whose blocks' words are `states` and `extras`.
    pub fn new(anchor: &'a AtomicU64, states: &'a [AtomicU64], extras: &'a [AtomicU32]) -> Span<'a> {
        debug_assert_eq!(states.len(), extras.len());
        Span { anchor, states, extras }
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

    /// The anchor word itself.
    pub(crate) fn anchor_word(&self) -> &'a AtomicU64 {
        self.anchor
    }

    /// The state word of block `index`.
    pub fn state(&self, index: u64) -> &'a AtomicU64 {
        &self.states[index as usize]
    }

    /// The extra word of block `index`.
    pub fn extra(&self, index: u64) -> &'a AtomicU32 {
        &self.extras[index as usize]
    }

    /// The generation of block `index`, as its words say now (for a block the caller holds).
    pub fn generation(&self, index: u64) -> Option<u64> {
        let state = BlockState::decode(self.state(index).load(Ordering::Acquire))?;
        let extra = Extra::decode(self.extra(index).load(Ordering::Relaxed));
        Some(gen::join(extra.gen_high, state.tag))
    }

    /// Sets up a span the caller holds exclusively: every block free with generation `base`,
    /// chained in index order, anchor normal. The caller publishes it afterwards (page info).
    pub fn init(&self, base: u64) {
        let blocks = self.blocks();
        let extra = Extra { alloc_type: 0, gen_high: gen::high(base) }.encode();
        for index in 0..blocks {
            let next = if index + 1 < blocks { index + 1 } else { Anchor::NULL };
            // ORDERING: Release, like every store to a state word: see `pop`.
            self.states[index as usize]
                .store(BlockState::free(next, 0, gen::tag(base)).encode(), Ordering::Release);
            self.extras[index as usize].store(extra, Ordering::Relaxed);
        }
        let old = Anchor::decode(self.anchor.load(Ordering::Relaxed));
        let fresh = Anchor { head: 0, count: blocks, retiring: false, tag: old.tag }.bumped();
        // ORDERING: Release publishes the state words above to any thread that later reads this
        // anchor with Acquire.
        self.anchor.store(fresh.encode(), Ordering::Release);
    }

    /// Takes up to `into.len()` free blocks off the list with one compare-exchange and writes
    /// their indices to `into`. The links walked before the exchange are trustworthy when it
    /// succeeds: any pop or push in between would have bumped the tag and made it fail. Returns
    /// how many blocks were taken (0 when empty or retiring).
    #[inline]
    pub fn pop_into(&self, into: &mut [u16]) -> Result<usize, Error> {
        let blocks = self.blocks();
        // ORDERING: Acquire, as in `anchor`: the links of the whole list were published by the
        // Release pushes that built it.
        let mut current = self.anchor.load(Ordering::Acquire);
        loop {
            let anchor = Anchor::decode(current);
            if anchor.retiring || anchor.count == 0 || into.is_empty() {
                return Ok(0);
            }
            if anchor.count > blocks {
                return Err(Error::Corrupt { what: "span free count exceeds its blocks", page: 0 });
            }
            let taking = (anchor.count as usize).min(into.len());
            let mut after = anchor.head;
            let mut torn = false;
            for slot in into.iter_mut().take(taking) {
                if after >= blocks {
                    torn = true;
                    break;
                }
                *slot = after as u16;
                // ORDERING: Acquire pairs with the Release of every store to a state word (and
                // the release sequences their compare-exchanges continue). A block's word changes
                // only after someone popped it; so if we read a changed word, that pop happens
                // before the anchor reload below, which then cannot return the old anchor.
                match BlockState::decode(self.states[after as usize].load(Ordering::Acquire)) {
                    Some(state) if state.kind == Kind::Free => after = state.link,
                    _ => {
                        torn = true;
                        break;
                    }
                }
            }
            if torn {
                // The walk is speculative: a block on it may have been taken (and its state word
                // reused) since the anchor was read. Only a list that is bad under an unchanged
                // anchor is corrupt.
                // ORDERING: Acquire, after the Acquire reads of the walk (see above).
                let now = self.anchor.load(Ordering::Acquire);
                if now == current {
                    return Err(Error::Corrupt { what: "span free list is broken", page: 0 });
                }
                current = now;
                continue;
            }
            let popped = Anchor { head: after, count: anchor.count - taking as u64, ..anchor }.bumped();
            // ORDERING: Acquire on success orders the previous holders' use of these blocks
            // (made before their Release pushes) before ours. If a block was taken and given back
            // meanwhile, the tag differs and this fails (ABA).
            match self.anchor.compare_exchange_weak(
                current,
                popped.encode(),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                // The recorded blocks are ours now (in a corrupted heap whose list loops, an index
                // may repeat; the caller sees it twice and must cope).
                Ok(_) => return Ok(taking),
                Err(actual) => current = actual,
            }
        }
    }

    /// Puts the chain `indices` (blocks the caller holds, not live, with tags `tags`) on the
    /// list with one compare-exchange, marking each as pushed by `pusher`.
    pub fn push_chain(&self, indices: &[u16], tags: &[u64], pusher: u64) -> Pushed {
        debug_assert!(!indices.is_empty() && indices.len() == tags.len());
        let last = indices.len() - 1;
        for (at, (&index, &tag)) in indices.iter().zip(tags).enumerate().take(last) {
            let linked = BlockState::free(indices[at + 1] as u64, pusher, tag);
            // ORDERING: Release, like every store to a state word: see `pop`.
            self.states[index as usize].store(linked.encode(), Ordering::Release);
        }
        let mut current = self.anchor.load(Ordering::Relaxed);
        loop {
            let anchor = Anchor::decode(current);
            let tail = BlockState::free(anchor.head, pusher, tags[last]);
            // ORDERING: Release, like every store to a state word: see `pop`.
            self.states[indices[last] as usize].store(tail.encode(), Ordering::Release);
            let pushed =
                Anchor { head: indices[0] as u64, count: anchor.count + indices.len() as u64, ..anchor }
                    .bumped();
            // ORDERING: Release publishes the pusher's last use of the blocks and the links just
            // written to the next pop's Acquire; Acquire reads the count others pushed.
            match self.anchor.compare_exchange_weak(
                current,
                pushed.encode(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Pushed { before: anchor.count, after: pushed.count },
                Err(actual) => current = actual,
            }
        }
    }

    /// Puts one block back; see [`Span::push_chain`].
    pub fn push(&self, index: u64, tag: u64, pusher: u64) -> Pushed {
        self.push_chain(&[index as u16], &[tag], pusher)
    }

    /// Marks an entirely free span as retiring by `retirer`: the retiring anchor holds the
    /// retirer's index where the list head was. `stash` is told each anchor about to be
    /// replaced, before the exchange (so that whoever backs the retirement out can restore the
    /// head). On `true` the caller holds the span alone: no pop can succeed, and no push can
    /// happen (no block is outside the list).
    pub fn try_retire(&self, retirer: u64, mut stash: impl FnMut(u64)) -> bool {
        let blocks = self.blocks();
        let mut current = self.anchor.load(Ordering::Relaxed);
        loop {
            let anchor = Anchor::decode(current);
            if anchor.count != blocks || anchor.retiring {
                return false;
            }
            stash(current);
            let retiring = Anchor { head: retirer, retiring: true, ..anchor }.bumped();
            // ORDERING: Acquire orders every freer's use of its block (Release push) before the
            // span's memory is handed to someone else.
            match self.anchor.compare_exchange_weak(
                current,
                retiring.encode(),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether the span is being retired by `retirer`.
    pub fn retiring_by(&self, retirer: u64) -> bool {
        let anchor = self.anchor();
        anchor.retiring && anchor.head == retirer
    }

    /// Takes back a retirement by `retirer` (the span stays in use), putting back the list head
    /// of `before`, the anchor it replaced. Returns whether this call did it.
    pub fn back_out_retire(&self, retirer: u64, before: u64) -> bool {
        let mut current = self.anchor.load(Ordering::Relaxed);
        loop {
            let anchor = Anchor::decode(current);
            if !anchor.retiring || anchor.head != retirer {
                return false;
            }
            let normal = Anchor { head: Anchor::decode(before).head, retiring: false, ..anchor }.bumped();
            // ORDERING: Release: pops that see the normal anchor again see the span as it was.
            match self.anchor.compare_exchange_weak(
                current,
                normal.encode(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// The highest generation any block of the span has reached (span held exclusively).
    pub fn max_gen(&self) -> u64 {
        (0..self.blocks()).filter_map(|index| self.generation(index)).max().unwrap_or(0)
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;

    struct Storage {
        anchor: AtomicU64,
        states: Vec<AtomicU64>,
        extras: Vec<AtomicU32>,
    }

    fn storage(blocks: usize) -> Storage {
        Storage {
            anchor: AtomicU64::new(0),
            states: (0..blocks).map(|_| AtomicU64::new(0)).collect(),
            extras: (0..blocks).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    impl Storage {
        fn span(&self) -> Span<'_> {
            Span::new(&self.anchor, &self.states, &self.extras)
        }
    }

    #[test]
    fn pops_every_block_once_then_reports_empty() {
        let memory = storage(5);
        let span = memory.span();
        span.init(7);
        let mut seen = Vec::new();
        let mut one = [0u16];
        while span.pop_into(&mut one).expect("valid") == 1 {
            seen.push(one[0]);
        }
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(span.anchor().count, 0);
        assert_eq!(span.generation(3), Some(7));
    }

    #[test]
    fn a_batch_pop_takes_blocks_in_list_order_and_leaves_the_rest() {
        let memory = storage(5);
        let span = memory.span();
        span.init(0);
        let mut taken = [0u16; 10];
        assert_eq!(span.pop_into(&mut taken[..3]), Ok(3));
        assert_eq!(taken[..3], [0, 1, 2]);
        assert_eq!(span.anchor().count, 2);
        assert_eq!(span.pop_into(&mut taken[3..]), Ok(2));
        assert_eq!(taken[..5], [0, 1, 2, 3, 4]);
        assert_eq!(span.pop_into(&mut taken), Ok(0));
    }

    #[test]
    fn chains_go_back_with_one_exchange_and_report_the_counts() {
        let memory = storage(4);
        let span = memory.span();
        span.init(0);
        let mut taken = [0u16; 4];
        assert_eq!(span.pop_into(&mut taken), Ok(4));
        let pushed = span.push_chain(&taken[..3], &[1, 1, 1], 9);
        assert_eq!(pushed, Pushed { before: 0, after: 3 });
        assert_eq!(span.push(taken[3] as u64, 1, 9), Pushed { before: 3, after: 4 });
        assert_eq!(span.pop_into(&mut [0; 4]), Ok(4));
        assert_eq!(BlockState::decode(span.state(0).load(Ordering::Relaxed)).map(|s| s.aux), Some(9));
    }

    #[test]
    fn only_an_entirely_free_span_retires_and_a_retiring_span_gives_nothing() {
        let memory = storage(3);
        let span = memory.span();
        span.init(0);
        let mut held = [0u16];
        assert_eq!(span.pop_into(&mut held), Ok(1));
        let held = held[0] as u64;
        assert!(!span.try_retire(5, |_| {}));
        span.push(held, 1, 1);
        let mut before = 0;
        assert!(span.try_retire(5, |anchor| before = anchor));
        assert!(span.retiring_by(5) && !span.retiring_by(6));
        assert_eq!(span.pop_into(&mut [0]), Ok(0));
        assert!(!span.back_out_retire(6, before), "only the retirer's retirement is taken back");
        assert!(span.back_out_retire(5, before));
        assert_eq!(span.anchor().head, held);
        assert_eq!(span.pop_into(&mut [0]), Ok(1));
    }

    #[test]
    fn init_carries_the_tag_over() {
        let memory = storage(2);
        let span = memory.span();
        span.init(0);
        let first = span.anchor().tag;
        span.init(0);
        assert!(span.anchor().tag > first);
    }
}
