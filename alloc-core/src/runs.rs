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
//! One exception, for the runs a cache claims once it has claimed `OWN_BLOCKS_AFTER` of them
//! (`pages::fit_in_own_block`): the data area is cut into blocks of `BLOCK_PAGES` pages, each
//! with an owner word naming the participant whose cache claims runs there, and such a claim
//! whose lowest fit lies in another live participant's block takes the next fit in a block of
//! its own or nobody's instead (a few fits on at most, else the lowest fit all the same). One
//! participant alone places by first fit exactly; several that claim often keep their cached
//! runs apart, as glibc's per-thread arenas do (a block is backed whole: caches that claim a
//! few runs take none, and an idle one keeps nobody out). Runs of
//! two threads interleaved page by page made each thread's walk through its own runs' metadata
//! fetch (by the cores' prefetchers) the lines the other was about to write: two threads
//! replacing 64 KiB buffers scaled 1.2× instead of 1.85× (BENCHMARKS.md). Owner words are
//! hints: a claim still takes its pages by the bitmap protocol, a stale owner costs only
//! placement (a participant that stops or idles after claiming often keeps others' cached
//! claims out of its blocks, never a claim from room). A cache gives its blocks up when it is
//! flushed (a `LocalPool` when dropped), and keeps 16 at most; a block whose owner's record is
//! free is anyone's (a dead participant's after `reclaim_dead`, unless a new participant took
//! the record first: then it inherits them, as it would an idle owner's).
//!
//! Each word summarises a range of pages: the free pages it starts with (*prefix*), ends with
//! (*suffix*), its longest free run (*max*), whether it is all free, and whether it holds a free
//! aligned span slot. Level 0 summarises eight bitmap words (`RunShape::LEAF_PAGES` pages), every
//! level above eight words below, up to a top level of at most `RunShape::ROOT_WORDS` words,
//! which a search reads in turn (a tree up to one word had two more levels for every release to
//! refresh in a 2 GiB pool, and saved a search little reading). Counts are capped at [`CAP`]
//! pages (searches for more use the bitmap). A word never written (zero) means "all free": a
//! fresh region needs no writing, and pages above the high-water mark (never claimed) are read
//! as free without touching their words.
//!
//! The index is a *hint*. The page bitmap alone says what is claimed; a claim sets bits with
//! compare-exchanges that fail on any page taken, so a stale summary can never hand out a page
//! twice. What staleness could cost is a refusal with room left, so a search that the index
//! answers "none" looks through the bitmap itself before giving up, and an allocation whose
//! claims were lost since it last did (which moves its search past the pages it lost), or whose
//! pages could not be backed, looks through the bitmap from the start before it refuses
//! (`pages::alloc_large`). A search checks against the bitmap the count of free pages it carries
//! into a leaf from the summaries before it. Searches never write summaries: only those who
//! change page bits do, and they record what they change (a search that wrote and was killed
//! would leave a summary wrong that nobody knows of).
//!
//! Keeping it exact: whoever changes page bits (a claim, a release, a claim undone after a
//! conflict) refreshes the summaries above them, bottom up, while its `PENDING` word names the
//! run and its length (so that `reclaim_dead` refreshes them for a participant killed before it
//! did). Refreshing a word: recompute it from the words below and compare-exchange it in. Pages
//! freed (a release, a claim undone) are carried all the way up even where a word was already
//! right: that word's writer may be stopped before it went on up, and stopping there would hide
//! the freed pages while it is. Pages claimed stop at the first level where nothing was
//! written: a claim can only make summaries promise too much, and the writer of the word that
//! was already right carries it up. A claim writes the words all of whose pages it claimed
//! without reading below them: they stay claimed while it holds them, so "nothing free" is
//! known and cannot change under it. After a successful write the refresher looks below again
//! and goes on until what it wrote is what it sees (a writer that computed from words read
//! before someone else's change, and that someone found the old value right, would leave it
//! stale otherwise); it leaves a word only to writers that beat it, after some failed
//! compare-exchanges (their look after writing covers our change). With a store-load fence
//! between a change below and the read above (`primitive::store_load_fence`), the last writer
//! of a word sees every change below it. The high-water mark is read afresh at every look, so a
//! refresher racing a claim above the old mark sees the claimed pages. Loom models
//! (`loom-tests/tests/runs.rs`) fail without the look again, the fence (also after a claim's
//! write of a word it holds whole), the fresh mark, or the refresh after a lost claim.
//!
//! So when every participant has finished, every summary is exact. A participant stopped in the
//! middle of a refresh leaves the summaries above it stale until someone frees pages under them
//! (whose refresh goes all the way up) or it goes on (as it may also when it wrote a word that
//! a releaser then left to it); meanwhile searches may miss runs there and fall back to the
//! bitmap, never a refusal; `reclaim_dead` refreshes them for a dead one.

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
/// Failed compare-exchanges after which a refresh of a word leaves it to the writers that beat
/// it (see [`RunIndex::refresh_word`]).
const MAX_FAILURES: usize = 8;
const WORDS_PER_LEAF: u64 = RunShape::LEAF_PAGES / PAGES_PER_WORD;
/// Pages a leaf's summary is computed from at a time: two bitmap words.
const CHUNK_PAGES: u64 = 2 * PAGES_PER_WORD;
const CHUNKS_PER_LEAF: usize = (RunShape::LEAF_PAGES / CHUNK_PAGES) as usize;

/// The free bits of chunk `i` of a leaf whose bitmap words are `words`.
#[inline]
fn chunk_of(words: &[u64; WORDS_PER_LEAF as usize], i: usize) -> u64 {
    PageBits::free_of(words[2 * i]) as u64 | (PageBits::free_of(words[2 * i + 1]) as u64) << PAGES_PER_WORD
}

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

    /// Nothing free among `len` pages.
    fn claimed(len: u64) -> Summary {
        Summary { len, prefix: 0, suffix: 0, max: 0, all_free: false, has_slot: false }
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
            return Summary::claimed(pages);
        }
        Summary {
            len: pages,
            prefix: free.trailing_ones() as u64,
            suffix: (free << (64 - pages)).leading_ones() as u64,
            max: longest_run(free),
            all_free: false,
            has_slot: slot_lanes(free) != 0,
        }
    }

    /// The summary of `self`'s pages followed by `next`'s: two at a time, what
    /// [`Summary::join`] is checked against.
    #[cfg(test)]
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

    /// The summary of `parts` one after the other (what folding them with [`Summary::then`]
    /// gives, in one pass: counts are capped once, at the end).
    #[inline]
    fn join(parts: impl Iterator<Item = Summary>) -> Summary {
        let (mut len, mut prefix, mut run, mut max) = (0, 0, 0, 0);
        let (mut all_free, mut has_slot) = (true, false);
        for part in parts {
            len += part.len;
            has_slot |= part.has_slot;
            if part.all_free {
                // `run`: the free pages the parts so far end with.
                run += part.len;
                continue;
            }
            if all_free {
                (prefix, all_free) = (run + part.prefix, false);
            }
            max = max.max(part.max).max(run + part.prefix);
            run = part.suffix;
        }
        if all_free {
            prefix = run;
        }
        Summary {
            len,
            prefix: prefix.min(CAP),
            suffix: run.min(CAP),
            max: max.max(run).min(CAP),
            all_free,
            has_slot,
        }
    }

    /// [`Summary::join`] of the decoded `words`, each over `part` pages, when every one is
    /// written and none is all free (the common case above the leaves): straight from the
    /// stored fields, without branches. `None` otherwise.
    #[inline]
    fn join_stored(words: &[u64; RunShape::FAN_OUT as usize], part: u64) -> Option<Summary> {
        if words.iter().any(|&word| word & (WRITTEN | ALL_FREE) != WRITTEN) {
            return None;
        }
        // Clamped to the pages, as in `decode`.
        let field = |word: u64, shift: u32| ((word >> shift) & CAP).min(part);
        let (mut max, mut run, mut slots) = (0, 0, 0);
        for &word in words {
            max = max.max(field(word, 0)).max(run + field(word, 2 * FIELD_BITS));
            run = field(word, FIELD_BITS);
            slots |= word;
        }
        Some(Summary {
            len: part * RunShape::FAN_OUT,
            prefix: field(words[0], 2 * FIELD_BITS).min(CAP),
            suffix: run.min(CAP),
            max: max.max(run).min(CAP),
            all_free: false,
            has_slot: slots & HAS_SLOT != 0,
        })
    }

    /// The summary of a whole leaf from its free bits, [`CHUNK_PAGES`] at a time: what joining
    /// their [`Summary::of_word`]s gives, in one pass.
    #[inline]
    fn of_leaf(chunks: [u64; CHUNKS_PER_LEAF]) -> Summary {
        if chunks.iter().all(|&free| free == u64::MAX) {
            return Summary::free(RunShape::LEAF_PAGES);
        }
        let (mut prefix, mut run, mut max, mut slots) = (None, 0, 0, 0);
        for free in chunks {
            slots |= slot_lanes(free);
            if free == u64::MAX {
                // `run`: the free pages the chunks so far end with.
                run += CHUNK_PAGES;
                continue;
            }
            let first = run + free.trailing_ones() as u64;
            prefix.get_or_insert(first);
            max = max.max(first);
            if free != 0 {
                max = max.max(longest_run(free));
            }
            run = free.leading_ones() as u64;
        }
        Summary {
            len: RunShape::LEAF_PAGES,
            prefix: prefix.unwrap_or(run),
            suffix: run,
            max: max.max(run),
            all_free: false,
            has_slot: slots != 0,
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

/// The free aligned span slots among 64 pages whose free bits are `free`: bit `16 * i` set when
/// pages `16 * i..16 * (i + 1)` all are free.
#[inline]
fn slot_lanes(free: u64) -> u64 {
    const _: () = assert!(SPAN_PAGES == 16);
    let lanes = free & (free >> 8);
    let lanes = lanes & (lanes >> 4);
    let lanes = lanes & (lanes >> 2);
    lanes & (lanes >> 1) & 0x0001_0001_0001_0001
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

/// Whether two looks below saw the same words (without a call to `memcmp`).
#[inline]
fn same(a: &[u64; RunShape::FAN_OUT as usize], b: &[u64; RunShape::FAN_OUT as usize]) -> bool {
    a.iter().zip(b).fold(0, |differ, (x, y)| differ | (x ^ y)) == 0
}

/// What searching a word's pages found: the first page of a fitting run, or else the free
/// pages its range ends with (to be continued by the next one).
enum Probe {
    Found(u64),
    Suffix(u64),
}

/// The free-run index of one region: its words, the page bitmap it summarises, the pages, and
/// the words that say how far pages were ever claimed.
#[derive(Clone, Copy)]
pub struct RunIndex<'a> {
    nodes: &'a [AtomicU64],
    bitmap: &'a [AtomicU64],
    shape: &'a RunShape,
    pages: u64,
    mark: &'a AtomicU64,
    backed: Option<&'a AtomicU64>,
}

impl<'a> RunIndex<'a> {
    /// The index of `shape` held in `nodes`, over the bitmap words `bitmap` of `pages` pages.
    /// No page at or above the high-water mark `mark` (nor above `backed`, if given: the pages
    /// with memory behind them) was ever claimed: neither their bitmap words nor their summaries
    /// are read. Both are read afresh at every look, since they rise while others work.
    pub fn new(
        nodes: &'a [AtomicU64],
        bitmap: &'a [AtomicU64],
        shape: &'a RunShape,
        pages: u64,
        mark: &'a AtomicU64,
        backed: Option<&'a AtomicU64>,
    ) -> Self {
        debug_assert!(nodes.len() >= shape.total_words() && bitmap.len() as u64 * PAGES_PER_WORD >= pages);
        RunIndex { nodes, bitmap, shape, pages, mark, backed }
    }

    /// The pages below which pages may have been claimed, now.
    fn limit(&self) -> u64 {
        // ORDERING: Acquire pairs with the Release that raised the mark (and backed the pages):
        // a claimer raises it before it claims, and refreshes after.
        let mark = self.mark.load(Ordering::Acquire);
        let backed = self.backed.map_or(u64::MAX, |backed| backed.load(Ordering::Acquire));
        mark.min(backed).min(self.pages)
    }

    /// The pages `[start, end)` of word `index` of `level` (clipped to the pool).
    fn range(&self, level: usize, index: u64) -> (u64, u64) {
        let span = RunShape::node_pages(level);
        let start = index * span;
        (start.min(self.pages), (start + span).min(self.pages))
    }

    /// The words of `level - 1` below word `index` of `level`; the level above the top stands
    /// for one word over the whole top level, which a search starts from.
    fn children(&self, level: usize, index: u64) -> core::ops::Range<u64> {
        if level == self.shape.levels {
            return 0..self.shape.words[level - 1] as u64;
        }
        let first = index * RunShape::FAN_OUT;
        first..first + RunShape::FAN_OUT
    }

    fn node(&self, level: usize, index: u64) -> &AtomicU64 {
        &self.nodes[self.shape.offsets[level] + index as usize]
    }

    /// The free bits of bitmap word `word` (pages at or above `limit` free without a read).
    fn free_bits(&self, word: u64, limit: u64) -> u32 {
        if word * PAGES_PER_WORD < limit {
            // ORDERING: Acquire, with the fences of `refresh`: see the module docs.
            PageBits::free_of(self.bitmap[word as usize].load(Ordering::Acquire))
        } else {
            u32::MAX
        }
    }

    /// Free bits of the leaf `leaf`, one `u32` per bitmap word: pages at or above `limit` free
    /// without a read, pages past the pool and below `from` not free. Words past the pool are
    /// all zero.
    fn leaf_free(&self, leaf: u64, from: u64, limit: u64) -> [u32; WORDS_PER_LEAF as usize] {
        let mut free = [0u32; WORDS_PER_LEAF as usize];
        let first_word = leaf * WORDS_PER_LEAF;
        if from <= first_word * PAGES_PER_WORD && (first_word + WORDS_PER_LEAF) * PAGES_PER_WORD <= limit {
            // The common case: a whole leaf of pages below the mark.
            for (bits, word) in free.iter_mut().zip(first_word..) {
                *bits = self.free_bits(word, limit);
            }
            return free;
        }
        for (bits, word) in free.iter_mut().zip(first_word..) {
            let first = word * PAGES_PER_WORD;
            if first >= self.pages {
                break;
            }
            let past_end = (self.pages - first).min(PAGES_PER_WORD);
            let in_pool = if past_end == PAGES_PER_WORD { u32::MAX } else { (1u32 << past_end) - 1 };
            let below = from.saturating_sub(first).min(PAGES_PER_WORD);
            let at_from = if below == PAGES_PER_WORD { 0 } else { u32::MAX << below };
            *bits = self.free_bits(word, limit) & in_pool & at_from;
        }
        free
    }

    /// The free pages that end right before page `end`, counted back from it, at most `most`
    /// (from the bitmap: what a search checks before it trusts the summaries' count).
    fn free_before(&self, end: u64, most: u64, limit: u64) -> u64 {
        let mut count = 0;
        while count < most {
            let last = end - count - 1;
            let word = last / PAGES_PER_WORD;
            let pages = last % PAGES_PER_WORD + 1; // pages of the word up to `last`
            let bits = (self.free_bits(word, limit) as u64) << (64 - pages);
            let free = (bits.leading_ones() as u64).min(pages);
            count += free;
            if free < pages {
                break;
            }
        }
        count.min(most)
    }

    /// The summary word `index` of `level` should hold, from the words below it.
    fn compute(&self, level: usize, index: u64) -> Summary {
        self.summarise(level, index, &self.below(level, index))
    }

    /// What word `index` of `level` is computed from, as stored: its bitmap words (a leaf), or
    /// its children's words; 0 for those above the mark, which means all free in both.
    fn below(&self, level: usize, index: u64) -> [u64; RunShape::FAN_OUT as usize] {
        const _: () = assert!(WORDS_PER_LEAF == RunShape::FAN_OUT);
        let limit = self.limit();
        let (words, pages_each) = match level {
            0 => (self.bitmap, PAGES_PER_WORD),
            _ => (&self.nodes[self.shape.offsets[level - 1]..], RunShape::node_pages(level - 1)),
        };
        let first = index * RunShape::FAN_OUT;
        let mut below = [0; RunShape::FAN_OUT as usize];
        if (first + RunShape::FAN_OUT) * pages_each <= limit {
            // The common case: every word below the limit.
            let words = &words[first as usize..][..RunShape::FAN_OUT as usize];
            for (word, cell) in below.iter_mut().zip(words) {
                // ORDERING: Acquire, with the fences of `refresh`: see the module docs.
                *word = cell.load(Ordering::Acquire);
            }
            return below;
        }
        for (word, at) in below.iter_mut().zip(first..) {
            // Below the limit (at most the pool's pages), so in the bitmap or the level.
            if at * pages_each < limit {
                // ORDERING: Acquire, with the fences of `refresh`: see the module docs.
                *word = words[at as usize].load(Ordering::Acquire);
            }
        }
        below
    }

    /// The summary of word `index` of `level` whose words below are `below`.
    #[inline]
    fn summarise(&self, level: usize, index: u64, below: &[u64; RunShape::FAN_OUT as usize]) -> Summary {
        let (start, end) = self.range(level, index);
        // The common cases in one pass each: a whole leaf; a whole word above whose children
        // are all written and none all free (a refresh runs this once or twice a level).
        if end - start == RunShape::node_pages(level) {
            if level == 0 {
                return Summary::of_leaf(core::array::from_fn(|i| chunk_of(below, i)));
            }
            if let Some(summary) = Summary::join_stored(below, RunShape::node_pages(level - 1)) {
                return summary;
            }
        }
        // Otherwise a leaf chunk by chunk, a word above child by child. Every part but the last
        // of the pool covers `part` pages.
        let part = if level == 0 { CHUNK_PAGES } else { RunShape::node_pages(level) / RunShape::FAN_OUT };
        let parts = (end - start).div_ceil(part).max(1) as usize;
        let len = |i: usize| (end - start - i as u64 * part).min(part);
        if level == 0 {
            Summary::join((0..parts).map(|i| Summary::of_word(chunk_of(below, i), len(i))))
        } else {
            Summary::join((0..parts).map(|i| Summary::decode(below[i], len(i))))
        }
    }

    /// Word `index` of `level`, as stored (free without a read if its pages are above `limit`).
    fn summary(&self, level: usize, index: u64, limit: u64) -> Summary {
        let (start, end) = self.range(level, index);
        if start >= limit {
            return Summary::free(end - start);
        }
        // ORDERING: Acquire, with the fences of `refresh`: see the module docs.
        Summary::decode(self.node(level, index).load(Ordering::Acquire), end - start)
    }

    /// Brings word `index` of `level` up to date with the words below it. Ends when what it
    /// sees below is what the word says, or when its compare-exchange failed often: each failure
    /// is someone else's write after our last look, whose own look after writing covers what we
    /// changed below. It never ends right after a write of its own that its next look below
    /// found out of date: someone who changed them since may have found our earlier value right
    /// and left. Whether it wrote.
    fn refresh_word(&self, level: usize, index: u64) -> bool {
        let node = self.node(level, index);
        let (start, end) = self.range(level, index);
        // ORDERING: Acquire, as in `summary`.
        let mut stored = node.load(Ordering::Acquire);
        let mut seen = self.below(level, index);
        let (mut failures, mut wrote) = (0, false);
        loop {
            let wanted = self.summarise(level, index, &seen);
            if Summary::decode(stored, end - start) == wanted {
                return wrote;
            }
            #[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
            tests::before_exchange(level);
            // ORDERING: AcqRel, then a store-load fence before the look below: it sees every
            // change below that a refresher which stopped on our old value had made.
            let exchanged =
                node.compare_exchange(stored, wanted.encode(), Ordering::AcqRel, Ordering::Acquire);
            store_load_fence();
            let now = self.below(level, index);
            match exchanged {
                Ok(_) if same(&now, &seen) => return true,
                Ok(_) => (stored, wrote) = (wanted.encode(), true),
                Err(actual) => {
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        return wrote;
                    }
                    stored = actual;
                }
            }
            seen = now;
        }
    }

    /// Brings word `index` of `level`, all of whose pages the caller has just claimed, up to
    /// date: they stay claimed while it holds them, so what the word should say (nothing free)
    /// is known without a look below, and cannot change under it. A refresher that computed the
    /// word from before the claim and writes after us looks below after writing, as every
    /// refresher does, and puts it right. Whether it wrote.
    fn write_held(&self, level: usize, index: u64) -> bool {
        let node = self.node(level, index);
        let (start, end) = self.range(level, index);
        let wanted = Summary::claimed(end - start).encode();
        // ORDERING: Acquire, as in `summary`.
        let mut stored = node.load(Ordering::Acquire);
        for _ in 0..MAX_FAILURES {
            if stored == wanted {
                return false;
            }
            #[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
            tests::before_exchange(level);
            // ORDERING: AcqRel, then a store-load fence before the words above are read, as in
            // `refresh_word` (no look below follows: nothing there changes). Without the fence a
            // refresher of the word above could miss our write while we miss its (loom:
            // `a_stale_refresh_of_a_leaf_a_claim_then_holds_whole_is_put_right`).
            let exchanged = node.compare_exchange(stored, wanted, Ordering::AcqRel, Ordering::Acquire);
            store_load_fence();
            match exchanged {
                Ok(_) => return true,
                Err(actual) => stored = actual,
            }
        }
        false
    }

    /// Refreshes the summaries of pages `from..to` (whose bits the caller just changed with a
    /// read-modify-write), from the leaves up to the top level.
    pub fn refresh(&self, from: u64, to: u64) {
        self.refresh_up(from, to, true);
    }

    /// [`RunIndex::refresh`] after a claim (pages that became claimed): it stops at the first
    /// level where it wrote nothing. A claim only ever makes summaries promise too much (which
    /// costs a search a look, never a run), so it need not go up past words that someone else
    /// already brought up to date and is carrying up. Words all of whose pages it claimed are
    /// written without a look below (`write_held`).
    pub fn refresh_claimed(&self, from: u64, to: u64) {
        self.refresh_up(from, to, false);
    }

    fn refresh_up(&self, from: u64, to: u64, all_the_way: bool) {
        // Orders the caller's change of the words below before our reads of the words above
        // (see the module docs).
        store_load_fence();
        let limit = self.limit();
        if from >= limit {
            return;
        }
        let to = to.clamp(from + 1, limit);
        // A release goes all the way up: a word that is right may still have a wrong one above
        // it (its last writer may be stopped before it went on up), and stopping there would
        // hide the pages released for as long as that writer is stopped.
        for level in 0..self.shape.levels {
            let span = RunShape::node_pages(level);
            let mut wrote = false;
            for index in from / span..to.div_ceil(span) {
                let held = !all_the_way && from <= index * span && (index + 1) * span <= to;
                wrote |= match held {
                    true => self.write_held(level, index),
                    false => self.refresh_word(level, index),
                };
            }
            if !wrote && !all_the_way {
                return;
            }
        }
    }

    /// Recomputes every summary over pages below `backed` (whose words have memory behind
    /// them): those above the mark become "never written" again. A quiescent heap only (repair).
    pub fn rebuild(&self, backed: u64) {
        let limit = self.limit();
        for level in 0..self.shape.levels {
            let span = RunShape::node_pages(level);
            for index in 0..backed.min(self.pages).div_ceil(span) {
                let wanted = if index * span < limit { self.compute(level, index).encode() } else { 0 };
                // ORDERING: Relaxed: nobody else runs.
                self.node(level, index).store(wanted, Ordering::Relaxed);
            }
        }
    }

    /// Whether every summary below the mark is what its words below say (a quiescent heap).
    pub fn is_exact(&self) -> bool {
        let limit = self.limit();
        (0..self.shape.levels).all(|level| {
            let span = RunShape::node_pages(level);
            (0..limit.div_ceil(span))
                .all(|index| self.summary(level, index, limit) == self.compute(level, index))
        })
    }

    /// The first page of the lowest run of `len` free pages starting at or after `from`, by the
    /// summaries (`None` also when `len` is above [`CAP`]: look in the bitmap). The run may be
    /// taken by the time the caller claims it.
    pub fn find_run(&self, len: u64, from: u64) -> Option<u64> {
        if len == 0 || len > CAP || from >= self.pages {
            return None;
        }
        match self.probe_run(self.shape.levels, 0, len, from, 0) {
            Probe::Found(start) => Some(start),
            Probe::Suffix(_) => None,
        }
    }

    /// Looks for the run in word `index` of `level`, where `before` free pages end right before
    /// it (all at or after `from`; a count from summaries, checked against the bitmap before
    /// an answer relies on it).
    fn probe_run(&self, level: usize, index: u64, len: u64, from: u64, before: u64) -> Probe {
        if level == 0 {
            return self.probe_leaf(index, len, from, before);
        }
        let limit = self.limit();
        let mut before = before;
        for child in self.children(level, index) {
            let (child_start, child_end) = self.range(level - 1, child);
            if child_start >= self.pages {
                break;
            }
            if child_end <= from {
                continue;
            }
            let summary = match child_start < limit {
                true => {
                    // ORDERING: Acquire, as in `summary`.
                    let word = self.node(level - 1, child).load(Ordering::Acquire);
                    // Most words a long search passes are written, not all free, and hold no
                    // fit of `len` nor start one: passed on their fields alone.
                    if word & (WRITTEN | ALL_FREE) == WRITTEN && child_start >= from {
                        let field = |shift: u32| ((word >> shift) & CAP).min(child_end - child_start);
                        if field(0) < len && before + field(2 * FIELD_BITS) < len {
                            before = field(FIELD_BITS);
                            continue;
                        }
                    }
                    Summary::decode(word, child_end - child_start)
                }
                false => Summary::free(child_end - child_start),
            };
            if child_start < from || before + summary.prefix >= len || summary.max >= len {
                match self.probe_run(level - 1, child, len, from, before) {
                    Probe::Found(page) => return Probe::Found(page),
                    Probe::Suffix(free) => before = free,
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
        let limit = self.limit();
        let (start, end) = self.range(0, leaf);
        let free = self.leaf_free(leaf, from, limit);
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
            let mut before = before;
            if before + prefix >= len {
                // The pages before come from summaries: the bitmap has the last word.
                before = self.free_before(start, before, limit);
                if before + prefix >= len {
                    return Probe::Found(start - before);
                }
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
        self.probe_slot(self.shape.levels, 0, from * SPAN_PAGES)
    }

    fn probe_slot(&self, level: usize, index: u64, from: u64) -> Option<u64> {
        let limit = self.limit();
        if level == 0 {
            let (start, end) = self.range(level, index);
            if end <= from {
                return None;
            }
            let free = self.leaf_free(index, from, limit);
            let halves = free.iter().flat_map(|&word| [word & 0xFFFF, word >> 16]);
            return halves.zip(0..).find(|&(half, _)| half == 0xFFFF).map(|(_, i)| start / SPAN_PAGES + i);
        }
        for child in self.children(level, index) {
            let (child_start, child_end) = self.range(level - 1, child);
            if child_start >= self.pages {
                break;
            }
            if child_end <= from || !(child_start < from || self.summary(level - 1, child, limit).has_slot) {
                continue;
            }
            if let Some(slot) = self.probe_slot(level - 1, child, from) {
                return Some(slot);
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
            let complement = (0..64).map(|i| (!bits >> i).trailing_ones()).max().unwrap_or(0);
            proptest::prop_assert_eq!(longest_run(!bits), complement as u64);
        }
    }

    proptest::proptest! {
        /// Joining summaries in one pass is folding them with `then`.
        #[test]
        fn a_join_is_a_fold_of_thens(
            parts in proptest::collection::vec((1u64..3000, 0u64..3000, 0u64..3000, 0u64..3000, 0u8..4), 1..9),
        ) {
            let parts: Vec<Summary> = parts
                .into_iter()
                .map(|(len, a, b, c, flags)| {
                    if flags == 3 {
                        return Summary::free(len * 400); // past CAP sometimes
                    }
                    let (prefix, suffix) = (a.min(len - 1), b.min(len - 1 - a.min(len - 1)));
                    let max = c.min(len - 1).max(prefix).max(suffix);
                    Summary { len, prefix, suffix, max, all_free: false, has_slot: flags == 1 }
                })
                .collect();
            let folded = parts[1..].iter().fold(parts[0], |summary, &part| summary.then(part));
            proptest::prop_assert_eq!(Summary::join(parts.iter().copied()), folded);
        }
    }

    /// Free bits with long runs, all free or none free often enough to matter.
    fn free_bits() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::strategy::Strategy;
        (proptest::prelude::any::<u64>(), 0u32..64, 0u8..6).prop_map(|(bits, shift, kind)| match kind {
            0 => u64::MAX,
            1 => 0,
            2 => bits >> shift,
            3 => bits << shift,
            _ => bits,
        })
    }

    proptest::proptest! {
        /// A whole leaf in one pass is the join of its chunks' summaries.
        #[test]
        fn a_leaf_summary_is_the_join_of_its_chunks(
            chunks in proptest::collection::vec(free_bits(), CHUNKS_PER_LEAF),
        ) {
            let chunks: [u64; CHUNKS_PER_LEAF] = chunks.try_into().expect("length");
            let joined = Summary::join(chunks.iter().map(|&free| Summary::of_word(free, CHUNK_PAGES)));
            proptest::prop_assert_eq!(Summary::of_leaf(chunks), joined);
        }

        /// Stored words joined straight from their fields are what decoding and joining them
        /// gives, damaged fields included, whenever the shortcut applies.
        #[test]
        fn stored_words_join_as_decoded_words_do(
            words in proptest::collection::vec((proptest::prelude::any::<u64>(), 0u8..8), 8),
            level in 1usize..8,
        ) {
            let words: Vec<u64> = words
                .into_iter()
                .map(|(word, kind)| match kind {
                    0 => 0,
                    1 => word | WRITTEN | ALL_FREE,
                    _ => (word | WRITTEN) & !ALL_FREE,
                })
                .collect();
            let words: [u64; RunShape::FAN_OUT as usize] = words.try_into().expect("length");
            let part = RunShape::node_pages(level - 1);
            let joined = Summary::join(words.iter().map(|&word| Summary::decode(word, part)));
            match Summary::join_stored(&words, part) {
                Some(summary) => proptest::prop_assert_eq!(summary, joined),
                None => proptest::prop_assert!(words.iter().any(|&w| w & (WRITTEN | ALL_FREE) != WRITTEN)),
            }
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
        assert_eq!(Summary::of_leaf([u64::MAX; CHUNKS_PER_LEAF]), Summary::free(RunShape::LEAF_PAGES));
        assert_eq!(Summary::of_leaf([0; CHUNKS_PER_LEAF]), Summary::claimed(RunShape::LEAF_PAGES));
    }

    /// A page bitmap, its index and its high-water mark, changed one run at a time as the heap
    /// does.
    struct Model {
        bits: Vec<AtomicU64>,
        nodes: Vec<AtomicU64>,
        shape: RunShape,
        pages: u64,
        mark: AtomicU64,
        claimed: Vec<bool>,
    }

    impl Model {
        /// A model whose index's top level is one word (the deepest tree over its pages).
        fn new(pages: u64) -> Model {
            Model::with_root(pages, 1)
        }

        fn with_root(pages: u64, root: usize) -> Model {
            let shape = RunShape::with_root(pages, root);
            let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
            let words = pages.div_ceil(PAGES_PER_WORD) as usize;
            Model {
                bits: zeros(words),
                nodes: zeros(shape.total_words()),
                shape,
                pages,
                mark: AtomicU64::new(0),
                claimed: vec![false; pages as usize],
            }
        }

        fn index(&self) -> RunIndex<'_> {
            RunIndex::new(&self.nodes, &self.bits, &self.shape, self.pages, &self.mark, None)
        }

        fn map(&self) -> PageBits<'_> {
            PageBits::new(&self.bits, self.pages)
        }

        /// Raises the mark and claims `from..to` (bits only), as a claimer does before it
        /// refreshes.
        fn claim_bits(&self, from: u64, to: u64) {
            self.mark.fetch_max(to, Ordering::Release);
            assert_eq!(self.map().try_claim(from, to), Ok(()));
        }

        /// Claims `from..to` if it is free, or releases it if it is all claimed.
        fn flip(&mut self, from: u64, to: u64) {
            let range = from as usize..to as usize;
            if self.claimed[range.clone()].iter().all(|&c| !c) {
                self.claim_bits(from, to);
                self.claimed[range].fill(true);
                self.index().refresh_claimed(from, to);
            } else if self.claimed[range.clone()].iter().all(|&c| c) {
                self.map().release(from, to - from);
                self.claimed[range].fill(false);
                self.index().refresh(from, to);
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

        /// Claims or releases each of `ops` (start, length), checking after each that every
        /// summary is exact and that each of `queries` (length, from) finds what a scan finds.
        fn check_against_a_scan(
            &mut self,
            ops: &[(u64, u64)],
            queries: &[(u64, u64)],
        ) -> Result<(), proptest::test_runner::TestCaseError> {
            for &(start, len) in ops {
                let from = start % self.pages;
                self.flip(from, (from + len).min(self.pages));
                proptest::prop_assert!(self.index().is_exact());
                for &(len, from) in queries {
                    proptest::prop_assert_eq!(self.index().find_run(len, from), self.lowest_run(len, from));
                    let slot = from / SPAN_PAGES;
                    proptest::prop_assert_eq!(self.index().find_slot(slot), self.lowest_slot(slot));
                }
            }
            Ok(())
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
            root in proptest::sample::select(vec![1, 3, RunShape::ROOT_WORDS]),
            ops in proptest::collection::vec((0u64..3000, 1u64..700), 1..60),
            queries in proptest::collection::vec((1u64..900, 0u64..3000), 1..20),
        ) {
            let mut model = Model::with_root(pages, root);
            model.check_against_a_scan(&ops, &queries)?;
        }

        /// The production shape (a top level of up to `ROOT_WORDS` words above stored levels) in
        /// pools of tens of thousands of pages, near where a level begins.
        #[test]
        fn wide_top_levels_find_the_lowest_fit_as_a_plain_scan_does(
            leaves in proptest::sample::select(vec![32u64, 33, 41, 255, 256, 257, 300]),
            extra in 0u64..RunShape::LEAF_PAGES,
            ops in proptest::collection::vec((0u64..80_000, 1u64..20_000), 1..12),
            queries in proptest::collection::vec((1u64..30_000, 0u64..80_000), 1..4),
        ) {
            let pages = (leaves - 1) * RunShape::LEAF_PAGES + extra + 1;
            let mut model = Model::with_root(pages, RunShape::ROOT_WORDS);
            model.check_against_a_scan(&ops, &queries)?;
        }

        /// Garbage in every summary and bitmap word, and any mark: no panic, no answer outside
        /// the pool, and a rebuild makes the index exact.
        #[test]
        fn garbage_summaries_never_panic_nor_answer_out_of_range(
            pages in 1u64..5000,
            mark in 0u64..6000,
            garbage in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..200),
            bits in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..200),
            queries in proptest::collection::vec((1u64..3000, 0u64..6000), 1..10),
            root in proptest::sample::select(vec![1, RunShape::ROOT_WORDS]),
        ) {
            let model = Model::with_root(pages, root);
            for (node, &g) in model.nodes.iter().zip(garbage.iter().cycle()) {
                node.store(g | if g & 1 == 0 { WRITTEN } else { 0 }, Ordering::Relaxed);
            }
            for (word, &b) in model.bits.iter().zip(bits.iter().cycle()) {
                word.store(b, Ordering::Relaxed);
            }
            model.mark.store(mark, Ordering::Relaxed);
            let index = model.index();
            for &(len, from) in &queries {
                if let Some(head) = index.find_run(len, from % (pages + 1)) {
                    proptest::prop_assert!(head + len <= pages, "run {}+{} past {}", head, len, pages);
                }
                if let Some(slot) = index.find_slot(from / SPAN_PAGES) {
                    proptest::prop_assert!((slot + 1) * SPAN_PAGES <= pages);
                }
                index.refresh(from % pages, (from % pages) + len);
            }
            index.rebuild(pages);
            proptest::prop_assert!(index.is_exact());
        }
    }

    /// Refreshes the words above leaf 0 of a 4096-page model (levels 1 and 2).
    fn refresh_above_leaf_0(index: &RunIndex<'_>) {
        index.refresh_word(1, 0);
        index.refresh_word(2, 0);
    }

    #[test]
    fn a_summary_that_promises_too_much_costs_a_search_a_look_not_a_wrong_answer() {
        let mut model = Model::new(4096);
        model.flip(0, 2000);
        model.flip(3000, 3001);
        // A claimer of 2000..2300 stopped before refreshing: the summaries say free.
        model.claim_bits(2000, 2300);
        let leaf = 2048 / RunShape::LEAF_PAGES;
        let index = model.index();
        let limit = index.limit();
        assert_ne!(index.summary(0, leaf, limit), index.compute(0, leaf));
        assert_eq!(index.find_run(200, 0), Some(2300), "the bitmap has the last word");
        // The claimer goes on.
        index.refresh(2000, 2300);
        assert!(index.is_exact());
    }

    // Counter-examples from the review of 20b5b8f, each seen failing there.

    /// A releaser that read the mark before a claimer raised it (and claimed pages of the same
    /// leaf above the old mark) must not leave those pages free in the leaf.
    #[test]
    fn a_refresh_racing_a_claim_above_the_mark_leaves_the_index_exact() {
        let model = Model::new(4096);
        model.claim_bits(0, 100);
        model.index().refresh(0, 100);
        model.map().release(0, 10);
        // The releaser computes its leaf with the mark at 100 ...
        let index = model.index();
        let stale = index.summarise(0, 0, &index.below(0, 0));
        // ... the claimer raises the mark, claims 100..150 and refreshes ...
        model.claim_bits(100, 150);
        model.index().refresh(100, 150);
        // ... and the releaser writes what it computed, then looks below again.
        model.nodes[0].store(stale.encode(), Ordering::Relaxed);
        index.refresh_word(0, 0);
        refresh_above_leaf_0(&index);
        assert!(model.index().is_exact());
    }

    /// A claim that lost a page to another claimer undoes its bits: summaries that someone
    /// refreshed while they were set must be put right.
    #[test]
    fn a_claim_lost_to_a_conflict_leaves_the_index_exact() {
        let model = Model::new(4096);
        model.claim_bits(0, 10);
        model.claim_bits(40, 100);
        model.claim_bits(101, 256);
        model.index().refresh(0, 256);
        // K wants 10..50: its first word (pages 10..32) set, then page 40 found taken.
        let k = (10..32).map(|page| PageBits::page_mask(page, true, page == 10)).sum::<u64>();
        model.bits[0].fetch_or(k, Ordering::Acquire);
        // Z claims page 100 of the same leaf and refreshes, seeing K's bits.
        model.claim_bits(100, 101);
        model.index().refresh(100, 101);
        // K undoes its word and refreshes what it touched (as `claim_run` does).
        model.bits[0].fetch_and(!k, Ordering::Release);
        model.index().refresh(10, 50);
        assert_eq!(model.index().find_run(30, 0), Some(10));
        assert!(model.index().is_exact());
    }

    /// A refresher stopped after writing a leaf but before the word above it: a refresher that
    /// finds the leaf right goes on up anyway, so the word above shows its run.
    #[test]
    fn a_refresher_stopped_below_the_top_does_not_hide_other_runs() {
        let model = Model::new(4096);
        model.claim_bits(0, 4096);
        model.index().refresh(0, 4096);
        model.map().release(2000, 80);
        model.index().refresh(2000, 2080);
        // R frees 1800..1864 (bits); C claims 2000..2048, writes leaf 7 and stops.
        model.map().release(1800, 64);
        model.claim_bits(2000, 2048);
        store_load_fence();
        model.index().refresh_word(0, 2000 / RunShape::LEAF_PAGES);
        // R refreshes.
        model.index().refresh(1800, 1864);
        assert_eq!(model.index().find_run(64, 0), Some(1800));
    }

    /// A search whose count of free pages before a leaf comes from an overstated summary of a
    /// word it skipped checks the bitmap and answers right.
    #[test]
    fn a_search_misled_by_an_overstated_suffix_answers_from_the_bitmap() {
        let model = Model::new(4096);
        model.claim_bits(0, 150);
        model.index().refresh(0, 150);
        // Leaf 0 says pages 128..256 are free (as a stale refresh could have left it).
        model.map().release(0, 10);
        let stale = Summary { len: 256, prefix: 10, suffix: 128, max: 128, all_free: false, has_slot: true };
        model.nodes[0].store(stale.encode(), Ordering::Relaxed);
        refresh_above_leaf_0(&model.index());
        assert_eq!(model.index().find_run(200, 0), Some(150), "page 128 is claimed");
    }

    type Hook = Box<dyn FnMut(usize)>;

    std::thread_local! {
        static BEFORE_EXCHANGE: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
    }

    /// Called by `refresh_word` and `write_held` before they exchange a word: a test runs another
    /// participant's whole operation there.
    pub(super) fn before_exchange(level: usize) {
        let hook = BEFORE_EXCHANGE.with(|slot| slot.borrow_mut().take());
        if let Some(mut hook) = hook {
            hook(level); // (refreshes it makes run without the hook)
            BEFORE_EXCHANGE.with(|slot| *slot.borrow_mut() = Some(hook));
        }
    }

    /// A refresher whose every exchange follows someone else's change below (each of whom found
    /// its previous value right and left) must not give up with its last write out of date.
    #[test]
    fn a_refresher_outpaced_by_others_does_not_leave_its_word_stale() {
        let model = std::rc::Rc::new(Model::new(4096));
        let q = 5;
        model.claim_bits(0, 100);
        model.map().release(0, 100);
        model.claim_bits(q, q + 1);
        model.index().refresh(0, 100);
        model.map().release(q, 1);
        let other = model.clone();
        let mut flips = 0;
        BEFORE_EXCHANGE.with(|slot| {
            *slot.borrow_mut() = Some(Box::new(move |level| {
                if level != 0 || flips >= 2 * MAX_FAILURES {
                    return;
                }
                flips += 1;
                if other.map().is_claimed(q) {
                    other.map().release(q, 1);
                    other.index().refresh(q, q + 1);
                } else {
                    other.claim_bits(q, q + 1);
                    other.index().refresh_claimed(q, q + 1);
                }
            }))
        });
        model.index().refresh(q, q + 1);
        BEFORE_EXCHANGE.with(|slot| *slot.borrow_mut() = None);
        assert!(!model.map().is_claimed(q), "an even number of flips");
        assert!(model.index().is_exact());
    }

    /// A claimer writing a leaf it holds whole, each of whose exchanges loses to a refresher
    /// writing what it computed before the claim, gives up after a few failures; those
    /// refreshers' looks below after writing put the leaf right.
    #[test]
    fn a_claimer_outpaced_by_stale_writers_of_a_leaf_it_holds_gives_up_to_them() {
        let model = std::rc::Rc::new(Model::new(4096));
        model.claim_bits(0, 300);
        model.index().refresh_claimed(0, 300);
        model.map().release(0, 300);
        model.index().refresh(0, 300);
        model.claim_bits(256, 512);
        let other = model.clone();
        let mut writes = 0u64;
        BEFORE_EXCHANGE.with(|slot| {
            *slot.borrow_mut() = Some(Box::new(move |level| {
                if level == 0 {
                    // Stale values that differ each time: free runs of 1, 2, 3... pages.
                    writes += 1;
                    let stale = Summary { max: writes, ..Summary::claimed(RunShape::LEAF_PAGES) };
                    other.nodes[other.shape.offsets[0] + 1].store(stale.encode(), Ordering::Release);
                }
            }))
        });
        model.index().refresh_claimed(256, 512);
        BEFORE_EXCHANGE.with(|slot| *slot.borrow_mut() = None);
        assert!(!model.index().is_exact(), "the last stale write stands until its writer looks");
        model.index().refresh(256, 512); // (the stale writers' looks below)
        assert!(model.index().is_exact());
        assert_eq!(model.index().find_run(1, 200), Some(200));
    }
}
