//! The heap: allocation, free, lookup, ownership and the blocking protocol over one region.
//!
//! # Design
//!
//! The data area is cut into pages (4 KiB by default). A page bitmap ([`crate::bitmap`]) hands
//! out runs of pages, placed by address-ordered first fit through the free-run index
//! ([`crate::runs`]), a tree of summaries over the bitmap that finds a run in O(log pages).
//! A request of at most 2048 bytes (and at most 16-byte alignment) is served
//! from a *span*: 16 aligned pages carved into blocks of one size class, with a Michael-style
//! anchor ([`crate::span`]). Larger or more strictly aligned requests get a run of whole pages
//! of their own (a *large* allocation), recorded in its first page's metadata; a run made
//! through a participant's cache is rounded up to one of the cache's run sizes, its info
//! recording the pages beyond the allocation's capacity (`spare`), so that once freed into the
//! cache it serves any request of that size.
//!
//! Spans of a class that may have free blocks are found through the class's hierarchical bitmap
//! ([`crate::hier`]), and first through this process's *hint*: the span it allocated from last.
//! A span's bit is set by the free that gives it its first free block (and by the carver of a
//! fresh span); searchers clear the bit of a span they find full, then look again at the span
//! and set it back if a free raced in. Spans are not bound to their class for good: when a claim
//! of pages fails, entirely free spans (found through the *empty set*, a second hierarchical
//! bitmap) are retired one at a time, their pages given back, and the claim retried. A pool
//! filled with tiny blocks and emptied again thus serves one allocation of most of its data area.
//!
//! On top sits each participant's [`crate::Cache`] (the `cache` module): up to 64 free blocks
//! per class in process-local memory, refilled from a span with one compare-exchange, so that
//! most allocations and frees touch only the block's own words; and up to 8 freed runs of each
//! of its run sizes (up to 512 KiB), taken back with one compare-exchange and no search.
//!
//! # Participants
//!
//! Every user of the heap is a *participant* with a record in the region, belonging to a
//! *process* record ([`crate::participant`]): operations take the participant's [`Session`].
//! Every registration an operation makes in shared memory is a word of its participant record:
//! its *hazard* (the span it may be touching), its *pending* claim, release or retirement, a
//! hand-over in progress; and waiter slots name their process. So `reclaim_dead` (the `reclaim`
//! module) can finish or undo whatever a dead participant left half done.
//!
//! # What holds
//!
//! - **No stale or racing operation reaches user memory.** Page metadata, anchors, class lists
//!   and records are out of band: they never become user memory. The only in-band metadata are
//!   a span's state words `S` and extra words `X`; they are touched only under a *hazard*:
//!   the participant stores the page it is about to touch in its `HAZARD` word, fences, and
//!   only then reads the page's info and acts on what it says. A span is retired only after it
//!   is marked retiring (anchor and page info), a *heavy* fence, and a scan that finds no other
//!   participant's hazard on it; otherwise the retirement backs out. So any `S`/`X` word read
//!   under a hazard is metadata of the span the page info named, for the whole operation. With
//!   `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` the hazard side is a compiler fence and the
//!   retirement side the system call (asymmetric fences, as in folly's hazard pointers and
//!   liburcu); without it both are full fences.
//! - **Every change of an allocation is one compare-exchange of one word**: its state word
//!   holds its kind (free, live, cached), its owner (or the cache holding it, or the next free
//!   block), its slack (so its size) and the low 36 bits of its generation. Free, set_owner,
//!   realloc in place and reclaim each compare the whole word they read (under the hazard) and
//!   change it in one step; nothing is "checked, then stored". An exchange that fails because
//!   another participant changed the same live allocation (its owner or size) is retried against
//!   the new word (`Heap::change_live`); it fails only once the allocation is gone. A large
//!   run's free first moves its state word to `Releasing(me)`, so exactly one freer releases it.
//! - **Ids never repeat in practice.** An id is `(slot, generation)` in a `u128`; a slot is the
//!   allocation's offset over 16. Generations have 60 bits (36 in the state word, 24 in the
//!   extra word, both compared by every validation), are bumped by every allocation of the
//!   slot, and survive reuse of the memory: every page keeps an *epoch* (at least every
//!   generation issued in it), raised before the page is given back (and by a large claim as it
//!   issues its run's generation, so that a claim undone by a reclaimer never lets the next run
//!   reissue it) and read when a span or run is set up there. An id can repeat only after 2^60
//!   allocations of one slot.
//! - **Bounded interference.** No operation waits for another. A participant stopped forever
//!   holds at most: one span (its hazard: the span cannot be retired, and if it stopped in the
//!   middle of a pop or push, the blocks in transit), or one run it was claiming or releasing
//!   (its pending page), or one retiring span, plus the blocks its cache holds and the
//!   allocation it was making. A cache holds blocks of one span per class, so the spans a stalled
//!   participant keeps from being retired are at most one per class besides its hazard's. Class
//!   lists never hide more than the span a stalled participant was listing or unlisting
//!   ([`crate::hier`]). A participant stopped while refreshing the run index can leave runs
//!   under its summaries unseen by the index until someone frees pages there; an allocation
//!   then finds them through the bitmap before it refuses ([`crate::runs`]). Nothing else is
//!   unavailable to the others.
//! - **ABA.** Anchors carry a 38-bit tag and state words a 36-bit generation tag, bumped by every
//!   change (every allocation of the block). A compare-exchange prepared against an old word
//!   succeeds on a newer one only if its participant stalled between reading and exchanging
//!   while that one block was allocated again a multiple of 2^36 times (at least 11 minutes of
//!   back-to-back reuse of that block at 10 ns) and the rest of the word came back identical.
//!   That window is what a one-word compare-exchange allows; ids themselves are validated
//!   against all 60 generation bits, so a stale id is refused without any such stall.
//! - **Recovery.** `reclaim_dead` (online, while others work) marks dead processes, finishes or
//!   undoes each dead participant's pending claim/release/retirement, heals the span its hazard
//!   names (blocks popped or pushed half way go back on the list: `reclaim`), clears its waiter
//!   slots, frees the allocations dead processes owned and returns the blocks their caches held.
//!   A participant record of a dead process is *adopted* by one reclaimer at a time (its state
//!   names the adopter), so only one acts on it; if that reclaimer dies too, the next adopts both,
//!   and a record it could not finish yet (deferred) is handed back when its reclaim ends.
//!   Afterwards `check` passes and the whole data area is allocatable again.
//! - **Retirement.** A retirer publishes its hazard on a span before it reads the span's class
//!   and keeps it until its retiring mark is on the span's info, so no other retirer can retire
//!   and re-carve the span under it (the anchor it marks is of the class it read).
//! - **Fork.** The core keeps nothing per process; the host gives a fork child new records and
//!   drops (without giving back) the caches it inherited: those blocks are its parent's.
//!
//! - **Sparse regions.** Every claim first raises the page high-water mark (`PAGE_HWM`); walks
//!   (stats, check, inspection, reclaim) and the searches for free pages read the bitmap and
//!   the run index only below it (pages above it are free without a look), and class-list and
//!   empty-set searches read only the words over the span slots below it, so a huge region's
//!   untouched metadata is never read. A host that maps a file which may run out of space gives
//!   a [`Backing`]: data pages, with every metadata word that describes them (page metadata,
//!   bitmap words, the class-list, empty-set and run-index words over them), are backed in 4
//!   MiB chunks (`BACKED_PAGES`) before their first claim, and a chunk that cannot be backed
//!   fails the claim like a full pool; the mark only ever rises past backed pages, so nothing
//!   below it can fault (a mark damaged to above them is read as them). An id in a page never
//!   backed is invalid without a look at that page. Repair, which distrusts the mark, reads up
//!   to `BACKED_PAGES` and raises the mark again from nothing. A participant killed between
//!   backing and raising the mark leaves memory backed that the next claimer backs again
//!   (idempotent). A host that can also maps the metadata of backed pages into its process
//!   before its claims first reach them (`Platform::prefault`), a chunk at a time, so that an
//!   allocation does not stop for a page fault on its head's page metadata; it maps nothing
//!   a claim of its own did not reach, so a sparse region stays sparse in every page table
//!   (each process's resident set counts the metadata below its claims: 40 bytes a page). A
//!   fork child inherits the mark but not its parent's page table: the host has it start
//!   again from nothing (`Heap::forget_mapped_ahead`).
//!
//! An allocation can still fail with `OutOfMemory` while another participant holds the last
//! free memory in transit (a span it is carving, blocks it is moving): waiting for it would be a
//! lock. A host that waits (`alloc_blocking`) waits in bounded slices so that it tries again.

use crate::bitmap::PageBits;
use crate::budget::Budget;
use crate::crash::step;
use crate::error::Error;
use crate::hier::Hier;
use crate::layout::{
    block_index, class_for, gen, header, page, participant, pending, span_meta_bytes, status, BlockState,
    Extra, Geometry, PageInfo, RecordState, CLASS_SIZES, DEFAULT_PAGE_SHIFT, FENCES_ASYMMETRIC,
    FENCES_SYMMETRIC, GRANULE, HEADER_WORDS, HEALER, LAYOUT_VERSION, MAGIC, MAX_PAGE_SHIFT, MIN_PAGE_SHIFT,
    NUM_CLASSES, SPAN_PAGES, STATE_DESTROYED, STATE_INITIALISING, STATE_READY,
};
use crate::pages::ForCache;
use crate::participant::Session;
use crate::primitive::{compiler_fence, fence, AtomicU32, AtomicU64, Ordering};
use crate::region::Region;
use crate::runs::RunIndex;
use crate::span::Span;

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

/// An allocation's id: its slot (offset / 16) and its generation (60 bits used). Unique over
/// the pool's life until one slot has been allocated 2^60 times. Outside Rust (descriptors,
/// Python, error messages) it is one 128-bit number, [`AllocId::to_u128`]: the slot in the low
/// 64 bits, the generation in the high 64.
///
/// Two 64-bit words rather than a `u128`, so that it is 8-byte aligned and an [`Allocation`]
/// has no padding. A caller in a hot loop should take the id's words with [`AllocId::slot`]
/// and [`AllocId::generation`] rather than copy it whole straight out of a result just
/// returned: such a copy loads 16 bytes from two 8-byte stores still in flight, which stalls
/// store forwarding (about 5 ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocId {
    // Declared first, so that ids order as their 128-bit forms do.
    generation: u64,
    slot: u64,
}

impl AllocId {
    /// The id of generation `generation` of `slot`.
    #[inline]
    pub const fn new(slot: u64, generation: u64) -> AllocId {
        AllocId { generation, slot }
    }

    /// The slot: the allocation's offset from the data area's start, over 16.
    #[inline]
    pub const fn slot(self) -> u64 {
        self.slot
    }

    /// The generation.
    #[inline]
    pub const fn generation(self) -> u64 {
        self.generation
    }

    /// The id as one number: the generation in the high 64 bits, the slot in the low 64.
    #[inline]
    pub const fn to_u128(self) -> u128 {
        (self.generation as u128) << 64 | self.slot as u128
    }

    /// The id whose number is `value` (see [`AllocId::to_u128`]).
    #[inline]
    pub const fn from_u128(value: u128) -> AllocId {
        AllocId { generation: (value >> 64) as u64, slot: value as u64 }
    }
}

/// Who owns an allocation: a process record of this heap ([`Heap::register_process`]), or the
/// pool itself ([`Owner::POOL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(pub u16);

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
    /// The owner recorded with the allocation; `None`: the calling participant's process.
    pub owner: Option<Owner>,
}

impl AllocOptions {
    /// Whether the alignment asks for nothing beyond the 16 bytes every block has (a power of
    /// two up to [`GRANULE`]).
    #[inline]
    pub(crate) fn granule_aligned(&self) -> bool {
        self.align.is_power_of_two() && self.align <= GRANULE
    }

    /// Whether any free block of the right class serves the request as it is, made live for
    /// `owner`: granule alignment, and `owner` (or nobody in particular) asked for.
    #[inline]
    pub(crate) fn plain_for(&self, owner: Owner) -> bool {
        self.granule_aligned() && self.owner.is_none_or(|asked| asked == owner)
    }
}

impl Default for AllocOptions {
    fn default() -> Self {
        AllocOptions { align: GRANULE, alloc_type: alloc_type::DATA, owner: None }
    }
}

/// A live allocation as seen at one moment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    // The id's two words, apart: a caller that takes the id out of a result just returned then
    // loads the words as they were stored, one by one. Side by side, the compiler copies them
    // as one 16-byte load from two 8-byte stores still in flight, which stalls store
    // forwarding (measured: a fifth of a cached alloc+free pair through alloc-shm).
    slot: u64,
    /// Byte offset of its first byte from the start of the region.
    pub offset: u64,
    /// The size asked for.
    pub size: u64,
    /// Bytes usable in place (the class size, or the run's pages).
    pub capacity: u64,
    generation: u64,
    /// Its type.
    pub alloc_type: u8,
    /// Its owner.
    pub owner: Owner,
}

impl Allocation {
    pub(crate) fn new(
        id: AllocId,
        offset: u64,
        size: u64,
        capacity: u64,
        alloc_type: u8,
        owner: Owner,
    ) -> Allocation {
        Allocation { slot: id.slot(), offset, size, capacity, generation: id.generation(), alloc_type, owner }
    }

    /// Its id.
    #[inline]
    pub fn id(&self) -> AllocId {
        AllocId::new(self.slot, self.generation)
    }
}

impl core::fmt::Debug for Allocation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Allocation")
            .field("id", &self.id())
            .field("offset", &self.offset)
            .field("size", &self.size)
            .field("capacity", &self.capacity)
            .field("alloc_type", &self.alloc_type)
            .field("owner", &self.owner)
            .finish()
    }
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

impl Wake {
    /// `Waiters` if either says so.
    pub fn or(self, other: Wake) -> Wake {
        if self == Wake::Waiters || other == Wake::Waiters {
            Wake::Waiters
        } else {
            Wake::Nobody
        }
    }
}

/// What the host can do for the core.
#[derive(Clone, Copy, Debug, Default)]
pub struct Platform {
    /// A memory barrier on every CPU running a thread of a process that uses the pool
    /// (`membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`), if this process can issue one; it
    /// returns whether the barrier was issued. Pools created by a process that can are
    /// *asymmetric*: hazards are published with a compiler fence only, and retirement and
    /// healing issue this barrier (and back out if it fails).
    pub heavy_fence: Option<fn() -> bool>,
    /// Puts memory behind bytes of the region before pages are first claimed, if the host
    /// wants that (a file on a filesystem that may run out of space).
    pub backing: Option<Backing>,
    /// Maps `len` bytes of the region from `start` (metadata with memory behind it) into this
    /// process's page table ahead of their first use, if the host can
    /// (`madvise(MADV_POPULATE_WRITE)`); it changes no byte. See [`Heap`]'s notes on sparse
    /// regions.
    pub prefault: Option<fn(start: *mut u8, len: usize)>,
}

impl Platform {
    /// No process-wide barrier: every fence is a full fence. Nothing to back or map ahead.
    pub const SYMMETRIC: Platform = Platform { heavy_fence: None, backing: None, prefault: None };
}

/// The host's way to put memory behind a range of the region (`fallocate` on a pool's file),
/// so that a write there can never fault for want of space: `back(context, offset, len)`
/// returns whether it did. Data pages are backed (with the metadata words that describe them:
/// page metadata, bitmap words, class-list and empty-set words) in chunks, before the first
/// claim of any of them; a chunk that cannot be backed makes the claim fail as if the pool were
/// full. The host backs the header and tables itself, when it creates the region.
#[derive(Clone, Copy, Debug)]
pub struct Backing {
    /// Passed to `back` (the pool file's descriptor).
    pub context: usize,
    /// Backs `len` bytes at `offset`.
    pub back: fn(context: usize, offset: u64, len: u64) -> bool,
}

/// Data pages are backed this many bytes at a time (at least).
const BACKING_CHUNK: u64 = 4 << 20;
/// The smallest page a host backs memory by: a metadata range that starts in the same page as
/// the end of one backed before is backed from the next page on.
const HOST_PAGE: u64 = 4096;

/// How this process fences hazards in this heap.
#[derive(Clone, Copy, Debug)]
enum Fences {
    /// Full fences on both sides.
    Symmetric,
    /// Compiler fence on the hazard side, the host's barrier on the retirement side.
    Asymmetric(fn() -> bool),
    /// The pool is asymmetric but this process cannot issue the barrier: it fences its own
    /// hazards fully and cannot retire or heal.
    LightOnly,
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
    /// Pages the walk found claimed (spans, runs, and claims or releases in progress).
    pub claimed_pages: u64,
    /// Free blocks and large runs held in participants' caches (counted in `free_bytes`).
    pub cached_blocks: u64,
    /// The longest run of unclaimed pages, in bytes.
    pub largest_free_run: u64,
    /// Per size class.
    pub classes: [ClassStats; NUM_CLASSES],
}

/// Where a span's words are: computed once for a run of operations on one span. A function of
/// the head and the class alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpanAt {
    /// The span's head page.
    pub(crate) head: u64,
    /// Its class.
    pub(crate) class: usize,
    /// The region word index of block 0's state word.
    states: usize,
    /// The region half-word index of block 0's extra word.
    extras: usize,
    /// The byte offset of block 0.
    first_block: u64,
}

impl SpanAt {
    /// No span (a head no span has).
    pub(crate) const NONE: SpanAt = SpanAt { head: u64::MAX, class: 0, states: 0, extras: 0, first_block: 0 };
}

/// Where an id's slot lives.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place {
    /// Block `index` of the span at page `head` of `class`; `base` is the span's byte offset.
    Small { head: u64, class: usize, index: u64, base: u64 },
    /// The large run at page `head` of `pages` pages, the last `spare` of them beyond the
    /// allocation's capacity (see [`PageInfo::LargeHead`]).
    Large { head: u64, pages: u64, spare: u64 },
}

/// A heap over one region. Each process opens its own `Heap` over the shared region; the value
/// itself only adds process-local hints and this process's fences.
pub struct Heap<'a> {
    region: Region<'a>,
    geo: Geometry,
    /// Blocks per span of each class for this page size (0: the class is not used).
    blocks: [u64; NUM_CLASSES],
    /// Per class, the byte offset of block 0 from the span's start (after its metadata).
    first_block: [u64; NUM_CLASSES],
    /// `geo.data_bytes()`, for the fast paths.
    data_bytes: u64,
    /// The header's budget word (0: no budget), fixed at creation.
    budget: u64,
    /// Per class, the span slot this process allocated from last (+ 1, 0 = none).
    pub(crate) hints: [AtomicU64; NUM_CLASSES],
    /// Where the next search for a span to retire starts. Process-local.
    pub(crate) empty_hint: AtomicU64,
    fences: Fences,
    backing: Option<Backing>,
    prefault: Option<fn(*mut u8, usize)>,
    /// The pages whose metadata this process has mapped ahead (`Platform::prefault`) are
    /// below this. Process-local.
    mapped_ahead: AtomicU64,
}

impl<'a> Heap<'a> {
    /// Lays out a new heap over `region` with pages of `1 << page_shift` bytes and marks it
    /// ready. Writes only the header: everything past it must be zero (a fresh file or
    /// mapping), which means "all free".
    pub fn create(region: Region<'a>, page_shift: u32, platform: Platform) -> Result<Heap<'a>, Error> {
        Heap::create_with_budget(region, page_shift, platform, None)
    }

    /// [`Heap::create`] with a budget on what live allocations may use (see [`crate::budget`]).
    pub fn create_with_budget(
        region: Region<'a>,
        page_shift: u32,
        platform: Platform,
        budget: Option<Budget>,
    ) -> Result<Heap<'a>, Error> {
        if budget.is_some_and(|budget| !budget.is_valid()) {
            return Err(Error::BadBudget);
        }
        if !(MIN_PAGE_SHIFT..=MAX_PAGE_SHIFT).contains(&page_shift) {
            return Err(Error::BadPageSize { page_shift });
        }
        let geo = Geometry::compute(region.len(), page_shift)
            .ok_or(Error::RegionTooSmall { bytes: region.len() })?;
        let w = |index: usize| region.word(index);
        let fences = if platform.heavy_fence.is_some() { FENCES_ASYMMETRIC } else { FENCES_SYMMETRIC };
        w(header::STATUS).store(STATE_INITIALISING, Ordering::Relaxed);
        w(header::REGION_BYTES).store(geo.region_bytes, Ordering::Relaxed);
        w(header::PAGE_SHIFT).store(page_shift as u64, Ordering::Relaxed);
        w(header::NUM_PAGES).store(geo.num_pages, Ordering::Relaxed);
        w(header::DATA_OFFSET).store(geo.data_offset, Ordering::Relaxed);
        w(header::TABLE_SIZE).store(geo.table_size, Ordering::Relaxed);
        w(header::FENCES).store(fences, Ordering::Relaxed);
        w(header::BUDGET).store(budget.map_or(0, Budget::encode), Ordering::Relaxed);
        w(header::VERSION).store(LAYOUT_VERSION, Ordering::Relaxed);
        w(header::MAGIC).store(MAGIC, Ordering::Relaxed);
        // ORDERING: Release publishes the header fields above to `open`'s Acquire load of STATUS.
        w(header::STATUS).store(STATE_READY, Ordering::Release);
        Ok(Heap::with_geometry(region, geo, Heap::fences_for(fences, platform), platform))
    }

    /// Lays out a new heap with the default page size (4 KiB) and symmetric fences.
    pub fn create_default(region: Region<'a>) -> Result<Heap<'a>, Error> {
        Heap::create(region, DEFAULT_PAGE_SHIFT, Platform::SYMMETRIC)
    }

    /// Opens a heap another participant created, validating its header against the region.
    pub fn open(region: Region<'a>, platform: Platform) -> Result<Heap<'a>, Error> {
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
        let fences = read(header::FENCES);
        if read(header::NUM_PAGES) != geo.num_pages
            || read(header::DATA_OFFSET) != geo.data_offset
            || read(header::TABLE_SIZE) != geo.table_size
            || !(fences == FENCES_SYMMETRIC || fences == FENCES_ASYMMETRIC)
            || Budget::decode(read(header::BUDGET)).is_some_and(|budget| !budget.is_valid())
        {
            return Err(Error::HeaderMismatch);
        }
        Ok(Heap::with_geometry(region, geo, Heap::fences_for(fences, platform), platform))
    }

    /// Opens a heap with symmetric fences (tests, tools).
    pub fn open_default(region: Region<'a>) -> Result<Heap<'a>, Error> {
        Heap::open(region, Platform::SYMMETRIC)
    }

    fn fences_for(mode: u64, platform: Platform) -> Fences {
        match (mode, platform.heavy_fence) {
            (FENCES_ASYMMETRIC, Some(heavy)) => Fences::Asymmetric(heavy),
            (FENCES_ASYMMETRIC, None) => Fences::LightOnly,
            _ => Fences::Symmetric,
        }
    }

    fn with_geometry(region: Region<'a>, geo: Geometry, fences: Fences, platform: Platform) -> Heap<'a> {
        let mut blocks = [0; NUM_CLASSES];
        for (class, slot) in blocks.iter_mut().enumerate() {
            let count = crate::layout::blocks_per_span(CLASS_SIZES[class] as u64, geo.span_bytes());
            // A class with only a handful of blocks per span would waste most of it.
            *slot = if count >= 8 { count } else { 0 };
        }
        // ORDERING: Relaxed: written before the pool was marked ready, which `open` (or `create`,
        // which wrote it) ordered before this.
        let budget = region.word(header::BUDGET).load(Ordering::Relaxed);
        Heap {
            region,
            geo,
            blocks,
            first_block: blocks.map(span_meta_bytes),
            data_bytes: geo.data_bytes(),
            budget,
            hints: core::array::from_fn(|_| AtomicU64::new(0)),
            empty_hint: AtomicU64::new(0),
            fences,
            backing: platform.backing,
            prefault: platform.prefault,
            mapped_ahead: AtomicU64::new(0),
        }
    }

    /// The header's budget word (0: none), as read when the heap was opened.
    #[inline]
    pub(crate) fn budget_word(&self) -> u64 {
        self.budget
    }

    /// The geometry this heap was opened with.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The region this heap lives in.
    pub fn region(&self) -> &Region<'a> {
        &self.region
    }

    /// Whether this pool publishes hazards with asymmetric fences.
    pub fn is_asymmetric(&self) -> bool {
        !matches!(self.fences, Fences::Symmetric)
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

    /// The status word: state and waiter slots (a Relaxed load: destruction and waiters only
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

    // ----- fences and hazards ----------------------------------------------------------------

    /// The hazard side's fence, after publishing a hazard and before reading page info.
    #[inline]
    fn light_fence(&self) {
        match self.fences {
            // ORDERING: with the heavy fence on the other side, a compiler fence is enough: the
            // barrier makes every CPU running a participant execute a full fence at some point,
            // so either our hazard store is visible to the scan that follows it, or our page-info
            // read comes after the retirer's marks (see the module docs).
            Fences::Asymmetric(_) => compiler_fence(),
            // ORDERING: SeqCst fence pairs with the retirer's SeqCst fence (Dekker): either its
            // scan sees our hazard, or our page-info read sees its retiring marks.
            Fences::Symmetric | Fences::LightOnly => fence(Ordering::SeqCst),
        }
    }

    /// The retirement side's fence, after marking a span retiring and before scanning hazards.
    pub(crate) fn heavy_fence(&self) -> Result<(), Error> {
        match self.fences {
            Fences::Asymmetric(heavy) => {
                if heavy() {
                    Ok(())
                } else {
                    Err(Error::NoHeavyFence)
                }
            }
            Fences::Symmetric => {
                // ORDERING: SeqCst fence pairs with the light fences (see `light_fence`).
                fence(Ordering::SeqCst);
                Ok(())
            }
            Fences::LightOnly => Err(Error::NoHeavyFence),
        }
    }

    /// Whether this process can retire spans and heal them.
    pub(crate) fn can_heavy_fence(&self) -> bool {
        !matches!(self.fences, Fences::LightOnly)
    }

    /// Announces that the session is about to touch the span (if any) that `page` belongs to.
    #[inline]
    pub(crate) fn publish_hazard(&self, session: &Session, page: u64) {
        self.region.word(session.hazard_word).store(page + 1, Ordering::Relaxed);
        self.light_fence();
    }

    /// As [`Heap::publish_hazard`], marked as a healer's (other healers ignore it).
    pub(crate) fn publish_healer_hazard(&self, session: &Session, page: u64) {
        self.participant_word(session.participant, participant::HAZARD)
            .store((page + 1) | HEALER, Ordering::Relaxed);
        self.light_fence();
    }

    /// The session touches no span any more.
    #[inline]
    pub(crate) fn clear_hazard(&self, session: &Session) {
        // ORDERING: Release: our accesses to the span happen before a retirer that reads 0 here.
        self.region.word(session.hazard_word).store(0, Ordering::Release);
    }

    /// Records the first page of a claim, release or retirement the session now owns.
    pub(crate) fn set_pending(&self, session: &Session, page: u64) {
        self.set_pending_run(session, page, 0);
    }

    /// [`Heap::set_pending`] with the run's length, for the page bits it is about to change
    /// (so that a reclaimer refreshes their summaries should we die before we do).
    pub(crate) fn set_pending_run(&self, session: &Session, page: u64, pages: u64) {
        let word = pending::encode(page, pages);
        // ORDERING: Release: our earlier writes come before it. It is read to act on only by
        // whoever holds our record once our process is dead (or by repair and check, with
        // nobody inside an operation), and a process is dead only once it runs no more, every
        // store of it visible: whatever else this operation wrote is seen with it. (SeqCst
        // here made every claim, release and hand-out of a cached run pay a locked exchange
        // for nothing: 10% of a cached 64 KiB pair.)
        self.participant_word(session.participant, participant::PENDING).store(word, Ordering::Release);
    }

    pub(crate) fn clear_pending(&self, session: &Session) {
        // ORDERING: Release: the claim or release is complete before the record says so.
        self.participant_word(session.participant, participant::PENDING).store(0, Ordering::Release);
    }

    /// Whether a participant other than `me` has a hazard on a page of `first..first + pages`.
    /// `for_heal`: ignore healers' hazards and those of participants whose process is dead
    /// (retirement counts every hazard). Call after the heavy fence.
    pub(crate) fn hazard_on(&self, me: u64, first: u64, pages: u64, for_heal: bool) -> bool {
        (1..self.participant_hwm()).filter(|&index| index != me).any(|index| {
            // ORDERING: Acquire pairs with the Release that cleared a hazard, so the holder's
            // accesses to the span happen before whatever we do once we see it clear.
            let hazard = self.participant_word(index, participant::HAZARD).load(Ordering::Acquire);
            let page = (hazard & !HEALER).wrapping_sub(1);
            hazard != 0
                && (first..first + pages).contains(&page)
                && !(for_heal && (hazard & HEALER != 0 || self.participant_is_dead(index)))
        })
    }

    /// Whether participant `index` belongs to a process that is gone (or is itself being
    /// resolved after its process died).
    pub(crate) fn participant_is_dead(&self, index: u64) -> bool {
        let state = self.participant_state(index);
        match state.state {
            RecordState::Active => !self.process_alive(Owner(state.process as u16)),
            RecordState::Dead => true,
            RecordState::Free | RecordState::Registering => false,
        }
    }

    /// Whether `owner`'s record says its process is (as far as anyone knows) alive.
    pub(crate) fn process_alive(&self, owner: Owner) -> bool {
        self.process_record(owner)
            .is_some_and(|record| matches!(record.state, RecordState::Active | RecordState::Registering))
    }

    // ----- metadata access -------------------------------------------------------------------

    #[inline]
    pub(crate) fn page_word(&self, page: u64, field: usize) -> &AtomicU64 {
        self.region.word(self.geo.page_word(page, field))
    }

    /// The owner word of the block holding `page` (see [`crate::layout::BLOCK_PAGES`]).
    pub(crate) fn block_owner(&self, page: u64) -> &AtomicU64 {
        self.region.word(self.geo.block_owner_word(page))
    }

    /// What `page` is part of (an error for a word no version writes).
    #[inline]
    pub(crate) fn info(&self, page: u64) -> Result<PageInfo, Error> {
        // ORDERING: Acquire pairs with the Release store that published the span or run, so its
        // anchor, states and state word are visible to whoever acts on this info.
        PageInfo::decode(self.page_word(page, page::INFO).load(Ordering::Acquire))
            .ok_or(Error::Corrupt { what: "unknown page info", page })
    }

    pub(crate) fn set_info(&self, page: u64, info: PageInfo) {
        // ORDERING: Release publishes everything set up before it (see `info`).
        self.page_word(page, page::INFO).store(info.encode(), Ordering::Release);
    }

    pub(crate) fn page_bits(&self) -> PageBits<'_> {
        self.bits_below(self.geo.num_pages)
    }

    /// The page bitmap of pages `0..pages`.
    pub(crate) fn bits_below(&self, pages: u64) -> PageBits<'_> {
        let offset = self.geo.bitmap_word as u64 * 8;
        PageBits::new(self.region.words_at(offset, self.geo.bitmap_words as u64), pages)
    }

    /// The page bitmap below the high-water mark (every claimed page is below it): what walks
    /// over the claimed pages use, so that they cost what the pool has used, never its size.
    pub(crate) fn used_bits(&self) -> PageBits<'_> {
        self.bits_below(self.page_hwm())
    }

    /// The page high-water mark: no page at or above it was ever claimed. Searches and walks
    /// read only the metadata below it (which is backed: every page is backed before its
    /// claim raises the mark; a mark damaged to above the backed pages is read as them).
    pub(crate) fn page_hwm(&self) -> u64 {
        self.raw_page_hwm().min(self.backed_pages())
    }

    /// The span slots over pages below the high-water mark: the only ones a class list or the
    /// empty set can hold, and whose words searches read.
    pub(crate) fn used_slots(&self) -> u64 {
        self.page_hwm().div_ceil(SPAN_PAGES)
    }

    /// The free-run index over the pages below the high-water mark.
    pub(crate) fn run_index(&self) -> RunIndex<'_> {
        let offset = self.geo.runs_word as u64 * 8;
        let nodes = self.region.words_at(offset, self.geo.runs.total_words() as u64);
        let bitmap = self.region.words_at(self.geo.bitmap_word as u64 * 8, self.geo.bitmap_words as u64);
        let mark = self.region.word(header::PAGE_HWM);
        let backed = self.backing.map(|_| self.region.word(header::BACKED_PAGES));
        RunIndex::new(nodes, bitmap, &self.geo.runs, self.geo.num_pages, mark, backed)
    }

    /// Whether every summary of the free-run index is what the page bitmap says: true of a heap
    /// on which no operation is in progress (for tests; see [`crate::runs`]).
    #[doc(hidden)]
    pub fn run_index_is_exact(&self) -> bool {
        self.run_index().is_exact()
    }

    /// The high-water mark as stored (see [`Heap::page_hwm`] for the one to use).
    pub(crate) fn raw_page_hwm(&self) -> u64 {
        // ORDERING: Acquire pairs with the Release of `raise_page_hwm`.
        self.region.word(header::PAGE_HWM).load(Ordering::Acquire).min(self.geo.num_pages)
    }

    /// Whether the host backs pages as they are first claimed.
    pub(crate) fn has_backing(&self) -> bool {
        self.backing.is_some()
    }

    /// The pages below this have memory behind them (all of them if nothing needs backing).
    pub(crate) fn backed_pages(&self) -> u64 {
        match self.backing {
            // ORDERING: Acquire pairs with the Release in `back_pages`: pages below a mark we
            // read were backed (by any process) before it was raised.
            Some(_) => self.region.word(header::BACKED_PAGES).load(Ordering::Acquire).min(self.geo.num_pages),
            None => self.geo.num_pages,
        }
    }

    /// Makes sure data pages below `end` have memory behind them (see [`Backing`]) before any
    /// of them is claimed, and that this process has their metadata mapped (see
    /// [`Heap::map_ahead`]); `false` if the host could not back them (the claim must fail).
    pub(crate) fn back_pages(&self, end: u64) -> bool {
        let backed = self.back_shared(end);
        if backed {
            self.map_ahead(end);
        }
        backed
    }

    /// [`Heap::back_pages`] for every process: the memory behind the pages.
    fn back_shared(&self, end: u64) -> bool {
        let Some(backing) = self.backing else { return true };
        let from = self.backed_pages();
        if from >= end {
            return true;
        }
        let chunk = (BACKING_CHUNK >> self.geo.page_shift).max(1);
        let to = end.div_ceil(chunk).saturating_mul(chunk).min(self.geo.num_pages);
        let all_backed = self
            .metadata_of_pages(from, to)
            .chain([(self.geo.page_offset(from), self.geo.page_offset(to))])
            .all(|(start, stop)| start >= stop || (backing.back)(backing.context, start, stop - start));
        if !all_backed {
            return false;
        }
        // ORDERING: Release, see `backed_pages`.
        self.region.word(header::BACKED_PAGES).fetch_max(to, Ordering::Release);
        true
    }

    /// Maps the metadata of pages below `end` into this process ahead of use, a backing chunk
    /// at a time, if the host can (see [`Platform::prefault`]); the pages must be backed.
    /// Otherwise an allocation would stop for a page fault wherever it first wrote a head's
    /// page metadata: under the interior of every large run that was there before, and above
    /// the high-water mark (on the arrays workload, most of the allocations' p99:
    /// BENCHMARKS.md). A process whose first claim lands high in a pool others used maps all
    /// the metadata below it then (about 1 ms per GiB of pages).
    fn map_ahead(&self, end: u64) {
        let Some(prefault) = self.prefault else { return };
        // ORDERING: Relaxed: a process-local mark; a thread that reads it stale maps again.
        let from = self.mapped_ahead.load(Ordering::Relaxed);
        if from >= end {
            return;
        }
        let chunk = (BACKING_CHUNK >> self.geo.page_shift).max(1);
        let to = end.div_ceil(chunk).saturating_mul(chunk).min(self.backed_pages());
        if to <= from {
            return;
        }
        for (start, stop) in self.metadata_of_pages(from, to).filter(|(start, stop)| start < stop) {
            prefault(self.region.base().wrapping_add(start as usize), (stop - start) as usize);
        }
        // ORDERING: Relaxed, as above.
        self.mapped_ahead.fetch_max(to, Ordering::Relaxed);
    }

    /// Forgets what this process mapped ahead (see [`Platform::prefault`]): for a fork child,
    /// which inherits the mark but not its parent's page-table entries of the shared mapping,
    /// so that its own claims map ahead again.
    pub fn forget_mapped_ahead(&self) {
        if self.prefault.is_some() {
            // ORDERING: Relaxed: a process-local mark, as in `map_ahead`.
            self.mapped_ahead.store(0, Ordering::Relaxed);
        }
    }

    /// The byte ranges of metadata describing pages `from..to` that the backing of pages
    /// `0..from` did not already cover: their page metadata, their bitmap words, the words of
    /// every class list and of the empty set that cover their span slots, the run-index words
    /// that summarise them and the owner words of their blocks.
    fn metadata_of_pages(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let geo = &self.geo;
        // A range of words `first..=last`, less the host pages holding words `..=done`.
        let fresh = move |first: u64, last: u64, done: Option<u64>| {
            let start = match done {
                Some(done) => (first * 8).max((done * 8 + 8).next_multiple_of(HOST_PAGE)),
                None => first * 8,
            };
            (start, last * 8 + 8)
        };
        let before = from.checked_sub(1);
        let meta = |page: u64| geo.page_meta_offset(page) / 8;
        let bitmap = |page: u64| geo.bitmap_offset(page) / 8;
        let owner = |page: u64| geo.block_owner_word(page) as u64;
        let hier_words = (0..=NUM_CLASSES).flat_map(move |list| {
            let base = geo.class_list_word(list) as u64; // (the empty set follows the last)
            (0..geo.hier.levels).map(move |level| {
                let word = |page: u64| base + geo.hier.word_of(level, page / SPAN_PAGES) as u64;
                fresh(word(from), word(to - 1), before.map(word))
            })
        });
        let run_words = (0..geo.runs.levels).map(move |level| {
            let word = |page: u64| (geo.runs_word + geo.runs.word_of(level, page)) as u64;
            fresh(word(from), word(to - 1), before.map(word))
        });
        [
            fresh(meta(from), meta(to) - 1, before.map(|page| meta(page + 1) - 1)),
            fresh(bitmap(from), bitmap(to - 1), before.map(bitmap)),
            fresh(owner(from), owner(to - 1), before.map(owner)),
        ]
        .into_iter()
        .chain(hier_words)
        .chain(run_words)
    }

    /// Raises the page high-water mark to `end` before pages below it are claimed.
    pub(crate) fn raise_page_hwm(&self, end: u64) {
        let hwm = self.region.word(header::PAGE_HWM);
        // ORDERING: Release (and the walks' Acquire) order the raise before the claim that
        // follows it in this participant; a walk racing with the claim may miss it, as any
        // snapshot may. A load first keeps the shared word read-mostly.
        if hwm.load(Ordering::Relaxed) < end {
            hwm.fetch_max(end, Ordering::Release);
        }
    }

    pub(crate) fn class_list(&self, class: usize) -> Hier<'_> {
        let offset = self.geo.class_list_word(class) as u64 * 8;
        Hier::new(self.region.words_at(offset, self.geo.hier.total_words() as u64), &self.geo.hier)
    }

    pub(crate) fn empty_set(&self) -> Hier<'_> {
        let offset = self.geo.empty_word as u64 * 8;
        Hier::new(self.region.words_at(offset, self.geo.hier.total_words() as u64), &self.geo.hier)
    }

    /// Where the words of span `head` of `class` are (both range-checked already).
    #[inline]
    pub(crate) fn span_at(&self, head: u64, class: usize) -> SpanAt {
        self.span_at_base(head, class, self.geo.page_offset(head))
    }

    /// [`Heap::span_at`] for a span whose byte offset `base` is known.
    #[inline]
    pub(crate) fn span_at_base(&self, head: u64, class: usize, base: u64) -> SpanAt {
        SpanAt {
            head,
            class,
            states: (base / 8) as usize,
            extras: ((base + self.blocks[class] * 8) / 4) as usize,
            first_block: base + self.first_block[class],
        }
    }

    /// The span whose head is `head`, of `class`. Both must already be range-checked.
    #[inline]
    pub(crate) fn span(&self, head: u64, class: usize) -> Span<'_> {
        let blocks = self.blocks[class];
        let start = self.geo.page_offset(head);
        Span::new(
            self.page_word(head, page::ANCHOR),
            self.region.words_at(start, blocks),
            self.region.halves_at(start + blocks * 8, blocks),
        )
    }

    pub(crate) fn blocks_of(&self, class: usize) -> u64 {
        self.blocks[class]
    }

    /// The state word of block `index` of the span starting at byte `base`.
    #[inline]
    fn block_state(&self, base: u64, index: u64) -> &AtomicU64 {
        self.region.word((base / 8 + index) as usize)
    }

    /// The extra word of block `index` of the span at `base`, of `class`.
    #[inline]
    pub(crate) fn block_extra(&self, base: u64, class: usize, index: u64) -> &AtomicU32 {
        self.region.half(((base + self.blocks[class] * 8) / 4 + index) as usize)
    }

    /// The byte offset of block `index` of the span at `base`, of `class`.
    #[inline]
    pub(crate) fn block_offset(&self, base: u64, class: usize, index: u64) -> u64 {
        base + self.first_block[class] + index * CLASS_SIZES[class] as u64
    }

    /// Checks a span head read from the region: aligned, inside the slots, a used class.
    #[inline]
    pub(crate) fn check_span_head(&self, head: u64, class: usize) -> Result<(), Error> {
        if class >= NUM_CLASSES
            || self.blocks[class] == 0
            || !head.is_multiple_of(SPAN_PAGES)
            || head / SPAN_PAGES >= self.geo.num_slots
        {
            return Err(Error::Corrupt { what: "span head out of range", page: head });
        }
        Ok(())
    }

    /// The id of the allocation at `offset` with generation `generation`.
    pub(crate) fn make_id(&self, offset: u64, generation: u64) -> AllocId {
        AllocId::new((offset - self.geo.data_offset) / GRANULE, generation)
    }

    /// The page holding `id`'s slot, or `InvalidId`: also for a page never backed, where nothing
    /// was ever allocated (and whose metadata may have no memory behind it).
    #[inline]
    pub(crate) fn page_of(&self, id: AllocId) -> Result<u64, Error> {
        let page =
            id.slot().checked_mul(GRANULE).filter(|&r| r < self.data_bytes).map(|r| r >> self.geo.page_shift);
        match page {
            Some(page) if page < self.backed_pages() => Ok(page),
            _ => Err(Error::InvalidId { id: id.to_u128() }),
        }
    }

    // ----- finding an allocation -------------------------------------------------------------

    /// Finds the place of `id`'s slot and its state word; the caller holds a hazard on `page`
    /// (from [`Heap::page_of`]). Checks every value read from the region before using it.
    #[inline(always)]
    pub(crate) fn locate(&self, id: AllocId, page: u64) -> Result<(Place, &AtomicU64), Error> {
        // ORDERING: Acquire, as in `info`.
        let word = self.page_word(page, page::INFO).load(Ordering::Acquire);
        let Some((head, class)) = PageInfo::span_in_use(word, page) else {
            return self.locate_outside_spans(id, page, word);
        };
        if page.wrapping_sub(head) >= SPAN_PAGES {
            return Err(Error::Corrupt { what: "span member points outside its span", page });
        }
        self.check_span_head(head, class)?;
        let offset = self.geo.data_offset + id.slot() * GRANULE;
        let not_allocated = Error::NotAllocated { id: id.to_u128() };
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

    /// [`Heap::locate`] for a page whose info word `word` is not that of a span in use.
    #[cold]
    fn locate_outside_spans(&self, id: AllocId, page: u64, word: u64) -> Result<(Place, &AtomicU64), Error> {
        let not_allocated = Error::NotAllocated { id: id.to_u128() };
        match PageInfo::decode(word).ok_or(Error::Corrupt { what: "unknown page info", page })? {
            PageInfo::LargeHead { pages, spare } => {
                if pages == 0 || pages > self.geo.num_pages - page || spare >= pages {
                    return Err(Error::Corrupt { what: "large run out of range", page });
                }
                if id.slot() * GRANULE != page << self.geo.page_shift {
                    return Err(not_allocated);
                }
                Ok((Place::Large { head: page, pages, spare }, self.page_word(page, page::STATE)))
            }
            // Free or in passing, or a span being retired (spans in use are `locate`'s).
            PageInfo::Free | PageInfo::Transient { .. } => Err(not_allocated),
            PageInfo::SpanHead { .. } | PageInfo::SpanMember { .. } => Err(not_allocated),
        }
    }

    /// The extra word of the allocation at `place`.
    #[inline]
    pub(crate) fn extra_of(&self, place: Place) -> Extra {
        match place {
            Place::Small { class, index, base, .. } => {
                Extra::decode(self.block_extra(base, class, index).load(Ordering::Relaxed))
            }
            Place::Large { head, .. } => {
                Extra::decode(self.page_word(head, page::GEN).load(Ordering::Relaxed) as u32)
            }
        }
    }

    /// The state word of `id` (read as `word`) if it is live with `id`'s whole generation.
    #[inline]
    pub(crate) fn live_state(
        &self,
        id: AllocId,
        place: Place,
        state: &AtomicU64,
    ) -> Result<(u64, BlockState, Extra), Error> {
        // ORDERING: Acquire pairs with the Release store that made the allocation live, so its
        // extra word (written before) is visible.
        let word = state.load(Ordering::Acquire);
        let not_allocated = Error::NotAllocated { id: id.to_u128() };
        let generation = id.generation();
        if !BlockState::is_live_with(word, gen::tag(generation)) {
            return Err(not_allocated);
        }
        let extra = self.extra_of(place);
        if extra.gen_high != gen::high(generation) {
            return Err(not_allocated);
        }
        let decoded = BlockState::decode(word).ok_or(not_allocated)?;
        Ok((word, decoded, extra))
    }

    /// Replaces the state word of the live allocation `id` (at `place`) by `change(word,
    /// extra)` in one compare-exchange of the whole word. A failed exchange is retried while the
    /// word still names the same live allocation (a racing owner change or resize of it), and
    /// is `NotAllocated` once it does not; `change` may refuse with an error. Returns the word
    /// replaced, decoded, and the extra word read with it. Lock-free: a retry means another
    /// change of the allocation succeeded.
    #[inline(always)]
    pub(crate) fn change_live(
        &self,
        id: AllocId,
        place: Place,
        state: &AtomicU64,
        success: Ordering,
        mut change: impl FnMut(u64, BlockState, Extra) -> Result<u64, Error>,
    ) -> Result<(BlockState, Extra), Error> {
        loop {
            let (word, decoded, extra) = self.live_state(id, place, state)?;
            let new = change(word, decoded, extra)?;
            if state.compare_exchange(word, new, success, Ordering::Relaxed).is_ok() {
                return Ok((decoded, extra));
            }
        }
    }

    /// Capacity of the allocation at `place`.
    pub(crate) fn capacity_of(&self, place: Place) -> u64 {
        match place {
            Place::Small { class, .. } => CLASS_SIZES[class] as u64,
            Place::Large { pages, spare, .. } => (pages - spare) << self.geo.page_shift,
        }
    }

    fn describe(
        &self,
        id: AllocId,
        place: Place,
        state: BlockState,
        extra: Extra,
    ) -> Result<Allocation, Error> {
        let capacity = self.capacity_of(place);
        let size = capacity
            .checked_sub(state.aux)
            .ok_or(Error::Corrupt { what: "slack exceeds capacity", page: self.geo.num_pages })?;
        Ok(Allocation::new(
            id,
            self.geo.data_offset + id.slot() * GRANULE,
            size,
            capacity,
            extra.alloc_type,
            Owner(state.link as u16),
        ))
    }

    /// Runs `body` with the session's hazard on `id`'s page, clearing it afterwards.
    #[inline]
    pub(crate) fn under_hazard<T>(
        &self,
        session: &mut Session,
        id: AllocId,
        body: impl FnOnce(&Self, &mut Session, u64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        let page = self.page_of(id)?;
        self.publish_hazard(session, page);
        let result = body(self, session, page);
        self.clear_hazard(session);
        result
    }

    /// The live allocation with `id`, in O(1).
    pub fn lookup(&self, session: &mut Session, id: AllocId) -> Result<Allocation, Error> {
        self.under_hazard(session, id, |heap, _, page| {
            let (place, state) = heap.locate(id, page)?;
            loop {
                let (word, decoded, extra) = heap.live_state(id, place, state)?;
                let allocation = heap.describe(id, place, decoded, extra)?;
                // The type was read from the extra word after the state word; an unchanged state
                // word says both belong to this allocation. A changed one is looked at again:
                // the allocation may only have changed owner or size (`live_state` fails if it
                // was freed).
                // ORDERING: Acquire fence orders the extra-word read before the re-read below.
                fence(Ordering::Acquire);
                if state.load(Ordering::Relaxed) == word {
                    return Ok(allocation);
                }
            }
        })
    }

    /// Whether `id` names a live allocation.
    pub fn contains(&self, session: &mut Session, id: AllocId) -> bool {
        self.lookup(session, id).is_ok()
    }

    /// Frees the allocation `id`. A double free, a stale id or an id that is not an allocation
    /// start is an error and changes nothing.
    pub fn free(&self, session: &mut Session, id: AllocId) -> Result<Wake, Error> {
        match self.budget() {
            None => self.free_uncharged(session, id),
            Some(budget) => self.free_budgeted(budget, session, id),
        }
    }

    /// [`Heap::free`] in a heap with a budget (out of the fast path's way).
    #[cold]
    #[inline(never)]
    fn free_budgeted(&self, budget: Budget, session: &mut Session, id: AllocId) -> Result<Wake, Error> {
        let size = self.lookup(session, id)?.size;
        let me = session.participant;
        self.free_charged(budget, me, size, || self.free_uncharged(session, id))
    }

    /// [`Heap::free`] without the budget's part.
    pub(crate) fn free_uncharged(&self, session: &mut Session, id: AllocId) -> Result<Wake, Error> {
        self.under_hazard(session, id, |heap, session, page| {
            let (place, state) = heap.locate(id, page)?;
            heap.release(session, id, place, state, None)
        })
    }

    /// Frees the located allocation `id` (only while process `owned_by` owns it, if given): one
    /// compare-exchange decides it (exactly one of any number of racing frees succeeds); then
    /// the block goes back on its span's list, or the run's pages back to the bitmap. Under the
    /// hazard.
    #[inline(always)]
    pub(crate) fn release(
        &self,
        session: &Session,
        id: AllocId,
        place: Place,
        state: &AtomicU64,
        owned_by: Option<u64>,
    ) -> Result<Wake, Error> {
        let not_owned = Error::NotAllocated { id: id.to_u128() };
        let owner_ok = |decoded: BlockState| owned_by.is_none_or(|owner| decoded.link == owner);
        match place {
            Place::Small { head, class, index, .. } => {
                let freed = BlockState::free(BlockState::NULL, session.participant, 0).encode();
                // ORDERING: Acquire on success: we now own the block after the last user's
                // accesses; Release is provided by the push that hands it on.
                let (decoded, _) =
                    self.change_live(id, place, state, Ordering::Acquire, |word, decoded, _| {
                        owner_ok(decoded)
                            .then_some(BlockState::with_tag(freed, BlockState::tag_of(word)))
                            .ok_or(not_owned)
                    })?;
                step!("free/state-freed");
                self.push_blocks(session, head, class, &[index as u16], &[decoded.tag]);
            }
            Place::Large { head, pages, .. } => {
                // The run becomes ours to release (only one freer gets it); a reclaimer finishes
                // the release for us, through PENDING, should we die.
                self.set_pending(session, head);
                let releasing = BlockState::releasing(session.participant, 0).encode();
                // ORDERING: Acquire on success, as above; the bitmap release hands it on.
                let changed = self.change_live(id, place, state, Ordering::Acquire, |word, decoded, _| {
                    owner_ok(decoded)
                        .then_some(BlockState::with_tag(releasing, BlockState::tag_of(word)))
                        .ok_or(not_owned)
                });
                let Ok((decoded, extra)) = changed else {
                    self.clear_pending(session);
                    return Err(Error::NotAllocated { id: id.to_u128() });
                };
                step!("free/large-releasing");
                self.finish_large_release(session, head, pages, gen::join(extra.gen_high, decoded.tag));
            }
        }
        Ok(self.wake_if_waiting())
    }

    /// Puts blocks of span `head` (held by the caller, not live) back on its list, and lists
    /// the span (class list, empty set) as the new count requires. Under the hazard.
    #[inline]
    pub(crate) fn push_blocks(
        &self,
        session: &Session,
        head: u64,
        class: usize,
        indices: &[u16],
        tags: &[u64],
    ) {
        let pushed = self.span(head, class).push_chain(indices, tags, session.participant);
        step!("push/pushed");
        let slot = head / SPAN_PAGES;
        if pushed.before == 0 {
            self.class_list(class).set(slot);
            step!("push/listed");
        }
        if pushed.after == self.blocks[class] {
            self.empty_set().set(slot);
            step!("push/marked-empty");
        }
    }

    /// Records `owner` as the owner of `id`, in one compare-exchange of its state word. Handing
    /// an allocation to another process fails if that process is not attached; should it die
    /// during the hand-over, the allocation is freed as `reclaim_dead` would have.
    pub fn set_owner(&self, session: &mut Session, id: AllocId, owner: Owner) -> Result<(), Error> {
        let target = if owner == Owner::POOL || owner == session.owner() {
            None
        } else {
            let record = self
                .process_record(owner)
                .filter(|record| record.state == RecordState::Active)
                .ok_or(Error::InvalidOwner { owner: owner.0 })?;
            Some(record)
        };
        self.under_hazard(session, id, |heap, session, page| {
            let (place, state) = heap.locate(id, page)?;
            // Checked once before the hand-over is recorded (a stale id records nothing).
            let _ = heap.live_state(id, place, state)?;
            if let Some(record) = target {
                heap.begin_handover(session, id, record);
            }
            // ORDERING: AcqRel: validates that the allocation is still this one and publishes the
            // new owner to lookups and reclaimers in one step.
            let changed = heap.change_live(id, place, state, Ordering::AcqRel, |_, decoded, _| {
                Ok(BlockState { link: owner.0 as u64, ..decoded }.encode())
            });
            step!("set-owner/changed");
            let result = match (changed, target) {
                (Err(error), _) => Err(error),
                (Ok(_), None) => Ok(()),
                (Ok(_), Some(record)) => heap.finish_handover(session, id, place, state, record),
            };
            heap.end_handover(session);
            result
        })
    }

    /// Resizes `id`: in place (one compare-exchange of its state word, keeping the id) when the
    /// new size fits its block or run, otherwise by allocating, copying and freeing. On failure
    /// the original is untouched and still valid.
    pub fn realloc(&self, session: &mut Session, id: AllocId, new_size: u64) -> Result<Allocation, Error> {
        let current = self.under_hazard(session, id, |heap, _, page| {
            let (place, state) = heap.locate(id, page)?;
            let mut fits = match place {
                Place::Small { .. } => new_size <= heap.capacity_of(place),
                Place::Large { pages, spare, .. } => heap.geo.pages_for(new_size) == pages - spare,
            };
            // Under a budget, in place only while the charge stays the same (a move goes through
            // the budget as an allocation and a free), and never past the limit (where charges
            // stop growing).
            if let Some(budget) = heap.budget().filter(|_| fits) {
                let (_, decoded, extra) = heap.live_state(id, place, state)?;
                let size = heap.describe(id, place, decoded, extra)?.size;
                fits = new_size <= budget.limit && heap.charge_of(size) == heap.charge_of(new_size);
            }
            if !fits {
                let (_, decoded, extra) = heap.live_state(id, place, state)?;
                return Ok(Err(heap.describe(id, place, decoded, extra)?));
            }
            let mut resized = None;
            // ORDERING: AcqRel; the CAS both checks the allocation is still live and publishes
            // the new size to lookups.
            heap.change_live(id, place, state, Ordering::AcqRel, |_, decoded, extra| {
                let current = heap.describe(id, place, decoded, extra)?;
                resized = Some(Allocation { size: new_size, ..current });
                Ok(BlockState { aux: current.capacity - new_size, ..decoded }.encode())
            })?;
            step!("realloc/resized");
            resized.map(Ok).ok_or(Error::NotAllocated { id: id.to_u128() })
        })?;
        let current = match current {
            Ok(resized) => return Ok(resized),
            Err(current) => current,
        };
        let options =
            AllocOptions { align: GRANULE, alloc_type: current.alloc_type, owner: Some(current.owner) };
        let moved = self.alloc(session, new_size, options)?;
        // SAFETY: the new allocation is ours and lies in the data area; the old one lies in the
        // data area and does not overlap it (both were live at once). Its bytes may change under
        // us only if another participant frees or writes it concurrently (a race of the user's
        // making); the copy then reads whatever is there and the free below fails.
        unsafe { self.region.copy(current.offset, moved.offset, current.size.min(new_size)) };
        if let Err(error) = self.free(session, id) {
            // The original was freed concurrently; undo our half and report it.
            let _ = self.free(session, moved.id());
            return Err(error);
        }
        Ok(moved)
    }

    // ----- allocation ------------------------------------------------------------------------

    /// Allocates `size` bytes (0 is allowed and gives a distinct allocation).
    pub fn alloc(
        &self,
        session: &mut Session,
        size: u64,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        match self.budget() {
            None => self.alloc_uncharged(session, size, options),
            Some(budget) => self.alloc_budgeted(budget, session, size, options),
        }
    }

    /// [`Heap::alloc`] in a heap with a budget (out of the fast path's way).
    #[cold]
    #[inline(never)]
    fn alloc_budgeted(
        &self,
        budget: Budget,
        session: &mut Session,
        size: u64,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        self.check_session(session)?;
        let me = session.participant;
        self.alloc_charged(budget, me, size, || self.alloc_uncharged(session, size, options))
    }

    /// [`Heap::alloc`] without the budget's part.
    #[inline]
    pub(crate) fn alloc_uncharged(
        &self,
        session: &mut Session,
        size: u64,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        // The fast path: a plain small request, served from the span this process took from last.
        if options.plain_for(session.owner()) {
            if let Some(class) = class_for(size).filter(|&class| self.blocks[class] > 0) {
                if let Some(allocation) = self.alloc_from_hint(session, class, size, options) {
                    return Ok(allocation);
                }
            }
        }
        self.alloc_slow(session, size, None, options)
    }

    /// [`Heap::alloc_slow`], for a large request that `rounded` (more pages than it needs:
    /// a cache's size) may serve: [`Heap::alloc_large`].
    #[inline(never)]
    pub(crate) fn alloc_slow(
        &self,
        session: &mut Session,
        size: u64,
        for_cache: Option<ForCache>,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        if !options.align.is_power_of_two() || options.align > self.geo.page_bytes() {
            return Err(Error::BadAlignment { align: options.align });
        }
        if size > self.geo.data_bytes() {
            return Err(Error::TooLarge { requested: size, capacity: self.geo.data_bytes() });
        }
        if let Some(owner) = options.owner {
            if owner != Owner::POOL && owner != session.owner() && !self.process_alive(owner) {
                return Err(Error::InvalidOwner { owner: owner.0 });
            }
        }
        let class = class_for(size).filter(|&class| options.granule_aligned() && self.blocks[class] > 0);
        let mut took_cached_runs = false;
        loop {
            let attempt = match class {
                Some(class) => self.alloc_small(session, class, size, options)?,
                None => self.alloc_large(session, size, for_cache, options)?,
            };
            if let Some(allocation) = attempt {
                return self.give_to_requested_owner(session, allocation, options);
            }
            // Out of pages: give an entirely free span back and try again; with none left, the
            // runs participants' caches hold (once).
            if !self.retire_one(session)? {
                if took_cached_runs || !self.release_cached_runs(session) {
                    return Err(Error::OutOfMemory { requested: size });
                }
                took_cached_runs = true;
            }
        }
    }

    /// Every allocation is made owned by the caller's process (so that one whose maker dies
    /// before returning it is reclaimed with the maker); one asked for on behalf of another
    /// owner is then handed over as `set_owner` would.
    #[inline]
    pub(crate) fn give_to_requested_owner(
        &self,
        session: &mut Session,
        allocation: Allocation,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        match options.owner {
            Some(owner) if owner != allocation.owner => {
                if let Err(error) = self.set_owner(session, allocation.id(), owner) {
                    let _ = self.free_uncharged(session, allocation.id());
                    return Err(error);
                }
                Ok(Allocation { owner, ..allocation })
            }
            _ => Ok(allocation),
        }
    }

    /// One block of `class` from the span this process took blocks from last, if that still is
    /// a span of the class with a free block.
    #[inline]
    fn alloc_from_hint(
        &self,
        session: &Session,
        class: usize,
        size: u64,
        options: AllocOptions,
    ) -> Option<Allocation> {
        let hint = self.hints[class].load(Ordering::Relaxed);
        if hint == 0 {
            return None;
        }
        let head = (hint - 1) * SPAN_PAGES;
        self.publish_hazard(session, head);
        let mut popped = [0u16];
        // An error (a corrupted span) is reported by the slow path, which looks again.
        let allocation = (self.span_of_class(head, class)
            && self.pop_from(head, class, &mut popped) == Ok(1))
        .then(|| self.hand_out(session, &self.span_at(head, class), popped[0] as u64, size, options));
        self.clear_hazard(session);
        allocation
    }

    fn alloc_small(
        &self,
        session: &mut Session,
        class: usize,
        size: u64,
        options: AllocOptions,
    ) -> Result<Option<Allocation>, Error> {
        let mut taken = None;
        self.take_blocks(session, class, 1, |heap, session, head, index| {
            taken = Some(heap.hand_out(session, &heap.span_at(head, class), index, size, options));
        })?;
        Ok(taken)
    }

    /// Makes block `index` of span `at`, which the caller holds (taken off the list, or cached
    /// by this session's process), a live allocation: a new generation, the type, then the
    /// state word (Release).
    #[inline]
    pub(crate) fn hand_out(
        &self,
        session: &Session,
        at: &SpanAt,
        index: u64,
        size: u64,
        options: AllocOptions,
    ) -> Allocation {
        let state = self.region.word(at.states + index as usize);
        let extra_word = self.region.half(at.extras + index as usize);
        let tag = BlockState::tag_of(state.load(Ordering::Relaxed));
        let extra = Extra::decode(extra_word.load(Ordering::Relaxed));
        let generation = gen::next(gen::join(extra.gen_high, tag));
        let fresh = Extra { alloc_type: options.alloc_type, gen_high: gen::high(generation) };
        if fresh != extra {
            extra_word.store(fresh.encode(), Ordering::Relaxed);
        }
        let class_size = CLASS_SIZES[at.class] as u64;
        let owner = session.owner();
        // The owner's and kind's bits precomputed, the slack (< 2^14: a class size) and tag added.
        let live = BlockState::with_tag(session.live_bits | (class_size - size) << 14, gen::tag(generation));
        // ORDERING: Release publishes the extra word (and the allocation as a whole) to lookups,
        // which load this word with Acquire before reading the extra word.
        state.store(live, Ordering::Release);
        step!("alloc/handed-out");
        let offset = at.first_block + index * class_size;
        Allocation::new(self.make_id(offset, generation), offset, size, class_size, options.alloc_type, owner)
    }

    // ----- blocking --------------------------------------------------------------------------

    /// Called after space became free: when someone waits, takes their waiter bits down (each
    /// waiter sets its bit again before it waits again, so a waiter that stopped or died costs
    /// the frees nothing after this) and bumps the wake word.
    pub(crate) fn wake_if_waiting(&self) -> Wake {
        // ORDERING: SeqCst fence pairs with the fence in `alloc_blocking`; see there.
        fence(Ordering::SeqCst);
        let status_word = self.region.word(header::STATUS);
        if status_word.load(Ordering::Relaxed) >> status::WAITER_SHIFT == 0 {
            return Wake::Nobody;
        }
        // ORDERING: SeqCst, the order of the waiter bits everywhere.
        status_word.fetch_and(status::STATE_MASK, Ordering::SeqCst);
        self.bump_wake_seq()
    }

    pub(crate) fn bump_wake_seq(&self) -> Wake {
        // ORDERING: SeqCst so a waiter that reads the new value also sees the free before it.
        self.wake_word().fetch_add(1, Ordering::SeqCst);
        Wake::Waiters
    }

    /// Number of callers blocked in `alloc_blocking` right now (holding a waiter slot), in all
    /// processes.
    pub fn waiters(&self) -> u64 {
        (0..crate::layout::WAITER_SLOTS)
            .filter(|&slot| self.region.word(self.geo.waiter_word + slot).load(Ordering::Relaxed) != 0)
            .count() as u64
    }
}
