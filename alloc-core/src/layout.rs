//! Where everything sits inside a region, the size classes, and the format of every shared word.
//!
//! A region is an array of 64-bit words. Its layout, front to back:
//!
//! | part          | words                              | holds                                      |
//! |---------------|------------------------------------|--------------------------------------------|
//! | header        | `HEADER_WORDS`                     | magic, version, state, geometry, wait words|
//! | waiter owners | `WAITER_SLOTS` (padded to 64)      | the process holding each waiter slot       |
//! | processes     | `table_size * PROCESS_WORDS`       | one record per attached process            |
//! | participants  | `table_size * PARTICIPANT_WORDS`   | one record (one cache line) per participant|
//! | page bitmap   | `ceil(num_pages / 32)`             | two bits per data page: claimed, head      |
//! | class lists   | `NUM_CLASSES * hier_words`         | per class: spans that may have free blocks |
//! | empty set     | `hier_words`                       | spans that may be entirely free            |
//! | run index     | `runs.total_words()`               | free-run summaries over the page bitmap    |
//! | block owners  | `ceil(num_pages / BLOCK_PAGES)`    | per block: who claims cached-size runs there (a hint) |
//! | page meta     | `num_pages * PAGE_META_WORDS`      | per page: info, anchor or state, gen, epoch|
//! | (padding)     |                                    | up to the next page boundary               |
//! | data          | `num_pages * page_size` bytes      | spans of small blocks and large runs       |
//!
//! The page bitmap, the class lists, the run index and the page metadata each start a cache
//! line (padding before them): a leaf's eight bitmap words, and the eight words a summary of the
//! run index is computed from, are then one line each.
//!
//! Every part but the header is all zero in a fresh region, and all-zero means "free": no page
//! claimed, no span listed, no participant, every page's info "free", every epoch 0. Creating a
//! pool therefore writes only the header, whatever its size. Only offsets and indices are stored,
//! never pointers, so each process may map the region anywhere.
//!
//! Everything outside the data area is *out of band*: it never becomes user memory. Inside the
//! data area, a span starts with its blocks' state words (`S`, one 64-bit word per block) and
//! extra words (`X`, one 32-bit word per block); they are the only metadata that is ever user
//! memory at another time (before the span was carved, or after it was retired), which is why
//! they are touched only under a hazard (see the `heap` module).

/// `b"SHMPOOL\0"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMPOOL\0");
/// Bumped whenever the meaning of any word in the region changes.
pub const LAYOUT_VERSION: u64 = 12;

/// Words reserved for the header; words `HOST_WORDS_START..HEADER_WORDS` belong to the host.
pub const HEADER_WORDS: usize = 32;
/// The first header word the core never touches (alloc-shm keeps its own fields there).
pub const HOST_WORDS_START: usize = 17;

/// Words in a cache line.
const LINE_WORDS: usize = 8;

/// Header word indices. The first cache line (words 0-7) is read on every call and written
/// almost never (`STATUS` only by blocked allocators registering); `WAKE_SEQ` opens the second
/// line, so that the frees bumping it do not disturb the first.
pub mod header {
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::LAYOUT_VERSION`].
    pub const VERSION: usize = 1;
    /// The pool's state (one of the `STATE_*` values, low byte) and one bit per waiter slot
    /// (bits 8-63): one word, so that the hot path learns both from one load. See
    /// [`super::status`].
    pub const STATUS: usize = 2;
    /// How hazards are fenced in this pool ([`super::FENCES_SYMMETRIC`] or
    /// [`super::FENCES_ASYMMETRIC`]), fixed at creation.
    pub const FENCES: usize = 3;
    /// Total bytes of the region, as created.
    pub const REGION_BYTES: usize = 4;
    /// log2 of the page size.
    pub const PAGE_SHIFT: usize = 5;
    /// Number of data pages.
    pub const NUM_PAGES: usize = 6;
    /// Byte offset of the first data page from the region start.
    pub const DATA_OFFSET: usize = 7;
    /// Bumped by a free that must wake waiters; the host futex-waits on its low 32 bits.
    pub const WAKE_SEQ: usize = 8;
    /// Entries in the process table and in the participant table.
    pub const TABLE_SIZE: usize = 9;
    /// One past the highest participant index ever handed out (hazard scans stop there).
    pub const PARTICIPANT_HWM: usize = 10;
    /// One past the highest process index ever handed out.
    pub const PROCESS_HWM: usize = 11;
    /// One past the highest data page ever claimed: walks stop there, so the metadata of a
    /// sparse pool's untouched pages is never read (reading it would allocate it).
    pub const PAGE_HWM: usize = 12;
    /// Data pages below this have memory behind them (the host's [`crate::Backing`] made sure
    /// of it before any of them was claimed), with their page metadata and bitmap words.
    pub const BACKED_PAGES: usize = 13;
    /// The heap's budget, fixed at creation (0 = none): see [`crate::budget`].
    pub const BUDGET: usize = 14;
    /// What is charged against the budget now: see [`crate::budget`].
    pub const BUDGET_USED: usize = 15;
    /// What the allocations the budget refused lack (0: none since the waiters were last
    /// woken): see [`crate::budget`].
    pub const BUDGET_SHORT: usize = 16;
}

/// Fields of the `STATUS` header word.
pub mod status {
    /// The low byte holds the state.
    pub const STATE_MASK: u64 = 0xFF;
    /// Waiter slots: bits 8..64.
    pub const WAITER_SHIFT: u32 = 8;
}

/// Number of waiter slots (bits of the `STATUS` word above the state byte).
pub const WAITER_SLOTS: usize = 56;

/// The region's header is being written; `open` waits or refuses.
pub const STATE_INITIALISING: u64 = 1;
/// The region can be used.
pub const STATE_READY: u64 = 2;
/// The pool was destroyed; every operation fails with `Error::Destroyed`.
pub const STATE_DESTROYED: u64 = 3;

/// Hazards are published with a full fence in every process, and retirement fences likewise.
pub const FENCES_SYMMETRIC: u64 = 1;
/// Processes that can issue a process-wide heavy fence (membarrier) publish hazards with a
/// compiler fence only; retirement and healing issue the heavy fence.
pub const FENCES_ASYMMETRIC: u64 = 2;

/// Every allocation's offset and size are multiples of this, and so is its alignment.
pub const GRANULE: u64 = 16;
/// Pages in one span of small blocks. Spans sit at page indices that are multiples of this.
pub const SPAN_PAGES: u64 = 16;
/// Smallest and largest page sizes a region may be created with.
pub const MIN_PAGE_SHIFT: u32 = 6;
/// See [`MIN_PAGE_SHIFT`]. A large run's slack (its pages minus its size) must fit a state word.
pub const MAX_PAGE_SHIFT: u32 = 13;
/// The page size used unless the host asks for another.
pub const DEFAULT_PAGE_SHIFT: u32 = 12;
/// Page indices travel in 40-bit fields of page info.
pub const MAX_PAGES: u64 = (1 << 32) - 2;
/// Pages in one *block*: the unit in which caches keep the runs they claim apart (see
/// `Heap::alloc_large`): a block's owner word names the participant whose cache claims runs
/// there. Eight runs of the largest size a cache keeps, with 4 KiB pages.
pub const BLOCK_PAGES: u64 = 1024;
/// A large head's spare pages are at most this (bits 40-58 of its info word; see
/// [`PageInfo::LargeHead`]).
pub const MAX_SPARE: u64 = (1 << 19) - 1;

/// The pages of a large run's capacity: all but its `spare`; a spare of the whole run (damage)
/// is read as none, by the walks that tolerate damage, reclaim and repair alike.
#[inline]
pub const fn large_capacity(pages: u64, spare: u64) -> u64 {
    if spare < pages {
        pages - spare
    } else {
        pages
    }
}

/// Words of a process record, and what each holds.
pub const PROCESS_WORDS: usize = 4;
/// Process record word indices.
pub mod process {
    /// [`super::ProcessState`].
    pub const STATE: usize = 0;
    /// The process's start time as the host measures it (0 = not yet recorded).
    pub const START_TIME: usize = 1;
    /// The host's identity of the process's pid namespace (0 = not recorded).
    pub const NAMESPACE: usize = 2;
}

/// Words of a participant record (one cache line), and what each holds.
pub const PARTICIPANT_WORDS: usize = 8;
/// Participant record word indices.
pub mod participant {
    /// [`super::ParticipantState`].
    pub const STATE: usize = 0;
    /// Page + 1 of the page whose span this participant may be touching (0 = none), with
    /// [`super::HEALER`] set while the participant is healing that span.
    pub const HAZARD: usize = 1;
    /// A claim, release or retirement this participant owns (see [`super::pending`]).
    pub const PENDING: usize = 2;
    /// A hand-over in progress: the allocation's slot (0 = none, else slot + 1).
    pub const HANDOVER_SLOT: usize = 3;
    /// A hand-over in progress: the allocation's generation.
    pub const HANDOVER_GEN: usize = 4;
    /// A hand-over in progress: the receiving process's index and incarnation.
    pub const HANDOVER_TARGET: usize = 5;
    /// A retirement in progress: the span's anchor before it was marked retiring (its free-list
    /// head, which the retiring anchor replaces by the retirer's index).
    pub const RETIRE_ANCHOR: usize = 6;
    /// A budget charge being taken or given back (0 = none): see [`crate::budget`].
    pub const BUDGET_PENDING: usize = 7;
}

/// Set in a hazard word while its participant heals the span: other healers ignore it (healers
/// are safe against each other), retirement does not.
pub const HEALER: u64 = 1 << 63;

/// Largest number of processes (and of participants) a pool can record.
pub const MAX_TABLE: u64 = (1 << 12) - 1;
/// Smallest table: even a tiny pool serves a few participants.
pub const MIN_TABLE: u64 = 4;
/// Region bytes per table entry: pools of 128 MiB and more record `MAX_TABLE` participants.
pub const BYTES_PER_TABLE_ENTRY: u64 = 32 << 10;

/// Words of metadata per data page, and what each holds.
pub const PAGE_META_WORDS: usize = 5;
/// Per-page metadata word indices. A word never changes meaning: a span's anchor and a large
/// run's state are separate words, so a stale compare-exchange prepared for one can never match
/// the other.
pub mod page {
    /// [`super::PageInfo`]: what the page is part of.
    pub const INFO: usize = 0;
    /// Span head: the span's [`super::Anchor`] (only ever an anchor: its tag keeps growing
    /// across the span incarnations that start at this page).
    pub const ANCHOR: usize = 1;
    /// Large head: the allocation's [`super::BlockState`].
    pub const STATE: usize = 2;
    /// Large head: the allocation's [`super::Extra`] (type and high generation bits).
    pub const GEN: usize = 3;
    /// Every generation ever issued to a slot starting inside this page is at most this value.
    pub const EPOCH: usize = 4;
}

/// Size classes: 16-byte steps to 128, then four classes per doubling up to 2048. A request above
/// the largest class, or one asking for more than 16-byte alignment, is served by a page run.
pub const CLASS_SIZES: [u32; NUM_CLASSES] = [
    16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280,
    1536, 1792, 2048,
];
/// Number of size classes.
pub const NUM_CLASSES: usize = 24;
/// The largest request a size class can serve.
pub const MAX_CLASS_SIZE: u64 = 2048;

/// `CLASS_BY_GRANULES[ceil(size / 16)]` is the class serving `size`, for `size <= MAX_CLASS_SIZE`.
const CLASS_BY_GRANULES: [u8; (MAX_CLASS_SIZE / GRANULE) as usize + 1] = {
    let mut table = [0u8; (MAX_CLASS_SIZE / GRANULE) as usize + 1];
    let mut granules = 0;
    let mut class = 0;
    while granules < table.len() {
        while (CLASS_SIZES[class] as usize) < granules * GRANULE as usize {
            class += 1;
        }
        table[granules] = class as u8;
        granules += 1;
    }
    table
};

/// The class serving `size` bytes, if a class can.
#[inline]
pub fn class_for(size: u64) -> Option<usize> {
    if size > MAX_CLASS_SIZE {
        return None;
    }
    Some(CLASS_BY_GRANULES[size.div_ceil(GRANULE) as usize] as usize)
}

/// `RECIPROCALS[class]` is `ceil(2^32 / class size)`: for any byte distance `d < 2^20` inside a
/// span, `(d * RECIPROCALS[class]) >> 32 == d / class size` (a test checks both ends of every
/// quotient; the map is monotonic, so that covers every `d`), so finding a block's index needs
/// no division.
pub const RECIPROCALS: [u64; NUM_CLASSES] = {
    let mut table = [0u64; NUM_CLASSES];
    let mut class = 0;
    while class < NUM_CLASSES {
        table[class] = (1u64 << 32).div_ceil(CLASS_SIZES[class] as u64);
        class += 1;
    }
    table
};

/// Spans are at most this many bytes (16 pages of at most 8 KiB), the range `RECIPROCALS` covers.
pub const MAX_SPAN_BYTES: u64 = SPAN_PAGES << MAX_PAGE_SHIFT;

/// `distance / CLASS_SIZES[class]` for `distance < MAX_SPAN_BYTES`, without a division.
#[inline]
pub fn block_index(distance: u64, class: usize) -> u64 {
    (distance * RECIPROCALS[class]) >> 32
}

/// Bytes of in-span metadata for `blocks` blocks: one state word and one extra word each,
/// rounded so that the first block stays 16-byte aligned.
pub const fn span_meta_bytes(blocks: u64) -> u64 {
    (blocks * 12).div_ceil(GRANULE) * GRANULE
}

/// How many blocks of `class_size` fit in a span of `span_bytes`, metadata included (at most
/// [`Anchor::MAX_BLOCKS`]).
pub const fn blocks_per_span(class_size: u64, span_bytes: u64) -> u64 {
    let mut blocks = span_bytes / (class_size + 12);
    while blocks > 0 && span_meta_bytes(blocks) + blocks * class_size > span_bytes {
        blocks -= 1;
    }
    if blocks > Anchor::MAX_BLOCKS {
        Anchor::MAX_BLOCKS
    } else {
        blocks
    }
}

/// A participant's `PENDING` word: the first page of the run it is claiming, releasing or
/// retiring, plus one (0: none), in bits 0-31, and the run's length in pages in bits 32-63 while
/// its page bits change (0: not recorded).
pub mod pending {
    /// The word for a run of `pages` pages at `page`.
    pub const fn encode(page: u64, pages: u64) -> u64 {
        (page + 1) | pages << 32
    }

    /// The first page and length of the run a word names, if any.
    pub const fn decode(word: u64) -> Option<(u64, u64)> {
        match word & 0xFFFF_FFFF {
            0 => None,
            first => Some((first - 1, word >> 32)),
        }
    }
}

/// The shape of one hierarchical bitmap (see `crate::hier`): level 0 holds one bit per leaf in
/// 64-bit words; every level above holds 16 summary bits per word (one per word below) and a
/// 48-bit version; the top level is one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HierShape {
    /// Number of levels (1 when one word holds every leaf).
    pub levels: usize,
    /// Word offset of each level from the bitmap's first word.
    pub offsets: [usize; HierShape::MAX_LEVELS],
    /// Words in each level.
    pub words: [usize; HierShape::MAX_LEVELS],
    /// Leaf bits.
    pub leaves: u64,
}

impl HierShape {
    /// Deep enough for 2^(6 + 4 * 7) leaves.
    pub const MAX_LEVELS: usize = 8;
    /// Summary bits per word above level 0.
    pub const FAN_OUT: usize = 16;

    /// The shape for `leaves` leaf bits.
    pub const fn new(leaves: u64) -> HierShape {
        let first = if leaves == 0 { 1 } else { leaves.div_ceil(64) as usize };
        let (levels, offsets, words) = levels_of(first, Self::FAN_OUT, 1);
        HierShape { levels, offsets, words, leaves }
    }

    /// Words in all levels.
    pub const fn total_words(&self) -> usize {
        self.offsets[self.levels - 1] + 1
    }

    /// The word (from the bitmap's first word) of `level` that covers `leaf`.
    pub const fn word_of(&self, level: usize, leaf: u64) -> usize {
        let mut index = leaf / 64;
        let mut above = 1;
        while above <= level {
            index /= Self::FAN_OUT as u64;
            above += 1;
        }
        self.offsets[level] + index as usize
    }
}

/// The levels of a tree of words stored level by level: `first` words at level 0, and at every
/// level above one word per `fan_out` below, up to the first level of at most `top` words. Its
/// depth, and each level's offset (from the first word) and number of words.
const fn levels_of<const N: usize>(
    first: usize,
    fan_out: usize,
    top: usize,
) -> (usize, [usize; N], [usize; N]) {
    let (mut levels, mut offsets, mut words) = (0, [0; N], [0; N]);
    let (mut count, mut offset) = (first, 0);
    loop {
        offsets[levels] = offset;
        words[levels] = count;
        levels += 1;
        offset += count;
        if count <= top {
            return (levels, offsets, words);
        }
        count = count.div_ceil(fan_out);
    }
}

/// The shape of the free-run index (see `crate::runs`): level 0 holds one summary word per
/// `LEAF_PAGES` pages (eight bitmap words); every level above one word per `FAN_OUT` words
/// below; the top level is the first of at most `ROOT_WORDS` words (a search reads them in
/// turn: two levels fewer to refresh than a tree up to one word, for about as much reading).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunShape {
    /// Number of levels (1 when one leaf covers every page).
    pub levels: usize,
    /// Word offset of each level from the index's first word.
    pub offsets: [usize; RunShape::MAX_LEVELS],
    /// Words in each level.
    pub words: [usize; RunShape::MAX_LEVELS],
}

impl RunShape {
    /// Pages one leaf summarises: eight bitmap words, one cache line.
    pub const LEAF_PAGES: u64 = 256;
    /// Words summarised by one word of the level above.
    pub const FAN_OUT: u64 = 8;
    /// Deep enough for `MAX_PAGES`.
    pub const MAX_LEVELS: usize = 10;
    /// Most words of the top level (four cache lines).
    pub const ROOT_WORDS: usize = 32;

    /// The shape for `pages` data pages.
    pub const fn new(pages: u64) -> RunShape {
        Self::with_root(pages, Self::ROOT_WORDS)
    }

    /// The shape for `pages` data pages whose top level has at most `root` words (at least
    /// one; models use 1, for deep trees over few pages).
    pub const fn with_root(pages: u64, root: usize) -> RunShape {
        let first = if pages == 0 { 1 } else { pages.div_ceil(Self::LEAF_PAGES) as usize };
        let root = if root == 0 { 1 } else { root };
        let (levels, offsets, words) = levels_of(first, Self::FAN_OUT as usize, root);
        RunShape { levels, offsets, words }
    }

    /// Words in all levels.
    pub const fn total_words(&self) -> usize {
        self.offsets[self.levels - 1] + self.words[self.levels - 1]
    }

    /// Pages one word of `level` summarises.
    pub const fn node_pages(level: usize) -> u64 {
        Self::LEAF_PAGES << (3 * level as u32)
    }

    /// The word (from the index's first word) of `level` that covers `page`.
    pub const fn word_of(&self, level: usize, page: u64) -> usize {
        self.offsets[level] + (page / Self::node_pages(level)) as usize
    }
}

const _: () = {
    assert!(CLASS_SIZES.len() == NUM_CLASSES);
    assert!(CLASS_SIZES[NUM_CLASSES - 1] as u64 == MAX_CLASS_SIZE);
    assert!(HOST_WORDS_START > header::BUDGET_SHORT && HOST_WORDS_START < HEADER_WORDS);
    assert!(page::EPOCH < PAGE_META_WORDS);
    assert!(participant::BUDGET_PENDING < PARTICIPANT_WORDS);
    assert!(process::NAMESPACE < PROCESS_WORDS);
    assert!(WAITER_SLOTS + status::WAITER_SHIFT as usize == 64);
    // Classes are 16-byte multiples, so every block of a span starts 16-byte aligned.
    let mut i = 0;
    while i < NUM_CLASSES {
        assert!((CLASS_SIZES[i] as u64).is_multiple_of(GRANULE));
        i += 1;
    }
    // With the default page size every class gets a usable span.
    assert!(blocks_per_span(MAX_CLASS_SIZE, SPAN_PAGES << DEFAULT_PAGE_SHIFT) >= 8);
    // A large run's slack (at most one page) fits the 14-bit aux field of its state word.
    assert!((1u64 << MAX_PAGE_SHIFT) <= BlockState::AUX_MASK);
    // A span's block indices fit the 12-bit link field.
    assert!(Anchor::MAX_BLOCKS < BlockState::NULL);
    // A participant index fits the aux field of a free block and of page info.
    assert!(MAX_TABLE <= BlockState::AUX_MASK);
    // Geometry words stay small enough for `usize` arithmetic on 64-bit hosts.
    assert!(HierShape::new(MAX_PAGES / SPAN_PAGES).levels <= HierShape::MAX_LEVELS);
    assert!(RunShape::new(MAX_PAGES).levels <= RunShape::MAX_LEVELS);
    assert!(RunShape::FAN_OUT == 1 << 3);
};

/// The geometry of one region, derived from its size and page size. Stored in the header at
/// creation; `open` recomputes it and refuses a header that disagrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Total bytes of the region.
    pub region_bytes: u64,
    /// log2 of the page size.
    pub page_shift: u32,
    /// Number of data pages.
    pub num_pages: u64,
    /// Number of span slots (aligned groups of `SPAN_PAGES` pages).
    pub num_slots: u64,
    /// Entries in the process table and in the participant table.
    pub table_size: u64,
    /// Word index of the first waiter-owner word.
    pub waiter_word: usize,
    /// Word index of the first process record.
    pub process_word: usize,
    /// Word index of the first participant record.
    pub participant_word: usize,
    /// Word index of the first page-bitmap word.
    pub bitmap_word: usize,
    /// Number of page-bitmap words.
    pub bitmap_words: usize,
    /// Shape of each class list and of the empty set.
    pub hier: HierShape,
    /// Word index of the first class list (class `c` starts `c * hier.total_words()` later).
    pub class_word: usize,
    /// Word index of the empty set.
    pub empty_word: usize,
    /// Shape of the free-run index.
    pub runs: RunShape,
    /// Word index of the free-run index.
    pub runs_word: usize,
    /// Word index of block 0's owner word (see [`BLOCK_PAGES`]).
    pub owner_word: usize,
    /// Word index of page 0's metadata.
    pub page_meta_word: usize,
    /// Byte offset of data page 0.
    pub data_offset: u64,
}

impl Geometry {
    /// The geometry of a region of `region_bytes` with pages of `1 << page_shift` bytes, or
    /// `None` if the region cannot hold a single span.
    pub const fn compute(region_bytes: u64, page_shift: u32) -> Option<Geometry> {
        if page_shift < MIN_PAGE_SHIFT || page_shift > MAX_PAGE_SHIFT {
            return None;
        }
        let page = 1u64 << page_shift;
        let mut table_size = region_bytes / BYTES_PER_TABLE_ENTRY;
        if table_size < MIN_TABLE {
            table_size = MIN_TABLE;
        }
        if table_size > MAX_TABLE {
            table_size = MAX_TABLE;
        }
        let waiter_word = HEADER_WORDS;
        let process_word = waiter_word + 64;
        let participant_word = process_word + table_size as usize * PROCESS_WORDS;
        // The bitmap, the run index and the page metadata each start a cache line: a leaf's
        // eight bitmap words and the eight words below a summary are then one line each.
        let bitmap_word =
            (participant_word + table_size as usize * PARTICIPANT_WORDS).next_multiple_of(LINE_WORDS);
        // Each page costs its own bytes, its metadata, two bitmap bits and its share of the
        // class lists (the run index's share is too small to count); start from that estimate
        // and step down until the padded layout fits.
        let per_page_bits = (page + PAGE_META_WORDS as u64 * 8) * 8 + 2 + 2;
        let mut num_pages = region_bytes.saturating_mul(8) / per_page_bits;
        if num_pages > MAX_PAGES {
            num_pages = MAX_PAGES;
        }
        loop {
            if num_pages < SPAN_PAGES {
                return None;
            }
            let num_slots = num_pages / SPAN_PAGES;
            let bitmap_words = num_pages.div_ceil(32) as usize;
            let hier = HierShape::new(num_slots);
            let class_word = (bitmap_word + bitmap_words).next_multiple_of(LINE_WORDS);
            let empty_word = class_word + NUM_CLASSES * hier.total_words();
            let runs = RunShape::new(num_pages);
            let runs_word = (empty_word + hier.total_words()).next_multiple_of(LINE_WORDS);
            let owner_word = runs_word + runs.total_words();
            let page_meta_word =
                (owner_word + num_pages.div_ceil(BLOCK_PAGES) as usize).next_multiple_of(LINE_WORDS);
            let meta_end = (page_meta_word as u64 + num_pages * PAGE_META_WORDS as u64) * 8;
            let data_offset = meta_end.div_ceil(page) * page;
            if data_offset + num_pages * page <= region_bytes {
                return Some(Geometry {
                    region_bytes,
                    page_shift,
                    num_pages,
                    num_slots,
                    table_size,
                    waiter_word,
                    process_word,
                    participant_word,
                    bitmap_word,
                    bitmap_words,
                    hier,
                    class_word,
                    empty_word,
                    runs,
                    runs_word,
                    owner_word,
                    page_meta_word,
                    data_offset,
                });
            }
            // Step down by the shortfall's worth of pages (at least one).
            let over = (data_offset + num_pages * page - region_bytes).div_ceil(page);
            num_pages = num_pages.saturating_sub(if over == 0 { 1 } else { over });
        }
    }

    /// Bytes in one page.
    #[inline]
    pub const fn page_bytes(&self) -> u64 {
        1 << self.page_shift
    }

    /// Pages a run for `bytes` needs (at least one).
    #[inline]
    pub const fn pages_for(&self, bytes: u64) -> u64 {
        let pages = bytes.div_ceil(self.page_bytes());
        if pages == 0 {
            1
        } else {
            pages
        }
    }

    /// Bytes in one span of small blocks.
    #[inline]
    pub const fn span_bytes(&self) -> u64 {
        SPAN_PAGES << self.page_shift
    }

    /// Bytes of the data area.
    #[inline]
    pub const fn data_bytes(&self) -> u64 {
        self.num_pages << self.page_shift
    }

    /// Word index of the owner word of the block holding page `page`.
    #[inline]
    pub const fn block_owner_word(&self, page: u64) -> usize {
        self.owner_word + (page / BLOCK_PAGES) as usize
    }

    /// Word index of metadata word `field` of page `page`.
    #[inline]
    pub const fn page_word(&self, page: u64, field: usize) -> usize {
        self.page_meta_word + page as usize * PAGE_META_WORDS + field
    }

    /// Byte offset of page `page`'s metadata words.
    pub const fn page_meta_offset(&self, page: u64) -> u64 {
        (self.page_meta_word as u64 + page * PAGE_META_WORDS as u64) * 8
    }

    /// Byte offset of the bitmap word holding page `page`'s bits.
    pub const fn bitmap_offset(&self, page: u64) -> u64 {
        (self.bitmap_word as u64 + page / crate::bitmap::PAGES_PER_WORD) * 8
    }

    /// Byte offset (from the region start) of the first byte of `page`.
    #[inline]
    pub const fn page_offset(&self, page: u64) -> u64 {
        self.data_offset + (page << self.page_shift)
    }

    /// Word index of word `field` of participant `index`.
    #[inline]
    pub const fn participant_field(&self, index: u64, field: usize) -> usize {
        self.participant_word + index as usize * PARTICIPANT_WORDS + field
    }

    /// Word index of word `field` of process `index`.
    #[inline]
    pub const fn process_field(&self, index: u64, field: usize) -> usize {
        self.process_word + index as usize * PROCESS_WORDS + field
    }

    /// Word index of the first word of class `class`'s list.
    #[inline]
    pub const fn class_list_word(&self, class: usize) -> usize {
        self.class_word + class * self.hier.total_words()
    }

    /// Total words the region is made of.
    #[inline]
    pub const fn total_words(&self) -> usize {
        (self.region_bytes / 8) as usize
    }

    /// Bits an id's slot needs (`data_bytes / GRANULE` slots).
    #[inline]
    pub const fn slots(&self) -> u64 {
        self.data_bytes() / GRANULE
    }
}

/// What a data page is part of (the `INFO` word).
///
/// | bits  | field |
/// |-------|-------|
/// | 60–63 | kind: 0 free, 1 span head, 2 span member, 3 large head, 4 transient |
/// | 59    | retiring (span members): the span is being given back |
/// | 40–47 | class (span head and members) |
/// | 0–39  | head page (member), page count (large head), participant (transient), participant retiring the span (span head, 0 = none) |
///
/// Zero means free: a fresh region needs no writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageInfo {
    /// Not part of any span or run (or an interior page of a large run, which needs no record).
    Free,
    /// First page of a span of small blocks of the given class.
    SpanHead {
        /// The size class.
        class: usize,
        /// The participant retiring the span (0 = none): while it is set, every id in the span
        /// is stale.
        retiring: u64,
    },
    /// A later page of the span whose first page is `head`, of `class` (recorded here too, so
    /// that finding a block needs one info read).
    SpanMember {
        /// The span's first page.
        head: u64,
        /// The span's size class.
        class: usize,
        /// As for the head.
        retiring: bool,
    },
    /// First page of a large allocation of `pages` pages, of which the allocation's capacity
    /// is all but the last `spare` (a run a cache rounded up to one of its sizes, so that it
    /// can serve any request of that size when it is freed; the state word's slack is less
    /// than a page, so the capacity cannot say it).
    LargeHead {
        /// Pages in the run.
        pages: u64,
        /// Pages at the run's end beyond the allocation's capacity (at most [`MAX_SPARE`], and
        /// fewer than `pages`).
        spare: u64,
    },
    /// First page of a run being claimed or released by `participant`: the run's page bits are
    /// that participant's (a prefix of the run, starting with a head bit at this page, if any).
    Transient {
        /// The participant doing it.
        participant: u64,
    },
}

impl PageInfo {
    const KIND_SHIFT: u32 = 60;
    const RETIRING: u64 = 1 << 59;
    const LOW_MASK: u64 = (1 << 40) - 1;

    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        match self {
            PageInfo::Free => 0,
            PageInfo::SpanHead { class, retiring } => {
                (1 << Self::KIND_SHIFT) | (class as u64) << 40 | (retiring & Self::LOW_MASK)
            }
            PageInfo::SpanMember { head, class, retiring } => {
                (2 << Self::KIND_SHIFT)
                    | ((retiring as u64) * Self::RETIRING)
                    | (class as u64) << 40
                    | (head & Self::LOW_MASK)
            }
            PageInfo::LargeHead { pages, spare } => {
                (3 << Self::KIND_SHIFT) | (spare & MAX_SPARE) << 40 | (pages & Self::LOW_MASK)
            }
            PageInfo::Transient { participant } => (4 << Self::KIND_SHIFT) | (participant & Self::LOW_MASK),
        }
    }

    /// For the word of `page`: the span head and class, if the page belongs to a span that is
    /// not being retired (the fast paths' form of decoding: kind and retiring state in one
    /// compare). Not range-checked, as for `decode`.
    #[inline]
    pub const fn span_in_use(word: u64, page: u64) -> Option<(u64, usize)> {
        let class = ((word >> 40) & 0xFF) as usize;
        // A head's retiring participant is in its low bits, a member's retiring flag in one bit.
        match word >> Self::KIND_SHIFT {
            1 if word & Self::LOW_MASK == 0 => Some((page, class)),
            2 if word & Self::RETIRING == 0 => Some((word & Self::LOW_MASK, class)),
            _ => None,
        }
    }

    /// Reads a word back; `None` for a kind no version ever wrote (a corrupted region). Values
    /// are not range-checked here; callers check them against the geometry before use.
    pub const fn decode(word: u64) -> Option<PageInfo> {
        let low = word & Self::LOW_MASK;
        let class = ((word >> 40) & 0xFF) as usize;
        let retiring = word & Self::RETIRING != 0;
        Some(match word >> Self::KIND_SHIFT {
            0 => PageInfo::Free,
            1 => PageInfo::SpanHead { class, retiring: low },
            2 => PageInfo::SpanMember { head: low, class, retiring },
            3 => PageInfo::LargeHead { pages: low, spare: (word >> 40) & MAX_SPARE },
            4 => PageInfo::Transient { participant: low },
            _ => return None,
        })
    }
}

/// A span's anchor word (after Michael 2004): the head of its free-block list, how many blocks
/// are free, whether it is being retired, and an ABA tag.
///
/// | bits  | field   |
/// |-------|---------|
/// | 0–11  | head: index of the first free block, `NULL` if none; while retiring, the retiring participant |
/// | 12–23 | count: free blocks on the list |
/// | 24–25 | state: 0 normal, 1 retiring |
/// | 26–63 | tag: bumped by every change, so a stale compare-exchange fails (38 bits) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Index of the first free block, or [`Anchor::NULL`].
    pub head: u64,
    /// Number of free blocks on the list.
    pub count: u64,
    /// The span is being retired: pops fail, its pages are about to be given back.
    pub retiring: bool,
    /// ABA tag.
    pub tag: u64,
}

impl Anchor {
    /// No block.
    pub const NULL: u64 = BlockState::NULL;
    /// Blocks a span may hold: indices `0..MAX_BLOCKS`, so `NULL` is never an index.
    pub const MAX_BLOCKS: u64 = 4094;
    const FIELD_MASK: u64 = 0xFFF;
    const TAG_SHIFT: u32 = 26;
    const TAG_MASK: u64 = (1 << (64 - Self::TAG_SHIFT)) - 1;

    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        (self.head & Self::FIELD_MASK)
            | (self.count & Self::FIELD_MASK) << 12
            | (self.retiring as u64) << 24
            | (self.tag & Self::TAG_MASK) << Self::TAG_SHIFT
    }

    /// Reads a word back.
    pub const fn decode(word: u64) -> Anchor {
        Anchor {
            head: word & Self::FIELD_MASK,
            count: (word >> 12) & Self::FIELD_MASK,
            retiring: (word >> 24) & 1 == 1,
            tag: word >> Self::TAG_SHIFT,
        }
    }

    /// The same anchor with the tag advanced (wrapping within its 38 bits).
    pub const fn bumped(self) -> Anchor {
        Anchor { tag: (self.tag + 1) & Self::TAG_MASK, ..self }
    }
}

/// What a block (or a large run) is: the kind field of its [`BlockState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Free: on its span's list, or held by a participant in the middle of a push or pop.
    Free,
    /// An allocation.
    Live,
    /// Free and held in the cache of the process named by `link`.
    Cached,
    /// A large run being given back by the participant named by `link` (large runs only).
    Releasing,
}

/// The state word `S` of one block (in-span), or of one large run (`page::WORD` of its head).
///
/// | bits  | field |
/// |-------|-------|
/// | 0–11  | link: live → owner process (0 = the pool); cached → holder process; free → next free block (`NULL` at the end); releasing → the releasing participant |
/// | 12–13 | kind: 0 free, 1 live, 2 cached, 3 releasing (large runs) |
/// | 14–27 | aux: live → slack (capacity minus requested size); free → the participant that last pushed it (0 = none); cached → low bits of the holder's process incarnation |
/// | 28–63 | tag: the low 36 bits of the generation of the slot's current (or last) allocation |
///
/// Owner, size and state are one word, so that every change of an allocation (free, owner,
/// resize) is one compare-exchange that validates all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockState {
    /// What the block is.
    pub kind: Kind,
    /// Owner, holder or next free block, by kind.
    pub link: u64,
    /// Slack or last pusher, by kind.
    pub aux: u64,
    /// Low bits of the generation.
    pub tag: u64,
}

impl BlockState {
    /// No next block.
    pub const NULL: u64 = 0xFFF;
    /// Largest `link` value.
    pub const LINK_MASK: u64 = 0xFFF;
    /// Largest `aux` value.
    pub const AUX_MASK: u64 = (1 << 14) - 1;
    /// Bits of the generation kept in the state word.
    pub const TAG_BITS: u32 = 36;
    /// Largest `tag` value.
    pub const TAG_MASK: u64 = (1 << Self::TAG_BITS) - 1;
    const TAG_SHIFT: u32 = 28;
    const KIND_AND_TAG: u64 = 3 << 12 | Self::TAG_MASK << Self::TAG_SHIFT;

    /// The tag of an encoded word.
    #[inline]
    pub const fn tag_of(word: u64) -> u64 {
        word >> Self::TAG_SHIFT
    }

    /// An encoded word with tag `tag` and every other field from `bits` (whose tag is 0).
    #[inline]
    pub const fn with_tag(bits: u64, tag: u64) -> u64 {
        bits | (tag & Self::TAG_MASK) << Self::TAG_SHIFT
    }

    /// Whether encoded `word` is a live allocation with tag `tag` (one compare: the fast paths'
    /// form of decoding and comparing kind and tag).
    #[inline]
    pub const fn is_live_with(word: u64, tag: u64) -> bool {
        word & Self::KIND_AND_TAG == Self::with_tag(1 << 12, tag)
    }

    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        let kind = match self.kind {
            Kind::Free => 0,
            Kind::Live => 1,
            Kind::Cached => 2,
            Kind::Releasing => 3,
        };
        (self.link & Self::LINK_MASK)
            | kind << 12
            | (self.aux & Self::AUX_MASK) << 14
            | (self.tag & Self::TAG_MASK) << Self::TAG_SHIFT
    }

    /// Reads a word back (`Option` for symmetry with the other formats: every word decodes).
    pub const fn decode(word: u64) -> Option<BlockState> {
        let kind = match (word >> 12) & 3 {
            0 => Kind::Free,
            1 => Kind::Live,
            2 => Kind::Cached,
            _ => Kind::Releasing,
        };
        Some(BlockState {
            kind,
            link: word & Self::LINK_MASK,
            aux: (word >> 14) & Self::AUX_MASK,
            tag: word >> Self::TAG_SHIFT,
        })
    }

    /// A free block whose next free block is `next`, last pushed by `pusher`.
    pub const fn free(next: u64, pusher: u64, tag: u64) -> BlockState {
        BlockState { kind: Kind::Free, link: next, aux: pusher, tag }
    }

    /// A live allocation.
    pub const fn live(owner: u64, slack: u64, tag: u64) -> BlockState {
        BlockState { kind: Kind::Live, link: owner, aux: slack, tag }
    }

    /// A block held in the cache of process `holder` of incarnation `incarnation`: the
    /// incarnation tells a block cached by a later process with the same index from this one.
    pub const fn cached(holder: u64, incarnation: u64, tag: u64) -> BlockState {
        BlockState { kind: Kind::Cached, link: holder, aux: incarnation & Self::AUX_MASK, tag }
    }

    /// A large run being released by participant `releaser`.
    pub const fn releasing(releaser: u64, tag: u64) -> BlockState {
        BlockState { kind: Kind::Releasing, link: releaser, aux: 0, tag }
    }
}

/// Generations: 60 bits, split between the state word's tag (low 36) and the extra word (high 24).
pub mod gen {
    /// Bits of a generation.
    pub const BITS: u32 = 60;
    /// Largest generation.
    pub const MASK: u64 = (1 << BITS) - 1;

    /// The generation after `gen` (wrapping after 2^60 allocations of one slot).
    #[inline]
    pub const fn next(gen: u64) -> u64 {
        gen.wrapping_add(1) & MASK
    }

    /// The low bits kept in a state word.
    #[inline]
    pub const fn tag(gen: u64) -> u64 {
        gen & super::BlockState::TAG_MASK
    }

    /// The high bits kept in an extra word.
    #[inline]
    pub const fn high(gen: u64) -> u64 {
        gen >> super::BlockState::TAG_BITS
    }

    /// A generation from its two halves.
    #[inline]
    pub const fn join(high: u64, tag: u64) -> u64 {
        (high << super::BlockState::TAG_BITS) | tag
    }
}

/// The extra word `X` of a block (in-span, 32 bits) or of a large run (`page::GEN`, low 32 bits):
/// written only while the block or run is held exclusively, read after its state word.
///
/// | bits | field |
/// |------|-------|
/// | 0–7  | allocation type |
/// | 8–31 | high 24 bits of the generation |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extra {
    /// The allocation's type.
    pub alloc_type: u8,
    /// The generation's high bits.
    pub gen_high: u64,
}

impl Extra {
    /// The word stored in the region.
    pub const fn encode(self) -> u32 {
        self.alloc_type as u32 | ((self.gen_high as u32) << 8)
    }

    /// Reads a word back.
    pub const fn decode(word: u32) -> Extra {
        Extra { alloc_type: word as u8, gen_high: (word >> 8) as u64 }
    }
}

/// Life of a process record (and, `Free`/`Active`/`Dead` only, of a participant record, where
/// `Dead` means "being resolved by its adopter").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// Unused.
    Free,
    /// In use by a process that is (as far as anyone knows) alive.
    Active,
    /// Its process was found dead; what it held is being reclaimed.
    Dead,
    /// Taken by a process that is still writing its identity (judged by its pid alone).
    Registering,
}

impl RecordState {
    const fn bits(self) -> u64 {
        match self {
            RecordState::Free => 0,
            RecordState::Active => 1,
            RecordState::Dead => 2,
            RecordState::Registering => 3,
        }
    }

    const fn from_bits(bits: u64) -> RecordState {
        match bits & 3 {
            1 => RecordState::Active,
            2 => RecordState::Dead,
            3 => RecordState::Registering,
            _ => RecordState::Free,
        }
    }
}

/// A process record's state word.
///
/// | bits  | field |
/// |-------|-------|
/// | 0–31  | pid |
/// | 32–61 | incarnation: bumped each time the record is taken |
/// | 62–63 | state |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessState {
    /// Free, active or dead.
    pub state: RecordState,
    /// Bumped each time the record is taken, so a re-read tells a new process from the old.
    pub incarnation: u64,
    /// The process id.
    pub pid: u32,
}

impl ProcessState {
    const INC_MASK: u64 = (1 << 30) - 1;

    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        self.pid as u64 | (self.incarnation & Self::INC_MASK) << 32 | self.state.bits() << 62
    }

    /// Reads a word back.
    pub const fn decode(word: u64) -> ProcessState {
        ProcessState {
            state: RecordState::from_bits(word >> 62),
            incarnation: (word >> 32) & Self::INC_MASK,
            pid: word as u32,
        }
    }
}

/// A participant record's state word: | 0–11 process | 16–27 adopter | 62–63 state |.
///
/// `Active`: in use by its process. `Dead`: its process died and participant `adopter` is
/// finishing or undoing what it left (only the adopter writes the record's other words; if the
/// adopter dies too, another participant adopts it in turn). `Free`: unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParticipantState {
    /// Free, active or dead.
    pub state: RecordState,
    /// The process it belongs to.
    pub process: u64,
    /// When dead: the participant resolving it.
    pub adopter: u64,
}

impl ParticipantState {
    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        (self.process & 0xFFF) | (self.adopter & 0xFFF) << 16 | self.state.bits() << 62
    }

    /// Reads a word back.
    pub const fn decode(word: u64) -> ParticipantState {
        ParticipantState {
            state: RecordState::from_bits(word >> 62),
            process: word & 0xFFF,
            adopter: (word >> 16) & 0xFFF,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_up_to_the_largest_class_maps_to_the_smallest_class_that_holds_it() {
        for size in 0..=MAX_CLASS_SIZE {
            let class = class_for(size).expect("small sizes have a class");
            assert!(CLASS_SIZES[class] as u64 >= size.max(1));
            if class > 0 {
                assert!((CLASS_SIZES[class - 1] as u64) < size);
            }
        }
        assert_eq!(class_for(MAX_CLASS_SIZE + 1), None);
    }

    #[test]
    fn packed_words_round_trip() {
        let anchor = Anchor { head: 17, count: 4000, retiring: true, tag: (1 << 38) - 1 };
        assert_eq!(Anchor::decode(anchor.encode()), anchor);
        assert_eq!(anchor.bumped().tag, 0);
        for state in [
            BlockState::live(4095, BlockState::AUX_MASK, BlockState::TAG_MASK),
            BlockState::free(BlockState::NULL, 4095, 0),
            BlockState::cached(1, 77, 12345),
            BlockState::releasing(4094, 3),
        ] {
            assert_eq!(BlockState::decode(state.encode()), Some(state));
        }
        let extra = Extra { alloc_type: 255, gen_high: (1 << 24) - 1 };
        assert_eq!(Extra::decode(extra.encode()), extra);
        for info in [
            PageInfo::Free,
            PageInfo::SpanHead { class: 23, retiring: MAX_TABLE },
            PageInfo::SpanMember { head: MAX_PAGES, class: 23, retiring: false },
            PageInfo::LargeHead { pages: MAX_PAGES, spare: 0 },
            PageInfo::LargeHead { pages: MAX_PAGES, spare: MAX_SPARE },
            PageInfo::Transient { participant: MAX_TABLE },
        ] {
            assert_eq!(PageInfo::decode(info.encode()), Some(info));
        }
        assert_eq!(PageInfo::decode(15 << 60), None);
        let process = ProcessState { state: RecordState::Dead, incarnation: (1 << 30) - 1, pid: u32::MAX };
        assert_eq!(ProcessState::decode(process.encode()), process);
        let participant = ParticipantState { state: RecordState::Dead, process: 4095, adopter: 17 };
        assert_eq!(ParticipantState::decode(participant.encode()), participant);
    }

    #[test]
    fn generations_split_across_the_two_words() {
        for g in [0, 1, BlockState::TAG_MASK, BlockState::TAG_MASK + 1, gen::MASK] {
            assert_eq!(gen::join(gen::high(g), gen::tag(g)), g);
            assert!(gen::high(g) < 1 << 24);
        }
        assert_eq!(gen::next(gen::MASK), 0);
    }

    #[test]
    fn geometry_fits_inside_the_region_and_keeps_metadata_small() {
        for (bytes, shift) in [(1u64 << 20, 12), (64 << 20, 12), (1 << 40, 12), (1 << 17, 6), (3 << 20, 13)] {
            let geo = Geometry::compute(bytes, shift).expect("large enough");
            assert!(geo.data_offset.is_multiple_of(geo.page_bytes()));
            assert!(geo.data_offset + geo.data_bytes() <= bytes);
            assert!(geo.page_word(geo.num_pages, 0) * 8 <= geo.data_offset as usize);
            assert!(geo.num_slots * SPAN_PAGES <= geo.num_pages);
            // Everything but the data area stays within ~2% of a 4 KiB-page region, plus a page.
            if shift == 12 && bytes >= 64 << 20 {
                let overhead = bytes - geo.data_bytes();
                assert!(overhead <= bytes / 50 + geo.page_bytes() * 2, "{overhead} of {bytes}");
            }
            assert!(geo.table_size >= MIN_TABLE && geo.table_size <= MAX_TABLE);
        }
        assert!(Geometry::compute(1 << 30, 12).expect("fits").table_size >= 1024);
        assert_eq!(Geometry::compute(4096, 12), None);
        // Metadata that outgrows a tiny region must not underflow the page count.
        for bytes in (0..=8192).step_by(64) {
            if let Some(geo) = Geometry::compute(bytes, 6) {
                assert!(geo.data_offset + geo.data_bytes() <= bytes);
            }
        }
        assert_eq!(Geometry::compute(1 << 20, 5), None);
        assert_eq!(Geometry::compute(1 << 20, 14), None);
    }

    #[test]
    fn the_bitmap_the_run_index_and_the_page_metadata_start_cache_lines() {
        for (bytes, shift) in [
            (1 << 20, 12),
            (3 << 20, 12),
            (1 << 30, 12),
            (2 << 30, 12),
            (64 << 30, 12),
            (5 << 20, 6),
            (5 << 30, 13),
        ] {
            let geo = Geometry::compute(bytes, shift).expect("fits");
            for word in [geo.bitmap_word, geo.class_word, geo.runs_word, geo.page_meta_word] {
                assert_eq!(word % LINE_WORDS, 0, "{bytes} {shift}: {geo:?}");
            }
            assert!(geo.bitmap_word + geo.bitmap_words <= geo.class_word);
            assert!(geo.runs_word + geo.runs.total_words() <= geo.page_meta_word);
        }
    }

    #[test]
    fn hierarchical_shapes_end_in_one_word() {
        for leaves in [0, 1, 64, 65, 2048, 2049, 1 << 20, MAX_PAGES / SPAN_PAGES] {
            let shape = HierShape::new(leaves);
            assert_eq!(shape.words[shape.levels - 1], 1, "{leaves}");
            assert!(shape.words[0] as u64 * 64 >= leaves);
            for level in 1..shape.levels {
                assert!(shape.words[level] * HierShape::FAN_OUT >= shape.words[level - 1]);
            }
        }
    }

    #[test]
    fn run_index_shapes_end_in_a_narrow_root_and_cover_every_page() {
        for (pages, root) in [0, 1, 256, 257, 2048, 2049, 8193, 65536, 65537, 1 << 20, 1 << 24, MAX_PAGES]
            .into_iter()
            .flat_map(|pages| [(pages, 0), (pages, 1), (pages, 3), (pages, RunShape::ROOT_WORDS)])
        {
            let shape = RunShape::with_root(pages, root);
            let top = shape.words[shape.levels - 1];
            assert!(top >= 1 && top <= root.max(1), "{pages}");
            // The first level that narrow: the one below is wider.
            assert!(shape.levels == 1 || shape.words[shape.levels - 2] > root.max(1), "{pages}");
            assert_eq!(shape.total_words(), shape.offsets[shape.levels - 1] + top);
            assert!(shape.words[0] as u64 * RunShape::LEAF_PAGES >= pages);
            for level in 1..shape.levels {
                assert!(shape.words[level] as u64 * RunShape::FAN_OUT >= shape.words[level - 1] as u64);
                assert_eq!(
                    shape.word_of(level, pages.saturating_sub(1)),
                    shape.offsets[level] + shape.words[level] - 1
                );
            }
        }
    }

    #[test]
    fn block_index_equals_division_across_the_largest_span() {
        for (class, &size) in CLASS_SIZES.iter().enumerate() {
            let size = size as u64;
            let mut distance = 0;
            while distance < MAX_SPAN_BYTES {
                for probe in [distance, distance + 1, distance + size - 1] {
                    assert_eq!(block_index(probe, class), probe / size, "class {class} at {probe}");
                }
                distance += size;
            }
        }
    }

    proptest::proptest! {
        /// The fast paths' one-compare forms agree with decoding, for every word (user bytes
        /// and corrupted words included).
        #[test]
        fn fast_checks_agree_with_decoding(
            bits: u64,
            kind in 0u64..16,
            no_low: bool,
            page in 0..MAX_PAGES,
            tag in 0..=BlockState::TAG_MASK,
        ) {
            // Every info kind, with and without a retiring participant in the low bits.
            let word = (bits & !(15 << 60) | kind << 60) & !(if no_low { PageInfo::LOW_MASK } else { 0 });
            let expected = match PageInfo::decode(word) {
                Some(PageInfo::SpanHead { class, retiring: 0 }) => Some((page, class)),
                Some(PageInfo::SpanMember { head, class, retiring: false }) => Some((head, class)),
                _ => None,
            };
            proptest::prop_assert_eq!(PageInfo::span_in_use(word, page), expected);
            let state = BlockState::decode(word).expect("every word decodes");
            let live = state.kind == Kind::Live && state.tag == tag;
            proptest::prop_assert_eq!(BlockState::is_live_with(word, tag), live);
            proptest::prop_assert_eq!(BlockState::tag_of(word), state.tag);
            let with = BlockState::with_tag(BlockState { tag: 0, ..state }.encode(), tag);
            proptest::prop_assert_eq!(BlockState::decode(with), Some(BlockState { tag, ..state }));
        }
    }

    #[test]
    fn blocks_per_span_counts_metadata() {
        for &size in CLASS_SIZES.iter() {
            let span = SPAN_PAGES << DEFAULT_PAGE_SHIFT;
            let blocks = blocks_per_span(size as u64, span);
            assert!(span_meta_bytes(blocks) + blocks * size as u64 <= span);
            assert!(
                span_meta_bytes(blocks + 1) + (blocks + 1) * size as u64 > span
                    || blocks == Anchor::MAX_BLOCKS
            );
        }
    }
}
