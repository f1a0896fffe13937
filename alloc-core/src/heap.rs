//! The heap: allocation, free, lookup and the blocking protocol over one region.
//!
//! # Design
//!
//! The data area is cut into pages (4 KiB by default). A lock-free bitmap ([`crate::bitmap`])
//! hands out runs of pages. A request of at most 2048 bytes (and at most 16-byte alignment) is
//! served from a *span*: 16 pages carved into blocks of one size class, with a Michael-style
//! anchor ([`crate::span`]). Larger or more strictly aligned requests get a run of whole pages
//! of their own (a *large* allocation), recorded in its first page's metadata.
//!
//! Spans of a class with free blocks are found through the class's Treiber stack
//! ([`crate::stack`]) and, first, through this heap's *hint*: the span it allocated from last.
//! Each process (each `Heap` value) has its own hints, so in the steady state a process frees
//! into and allocates from its own spans and does not contend on one anchor. A span is in the
//! stack while its `listed` flag is set. Spans are removed lazily (Michael's design): an
//! allocator that finds the top span full pops it off. A fresh span is listed at once, a free
//! into an unlisted span lists it, and whoever unlists a span lists it again if it has free
//! blocks. So every span with free blocks is in its stack (or about to be pushed there), and
//! an allocation fails only when no span of its class has a free block and no pages are left.
//!
//! On top of this sits each participant's [`crate::Cache`] (the `cache` module): up to 64 free
//! blocks per class in process-local memory, refilled from a span 32 at a time with one
//! compare-exchange, so that most allocations and frees touch only the block's own words.
//!
//! Spans are not bound to their class for good. When the bitmap has no run left, the heap
//! detaches every class stack, retires each span whose blocks are all free (giving its pages
//! back), and pushes the others back; then it tries again. A pool filled with tiny blocks and
//! emptied again thus serves one allocation of most of its data area.
//!
//! # Ids
//!
//! An allocation's id is `generation << slot_bits | slot`, where the slot is the allocation's
//! offset in the data area divided by 16. Lookup by id is therefore O(1): the slot gives the
//! place, the place's state word gives the live generation, and an id whose generation differs
//! is stale. Each allocation of a slot takes the next generation. Generations survive the
//! reuse of memory for another class or a large run: every page keeps an *epoch*, at least the
//! largest generation issued to a slot inside it, raised when a span or run is released and
//! read when the next one is set up. An id can therefore only repeat after one slot has been
//! allocated `2^(64 - slot_bits)` times (2^38 for a 1 GiB pool, 2^28 for 1 TiB).
//!
//! # Lock-freedom and crashes
//!
//! Every shared change is one atomic read-modify-write of one word; a compare-exchange is
//! retried only when another participant's change succeeded. A participant that stops at any
//! instruction blocks nobody. What it may leave behind: a block taken but not yet recorded,
//! claimed pages not yet recorded in page info, a span listed but not yet pushed, a detached
//! stack chain in `release_empty_spans`. These hold memory, they never corrupt allocations;
//! `check` reports them, `reclaim_dead` gives back what dead participants' caches and
//! allocations held, and `repair` (run while nobody is mid-operation) puts the rest right.
//!
//! A free of a *stale* id that races with the retirement of its span may read the block's old
//! state word after the span's pages were handed to someone else; it then fails (the word no
//! longer holds the id's live state) unless those bytes happen to equal that exact 64-bit
//! state word. Frees of live ids cannot meet this: a span with a live block is never retired.
//!
//! For the same reason an allocation can fail with `OutOfMemory` while another participant
//! holds pages it has claimed but not yet published as a span: waiting for it would be a lock.
//! This happens only when the bitmap is exhausted; a host that waits (`alloc_blocking`) should
//! wait in bounded slices so that it tries again.

use crate::bitmap::Bitmap;
use crate::error::Error;
use crate::layout::{
    block_index, class_for, header, page, span_meta_bytes, status, Anchor, BlockState, Geometry, PageInfo,
    CLASS_SIZES, DEFAULT_PAGE_SHIFT, GRANULE, HEADER_WORDS, LAYOUT_VERSION, MAGIC, MAX_PAGE_SHIFT,
    MIN_PAGE_SHIFT, NUM_CLASSES, PAGE_META_WORDS, SPAN_PAGES, STATE_DESTROYED, STATE_INITIALISING,
    STATE_READY,
};
use crate::primitive::{fence, AtomicU32, AtomicU64, Ordering};
use crate::region::Region;
use crate::span::{Pushed, Span};
use crate::stack::SpanStack;

/// Allocation types with a meaning fixed by Dragon's managed memory; others are free for users.
pub mod alloc_type {
    /// Plain data.
    pub const DATA: u8 = 0;
    /// A channel.
    pub const CHANNEL: u8 = 1;
    /// A channel's buffer.
    pub const CHANNEL_BUFFER: u8 = 2;
    /// Bootstrap data.
    pub const BOOTSTRAP: u8 = 3;
}

/// An allocation's id: unique over the pool's life (see the module docs for the bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocId(pub u64);

/// Who owns an allocation: a process id, or the pool itself ([`Owner::POOL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner(pub u32);

impl Owner {
    /// Owned by the pool: never reclaimed because a process died.
    pub const POOL: Owner = Owner(0);
}

/// How to allocate, beyond the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocOptions {
    /// Alignment: a power of two up to the page size. Everything is 16-byte aligned anyway.
    pub align: u64,
    /// The allocation's type ([`alloc_type`]).
    pub alloc_type: u8,
    /// The owner recorded with the allocation.
    pub owner: Owner,
}

impl Default for AllocOptions {
    fn default() -> Self {
        AllocOptions { align: GRANULE, alloc_type: alloc_type::DATA, owner: Owner::POOL }
    }
}

/// A live allocation as seen at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Its id.
    pub id: AllocId,
    /// Byte offset of its first byte from the start of the region.
    pub offset: u64,
    /// The size asked for.
    pub size: u64,
    /// Bytes usable in place (the class size, or the run's pages).
    pub capacity: u64,
    /// Its type.
    pub alloc_type: u8,
    /// Its owner.
    pub owner: Owner,
}

/// Whether a free must wake blocked allocators. The host wakes them through its futex on
/// [`Heap::wake_word`]; the core cannot make system calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a free that reports `Wake::Waiters` must wake the futex on `Heap::wake_word`"]
pub enum Wake {
    /// Nobody waits: no system call needed.
    Nobody,
    /// Someone waits in `alloc_blocking`: wake every waiter on the wake word.
    Waiters,
}

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
    /// deadline passes. Spurious returns are fine.
    fn wait(&mut self, word: &AtomicU64, seen: u64) -> Waited;
}

/// Per-class figures in [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Spans of this class.
    pub spans: u64,
    /// Blocks in those spans.
    pub blocks: u64,
    /// Live blocks.
    pub live: u64,
}

/// Usage figures from one walk of the heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of the data area.
    pub data_bytes: u64,
    /// Bytes not taken by live allocations' blocks or runs, nor by span metadata.
    pub free_bytes: u64,
    /// Live allocations.
    pub live_allocations: u64,
    /// Sum of the live allocations' requested sizes.
    pub live_bytes: u64,
    /// Pages claimed from the bitmap.
    pub claimed_pages: u64,
    /// Free blocks held in participants' caches (counted in `free_bytes`).
    pub cached_blocks: u64,
    /// The longest run of unclaimed pages, in bytes.
    pub largest_free_run: u64,
    /// Per size class.
    pub classes: [ClassStats; NUM_CLASSES],
}

/// Where an id's slot lives.
pub(crate) enum Place {
    /// Block `index` of the span at page `head` of `class`; `base` is the span's byte offset.
    Small {
        head: u64,
        class: usize,
        index: u64,
        base: u64,
    },
    Large {
        head: u64,
        pages: u64,
    },
}

/// A heap over one region. Each process (or each thread standing in for one) opens its own
/// `Heap` over the shared region; the value itself only adds process-local hints.
pub struct Heap<'a> {
    region: Region<'a>,
    geo: Geometry,
    /// Blocks per span of each class for this page size (0: the class is not used).
    blocks: [u64; NUM_CLASSES],
    /// Per class, the byte offset of block 0 from the span's start (after its metadata).
    first_block: [u64; NUM_CLASSES],
    /// Per class, the span this heap allocated from last (page + 1, 0 = none). Process-local.
    hints: [AtomicU64; NUM_CLASSES],
    /// Where the next bitmap search starts. Process-local.
    page_hint: AtomicU64,
}

impl<'a> Heap<'a> {
    /// Lays out a new heap over `region` with pages of `1 << page_shift` bytes and marks it
    /// ready. Writes only the header: everything past it must be zero (a fresh file or
    /// mapping), which means "all free".
    pub fn create(region: Region<'a>, page_shift: u32) -> Result<Heap<'a>, Error> {
        if !(MIN_PAGE_SHIFT..=MAX_PAGE_SHIFT).contains(&page_shift) {
            return Err(Error::BadPageSize { page_shift });
        }
        let geo = Geometry::compute(region.len(), page_shift)
            .ok_or(Error::RegionTooSmall { bytes: region.len() })?;
        let w = |index: usize| region.word(index);
        w(header::STATUS).store(STATE_INITIALISING, Ordering::Relaxed);
        w(header::REGION_BYTES).store(geo.region_bytes, Ordering::Relaxed);
        w(header::PAGE_SHIFT).store(page_shift as u64, Ordering::Relaxed);
        w(header::NUM_PAGES).store(geo.num_pages, Ordering::Relaxed);
        w(header::DATA_OFFSET).store(geo.data_offset, Ordering::Relaxed);
        w(header::SLOT_BITS).store(geo.slot_bits as u64, Ordering::Relaxed);
        w(header::VERSION).store(LAYOUT_VERSION, Ordering::Relaxed);
        w(header::MAGIC).store(MAGIC, Ordering::Relaxed);
        // ORDERING: Release publishes the header fields above to `open`'s Acquire load of STATUS.
        w(header::STATUS).store(STATE_READY, Ordering::Release);
        Ok(Heap::with_geometry(region, geo))
    }

    /// Lays out a new heap with the default page size (4 KiB).
    pub fn create_default(region: Region<'a>) -> Result<Heap<'a>, Error> {
        Heap::create(region, DEFAULT_PAGE_SHIFT)
    }

    /// Opens a heap another participant created, validating its header against the region.
    pub fn open(region: Region<'a>) -> Result<Heap<'a>, Error> {
        if region.len() < (HEADER_WORDS * 8) as u64 {
            return Err(Error::RegionTooSmall { bytes: region.len() });
        }
        let read = |index: usize| region.word(index).load(Ordering::Relaxed);
        // ORDERING: Acquire pairs with `create`'s Release store of READY: the fields are complete.
        let state = region.word(header::STATUS).load(Ordering::Acquire) & status::STATE_MASK;
        if read(header::MAGIC) != MAGIC {
            return Err(if state == STATE_INITIALISING { Error::NotReady } else { Error::BadMagic });
        }
        let version = read(header::VERSION);
        if version != LAYOUT_VERSION {
            return Err(Error::UnsupportedVersion { found: version });
        }
        match state {
            STATE_READY => {}
            // 0: the magic is visible but the creator's first state store is not yet.
            0 | STATE_INITIALISING => return Err(Error::NotReady),
            STATE_DESTROYED => return Err(Error::Destroyed),
            _ => return Err(Error::HeaderMismatch),
        }
        let page_shift = read(header::PAGE_SHIFT);
        if read(header::REGION_BYTES) != region.len() || page_shift > MAX_PAGE_SHIFT as u64 {
            return Err(Error::HeaderMismatch);
        }
        let geo = Geometry::compute(region.len(), page_shift as u32).ok_or(Error::HeaderMismatch)?;
        if read(header::NUM_PAGES) != geo.num_pages
            || read(header::DATA_OFFSET) != geo.data_offset
            || read(header::SLOT_BITS) != geo.slot_bits as u64
        {
            return Err(Error::HeaderMismatch);
        }
        Ok(Heap::with_geometry(region, geo))
    }

    fn with_geometry(region: Region<'a>, geo: Geometry) -> Heap<'a> {
        let mut blocks = [0; NUM_CLASSES];
        for (class, slot) in blocks.iter_mut().enumerate() {
            let count = crate::layout::blocks_per_span(CLASS_SIZES[class] as u64, geo.span_bytes());
            // A class with only a handful of blocks per span would waste most of it.
            *slot = if count >= 8 { count } else { 0 };
        }
        Heap {
            region,
            geo,
            blocks,
            first_block: blocks.map(span_meta_bytes),
            hints: core::array::from_fn(|_| AtomicU64::new(0)),
            page_hint: AtomicU64::new(0),
        }
    }

    /// The geometry this heap was opened with.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The region this heap lives in.
    pub fn region(&self) -> &Region<'a> {
        &self.region
    }

    /// A header word reserved for the host (`index` in `HOST_WORDS_START..HEADER_WORDS`).
    pub fn host_word(&self, index: usize) -> Option<&AtomicU64> {
        (crate::layout::HOST_WORDS_START..HEADER_WORDS).contains(&index).then(|| self.region.word(index))
    }

    /// The futex word blocked allocators wait on (its low 32 bits).
    pub fn wake_word(&self) -> &AtomicU64 {
        self.region.word(header::WAKE_SEQ)
    }

    /// Marks the pool destroyed: every later call in every process fails with
    /// [`Error::Destroyed`]. Returns whether waiters must be woken so that they see it.
    pub fn mark_destroyed(&self) -> Wake {
        let status = self.region.word(header::STATUS);
        let mut current = status.load(Ordering::Relaxed);
        loop {
            let destroyed = (current & !status::STATE_MASK) | STATE_DESTROYED;
            // ORDERING: Release so a process that sees DESTROYED also sees everything before it.
            match status.compare_exchange_weak(current, destroyed, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return self.bump_wake_seq(),
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether the pool was destroyed (one load of the status word).
    pub fn is_destroyed(&self) -> bool {
        self.ensure_ready().is_err()
    }

    /// The status word: state and waiter count (a Relaxed load: destruction and waiters only
    /// need to be noticed eventually; the ordered paths use their own fences).
    #[inline]
    pub(crate) fn status(&self) -> u64 {
        self.region.word(header::STATUS).load(Ordering::Relaxed)
    }

    /// Fails with `Destroyed` once the pool was destroyed.
    #[inline]
    pub(crate) fn ensure_ready(&self) -> Result<(), Error> {
        match self.status() & status::STATE_MASK {
            STATE_READY => Ok(()),
            _ => Err(Error::Destroyed),
        }
    }

    // ----- metadata access -------------------------------------------------------------------

    #[inline]
    pub(crate) fn page_word(&self, page: u64, field: usize) -> &AtomicU64 {
        self.region.word(self.geo.page_word(page, field))
    }

    #[inline]
    pub(crate) fn info(&self, page: u64) -> PageInfo {
        // ORDERING: Acquire pairs with the Release store that published the span or run, so its
        // anchor, states and owner are visible to whoever acts on this info.
        PageInfo::decode(self.page_word(page, page::INFO).load(Ordering::Acquire))
    }

    pub(crate) fn bitmap(&self) -> Bitmap<'_> {
        let offset = self.geo.bitmap_word as u64 * 8;
        Bitmap::new(self.region.words_at(offset, self.geo.bitmap_words as u64), self.geo.num_pages)
    }

    pub(crate) fn stack(&self, class: usize) -> SpanStack<'_> {
        let meta_offset = self.geo.page_meta_word as u64 * 8;
        let meta_words = self.geo.num_pages * PAGE_META_WORDS as u64;
        SpanStack::new(
            self.region.word(self.geo.stacks_word + class),
            self.region.words_at(meta_offset, meta_words),
            PAGE_META_WORDS,
            page::LINK,
            self.geo.num_pages,
        )
    }

    /// The span whose head is `head`, of `class`. Both must already be range-checked.
    #[inline]
    pub(crate) fn span(&self, head: u64, class: usize) -> (Span<'_>, &[AtomicU32], u64) {
        let blocks = self.blocks[class];
        let start = self.geo.page_offset(head);
        let states = self.region.words_at(start, blocks);
        let owners = self.region.halves_at(start + blocks * 8, blocks);
        (Span::new(self.page_word(head, page::ANCHOR), states), owners, start + self.first_block[class])
    }

    // The three accessors below are the hot path's direct route to one block's words. `base`
    // is the byte offset of a range-checked span of `class`; `index` is below its block count.

    /// The state word of block `index` of the span at `base`.
    #[inline]
    fn block_state(&self, base: u64, index: u64) -> &AtomicU64 {
        self.region.word((base / 8 + index) as usize)
    }

    /// The owner half-word of block `index` of the span at `base`, of `class`.
    #[inline]
    pub(crate) fn block_owner(&self, base: u64, class: usize, index: u64) -> &AtomicU32 {
        self.region.half(((base + self.blocks[class] * 8) / 4 + index) as usize)
    }

    /// The byte offset of block `index` of the span at `base`, of `class`.
    #[inline]
    fn block_offset(&self, base: u64, class: usize, index: u64) -> u64 {
        base + self.first_block[class] + index * CLASS_SIZES[class] as u64
    }

    #[inline]
    fn check_span_head(&self, head: u64, class: usize) -> Result<(), Error> {
        if class >= NUM_CLASSES || self.blocks[class] == 0 || head + SPAN_PAGES > self.geo.num_pages {
            return Err(Error::Corrupt { what: "span head out of range", page: head });
        }
        Ok(())
    }

    /// The id of the allocation at `offset` with generation `gen`; the shift drops generation
    /// bits the id cannot hold.
    pub(crate) fn make_id(&self, offset: u64, gen: u64) -> AllocId {
        let slot = (offset - self.geo.data_offset) / GRANULE;
        AllocId((gen << self.geo.slot_bits) | slot)
    }

    /// The generation bits an id of this heap can hold.
    fn id_gen_mask(&self) -> u64 {
        u64::MAX >> self.geo.slot_bits
    }

    // ----- allocation ------------------------------------------------------------------------

    /// Allocates `size` bytes (0 is allowed and gives a distinct allocation).
    pub fn alloc(&self, size: u64, options: AllocOptions) -> Result<Allocation, Error> {
        self.ensure_ready()?;
        if !options.align.is_power_of_two() || options.align > self.geo.page_bytes() {
            return Err(Error::BadAlignment { align: options.align });
        }
        if size > self.geo.data_bytes() {
            return Err(Error::TooLarge { requested: size, capacity: self.geo.data_bytes() });
        }
        let class = class_for(size).filter(|&class| options.align <= GRANULE && self.blocks[class] > 0);
        let attempt = || match class {
            Some(class) => self.alloc_small(class, size, options),
            None => self.alloc_large(size, options),
        };
        if let Some(allocation) = attempt()? {
            return Ok(allocation);
        }
        if self.release_empty_spans()? > 0 {
            if let Some(allocation) = attempt()? {
                return Ok(allocation);
            }
        }
        Err(Error::OutOfMemory { requested: size })
    }

    fn alloc_small(
        &self,
        class: usize,
        size: u64,
        options: AllocOptions,
    ) -> Result<Option<Allocation>, Error> {
        let mut taken = None;
        self.take_blocks(class, 1, |head, index| taken = Some((head, index)))?;
        Ok(taken.map(|(head, index)| self.hand_out(head, class, index, size, options)))
    }

    /// Takes up to `max` free blocks of `class` (at least one unless the pool has no room),
    /// from this heap's hint span, else the class stack's top span, else a fresh span. Each
    /// block is handed to `take` as (span head, index) and belongs to the caller, not yet live.
    pub(crate) fn take_blocks(
        &self,
        class: usize,
        max: u64,
        mut take: impl FnMut(u64, u64),
    ) -> Result<u64, Error> {
        let stack = self.stack(class);
        loop {
            let hint = self.hints[class].load(Ordering::Relaxed);
            if hint != 0 {
                let taken = self.pop_blocks(hint - 1, class, max, &mut take)?;
                if taken > 0 {
                    return Ok(taken);
                }
            }
            // Bounded: a stack that keeps handing back full spans (a burst of contention, or a
            // corrupted link that loops) is abandoned for a fresh span after this many pops.
            let mut budget = self.geo.num_pages / SPAN_PAGES + 8;
            while let Some(top) = stack.peek()? {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                self.check_span_head(top, class)?;
                let taken = self.pop_blocks(top, class, max, &mut take)?;
                if taken > 0 {
                    self.hints[class].store(top + 1, Ordering::Relaxed);
                    return Ok(taken);
                }
                // The top span is full: take it off the stack (lazily, as in Michael's design).
                // Whatever we pop is unlisted, then listed again if a free raced in.
                if let Some(popped) = stack.pop()? {
                    self.check_span_head(popped, class)?;
                    let (span, _, _) = self.span(popped, class);
                    span.unlist();
                    self.relist(popped, class, &span);
                }
            }
            let Some(head) = self.claim_pages(SPAN_PAGES) else {
                return Ok(0);
            };
            self.init_span(head, class);
            self.hints[class].store(head + 1, Ordering::Relaxed);
            let taken = self.pop_blocks(head, class, max, &mut take)?;
            if taken > 0 {
                return Ok(taken);
            }
            // Others emptied the new span first: go round.
        }
    }

    /// Lists `span` (head page `head`) if it has free blocks and is unlisted, pushing it on its
    /// class stack. Every path that unlists a span calls this afterwards, so a span with free
    /// blocks is always findable.
    pub(crate) fn relist(&self, head: u64, class: usize, span: &Span<'_>) {
        if span.relist(|| self.info(head) == PageInfo::SpanHead { class }) == Pushed::MustList {
            self.stack(class).push(head);
        }
    }

    /// Takes up to `max` blocks from span `head`, if it is still a span of `class`.
    fn pop_blocks(
        &self,
        head: u64,
        class: usize,
        max: u64,
        take: &mut impl FnMut(u64, u64),
    ) -> Result<u64, Error> {
        let (span, _, _) = self.span(head, class);
        let still_ours = || self.info(head) == PageInfo::SpanHead { class };
        if max == 1 {
            return Ok(span.pop(still_ours)?.map(|index| take(head, index)).map_or(0, |()| 1));
        }
        span.pop_batch(max, still_ours, |index| take(head, index))
    }

    /// Makes block `index` of span `head`, which the caller took, a live allocation.
    #[inline]
    pub(crate) fn hand_out(
        &self,
        head: u64,
        class: usize,
        index: u64,
        size: u64,
        options: AllocOptions,
    ) -> Allocation {
        let base = self.geo.page_offset(head);
        let state = self.block_state(base, index);
        let gen = (BlockState::decode(state.load(Ordering::Relaxed)).gen + 1) & BlockState::GEN_MASK;
        let class_size = CLASS_SIZES[class] as u64;
        self.block_owner(base, class, index).store(options.owner.0, Ordering::Relaxed);
        let live = BlockState { live: true, gen, alloc_type: options.alloc_type, low: class_size - size };
        // ORDERING: Release publishes the owner (and the allocation as a whole) to lookups,
        // which load this word with Acquire before reading the owner.
        state.store(live.encode(), Ordering::Release);
        let offset = self.block_offset(base, class, index);
        Allocation {
            id: self.make_id(offset, gen),
            offset,
            size,
            capacity: class_size,
            alloc_type: options.alloc_type,
            owner: options.owner,
        }
    }

    fn init_span(&self, head: u64, class: usize) {
        let base = (head..head + SPAN_PAGES)
            .map(|page| self.page_word(page, page::EPOCH).load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        self.span(head, class).0.init(base);
        for member in head + 1..head + SPAN_PAGES {
            self.page_word(member, page::INFO)
                .store(PageInfo::SpanMember { head, class }.encode(), Ordering::Relaxed);
        }
        // ORDERING: Release publishes the span (anchor, states, member info) to `info` readers.
        self.page_word(head, page::INFO).store(PageInfo::SpanHead { class }.encode(), Ordering::Release);
        // A fresh span is listed at once, so that others find its free blocks too.
        self.relist(head, class, &self.span(head, class).0);
    }

    fn alloc_large(&self, size: u64, options: AllocOptions) -> Result<Option<Allocation>, Error> {
        let pages = size.div_ceil(self.geo.page_bytes()).max(1);
        let Some(head) = self.claim_pages(pages) else {
            return Ok(None);
        };
        let gen = (self.page_word(head, page::EPOCH).load(Ordering::Relaxed) + 1) & BlockState::GEN_MASK;
        self.page_word(head, page::LINK).store(size, Ordering::Relaxed);
        self.page_word(head, page::OWNER).store(options.owner.0 as u64, Ordering::Relaxed);
        let live = BlockState { live: true, gen, alloc_type: options.alloc_type, low: 0 };
        self.page_word(head, page::STATE).store(live.encode(), Ordering::Relaxed);
        // ORDERING: Release publishes size, owner and state to `info` readers (lookups, frees).
        self.page_word(head, page::INFO).store(PageInfo::LargeHead { pages }.encode(), Ordering::Release);
        let offset = self.geo.page_offset(head);
        Ok(Some(Allocation {
            id: self.make_id(offset, gen),
            offset,
            size,
            capacity: pages * self.geo.page_bytes(),
            alloc_type: options.alloc_type,
            owner: options.owner,
        }))
    }

    fn claim_pages(&self, pages: u64) -> Option<u64> {
        let start = self.bitmap().claim(pages, self.page_hint.load(Ordering::Relaxed))?;
        self.page_hint.store(start + pages, Ordering::Relaxed);
        Some(start)
    }

    /// Gives back the pages of every span whose blocks are all free. Returns how many spans
    /// were released. Spans in use by a concurrent `alloc` are left alone.
    pub fn release_empty_spans(&self) -> Result<u64, Error> {
        let mut released = 0;
        for class in 0..NUM_CLASSES {
            let stack = self.stack(class);
            let mut next = stack.take_all()?;
            // The detached chain is ours alone; one longer than there are spans loops.
            let mut budget = self.geo.num_pages / SPAN_PAGES + 1;
            while let Some(head) = next {
                if budget == 0 {
                    return Err(Error::Corrupt { what: "class stack loops", page: head });
                }
                budget -= 1;
                next = stack.next_detached(head)?;
                self.check_span_head(head, class)?;
                let (span, _, _) = self.span(head, class);
                span.unlist();
                if span.try_retire() {
                    self.retire_span(head, &span);
                    released += 1;
                } else {
                    self.relist(head, class, &span);
                }
            }
        }
        Ok(released)
    }

    /// Hands a retired span's pages back; the caller retired it and holds it alone.
    pub(crate) fn retire_span(&self, head: u64, span: &Span<'_>) {
        let max_gen = span.max_gen();
        for page in head..head + SPAN_PAGES {
            self.page_word(page, page::EPOCH).fetch_max(max_gen, Ordering::Relaxed);
            self.page_word(page, page::INFO).store(PageInfo::Free.encode(), Ordering::Relaxed);
        }
        self.bitmap().release(head, SPAN_PAGES);
    }

    // ----- finding an allocation -------------------------------------------------------------

    /// Finds the place of `id`'s slot and its state word. Checks every value read from the
    /// region before using it as an index.
    #[inline]
    pub(crate) fn locate(&self, id: AllocId) -> Result<(Place, &AtomicU64), Error> {
        let slot = id.0 & ((1u64 << self.geo.slot_bits) - 1);
        let relative = slot * GRANULE;
        if relative >= self.geo.data_bytes() {
            return Err(Error::InvalidId { id: id.0 });
        }
        let offset = self.geo.data_offset + relative;
        let page = relative >> self.geo.page_shift;
        let not_allocated = Error::NotAllocated { id: id.0 };
        let (head, class) = match self.info(page) {
            PageInfo::Free => return Err(not_allocated),
            PageInfo::LargeHead { pages } => {
                if pages == 0 || pages > self.geo.num_pages - page {
                    return Err(Error::Corrupt { what: "large run out of range", page });
                }
                if offset != self.geo.page_offset(page) {
                    return Err(not_allocated);
                }
                let state = self.page_word(page, page::STATE);
                return Ok((Place::Large { head: page, pages }, state));
            }
            PageInfo::SpanHead { class } => (page, class),
            PageInfo::SpanMember { head, class } => {
                if head > page || page - head >= SPAN_PAGES {
                    return Err(Error::Corrupt { what: "span member points outside its span", page });
                }
                (head, class)
            }
        };
        self.check_span_head(head, class)?;
        let base = self.geo.page_offset(head);
        let first_block = base + self.first_block[class];
        if offset < first_block {
            return Err(not_allocated);
        }
        let distance = offset - first_block;
        let index = block_index(distance, class);
        if index >= self.blocks[class] || index * CLASS_SIZES[class] as u64 != distance {
            return Err(not_allocated);
        }
        Ok((Place::Small { head, class, index, base }, self.block_state(base, index)))
    }

    /// The state word of `id` if it is live with `id`'s generation.
    #[inline]
    pub(crate) fn live_state(&self, id: AllocId, state: &AtomicU64) -> Result<(u64, BlockState), Error> {
        // ORDERING: Acquire pairs with the Release store that made the allocation live, so its
        // owner and size are visible.
        let word = state.load(Ordering::Acquire);
        let decoded = BlockState::decode(word);
        if !decoded.live || decoded.gen & self.id_gen_mask() != id.0 >> self.geo.slot_bits {
            return Err(Error::NotAllocated { id: id.0 });
        }
        Ok((word, decoded))
    }

    fn describe(&self, id: AllocId, place: &Place, state: BlockState) -> Result<Allocation, Error> {
        let slot = id.0 & ((1u64 << self.geo.slot_bits) - 1);
        let offset = self.geo.data_offset + slot * GRANULE;
        let (size, capacity, owner) = match *place {
            Place::Small { class, index, base, .. } => {
                let capacity = CLASS_SIZES[class] as u64;
                let owner = self.block_owner(base, class, index).load(Ordering::Relaxed);
                (capacity.saturating_sub(state.low), capacity, owner)
            }
            Place::Large { head, pages } => {
                let capacity = pages << self.geo.page_shift;
                let size = self.page_word(head, page::LINK).load(Ordering::Relaxed);
                if size > capacity {
                    return Err(Error::Corrupt { what: "large size exceeds its run", page: head });
                }
                (size, capacity, self.page_word(head, page::OWNER).load(Ordering::Relaxed) as u32)
            }
        };
        Ok(Allocation { id, offset, size, capacity, alloc_type: state.alloc_type, owner: Owner(owner) })
    }

    /// The live allocation with `id`, in O(1).
    pub fn lookup(&self, id: AllocId) -> Result<Allocation, Error> {
        self.ensure_ready()?;
        let (place, state) = self.locate(id)?;
        let (word, decoded) = self.live_state(id, state)?;
        let allocation = self.describe(id, &place, decoded)?;
        // The owner and size were read after the state; if the state changed meanwhile the
        // allocation was freed (or resized) under us and the snapshot may mix two lives.
        // ORDERING: Acquire, as the first load of this word: an unchanged word means the fields
        // read in between belong to it.
        if state.load(Ordering::Acquire) != word {
            return Err(Error::NotAllocated { id: id.0 });
        }
        Ok(allocation)
    }

    /// Whether `id` names a live allocation.
    pub fn contains(&self, id: AllocId) -> bool {
        self.lookup(id).is_ok()
    }

    /// Frees the allocation `id`. A double free, a stale id or an id that is not an allocation
    /// start is an error and changes nothing.
    pub fn free(&self, id: AllocId) -> Result<Wake, Error> {
        self.ensure_ready()?;
        let (place, state) = self.locate(id)?;
        let (word, decoded) = self.live_state(id, state)?;
        self.release(id, place, state, word, decoded)
    }

    /// Frees the located, live allocation `id` (its state word read as `word`) to the shared
    /// heap, and says whether waiters must be woken.
    pub(crate) fn release(
        &self,
        id: AllocId,
        place: Place,
        state: &AtomicU64,
        word: u64,
        decoded: BlockState,
    ) -> Result<Wake, Error> {
        let dead = BlockState { live: false, low: Anchor::NULL, alloc_type: 0, ..decoded };
        // ORDERING: Acquire on success: we now own the block; Release is provided by the push
        // (small) or the bitmap release (large) that hands it on.
        state
            .compare_exchange(word, dead.encode(), Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Error::NotAllocated { id: id.0 })?;
        match place {
            Place::Small { head, class, index, .. } => {
                let (span, _, _) = self.span(head, class);
                self.push_block(&span, head, class, index, decoded.gen)
            }
            Place::Large { head, pages } => {
                self.page_word(head, page::EPOCH).fetch_max(decoded.gen, Ordering::Relaxed);
                self.page_word(head, page::INFO).store(PageInfo::Free.encode(), Ordering::Relaxed);
                self.bitmap().release(head, pages);
            }
        }
        Ok(self.wake_if_waiting())
    }

    /// Puts block `index` of span `head` (owned by the caller, not live) back on its span's
    /// free list, listing the span if it was unlisted.
    fn push_block(&self, span: &Span<'_>, head: u64, class: usize, index: u64, gen: u64) {
        if span.push(index, gen) == Pushed::MustList {
            self.stack(class).push(head);
        }
    }

    /// Gives a cached block (owned by the caller) back to its span.
    pub(crate) fn give_back(&self, head: u64, class: usize, index: u64) {
        let (span, _, _) = self.span(head, class);
        let gen = BlockState::decode(span.state(index).load(Ordering::Relaxed)).gen;
        self.push_block(&span, head, class, index, gen);
    }

    /// Records `owner` as the owner of `id`.
    pub fn set_owner(&self, id: AllocId, owner: Owner) -> Result<(), Error> {
        self.ensure_ready()?;
        let (place, state) = self.locate(id)?;
        let (word, _) = self.live_state(id, state)?;
        match place {
            Place::Small { class, index, base, .. } => {
                self.block_owner(base, class, index).store(owner.0, Ordering::Relaxed)
            }
            Place::Large { head, .. } => {
                self.page_word(head, page::OWNER).store(owner.0 as u64, Ordering::Relaxed)
            }
        }
        // If the allocation died meanwhile, the write went to a free slot's owner word, which
        // the next allocation overwrites; report the free.
        // ORDERING: Acquire, as the first load of this word: an unchanged word means the fields
        // read in between belong to it.
        if state.load(Ordering::Acquire) != word {
            return Err(Error::NotAllocated { id: id.0 });
        }
        Ok(())
    }

    /// Resizes `id`: in place when the new size fits its block or run, otherwise by allocating,
    /// copying and freeing. On failure the original is untouched and still valid. The returned
    /// allocation keeps the id when resized in place.
    pub fn realloc(&self, id: AllocId, new_size: u64) -> Result<Allocation, Error> {
        self.ensure_ready()?;
        let (place, state) = self.locate(id)?;
        let (word, decoded) = self.live_state(id, state)?;
        let current = self.describe(id, &place, decoded)?;
        if new_size <= current.capacity {
            let resized = match place {
                Place::Small { .. } => BlockState { low: current.capacity - new_size, ..decoded },
                Place::Large { .. } => decoded,
            };
            // ORDERING: AcqRel; the CAS both checks the allocation is still live and publishes
            // the new size to lookups.
            state
                .compare_exchange(word, resized.encode(), Ordering::AcqRel, Ordering::Relaxed)
                .map_err(|_| Error::NotAllocated { id: id.0 })?;
            if let Place::Large { head, .. } = place {
                self.page_word(head, page::LINK).store(new_size, Ordering::Relaxed);
            }
            return Ok(Allocation { size: new_size, ..current });
        }
        let options = AllocOptions { align: GRANULE, alloc_type: current.alloc_type, owner: current.owner };
        let moved = self.alloc(new_size, options)?;
        // SAFETY: both allocations are live and belong to the caller, lie in the data area and,
        // being distinct live allocations, do not overlap.
        unsafe { self.region.copy(current.offset, moved.offset, current.size.min(new_size)) };
        if let Err(error) = self.free(id) {
            // The original was freed concurrently; undo our half and report it.
            let _ = self.free(moved.id);
            return Err(error);
        }
        Ok(moved)
    }

    // ----- blocking --------------------------------------------------------------------------

    /// Like [`Heap::alloc`], but when the pool is full waits through `host` for a free in any
    /// process. The host's deadline ends the wait with [`Error::TimedOut`].
    pub fn alloc_blocking(
        &self,
        size: u64,
        options: AllocOptions,
        host: &mut impl WaitHost,
    ) -> Result<Allocation, Error> {
        let status_word = self.region.word(header::STATUS);
        loop {
            match self.alloc(size, options) {
                Err(Error::OutOfMemory { .. }) => {}
                other => return other,
            }
            // Announce ourselves before the last try, so a free that the try misses sees us.
            // ORDERING: SeqCst, part of the Dekker pair with `wake_if_waiting` (fence below).
            status_word.fetch_add(status::WAITER, Ordering::SeqCst);
            // ORDERING: SeqCst fence pairs with the fence in `wake_if_waiting` (Dekker): either
            // that free's load sees our count, or our retry below sees its freed space.
            fence(Ordering::SeqCst);
            let seen = self.wake_word().load(Ordering::SeqCst);
            let outcome = match self.alloc(size, options) {
                Err(Error::OutOfMemory { .. }) => host.wait(self.wake_word(), seen),
                other => {
                    // ORDERING: SeqCst, the waiter count's order everywhere; no other data depends on it.
                    status_word.fetch_sub(status::WAITER, Ordering::SeqCst);
                    return other;
                }
            };
            // ORDERING: SeqCst, the waiter count's order everywhere; no other data depends on it.
            status_word.fetch_sub(status::WAITER, Ordering::SeqCst);
            if outcome == Waited::TimedOut {
                return match self.alloc(size, options) {
                    Err(Error::OutOfMemory { requested }) => Err(Error::TimedOut { requested }),
                    other => other,
                };
            }
        }
    }

    /// Called after space became free: bumps the wake word when someone waits.
    pub(crate) fn wake_if_waiting(&self) -> Wake {
        // ORDERING: SeqCst fence pairs with the fence in `alloc_blocking`; see there.
        fence(Ordering::SeqCst);
        if self.region.word(header::STATUS).load(Ordering::Relaxed) < status::WAITER {
            return Wake::Nobody;
        }
        self.bump_wake_seq()
    }

    fn bump_wake_seq(&self) -> Wake {
        // ORDERING: SeqCst so a waiter that reads the new value also sees the free before it.
        self.wake_word().fetch_add(1, Ordering::SeqCst);
        Wake::Waiters
    }

    /// Number of callers blocked in `alloc_blocking` right now, in all processes.
    pub fn waiters(&self) -> u64 {
        self.status() >> 32
    }

    // ----- walking the heap ------------------------------------------------------------------

    /// The live allocations, page by page: a snapshot that is consistent for each allocation
    /// but may miss or include allocations made or freed during the walk.
    pub fn iter(&self) -> Allocations<'_, 'a> {
        Allocations { heap: self, page: 0, block: 0 }
    }

    /// Usage figures from one walk of the heap.
    pub fn stats(&self) -> Result<Stats, Error> {
        self.ensure_ready()?;
        crate::check::survey(self, false)
    }

    /// Walks the whole heap and verifies every invariant; meaningful on a quiescent heap (no
    /// call in progress in any process). Returns the same figures as [`Heap::stats`].
    pub fn check(&self) -> Result<Stats, Error> {
        self.ensure_ready()?;
        crate::check::check(self)
    }

    pub(crate) fn blocks_of(&self, class: usize) -> u64 {
        self.blocks[class]
    }

    pub(crate) fn page_meta(&self, page: u64, field: usize) -> u64 {
        // ORDERING: Acquire pairs with the Release that published the span or run (info store).
        self.page_word(page, field).load(Ordering::Acquire)
    }

    pub(crate) fn span_parts(&self, head: u64, class: usize) -> Result<(Span<'_>, &[AtomicU32], u64), Error> {
        self.check_span_head(head, class)?;
        Ok(self.span(head, class))
    }
}

/// Iterator over live allocations; see [`Heap::iter`].
pub struct Allocations<'h, 'a> {
    heap: &'h Heap<'a>,
    page: u64,
    block: u64,
}

impl Iterator for Allocations<'_, '_> {
    type Item = Allocation;

    fn next(&mut self) -> Option<Allocation> {
        let heap = self.heap;
        let geo = heap.geo;
        while self.page < geo.num_pages {
            let page = self.page;
            match heap.info(page) {
                PageInfo::SpanHead { class } if heap.check_span_head(page, class).is_ok() => {
                    let (span, _, first_block) = heap.span(page, class);
                    let class_size = CLASS_SIZES[class] as u64;
                    while self.block < span.blocks() {
                        let index = self.block;
                        self.block += 1;
                        // ORDERING: Acquire pairs with the Release store (or release sequence) that last wrote this
                        // state word, so the block's owner and size are those of the state seen.
                        let state = BlockState::decode(span.state(index).load(Ordering::Acquire));
                        if state.live {
                            let id = heap.make_id(first_block + index * class_size, state.gen);
                            if let Ok(allocation) = heap.lookup(id) {
                                return Some(allocation);
                            }
                        }
                    }
                    self.block = 0;
                    self.page += SPAN_PAGES;
                }
                PageInfo::LargeHead { pages } if pages >= 1 && pages <= geo.num_pages - page => {
                    self.page += pages;
                    // ORDERING: Acquire pairs with the Release info store that published the run.
                    let state = BlockState::decode(heap.page_word(page, page::STATE).load(Ordering::Acquire));
                    if state.live {
                        if let Ok(allocation) = heap.lookup(heap.make_id(geo.page_offset(page), state.gen)) {
                            return Some(allocation);
                        }
                    }
                }
                _ => self.page += 1,
            }
        }
        None
    }
}
