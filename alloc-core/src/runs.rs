//! The free-run index: a tree of summaries over the page bitmap, so that finding a run of free
//! pages costs O(log pages) however large and fragmented the pool is.
//!
//! Placement is *address-ordered first fit*: a run goes to the lowest pages where it fits, and
//! so does a span (the lowest free aligned slot). First fit keeps the free space at the top of
//! the pool in one piece and, ordered by address, fragments about as little as best fit does
//! (Wilson et al., "Dynamic Storage Allocation: A Survey and Critical Review", 1995); next-fit
//! from a roving hint, what the heap did before, spreads runs over the whole pool and left no
//! large hole. Measured on the arrays workload (BENCHMARKS.md), first fit keeps a hole as large
//! as Boost.Interprocess's best fit does.
//!
//! Each word summarises a range of pages: the free pages it starts with (*prefix*), ends with
//! (*suffix*), its longest free run (*max*), whether it is all free, and whether it holds a free
//! aligned span slot. Level 0 summarises eight bitmap words (`RunShape::LEAF_PAGES` pages), every
//! level above eight words below, and the top is one word. Counts are capped at [`CAP`] pages
//! (searches for more use the bitmap). A word never written (zero) means "all free": a fresh
//! region needs no writing, and pages above the high-water mark (never claimed) are read as free
//! without touching their words.
//!
//! The index is a *hint*. The page bitmap alone says what is claimed; a claim sets bits with
//! compare-exchanges that fail on any page taken, so a stale summary can never hand out a page
//! twice. What staleness could cost is a refusal with room left, so a search that the index
//! answers "none" looks through the bitmap itself before giving up; a summary that promised a
//! run its words below do not have is put right by the search that found it out.
//!
//! Keeping it exact: whoever changes page bits refreshes the summaries above them, bottom up,
//! while its `PENDING` word still names the run (so that `reclaim_dead` refreshes them for a
//! participant killed before it did). Refreshing a word: recompute it from the words below and
//! compare-exchange it in; stop going up where the recomputed value is the stored one. After a
//! successful write the refresher looks again (a writer that computed from words read before
//! someone else's change, and that someone stopped because the value looked right, would leave
//! it stale otherwise); with a store-load fence between a change below and the read above (see
//! `primitive::store_load_fence`), the last writer of a word always sees every change below it
//! (loom models, `loom-tests/tests/runs.rs`, fail without either). So when every participant has
//! finished, every summary is exact; a stalled participant leaves at most the summaries above
//! its own run stale, which costs the others a look through the bitmap, never a refusal, and
//! `reclaim_dead` refreshes them for a dead one. Searches that find a summary promising more
//! than its words below hold refresh it on the way (those repairs are best effort: with no
//! change of their own before them, they may read a little behind).

use crate::bitmap::{PageBits, PAGES_PER_WORD};
use crate::layout::{RunShape, SPAN_PAGES};
use crate::primitive::{store_load_fence, AtomicU64, Ordering};

/// Counts stored in a summary are capped here; runs longer than this are looked for in the
/// bitmap itself.
pub const CAP: u64 = (1 << FIELD_BITS) - 1;
const FIELD_BITS: u32 = 20;
const WRITTEN: u64 = 1 << 63;
const ALL_FREE: u64 = 1 << 62;
const HAS_SLOT: u64 = 1 << 61;
/// Recomputations one refresh of a word makes at most (each but the last follows someone
/// else's change below, so the others refresh it too).
const MAX_REFRESHES: usize = 8;
const WORDS_PER_LEAF: u64 = RunShape::LEAF_PAGES / PAGES_PER_WORD;

/// What one word says of its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Summary {
    /// Pages covered (not stored: known from the word's place).
    len: u64,
    prefix: u64,
    suffix: u64,
    max: u64,
    all_free: bool,
    has_slot: bool,
}

impl Summary {
    fn free(len: u64) -> Summary {
        let capped = len.min(CAP);
        Summary {
            len,
            prefix: capped,
            suffix: capped,
            max: capped,
            all_free: true,
            has_slot: len >= SPAN_PAGES,
        }
    }

    /// The summary of the first `pages` (1 to 64) of the pages whose free bits are `free` (bit
    /// `i`: page `i` is free).
    #[inline]
    fn of_word(free: u64, pages: u64) -> Summary {
        let all = if pages >= 64 { u64::MAX } else { (1 << pages) - 1 };
        let free = free & all;
        if free == all {
            return Summary::free(pages);
        }
        if free == 0 {
            return Summary { len: pages, prefix: 0, suffix: 0, max: 0, all_free: false, has_slot: false };
        }
        // Free aligned slots: 16-bit lanes all ones.
        let lanes = free & (free >> 8);
        let lanes = lanes & (lanes >> 4);
        let lanes = lanes & (lanes >> 2);
        let lanes = lanes & (lanes >> 1);
        Summary {
            len: pages,
            prefix: free.trailing_ones() as u64,
            suffix: (free << (64 - pages)).leading_ones() as u64,
            max: longest_run(free),
            all_free: false,
            has_slot: lanes & 0x0001_0001_0001_0001 != 0,
        }
    }

    /// The summary of `self`'s pages followed by `next`'s.
    fn then(self, next: Summary) -> Summary {
        Summary {
            len: self.len + next.len,
            prefix: if self.all_free { (self.len + next.prefix).min(CAP) } else { self.prefix },
            suffix: if next.all_free { (next.len + self.suffix).min(CAP) } else { next.suffix },
            max: self.max.max(next.max).max((self.suffix + next.prefix).min(CAP)),
            all_free: self.all_free && next.all_free,
            has_slot: self.has_slot || next.has_slot,
        }
    }

    fn encode(self) -> u64 {
        WRITTEN
            | if self.all_free { ALL_FREE } else { 0 }
            | if self.has_slot { HAS_SLOT } else { 0 }
            | self.prefix << (2 * FIELD_BITS)
            | self.suffix << FIELD_BITS
            | self.max
    }

    fn decode(word: u64, len: u64) -> Summary {
        if word & WRITTEN == 0 {
            return Summary::free(len);
        }
        // Clamped to the pages: a damaged word must not make a search count pages it does not
        // cover.
        let field = |shift: u32| ((word >> shift) & CAP).min(len);
        Summary {
            len,
            prefix: field(2 * FIELD_BITS),
            suffix: field(FIELD_BITS),
            max: field(0),
            all_free: word & ALL_FREE != 0,
            has_slot: word & HAS_SLOT != 0,
        }
    }
}

/// The longest run of set bits in `bits`, in a few steps: windows of 1, 2, 4... pages up to the
/// longest that fits, then the smaller windows appended while they still fit.
fn longest_run(bits: u64) -> u64 {
    if bits == 0 {
        return 0;
    }
    // windows[k]: bit i is set when bits i..i + 2^k all are.
    let mut windows = [bits; 7];
    let mut top = 0;
    while top < 6 {
        let doubled = windows[top] & (windows[top] >> (1 << top));
        if doubled == 0 {
            break;
        }
        top += 1;
        windows[top] = doubled;
    }
    let (mut found, mut len) = (windows[top], 1u64 << top);
    for k in (0..top).rev() {
        let longer = found & windows[k].checked_shr(len as u32).unwrap_or(0);
        if longer != 0 {
            found = longer;
            len += 1 << k;
        }
    }
    len
}

/// What searching a word's pages found: the first page of a fitting run, or else the free
/// pages its range ends with (to be continued by the next one).
enum Probe {
    Found(u64),
    Suffix(u64),
}

/// The free-run index of one region: its words, the page bitmap it summarises, and the pages.
#[derive(Clone, Copy)]
pub struct RunIndex<'a> {
    nodes: &'a [AtomicU64],
    bitmap: &'a [AtomicU64],
    shape: &'a RunShape,
    pages: u64,
    limit: u64,
}

impl<'a> RunIndex<'a> {
    /// The index of `shape` held in `nodes`, over the bitmap words `bitmap` of `pages` pages, of
    /// which none at or above `limit` (the high-water mark) was ever claimed: neither their
    /// bitmap words nor their summaries are read.
    pub fn new(
        nodes: &'a [AtomicU64],
        bitmap: &'a [AtomicU64],
        shape: &'a RunShape,
        pages: u64,
        limit: u64,
    ) -> Self {
        debug_assert!(nodes.len() >= shape.total_words() && bitmap.len() as u64 * PAGES_PER_WORD >= pages);
        RunIndex { nodes, bitmap, shape, pages, limit: limit.min(pages) }
    }

    /// The pages `[start, end)` of word `index` of `level` (clipped to the pool).
    fn range(&self, level: usize, index: u64) -> (u64, u64) {
        let span = RunShape::node_pages(level);
        let start = index * span;
        (start.min(self.pages), (start + span).min(self.pages))
    }

    fn node(&self, level: usize, index: u64) -> &AtomicU64 {
        &self.nodes[self.shape.offsets[level] + index as usize]
    }

    /// Free bits of the leaf `leaf`, one `u32` per bitmap word: pages at or above `limit` free
    /// without a read, pages past the pool and below `from` not free. Words past the pool are
    /// all zero.
    fn leaf_free(&self, leaf: u64, from: u64) -> [u32; WORDS_PER_LEAF as usize] {
        let mut free = [0u32; WORDS_PER_LEAF as usize];
        let start = leaf * RunShape::LEAF_PAGES;
        if from <= start && start + RunShape::LEAF_PAGES <= self.limit {
            // The common case: a whole leaf of claimed-at-some-time pages.
            let words = &self.bitmap[(start / PAGES_PER_WORD) as usize..][..WORDS_PER_LEAF as usize];
            for (bits, word) in free.iter_mut().zip(words) {
                // ORDERING: Acquire, with the fences of `refresh`: see the module docs.
                *bits = PageBits::free_of(word.load(Ordering::Acquire));
            }
            return free;
        }
        for (i, bits) in free.iter_mut().enumerate() {
            let first = (leaf * WORDS_PER_LEAF + i as u64) * PAGES_PER_WORD;
            if first >= self.pages {
                break;
            }
            let word = if first < self.limit {
                // ORDERING: Acquire, with the fences of `refresh`: see the module docs.
                PageBits::free_of(self.bitmap[(first / PAGES_PER_WORD) as usize].load(Ordering::Acquire))
            } else {
                u32::MAX
            };
            let past_end = (self.pages - first).min(PAGES_PER_WORD);
            let in_pool = if past_end == PAGES_PER_WORD { u32::MAX } else { (1u32 << past_end) - 1 };
            let below = from.saturating_sub(first).min(PAGES_PER_WORD);
            let at_from = if below == PAGES_PER_WORD { 0 } else { u32::MAX << below };
            *bits = word & in_pool & at_from;
        }
        free
    }

    /// The summary word `index` of `level` should hold, from the words below it.
    fn compute(&self, level: usize, index: u64) -> Summary {
        self.summarise(level, index, &self.below(level, index))
    }

    /// What word `index` of `level` is computed from: the free bits of its bitmap words (a
    /// leaf), or its children's words (0, "never written", for those above `limit`).
    fn below(&self, level: usize, index: u64) -> [u64; RunShape::FAN_OUT as usize] {
        const _: () = assert!(WORDS_PER_LEAF == RunShape::FAN_OUT);
        if level == 0 {
            return self.leaf_free(index, 0).map(u64::from);
        }
        let mut words = [0; RunShape::FAN_OUT as usize];
        for (i, word) in words.iter_mut().enumerate() {
            let child = index * RunShape::FAN_OUT + i as u64;
            if self.range(level - 1, child).0 < self.limit {
                // ORDERING: Acquire, with the fences of `refresh`: see the module docs.
                *word = self.node(level - 1, child).load(Ordering::Acquire);
            }
        }
        words
    }

    /// The summary of word `index` of `level` whose words below are `below`.
    fn summarise(&self, level: usize, index: u64, below: &[u64; RunShape::FAN_OUT as usize]) -> Summary {
        let (start, end) = self.range(level, index);
        // A leaf, 64 pages (two bitmap words) at a time; a word above, child by child.
        let part =
            if level == 0 { 2 * PAGES_PER_WORD } else { RunShape::node_pages(level) / RunShape::FAN_OUT };
        let of = |i: usize, first: u64| {
            let len = (end - first).min(part);
            match level {
                0 => Summary::of_word(below[2 * i] | below[2 * i + 1] << PAGES_PER_WORD, len),
                _ => Summary::decode(below[i], len),
            }
        };
        let mut summary = of(0, start);
        let (mut i, mut first) = (1, start + part);
        while first < end {
            summary = summary.then(of(i, first));
            (i, first) = (i + 1, first + part);
        }
        summary
    }

    /// Word `index` of `level`, as stored (free without a read if its pages are above `limit`).
    fn summary(&self, level: usize, index: u64) -> Summary {
        let (start, end) = self.range(level, index);
        if start >= self.limit {
            return Summary::free(end - start);
        }
        // ORDERING: Acquire, with the fences of `refresh`: see the module docs.
        Summary::decode(self.node(level, index).load(Ordering::Acquire), end - start)
    }

    /// Brings word `index` of `level` up to date with the words below it; whether it wrote.
    fn refresh_word(&self, level: usize, index: u64) -> bool {
        let node = self.node(level, index);
        let (start, end) = self.range(level, index);
        let mut wrote = false;
        // ORDERING: Acquire, as in `summary`.
        let mut stored = node.load(Ordering::Acquire);
        let mut seen = self.below(level, index);
        for _ in 0..MAX_REFRESHES {
            let wanted = self.summarise(level, index, &seen);
            if Summary::decode(stored, end - start) == wanted {
                break;
            }
            // ORDERING: AcqRel, then a store-load fence before the look below: it sees every
            // change below that a refresher which stopped on our old value had made.
            let exchanged =
                node.compare_exchange(stored, wanted.encode(), Ordering::AcqRel, Ordering::Acquire);
            store_load_fence();
            let now = self.below(level, index);
            match exchanged {
                // What we wrote still summarises what is below: done.
                Ok(_) if now == seen => return true,
                Ok(_) => {
                    wrote = true;
                    stored = wanted.encode();
                }
                Err(actual) => stored = actual,
            }
            seen = now;
        }
        wrote
    }

    /// Refreshes the summaries of pages `from..to` (whose bits the caller just changed), from
    /// the leaves up, as far as they change.
    pub fn refresh(&self, from: u64, to: u64) {
        self.refresh_from(0, from, to, false);
    }

    /// [`RunIndex::refresh`] all the way up, changed or not: for summaries a participant may
    /// have left half refreshed (it was killed, or a search found them wrong).
    pub fn refresh_all(&self, from: u64, to: u64) {
        self.refresh_from(0, from, to, true);
    }

    /// Refreshes the words of `level` and above over pages `from..to`; unless `all`, stops at
    /// the first level where none changed.
    fn refresh_from(&self, level: usize, from: u64, to: u64, all: bool) {
        if from >= self.limit {
            return;
        }
        // Orders the caller's change of the words below (a read-modify-write) before our reads
        // of the words above (see the module docs).
        store_load_fence();
        let to = to.clamp(from + 1, self.limit);
        for level in level..self.shape.levels {
            let span = RunShape::node_pages(level);
            let mut wrote = false;
            for index in from / span..to.div_ceil(span) {
                wrote |= self.refresh_word(level, index);
            }
            if !wrote && !all {
                return;
            }
        }
    }

    /// Recomputes every summary over pages below `backed` (whose words have memory behind
    /// them): those above `limit` become "never written" again. A quiescent heap only (repair).
    pub fn rebuild(&self, backed: u64) {
        for level in 0..self.shape.levels {
            let span = RunShape::node_pages(level);
            for index in 0..backed.min(self.pages).div_ceil(span) {
                let wanted = if index * span < self.limit { self.compute(level, index).encode() } else { 0 };
                // ORDERING: Relaxed: nobody else runs.
                self.node(level, index).store(wanted, Ordering::Relaxed);
            }
        }
    }

    /// Whether every summary below `limit` is what its words below say (a quiescent heap).
    pub fn is_exact(&self) -> bool {
        (0..self.shape.levels).all(|level| {
            let span = RunShape::node_pages(level);
            (0..self.limit.div_ceil(span))
                .all(|index| self.summary(level, index) == self.compute(level, index))
        })
    }

    /// The first page of the lowest run of `len` free pages starting at or after `from`, by the
    /// summaries (`None` also when `len` is above [`CAP`]: look in the bitmap). The run may be
    /// taken by the time the caller claims it.
    pub fn find_run(&self, len: u64, from: u64) -> Option<u64> {
        if len == 0 || len > CAP || from >= self.pages {
            return None;
        }
        match self.probe_run(self.shape.levels - 1, 0, len, from, 0) {
            Probe::Found(start) => Some(start),
            Probe::Suffix(_) => None,
        }
    }

    /// Looks for the run in word `index` of `level`, where `before` free pages end right before
    /// it (all at or after `from`).
    fn probe_run(&self, level: usize, index: u64, len: u64, from: u64, before: u64) -> Probe {
        if level == 0 {
            return self.probe_leaf(index, len, from, before);
        }
        let end = self.range(level, index).1;
        let mut before = before;
        let first = index * RunShape::FAN_OUT;
        for child in first..first + RunShape::FAN_OUT {
            let (child_start, child_end) = self.range(level - 1, child);
            if child_start >= end || child_start >= self.pages {
                break;
            }
            if child_end <= from {
                continue;
            }
            let summary = self.summary(level - 1, child);
            if child_start < from || before + summary.prefix >= len || summary.max >= len {
                match self.probe_run(level - 1, child, len, from, before) {
                    Probe::Found(page) => return Probe::Found(page),
                    Probe::Suffix(free) => {
                        if child_start >= from && child_start < self.limit {
                            // It promised a run that its words below do not have.
                            self.refresh_from(level - 1, child_start, child_end, false);
                        }
                        before = free;
                    }
                }
            } else if summary.all_free {
                before += summary.len;
            } else {
                before = summary.suffix;
            }
        }
        Probe::Suffix(before)
    }

    /// [`RunIndex::probe_run`] in a leaf, from its bitmap words.
    fn probe_leaf(&self, leaf: u64, len: u64, from: u64, before: u64) -> Probe {
        let (start, end) = self.range(0, leaf);
        let free = self.leaf_free(leaf, from);
        let pages = end - start;
        // The first page at or after `at` (leaf-relative) whose free bit is `value`, or `pages`.
        let next = |at: u64, value: bool| {
            let mut page = at;
            while page < pages {
                let word = page / PAGES_PER_WORD;
                let bits = if value { free[word as usize] } else { !free[word as usize] };
                let bits = (bits as u64) & (u64::MAX << (page % PAGES_PER_WORD));
                if bits != 0 {
                    return (word * PAGES_PER_WORD + bits.trailing_zeros() as u64).min(pages);
                }
                page = (word + 1) * PAGES_PER_WORD;
            }
            pages
        };
        let mut at = 0;
        if before > 0 {
            let prefix = next(0, false);
            if before + prefix >= len {
                return Probe::Found(start - before);
            }
            if prefix == pages {
                return Probe::Suffix(before + pages);
            }
            at = prefix;
        }
        loop {
            let run = next(at, true);
            if run == pages {
                return Probe::Suffix(0);
            }
            let run_end = next(run, false);
            if run_end - run >= len {
                return Probe::Found(start + run);
            }
            if run_end == pages {
                return Probe::Suffix(run_end - run);
            }
            at = run_end;
        }
    }

    /// The lowest free aligned span slot at or after slot `from`, by the summaries.
    pub fn find_slot(&self, from: u64) -> Option<u64> {
        self.probe_slot(self.shape.levels - 1, 0, from * SPAN_PAGES)
    }

    fn probe_slot(&self, level: usize, index: u64, from: u64) -> Option<u64> {
        let (start, end) = self.range(level, index);
        if end <= from {
            return None;
        }
        if level == 0 {
            let free = self.leaf_free(index, from);
            let halves = free.iter().flat_map(|&word| [word & 0xFFFF, word >> 16]);
            return halves.zip(0..).find(|&(half, _)| half == 0xFFFF).map(|(_, i)| start / SPAN_PAGES + i);
        }
        let first = index * RunShape::FAN_OUT;
        for child in first..first + RunShape::FAN_OUT {
            let (child_start, child_end) = self.range(level - 1, child);
            if child_start >= end || child_start >= self.pages {
                break;
            }
            if child_end <= from || !(child_start < from || self.summary(level - 1, child).has_slot) {
                continue;
            }
            match self.probe_slot(level - 1, child, from) {
                Some(slot) => return Some(slot),
                None if child_start >= from && child_start < self.limit => {
                    self.refresh_from(level - 1, child_start, child_end, false);
                }
                None => {}
            }
        }
        None
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn the_longest_run_is_what_counting_finds(bits: u64, shift in 0u32..64) {
            let bits = bits >> shift; // longer runs of zeros too
            let (mut longest, mut run) = (0, 0);
            for i in 0..64 {
                run = if bits >> i & 1 == 1 { run + 1 } else { 0 };
                longest = longest.max(run);
            }
            proptest::prop_assert_eq!(longest_run(bits), longest);
            proptest::prop_assert_eq!(longest_run(!bits), (0..64).map(|i| (!bits >> i).trailing_ones()).max().unwrap_or(0) as u64);
        }
    }

    #[test]
    fn word_summaries_count_runs_and_slots() {
        let s = Summary::of_word(0b0111_0000_1100_0000_0000_0000_1111_0011, 32);
        assert_eq!((s.prefix, s.suffix, s.max, s.all_free, s.has_slot), (2, 0, 4, false, false));
        let s = Summary::of_word(0xFFFF_0000, 32);
        assert_eq!((s.prefix, s.suffix, s.max, s.all_free, s.has_slot), (0, 16, 16, false, true));
        let s = Summary::of_word(u64::MAX, 32);
        assert!(s.all_free && s.max == 32 && s.has_slot);
        let s = Summary::of_word(u64::MAX, 20);
        assert_eq!(s, Summary::free(20), "the pool ends after 20 pages");
        let s = Summary::of_word(0x000F_FFF0, 20);
        assert_eq!((s.prefix, s.suffix, s.max, s.all_free, s.has_slot), (0, 16, 16, false, false));
        let joined = Summary::of_word(0xC000_0000, 32).then(Summary::of_word(0x0000_0007, 32));
        assert_eq!((joined.prefix, joined.suffix, joined.max, joined.len), (0, 0, 5, 64));
        for s in [Summary::of_word(0x00F0_0F01, 32), Summary::free(1 << 30), joined] {
            assert_eq!(Summary::decode(s.encode(), s.len), s);
        }
        assert_eq!(Summary::decode(0, 300), Summary::free(300), "never written: all free");
    }

    /// A page bitmap and its index, changed one run at a time as the heap does.
    struct Model {
        bits: Vec<AtomicU64>,
        nodes: Vec<AtomicU64>,
        shape: RunShape,
        pages: u64,
        claimed: Vec<bool>,
        limit: u64,
    }

    impl Model {
        fn new(pages: u64) -> Model {
            let shape = RunShape::new(pages);
            let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
            let words = pages.div_ceil(PAGES_PER_WORD) as usize;
            Model {
                bits: zeros(words),
                nodes: zeros(shape.total_words()),
                shape,
                pages,
                claimed: vec![false; pages as usize],
                limit: 0,
            }
        }

        fn limit(&self) -> u64 {
            self.limit
        }

        fn index(&self) -> RunIndex<'_> {
            RunIndex::new(&self.nodes, &self.bits, &self.shape, self.pages, self.limit())
        }

        /// Claims `from..to` if it is free, or releases it if it is all claimed.
        fn flip(&mut self, from: u64, to: u64) {
            let map = PageBits::new(&self.bits, self.pages);
            if self.claimed[from as usize..to as usize].iter().all(|&c| !c) {
                assert_eq!(map.try_claim(from, to), Ok(()));
                self.claimed[from as usize..to as usize].fill(true);
                self.limit = self.limit.max(to);
                self.index().refresh(from, to);
            } else if self.claimed[from as usize..to as usize].iter().all(|&c| c) {
                let before = self.index();
                let limit = before.limit;
                map.release(from, to - from);
                self.claimed[from as usize..to as usize].fill(false);
                // Refreshed with the mark as it was: a mark never falls.
                RunIndex::new(&self.nodes, &self.bits, &self.shape, self.pages, limit).refresh(from, to);
            }
        }

        fn lowest_run(&self, len: u64, from: u64) -> Option<u64> {
            let mut run = 0;
            for page in from..self.pages {
                run = if self.claimed[page as usize] { 0 } else { run + 1 };
                if run == len {
                    return Some(page + 1 - len);
                }
            }
            None
        }

        fn lowest_slot(&self, from: u64) -> Option<u64> {
            (from..self.pages / SPAN_PAGES).find(|&slot| {
                let pages = (slot * SPAN_PAGES) as usize..((slot + 1) * SPAN_PAGES) as usize;
                self.claimed[pages].iter().all(|&c| !c)
            })
        }
    }

    proptest::proptest! {
        /// After every claim and release, every summary is exact and searches find exactly what
        /// a scan of a plain array finds (the lowest fitting run, the lowest free slot).
        #[test]
        fn searches_find_the_lowest_fit_as_a_plain_scan_does(
            pages in 1u64..3000,
            ops in proptest::collection::vec((0u64..3000, 1u64..700), 1..60),
            queries in proptest::collection::vec((1u64..900, 0u64..3000), 1..20),
        ) {
            let mut model = Model::new(pages);
            for (start, len) in ops {
                let from = start % pages;
                model.flip(from, (from + len).min(pages));
                proptest::prop_assert!(model.index().is_exact());
                for &(len, from) in &queries {
                    proptest::prop_assert_eq!(model.index().find_run(len, from), model.lowest_run(len, from));
                    let slot = from / SPAN_PAGES;
                    proptest::prop_assert_eq!(model.index().find_slot(slot), model.lowest_slot(slot));
                }
            }
        }
    }

    #[test]
    fn a_summary_that_promises_too_much_is_put_right_by_the_search_that_finds_out() {
        let mut model = Model::new(4096);
        model.flip(0, 2000);
        model.flip(3000, 3001);
        // A claimer of 2000..2300 stopped before refreshing: the summaries say free.
        assert_eq!(PageBits::new(&model.bits, 4096).try_claim(2000, 2300), Ok(()));
        let leaf = 2048 / RunShape::LEAF_PAGES;
        let index = model.index();
        assert_ne!(index.summary(0, leaf), index.compute(0, leaf));
        assert_eq!(index.find_run(200, 0), Some(2300), "the bitmap has the last word");
        assert_eq!(index.summary(0, leaf), index.compute(0, leaf), "and the search put the leaf right");
        index.refresh_all(2000, 2300);
        assert!(index.is_exact());
    }
}
