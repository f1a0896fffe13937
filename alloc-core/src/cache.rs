//! A participant's cache of free small blocks: the fast path.
//!
//! Like glibc's tcache, a [`Cache`] keeps up to [`CACHE_BLOCKS`] free blocks per class in
//! process-local memory, so that most allocations and frees touch no shared list. Unlike a
//! tcache, every block still says in shared memory what it is: a cached block's state word is
//! `CACHED` and names the holding process, in the same word and the same compare-exchange that
//! took it from its last owner. So a stale id or a double free of a cached block fails exactly as
//! for any free block, two participants freeing one id at once cannot both succeed, and
//! `reclaim_dead` can return the blocks a dead process's caches held without ever mistaking a
//! block that is being cached right now for one.
//!
//! Cached blocks are free but unavailable to other participants until the cache gives them
//! back: half at a time when a class's cache is full, all of them on [`Heap::flush`], and before
//! reporting `OutOfMemory`. While anyone waits in `alloc_blocking`, frees bypass the cache so that
//! the waiters are woken; allocations keep using it.
//!
//! A cache holds blocks of one span per class at a time (the span it last refilled from; a free
//! of another span's block goes to that span, unless the class's cache is empty, in which case
//! the cache moves to the block's span). So a participant that stops forever keeps at most one
//! span per class from being retired, besides the span its hazard names.
//!
//! A cache also keeps freed large runs of at most [`CACHE_RUN_BYTES`] (buffers of kilobytes to
//! hundreds of kilobytes are freed and allocated again at a high rate), up to
//! [`CACHE_RUNS_PER_SIZE`] of each of its *run sizes*: every number of pages up to 8, then four
//! sizes per doubling (10, 12, 14, 16, 20, ... 128 pages), and at most a 64th of the data area
//! in all (or twice `CACHE_RUN_BYTES` in a smaller pool). A request through a cache for a run of
//! up to that size is rounded up to the next run size, the pages beyond its capacity recorded as
//! the run's *spare* on its head's info (the state word's slack is less than a page): the
//! allocation's size and capacity are what it asked for, and when it is freed its run serves
//! any request of that run size. (On the arrays workload, random sizes from 4 KiB to 4 MiB
//! replaced at random, exact sizes were found again too rarely to pay: BENCHMARKS.md.) A
//! rounded claim that finds no run free takes an exact one, so rounding never refuses.
//!
//! A cached run is marked the same way as a block, in its head's state word: `CACHED` by this
//! process, one compare-exchange from live; the cache remembers that exact word. A request of
//! a cached run's size takes it back without a search of the page bitmap: one compare-exchange
//! from that word to `RELEASING` by us (under `PENDING`, so a reclaimer releases it should we
//! die), then its spare for the new request, a new generation, then live.
//!
//! Cached runs are kept and reused in address order, as first fit places runs: a size's lowest
//! run is taken back first, and when a size is full its highest run goes back to the bitmap
//! for a lower one (a freed run higher than all of them goes back itself); at the page limit,
//! records of runs others released are dropped, then the highest runs of any size go back.
//! (Reused newest first, cached runs keep free space from gathering at the top of the pool: on
//! the arrays workload with eight sizes per doubling, the largest hole left was 4% smaller;
//! BENCHMARKS.md.)
//!
//! Once a cache has claimed [`OWN_BLOCKS_AFTER`] runs, the runs it claims go to blocks of pages
//! it claims in alone, where another participant's cache claims too (see `crate::runs`): two
//! threads replacing buffers do not interleave their runs. It keeps 16 blocks as its own at
//! most, and gives them all up when flushed (as when its `LocalPool` is dropped), so that the
//! next participant of its record does not inherit them.
//!
//! Cached runs are not lost to others: an allocation that finds no room releases every run any
//! cache holds (`Heap::release_cached_runs`, one compare-exchange each, as a free would), then
//! tries once more, so an idle or stopped holder does not make a pool refuse, and keeps an
//! `alloc_blocking` waiting at most until its next try (a run cached just after the walk is
//! found by the next allocation that finds no room).
//! The cache that held such a run finds its word changed when it next looks (a later caching of
//! the same pages has a later generation's tag), and drops the entry. `reclaim_dead` releases
//! the runs a dead process's caches held.
//!
//! A cache is tied to one participant (its [`Session`]) of one mapping. After `fork`, the child
//! must not use a cache it inherited: its blocks belong to the parent (the host drops it).

use crate::budget::Budget;
use crate::crash::step;
use crate::error::Error;
use crate::heap::{AllocId, AllocOptions, Allocation, Heap, Owner, Place, SpanAt, Wake};
use crate::layout::{class_for, page, status, BlockState, Kind, NUM_CLASSES, STATE_READY};
use crate::pages::ForCache;
use crate::participant::Session;
use crate::primitive::{AtomicU64, Ordering};

/// Blocks a cache holds per class before it gives half of them back.
pub const CACHE_BLOCKS: usize = 64;
/// Blocks a cache takes from the shared spans at once (fewer when that would overfill it).
const REFILL_BLOCKS: usize = CACHE_BLOCKS / 2;
/// Freed large runs a cache keeps of each run size.
pub const CACHE_RUNS_PER_SIZE: usize = 8;
/// Runs a cache claims before it claims them in blocks of its own (see `crate::runs`).
pub const OWN_BLOCKS_AFTER: u32 = 16;
/// Blocks a cache keeps as its own at most (it gives up the oldest for a new one).
const OWNED_BLOCKS: usize = 16;
/// The largest run a cache keeps (whole pages, and at most 128 of them).
pub const CACHE_RUN_BYTES: u64 = 512 << 10;
/// The largest run size, in pages.
const MAX_RUN_SIZE: u64 = 128;
/// Run sizes per doubling above the first `2 * PER_DOUBLING` pages (which are all sizes): a
/// rounded run is less than a quarter larger than its request.
const PER_DOUBLING: u64 = 4;
/// Run sizes: 1 to 8 pages, then four per doubling up to [`MAX_RUN_SIZE`] (24).
const RUN_SIZES: usize = (2 * PER_DOUBLING
    + PER_DOUBLING * (MAX_RUN_SIZE.trailing_zeros() - (2 * PER_DOUBLING).trailing_zeros()) as u64)
    as usize;

/// The run size that serves a request of `pages` pages: its index and its pages (the least run
/// size of at least `pages`); `None` above [`MAX_RUN_SIZE`].
#[inline]
pub(crate) fn run_size(pages: u64) -> Option<(usize, u64)> {
    let index = *RUN_SIZE_OF.get(pages as usize)? as usize;
    Some((index, RUN_SIZE_PAGES[index] as u64)).filter(|_| pages > 0)
}

/// `RUN_SIZE_OF[pages]`: the index of the run size that serves `pages` (1 to [`MAX_RUN_SIZE`]).
const RUN_SIZE_OF: [u8; MAX_RUN_SIZE as usize + 1] = {
    let mut table = [0u8; MAX_RUN_SIZE as usize + 1];
    let (mut pages, mut index) = (1, 0);
    while pages <= MAX_RUN_SIZE as usize {
        while (RUN_SIZE_PAGES[index] as usize) < pages {
            index += 1;
        }
        table[pages] = index as u8;
        pages += 1;
    }
    table
};

/// The pages of each run size: every count up to `2 * PER_DOUBLING`, then `PER_DOUBLING` per
/// doubling.
const RUN_SIZE_PAGES: [u16; RUN_SIZES] = {
    let mut sizes = [0u16; RUN_SIZES];
    let mut index = 0;
    while index < RUN_SIZES {
        let exact = 2 * PER_DOUBLING as usize;
        sizes[index] = match index < exact {
            true => index as u16 + 1,
            false => {
                // Past the exact sizes: doubling `d` (from 2 * PER_DOUBLING pages), step `k`.
                let (d, k) =
                    ((index - exact) / PER_DOUBLING as usize, (index - exact) % PER_DOUBLING as usize);
                let base = exact << d;
                (base + (k + 1) * base / PER_DOUBLING as usize) as u16
            }
        };
        index += 1;
    }
    sizes
};

/// Whether `run` lies higher in the pool than `than` (for [`Cache::find_run`]).
fn higher(run: &CachedRun, than: &CachedRun) -> bool {
    run.head > than.head
}

/// A run a cache holds: where, how long, and its state word as the cache made it (so that a
/// run another participant released meanwhile, and perhaps handed out and cached again, is
/// never mistaken for it: a later caching has a later generation's tag).
#[derive(Clone, Copy)]
struct CachedRun {
    head: u64,
    pages: u64,
    word: u64,
}

/// One participant's cache of free blocks; see the module docs.
pub struct Cache {
    session: Session,
    lens: [u8; NUM_CLASSES],
    /// Per class, the span every cached block of the class belongs to (while any is cached).
    spans: [SpanAt; NUM_CLASSES],
    /// Per class, the cached blocks' indices in their span.
    entries: [[u16; CACHE_BLOCKS]; NUM_CLASSES],
    /// Cached large runs per run size, in no order (see `take_run`).
    runs: [[CachedRun; CACHE_RUNS_PER_SIZE]; RUN_SIZES],
    run_lens: [u8; RUN_SIZES],
    /// Pages of the cached runs (taken or not by another participant since).
    run_pages: u64,
    /// Run requests this cache took to the page bitmap (saturating).
    run_claims: u32,
    /// The blocks its claims made its own (see `crate::runs`), oldest first.
    blocks: [u64; OWNED_BLOCKS],
    block_count: u8,
}

impl Cache {
    /// A new, empty cache for `session`'s participant.
    pub fn new(session: Session) -> Cache {
        Cache {
            session,
            lens: [0; NUM_CLASSES],
            spans: [SpanAt::NONE; NUM_CLASSES],
            entries: [[0; CACHE_BLOCKS]; NUM_CLASSES],
            runs: [[CachedRun { head: 0, pages: 0, word: 0 }; CACHE_RUNS_PER_SIZE]; RUN_SIZES],
            run_lens: [0; RUN_SIZES],
            run_pages: 0,
            run_claims: 0,
            blocks: [0; OWNED_BLOCKS],
            block_count: 0,
        }
    }

    /// The participant's session (for the uncached operations).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Gives the session back, dropping the cache's entries without touching shared memory:
    /// for a caller that flushed it, or a `fork` child whose inherited blocks are its parent's.
    pub fn into_session(self) -> Session {
        self.session
    }

    /// Blocks and runs held, over all classes.
    pub fn held(&self) -> usize {
        self.lens.iter().map(|&len| len as usize).sum::<usize>() + self.run_count()
    }

    fn run_count(&self) -> usize {
        self.run_lens.iter().map(|&len| len as usize).sum()
    }

    /// The runs cached, all sizes.
    fn cached_runs(&self) -> impl Iterator<Item = &CachedRun> {
        self.runs.iter().zip(self.run_lens).flat_map(|(runs, len)| &runs[..len as usize])
    }

    /// Takes the cached run of run size `size` lowest in the pool out (address order, as first
    /// fit: runs high up go back to the bitmap first).
    #[inline]
    fn take_run(&mut self, size: usize) -> Option<CachedRun> {
        let at = self.find_run(size, |run, best| run.head < best.head)?;
        Some(self.remove_run(size, at))
    }

    /// Takes the cached run of run size `size` highest in the pool out.
    fn take_highest_run(&mut self, size: usize) -> Option<CachedRun> {
        let at = self.find_run(size, higher)?;
        Some(self.remove_run(size, at))
    }

    /// The place of the run of run size `size` that `better` prefers to all others.
    #[inline]
    fn find_run(&self, size: usize, better: impl Fn(&CachedRun, &CachedRun) -> bool) -> Option<usize> {
        let runs = &self.runs.get(size)?[..self.run_lens[size] as usize];
        let mut at = 0;
        for (i, run) in runs.iter().enumerate().skip(1) {
            if better(run, &runs[at]) {
                at = i;
            }
        }
        (!runs.is_empty()).then_some(at)
    }

    /// Takes the run at `at` of run size `size` out (the last takes its place).
    fn remove_run(&mut self, size: usize, at: usize) -> CachedRun {
        let last = self.run_lens[size] as usize - 1;
        let run = self.runs[size][at];
        self.runs[size][at] = self.runs[size][last];
        self.run_lens[size] = last as u8;
        self.run_pages -= run.pages;
        run
    }

    /// The first page of the cached run of run size `size` highest in the pool.
    fn highest_run(&self, size: usize) -> Option<u64> {
        Some(self.runs[size][self.find_run(size, higher)?].head)
    }

    /// The run size of the cached run highest in the pool, of any size, and its first page.
    fn highest_of_all(&self) -> Option<(usize, u64)> {
        (0..RUN_SIZES).filter_map(|size| Some((size, self.highest_run(size)?))).max_by_key(|&(_, head)| head)
    }

    /// Drops the records of the runs `gone` says another participant took (released).
    fn forget_runs(&mut self, gone: impl Fn(&CachedRun) -> bool) {
        for size in 0..RUN_SIZES {
            let mut at = 0;
            while at < self.run_lens[size] as usize {
                match gone(&self.runs[size][at]) {
                    true => drop(self.remove_run(size, at)),
                    false => at += 1,
                }
            }
        }
    }

    /// Caches `run` as one of run size `size` (callers check there is room).
    fn push_run(&mut self, size: usize, run: CachedRun) {
        let len = self.run_lens[size] as usize;
        self.runs[size][len] = run;
        self.run_lens[size] += 1;
        self.run_pages += run.pages;
    }

    /// The most recently cached block of `class`: its span and index.
    #[inline]
    fn pop(&mut self, class: usize) -> Option<(SpanAt, u64)> {
        let len = self.lens[class] as usize;
        let index = *self.entries[class].get(len.checked_sub(1)?)?;
        self.lens[class] -= 1;
        Some((self.spans[class], index as u64))
    }

    /// Whether a freed block of span `head` may go into the class's cache.
    #[inline]
    fn takes(&self, class: usize, head: u64) -> bool {
        match self.lens[class] as usize {
            0 => true,
            CACHE_BLOCKS => false,
            _ => self.spans[class].head == head,
        }
    }

    #[inline]
    fn is_full(&self, class: usize) -> bool {
        self.lens[class] as usize == CACHE_BLOCKS
    }

    /// Caches block `index` of span `head`, whose words are where `at` says (callers check
    /// [`Cache::takes`] first).
    #[inline]
    fn push(&mut self, head: u64, at: impl FnOnce() -> SpanAt, class: usize, index: u64) {
        let len = self.lens[class] as usize;
        debug_assert!(len < CACHE_BLOCKS, "callers check `takes` first");
        // The class's cache may have emptied; the span it held last is often the block's.
        if self.spans[class].head != head {
            self.spans[class] = at();
        }
        if let Some(entry) = self.entries[class].get_mut(len) {
            *entry = index as u16;
            self.lens[class] += 1;
        }
    }
}

impl<'a> Heap<'a> {
    /// [`Heap::alloc`] through `cache`: small requests are served from the cache, which is
    /// refilled from the shared spans in batches.
    #[inline]
    pub fn alloc_with(
        &self,
        cache: &mut Cache,
        size: u64,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        match self.budget() {
            None => self.alloc_with_uncharged(cache, size, options),
            Some(budget) => self.alloc_with_charged(budget, cache, size, options),
        }
    }

    /// [`Heap::alloc_with`] in a heap with a budget (out of the fast path's way).
    #[cold]
    #[inline(never)]
    fn alloc_with_charged(
        &self,
        budget: Budget,
        cache: &mut Cache,
        size: u64,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        self.check_session(&cache.session)?;
        let me = cache.session.participant;
        self.alloc_charged(budget, me, size, || self.alloc_with_uncharged(cache, size, options))
    }

    #[inline]
    fn alloc_with_uncharged(
        &self,
        cache: &mut Cache,
        size: u64,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        // The fast path: a plain request, the right mapping, a ready pool, a cached block.
        if options.plain_for(cache.session.owner())
            && cache.session.key == self.region().key()
            && self.status() & status::STATE_MASK == STATE_READY
        {
            if let Some(class) = class_for(size) {
                // Only classes in use ever get cache entries, so no block-count check here.
                if let Some((at, index)) = cache.pop(class) {
                    return Ok(self.hand_out(&cache.session, &at, index, size, options));
                }
            }
        }
        self.alloc_with_slow(cache, size, &options)
    }

    /// (The options by reference: passed by value, the caller copied them into a new place
    /// first, reading back as one the halves it had just stored apart, a stall that cost a
    /// cached 64 KiB pair a fifth of its time.)
    #[cold]
    #[inline(never)]
    fn alloc_with_slow(
        &self,
        cache: &mut Cache,
        size: u64,
        options: &AllocOptions,
    ) -> Result<Allocation, Error> {
        let options = *options;
        self.check_session(&cache.session)?;
        self.ensure_ready()?;
        // Requests for another owner (or stricter alignment) go to the shared heap, which checks
        // and honours them.
        if options.plain_for(cache.session.owner()) {
            if let Some(class) = class_for(size).filter(|&class| self.blocks_of(class) > 0) {
                if cache.lens[class] == 0 {
                    self.refill(cache, class)?;
                }
                if let Some((at, index)) = cache.pop(class) {
                    return Ok(self.hand_out(&cache.session, &at, index, size, options));
                }
            }
        }
        // A run a cache keeps: a cached one of its run size, else a new one of that size.
        let rounded = self.run_size_for(size, options, cache.session.owner());
        if let Some((run_size, _)) = rounded {
            while let Some(run) = cache.take_run(run_size) {
                // (Not that run any more if an allocation that found no room released it.)
                if let Some(allocation) =
                    self.hand_out_run(&cache.session, run.head, run.pages, run.word, size, options)
                {
                    return Ok(allocation);
                }
            }
        }
        // A cache that claims runs often keeps them in blocks of its own (see `crate::runs`);
        // one that claims a few (a thread's startup, a process's first arrays) does not take
        // whole blocks for them.
        let own_blocks = cache.run_claims >= OWN_BLOCKS_AFTER;
        if rounded.is_some() {
            cache.run_claims = cache.run_claims.saturating_add(1);
        }
        let alloc = |session: &mut Session| match rounded {
            Some((_, pages)) => self.alloc_slow(session, size, Some(ForCache { pages, own_blocks }), options),
            None => self.alloc_uncharged(session, size, options),
        };
        let allocation = match alloc(&mut cache.session) {
            Err(Error::OutOfMemory { .. }) if cache.held() > 0 => {
                // Our cached blocks may be what keeps spans from going back to general use.
                // Any waiters notice the given-back blocks within their wait slice.
                let _ = self.flush(cache)?;
                alloc(&mut cache.session)
            }
            other => other,
        }?;
        if own_blocks {
            self.note_block(cache, allocation.offset);
        }
        Ok(allocation)
    }

    /// Records the block of the run at `offset` if the cache's claim made it its own (so that
    /// a flush gives it up; the oldest of [`OWNED_BLOCKS`] goes at once for a new one).
    fn note_block(&self, cache: &mut Cache, offset: u64) {
        let me = cache.session.participant + 1;
        let Some(block) = self.own_block_at(me, offset) else { return };
        let len = cache.block_count as usize;
        if cache.blocks[..len].contains(&block) {
            return;
        }
        if len == OWNED_BLOCKS {
            self.give_up_block(me, cache.blocks[0]);
            cache.blocks.copy_within(1.., 0);
            cache.blocks[OWNED_BLOCKS - 1] = block;
        } else {
            cache.blocks[len] = block;
            cache.block_count += 1;
        }
    }

    /// The run size (index, pages) of a request for `size` bytes with `options` by `owner`'s
    /// cache, if caches keep runs of its size: a plain run of at most [`CACHE_RUN_BYTES`], not
    /// of a size a class in use serves, in a heap without a budget.
    fn run_size_for(&self, size: u64, options: AllocOptions, owner: Owner) -> Option<(usize, u64)> {
        let page_bytes = self.geometry().page_bytes();
        let for_a_run = size <= CACHE_RUN_BYTES
            && options.align.is_power_of_two()
            && options.align <= page_bytes
            && options.owner.is_none_or(|wanted| wanted == owner)
            // (A size with a class in use is the spans', whatever is cached.)
            && !class_for(size).is_some_and(|class| options.granule_aligned() && self.blocks_of(class) > 0);
        let (index, pages) = run_size(self.geometry().pages_for(size)).filter(|_| for_a_run)?;
        self.caches_run(pages).then_some((index, pages))
    }

    /// Takes up to a batch of free blocks of `class` into the cache (never more than it holds).
    fn refill(&self, cache: &mut Cache, class: usize) -> Result<(), Error> {
        let room = (CACHE_BLOCKS - cache.lens[class] as usize).min(REFILL_BLOCKS) as u64;
        let (holder, incarnation) = (cache.session.process, cache.session.incarnation);
        let Cache { session, lens, spans, entries, .. } = cache;
        self.take_blocks(session, class, room, |heap, _, head, index| {
            let state = heap.span(head, class).state(index);
            let word = state.load(Ordering::Relaxed);
            let len = lens[class] as usize;
            if len == CACHE_BLOCKS || BlockState::decode(word).is_some_and(|s| s.kind != Kind::Free) {
                // Taken twice: only a corrupted list that loops does this. Keep one copy.
                return;
            }
            // The block is ours (taken off the list, our hazard on its span); the store records
            // in the same word that it is free and which process's cache holds it.
            // ORDERING: Release, like every store to a state word: see `Span::pop_into`.
            state.store(BlockState::cached(holder, incarnation, word >> 28).encode(), Ordering::Release);
            step!("refill/cached");
            // The class's cache is empty before a refill, and a refill's blocks share a span.
            if len == 0 {
                spans[class] = heap.span_at(head, class);
            }
            entries[class][len] = index as u16;
            lens[class] += 1;
        })?;
        Ok(())
    }

    /// [`Heap::free`] through `cache`: a small block goes into the cache (given back in halves
    /// when the class is full); a large one, or any block while someone waits, is freed to the
    /// shared heap at once.
    #[inline]
    pub fn free_with(&self, cache: &mut Cache, id: AllocId) -> Result<Wake, Error> {
        match self.budget() {
            None => self.free_with_uncharged(cache, id),
            Some(budget) => self.free_with_charged(budget, cache, id),
        }
    }

    /// [`Heap::free_with`] in a heap with a budget (out of the fast path's way).
    #[cold]
    #[inline(never)]
    fn free_with_charged(&self, budget: Budget, cache: &mut Cache, id: AllocId) -> Result<Wake, Error> {
        let size = self.lookup(&mut cache.session, id)?.size;
        let me = cache.session.participant;
        self.free_charged(budget, me, size, || self.free_with_uncharged(cache, id))
    }

    #[inline]
    fn free_with_uncharged(&self, cache: &mut Cache, id: AllocId) -> Result<Wake, Error> {
        // Anything but a ready pool without waiters (status exactly READY) takes the slow path:
        // destroyed pools fail there, and while anyone waits frees go to the shared heap so that
        // the waiters are woken. A Relaxed look suffices: a waiter that registers just after it
        // is served by its own retry, by the next free, or by the cache giving blocks back.
        if cache.session.key != self.region().key() || self.status() != STATE_READY {
            return self.free_with_slow(cache, id);
        }
        let page = self.page_of(id)?;
        self.publish_hazard(&cache.session, page);
        let outcome = self.cache_block(cache, id, page);
        self.clear_hazard(&cache.session);
        match outcome {
            Ok(true) => Ok(Wake::Nobody),
            Ok(false) => self.free_with_slow(cache, id),
            Err(error) => Err(error),
        }
    }

    /// Under the hazard on `page`: moves live allocation `id` into the cache (`true`), or says
    /// it is not one for the cache (`false`: a run too large, a block of another span, or that
    /// part of the cache is full).
    #[inline]
    fn cache_block(&self, cache: &mut Cache, id: AllocId, page: u64) -> Result<bool, Error> {
        let (place, state) = self.locate(id, page)?;
        let Place::Small { head, class, index, base } = place else {
            return self.cache_run(cache, id, place, state);
        };
        if !cache.takes(class, head) {
            return Ok(false);
        }
        let cached = cache.session.cached_bits;
        // ORDERING: Acquire on success: the block is ours, after the last user's accesses.
        self.change_live(id, place, state, Ordering::Acquire, |word, _, _| {
            Ok(BlockState::with_tag(cached, BlockState::tag_of(word)))
        })?;
        step!("cache-free/cached");
        cache.push(head, || self.span_at_base(head, class, base), class, index);
        Ok(true)
    }

    /// Blocks and runs `cache` still holds: [`Cache::held`] less the runs another participant
    /// released meanwhile (an allocation that found no room), which the cache has not looked
    /// at since.
    pub fn still_cached(&self, cache: &Cache) -> usize {
        let gone = cache
            .cached_runs()
            // ORDERING: Relaxed: a count for the caller's accounting (a snapshot), ordering nothing.
            .filter(|run| self.page_word(run.head, page::STATE).load(Ordering::Relaxed) != run.word)
            .count();
        cache.held() - gone
    }

    /// [`Heap::cache_block`] for a large run.
    #[inline(never)]
    fn cache_run(
        &self,
        cache: &mut Cache,
        id: AllocId,
        place: Place,
        state: &AtomicU64,
    ) -> Result<bool, Error> {
        let Place::Large { head, pages, .. } = place else { return Ok(false) };
        let Some(size) = self.run_size_of(pages) else { return Ok(false) };
        if cache.run_lens[size] as usize == CACHE_RUNS_PER_SIZE
            || cache.run_pages + pages > self.run_pages_limit()
        {
            return Ok(false);
        }
        let cached = cache.session.cached_bits;
        let mut word = 0;
        // ORDERING: AcqRel on success: the run is ours, after the last user's accesses
        // (Acquire), and whoever takes it from the cache next, this participant or another that
        // found no room, acquires them through this word (Release: in an asymmetric pool the
        // hazard's fence orders nothing between threads).
        self.change_live(id, place, state, Ordering::AcqRel, |live, _, _| {
            word = BlockState::with_tag(cached, BlockState::tag_of(live));
            Ok(word)
        })?;
        step!("run-cache/cached");
        cache.push_run(size, CachedRun { head, pages, word });
        Ok(true)
    }

    /// Whether runs of `pages` go into a cache. Never under a budget: a cached run stays where
    /// it was and splits the free space, and a budgeted heap's data area is only a little
    /// larger than its limit, so address-ordered first fit must see every free page (Dragon's
    /// test of power-of-two allocations filling a pool, repeated a thousand times, failed for
    /// want of a contiguous run while its budget had room).
    fn caches_run(&self, pages: u64) -> bool {
        self.budget_word() == 0 && pages <= CACHE_RUN_BYTES >> self.geometry().page_shift
    }

    /// The run size index of a freed run of `pages` pages, if a cache keeps it: exactly a run
    /// size (a run rounded up to one, or that happened to need that many).
    fn run_size_of(&self, pages: u64) -> Option<usize> {
        run_size(pages).filter(|&(_, size)| size == pages && self.caches_run(pages)).map(|(index, _)| index)
    }

    /// The pages one cache keeps in runs at most: a 64th of the data area, or twice
    /// [`CACHE_RUN_BYTES`] in a smaller pool.
    fn run_pages_limit(&self) -> u64 {
        let geo = self.geometry();
        (geo.num_pages / 64).max((2 * CACHE_RUN_BYTES) >> geo.page_shift)
    }

    #[cold]
    #[inline(never)]
    fn free_with_slow(&self, cache: &mut Cache, id: AllocId) -> Result<Wake, Error> {
        self.check_session(&cache.session)?;
        self.ensure_ready()?;
        if self.status() == STATE_READY {
            // With the pool plainly ready, the only reasons to be here are a full class cache
            // (give half back, then cache this block) or a large allocation.
            let page = self.page_of(id)?;
            self.publish_hazard(&cache.session, page);
            // A stale id or a double free fails here, before anything is given back.
            let live = self
                .locate(id, page)
                .and_then(|(place, state)| self.live_state(id, place, state).map(|_| place));
            self.clear_hazard(&cache.session);
            // Room in the cache for it: half a class given back, or the oldest run released.
            let made_room = match live? {
                Place::Small { class, head, .. }
                    if cache.spans[class].head == head && cache.is_full(class) =>
                {
                    Some(self.spill(cache, class, CACHE_BLOCKS / 2))
                }
                Place::Large { head, pages, .. } => {
                    self.run_size_of(pages).and_then(|size| self.make_room_for_run(cache, size, head, pages))
                }
                _ => None,
            };
            if let Some(wake) = made_room {
                self.publish_hazard(&cache.session, page);
                let outcome = self.cache_block(cache, id, page);
                self.clear_hazard(&cache.session);
                return match outcome {
                    Ok(true) => Ok(wake),
                    Ok(false) => Ok(wake.or(self.free_uncharged(&mut cache.session, id)?)),
                    Err(error) => Err(error),
                };
            }
        }
        // A large allocation, a block of another span, or waiters: free to the shared heap.
        self.free_uncharged(&mut cache.session, id)
    }

    /// Room in `cache` for a freed run of `pages` pages at `head`, of run size `size`, if runs
    /// higher in the pool can go back for it (address order, as first fit: a cache keeps the
    /// lowest runs): the highest of a full run size; over the cache's page limit, records of
    /// runs another participant released are dropped first, then the highest runs of any size
    /// go back. `None` if nothing went back.
    fn make_room_for_run(&self, cache: &mut Cache, size: usize, head: u64, pages: u64) -> Option<Wake> {
        let mut wake = None;
        if cache.run_lens[size] as usize == CACHE_RUNS_PER_SIZE {
            cache.highest_run(size).filter(|&highest| highest > head)?;
            let run = cache.take_highest_run(size)?;
            wake = Some(self.give_back_run(&cache.session, run));
        }
        if cache.run_pages + pages > self.run_pages_limit() {
            // ORDERING: Relaxed: a word other than the one cached means the run is not ours any
            // more (a record wrongly kept only costs room; see `still_cached`).
            cache
                .forget_runs(|run| self.page_word(run.head, page::STATE).load(Ordering::Relaxed) != run.word);
        }
        while cache.run_pages + pages > self.run_pages_limit() {
            let Some((highest, _)) = cache.highest_of_all().filter(|&(_, at)| at > head) else { break };
            let Some(run) = cache.take_highest_run(highest) else { break };
            wake = Some(wake.unwrap_or(Wake::Nobody).or(self.give_back_run(&cache.session, run)));
        }
        wake
    }

    /// Gives every cached block back to the shared spans and every cached run to the page
    /// bitmap (at detach, before waiting, or when the host wants the memory visible to others).
    pub fn flush(&self, cache: &mut Cache) -> Result<Wake, Error> {
        self.check_session(&cache.session)?;
        let mut wake = Wake::Nobody;
        for class in 0..NUM_CLASSES {
            wake = wake.or(self.spill(cache, class, cache.lens[class] as usize));
        }
        for size in 0..RUN_SIZES {
            while let Some(run) = cache.take_highest_run(size) {
                wake = wake.or(self.give_back_run(&cache.session, run));
            }
        }
        // Its blocks too: the next participant of its record must not inherit them.
        let me = cache.session.participant + 1;
        for &block in &cache.blocks[..cache.block_count as usize] {
            self.give_up_block(me, block);
        }
        cache.block_count = 0;
        Ok(wake)
    }

    /// Releases a run the cache held (unless another participant released it already).
    fn give_back_run(&self, session: &Session, run: CachedRun) -> Wake {
        match self.release_run_from(session, run.head, run.pages, run.word) {
            Some(_) => self.wake_if_waiting(),
            None => Wake::Nobody,
        }
    }

    /// Gives the `count` oldest cached blocks of `class` back to their span, as one chain.
    fn spill(&self, cache: &mut Cache, class: usize, count: usize) -> Wake {
        let len = cache.lens[class] as usize;
        let count = count.min(len);
        if count == 0 {
            return Wake::Nobody;
        }
        let head = cache.spans[class].head;
        let indices = &cache.entries[class][..count];
        let mut tags = [0u64; CACHE_BLOCKS];
        self.publish_hazard(&cache.session, head);
        let span = self.span(head, class);
        for (tag, &index) in tags.iter_mut().zip(indices) {
            *tag = BlockState::tag_of(span.state(index as u64).load(Ordering::Relaxed));
        }
        self.push_blocks(&cache.session, head, class, indices, &tags[..count]);
        self.clear_hazard(&cache.session);
        step!("spill/given-back");
        cache.entries[class].copy_within(count..len, 0);
        cache.lens[class] = (len - count) as u8;
        self.wake_if_waiting()
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;
    use crate::{Owner, ProcessIdentity, Region};

    fn memory(bytes: usize) -> Vec<u64> {
        vec![0; bytes / 8]
    }

    fn heap(words: &mut [u64]) -> Heap<'_> {
        // SAFETY: the vector outlives the heap and is only used through it.
        let region =
            unsafe { Region::from_raw(words.as_mut_ptr().cast(), words.len() * 8) }.expect("aligned");
        Heap::create_default(region).expect("fits")
    }

    fn cache_of(heap: &Heap<'_>, pid: u32) -> Cache {
        let owner =
            heap.register_process(ProcessIdentity { pid, start_time: 1, namespace: 1 }).expect("room");
        Cache::new(heap.register_participant(owner).expect("room"))
    }

    #[test]
    fn cached_frees_are_reused_and_double_frees_still_fail() {
        let mut words = memory(1 << 20);
        let heap = heap(&mut words);
        let mut cache = cache_of(&heap, 77);
        let a = heap.alloc_with(&mut cache, 64, AllocOptions::default()).expect("space");
        assert_eq!(cache.held(), REFILL_BLOCKS - 1);
        assert_eq!(heap.free_with(&mut cache, a.id()), Ok(Wake::Nobody));
        assert_eq!(heap.free_with(&mut cache, a.id()), Err(Error::NotAllocated { id: a.id().to_u128() }));
        assert_eq!(heap.free(cache.session(), a.id()), Err(Error::NotAllocated { id: a.id().to_u128() }));
        assert_eq!(heap.lookup(cache.session(), a.id()), Err(Error::NotAllocated { id: a.id().to_u128() }));
        let b = heap.alloc_with(&mut cache, 64, AllocOptions::default()).expect("space");
        assert_eq!(b.offset, a.offset, "the most recently freed block comes back first");
        assert_ne!(b.id(), a.id());
        let stats = heap.check(cache.session()).expect("cached blocks are accounted for");
        assert_eq!(stats.cached_blocks, cache.held() as u64);
        let _ = heap.free_with(&mut cache, b.id()).expect("live");
        let _ = heap.flush(&mut cache).expect("same heap");
        assert_eq!(cache.held(), 0);
        assert_eq!(heap.check(cache.session()).expect("consistent").cached_blocks, 0);
    }

    #[test]
    fn freed_runs_are_cached_reused_by_exact_size_and_given_back() {
        let mut words = memory(4 << 20);
        let heap = heap(&mut words);
        let mut cache = cache_of(&heap, 77);
        let plain = AllocOptions::default();
        let a = heap.alloc_with(&mut cache, 64 << 10, plain).expect("space");
        assert_eq!(heap.free_with(&mut cache, a.id()), Ok(Wake::Nobody));
        assert_eq!(cache.held(), 1);
        let stats = heap.check(cache.session()).expect("a cached run is accounted for");
        assert_eq!((stats.cached_blocks, stats.live_allocations), (1, 0));
        assert_eq!(stats.free_bytes, stats.data_bytes, "a cached run is free");
        // A stale id and a double free fail as for any freed run.
        let not_allocated = Error::NotAllocated { id: a.id().to_u128() };
        assert_eq!(heap.free_with(&mut cache, a.id()), Err(not_allocated));
        assert_eq!(heap.lookup(cache.session(), a.id()), Err(not_allocated));
        // Another number of pages is not served by it; the same number is, with a new id.
        let other = heap.alloc_with(&mut cache, 100 << 10, plain).expect("space");
        assert_ne!(other.offset, a.offset);
        let b = heap.alloc_with(&mut cache, (64 << 10) - 100, plain).expect("space");
        assert_eq!((b.offset, b.capacity, b.size), (a.offset, a.capacity, (64 << 10) - 100));
        assert_ne!(b.id(), a.id());
        assert_eq!(heap.lookup(cache.session(), b.id()), Ok(b));
        assert_eq!(cache.held(), 0);
        let _ = heap.free_with(&mut cache, b.id()).expect("live");
        let _ = heap.free_with(&mut cache, other.id()).expect("live");
        assert_eq!(cache.held(), 2);
        let _ = heap.flush(&mut cache).expect("same heap");
        let stats = heap.check(cache.session()).expect("consistent");
        assert_eq!((cache.held(), stats.cached_blocks, stats.claimed_pages), (0, 0, 0));
    }

    #[test]
    fn a_full_run_size_keeps_its_lowest_runs_and_large_runs_are_never_cached() {
        let mut words = memory(8 << 20);
        let heap = heap(&mut words);
        let mut cache = cache_of(&heap, 77);
        let plain = AllocOptions::default();
        let mut runs: Vec<_> = (0..CACHE_RUNS_PER_SIZE + 2)
            .map(|_| heap.alloc_with(&mut cache, 32 << 10, plain).expect("space"))
            .collect();
        let other = heap.alloc_with(&mut cache, 12 << 10, plain).expect("space");
        let huge = heap.alloc_with(&mut cache, CACHE_RUN_BYTES + 1, plain).expect("space");
        // Freed highest first but one: the last, lowest, takes the place of the highest cached.
        runs[1..].reverse();
        for run in &runs {
            let _ = heap.free_with(&mut cache, run.id()).expect("live");
            assert!(cache.held() <= CACHE_RUNS_PER_SIZE);
        }
        let _ = heap.free_with(&mut cache, huge.id()).expect("live");
        assert_eq!(cache.held(), CACHE_RUNS_PER_SIZE);
        // Another size has room of its own.
        let _ = heap.free_with(&mut cache, other.id()).expect("live");
        assert_eq!(cache.held(), CACHE_RUNS_PER_SIZE + 1);
        let stats = heap.check(cache.session()).expect("consistent");
        assert_eq!(stats.cached_blocks, CACHE_RUNS_PER_SIZE as u64 + 1);
        assert_eq!(
            stats.claimed_pages,
            CACHE_RUNS_PER_SIZE as u64 * 8 + 3,
            "the two highest runs and the huge one went back"
        );
        // The lowest comes back first, and every one cached is of the lowest.
        runs.sort_by_key(|run| run.offset);
        for run in &runs[..CACHE_RUNS_PER_SIZE] {
            let again = heap.alloc_with(&mut cache, (32 << 10) - 1, plain).expect("space");
            assert_eq!((again.offset, again.size), (run.offset, (32 << 10) - 1));
        }
        assert_eq!(cache.held(), 1);
    }

    #[test]
    fn run_sizes_are_every_page_count_to_eight_then_four_per_doubling() {
        let sizes: Vec<u64> = (1..=MAX_RUN_SIZE).filter_map(run_size).map(|(_, pages)| pages).collect();
        let mut distinct = sizes.clone();
        distinct.dedup();
        let expected =
            [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128];
        assert_eq!(distinct, expected);
        assert_eq!(distinct.len(), RUN_SIZES);
        for pages in 1..=MAX_RUN_SIZE {
            let (index, size) = run_size(pages).expect("a run size");
            assert!(size >= pages && (size - pages) * 4 < pages.max(4), "{pages} -> {size}");
            assert_eq!(distinct[index], size, "{pages}: its index names its size");
        }
        assert_eq!((run_size(0), run_size(MAX_RUN_SIZE + 1)), (None, None));
    }

    #[test]
    fn a_full_class_cache_gives_half_back() {
        let mut words = memory(1 << 20);
        let heap = heap(&mut words);
        let mut cache = cache_of(&heap, 1);
        let blocks: Vec<_> = (0..CACHE_BLOCKS * 2)
            .map(|_| heap.alloc(cache.session(), 32, AllocOptions::default()).expect("space"))
            .collect();
        for block in &blocks {
            let _ = heap.free_with(&mut cache, block.id()).expect("live");
            assert!(cache.held() <= CACHE_BLOCKS);
        }
        let stats = heap.check(cache.session()).expect("consistent");
        assert_eq!(stats.cached_blocks, cache.held() as u64);
        assert_eq!(stats.live_allocations, 0);
    }

    #[test]
    fn bad_alignments_are_refused_through_the_cache_too() {
        let mut words = memory(1 << 20);
        let heap = heap(&mut words);
        let mut cache = cache_of(&heap, 1);
        let first = heap.alloc_with(&mut cache, 8, AllocOptions::default()).expect("space");
        let _ = heap.free_with(&mut cache, first.id()).expect("live");
        assert!(cache.held() > 0, "the fast path has blocks to give");
        for align in [0, 3, 12] {
            let options = AllocOptions { align, ..AllocOptions::default() };
            assert_eq!(heap.alloc_with(&mut cache, 8, options), Err(Error::BadAlignment { align }));
        }
        heap.check(cache.session()).expect("consistent");
    }

    #[test]
    fn a_cache_of_another_heap_is_refused() {
        let mut first = memory(1 << 20);
        let mut second = memory(1 << 20);
        let one = heap(&mut first);
        let other = heap(&mut second);
        let mut cache = cache_of(&one, 1);
        assert_eq!(other.alloc_with(&mut cache, 8, AllocOptions::default()), Err(Error::ForeignSession));
        assert_eq!(other.flush(&mut cache), Err(Error::ForeignSession));
    }

    #[test]
    fn running_out_flushes_the_cache_so_spans_can_go_back() {
        let mut words = memory(1 << 20);
        let heap = heap(&mut words);
        let mut cache = cache_of(&heap, 1);
        let mut small = Vec::new();
        while let Ok(a) = heap.alloc_with(&mut cache, 16, AllocOptions::default()) {
            small.push(a.id());
        }
        for id in small {
            let _ = heap.free_with(&mut cache, id).expect("live");
        }
        // The whole data area: only possible once the cache gave its span back too.
        let all = heap.geometry().data_bytes();
        assert!(heap.alloc_with(&mut cache, all, AllocOptions::default()).is_ok());
        assert_eq!(cache.held(), 0);
        heap.check(cache.session()).expect("consistent");
        let _ = Owner::POOL;
    }
}
