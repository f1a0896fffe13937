//! Where everything sits inside a region, and the size classes.
//!
//! A region is an array of 64-bit words. Its layout, front to back:
//!
//! | part        | words                         | holds                                          |
//! |-------------|-------------------------------|------------------------------------------------|
//! | header      | `HEADER_WORDS`                | magic, version, state, geometry, wait words    |
//! | class heads | `NUM_CLASSES`                 | one tagged stack head per size class           |
//! | bitmap      | `ceil(num_pages / 64)`        | one bit per data page, 1 = claimed             |
//! | page meta   | `num_pages * PAGE_META_WORDS` | per data page: info, anchor, link, epoch, owner, state |
//! | (padding)   |                               | up to the next page boundary                   |
//! | data        | `num_pages * page_size` bytes | spans of small blocks and large runs           |
//!
//! Every part but the header is all zero in a fresh region, and all-zero means "free": no page
//! claimed, every class stack empty, every page's info "free", every epoch 0. Creating a pool
//! therefore writes only the header, whatever its size. Only offsets and indices are stored,
//! never pointers, so each process may map the region anywhere.

/// `b"SHMPOOL\0"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMPOOL\0");
/// Bumped whenever the meaning of any word in the region changes.
pub const LAYOUT_VERSION: u64 = 1;

/// Words reserved for the header; words `HOST_WORDS_START..HEADER_WORDS` belong to the host.
pub const HEADER_WORDS: usize = 32;
/// The first header word the core never touches (alloc-shm keeps its own fields there).
pub const HOST_WORDS_START: usize = 16;

/// Header word indices. The first cache line (words 0-7) is read on every call and written
/// almost never (`WAITERS` only by blocked allocators); `WAKE_SEQ` opens the second line, so that
/// the frees bumping it do not disturb the first.
pub mod header {
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::LAYOUT_VERSION`].
    pub const VERSION: usize = 1;
    /// The pool's state (one of the `STATE_*` values, low byte) and the number of callers
    /// blocked in `alloc_blocking` in any process (high 32 bits): one word, so that the hot path
    /// learns both from one load. See [`super::status`].
    pub const STATUS: usize = 2;
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
    /// Bits of an allocation id that name its slot (the rest is its generation).
    pub const SLOT_BITS: usize = 9;
}

/// Fields of the `STATUS` header word.
pub mod status {
    /// The low byte holds the state.
    pub const STATE_MASK: u64 = 0xFF;
    /// One blocked caller, in the high 32 bits.
    pub const WAITER: u64 = 1 << 32;
}

/// The region's header is being written; `open` waits or refuses.
pub const STATE_INITIALISING: u64 = 1;
/// The region can be used.
pub const STATE_READY: u64 = 2;
/// The pool was destroyed; every operation fails with `Error::Destroyed`.
pub const STATE_DESTROYED: u64 = 3;

/// Every allocation's offset and size are multiples of this, and so is its alignment.
pub const GRANULE: u64 = 16;
/// Pages in one span of small blocks.
pub const SPAN_PAGES: u64 = 16;
/// Smallest and largest page sizes a region may be created with.
pub const MIN_PAGE_SHIFT: u32 = 6;
/// See [`MIN_PAGE_SHIFT`].
pub const MAX_PAGE_SHIFT: u32 = 16;
/// The page size used unless the host asks for another.
pub const DEFAULT_PAGE_SHIFT: u32 = 12;
/// Page indices travel in 32-bit fields (stack heads, member back-links).
pub const MAX_PAGES: u64 = (1 << 32) - 2;

/// Words of metadata per data page, and what each holds.
pub const PAGE_META_WORDS: usize = 6;
/// Per-page metadata word indices.
pub mod page {
    /// [`super::PageInfo`]: what the page is part of.
    pub const INFO: usize = 0;
    /// Span head: the span's [`super::Anchor`]. Only ever an anchor, so its tag keeps growing
    /// across the span's incarnations.
    pub const ANCHOR: usize = 1;
    /// Span head: next span in its class stack (page + 1, 0 = end). Large head: requested bytes.
    pub const LINK: usize = 2;
    /// Every generation ever issued to a slot inside this page is at most this value.
    pub const EPOCH: usize = 3;
    /// Large head: the owner of the allocation (low 32 bits).
    pub const OWNER: usize = 4;
    /// Large head: the allocation's [`super::BlockState`].
    pub const STATE: usize = 5;
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
/// quotient; the map is monotonic, so that covers every `d`), so
/// finding a block's index needs no division.
pub const RECIPROCALS: [u64; NUM_CLASSES] = {
    let mut table = [0u64; NUM_CLASSES];
    let mut class = 0;
    while class < NUM_CLASSES {
        table[class] = (1u64 << 32).div_ceil(CLASS_SIZES[class] as u64);
        class += 1;
    }
    table
};

/// Spans are at most this many bytes (16 pages of at most 64 KiB), the range `RECIPROCALS` covers.
pub const MAX_SPAN_BYTES: u64 = SPAN_PAGES << MAX_PAGE_SHIFT;

/// `distance / CLASS_SIZES[class]` for `distance < MAX_SPAN_BYTES`, without a division.
#[inline]
pub fn block_index(distance: u64, class: usize) -> u64 {
    (distance * RECIPROCALS[class]) >> 32
}

/// Bytes of in-span metadata for `blocks` blocks: one state word and one owner half-word each,
/// rounded so that the first block stays 16-byte aligned.
pub const fn span_meta_bytes(blocks: u64) -> u64 {
    (blocks * 12).div_ceil(GRANULE) * GRANULE
}

/// How many blocks of `class_size` fit in a span of `span_bytes`, metadata included.
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

const _: () = {
    assert!(CLASS_SIZES.len() == NUM_CLASSES);
    assert!(CLASS_SIZES[NUM_CLASSES - 1] as u64 == MAX_CLASS_SIZE);
    assert!(HOST_WORDS_START > header::SLOT_BITS && HOST_WORDS_START < HEADER_WORDS);
    assert!(page::STATE < PAGE_META_WORDS);
    // Classes are 16-byte multiples, so every block of a span starts 16-byte aligned.
    let mut i = 0;
    while i < NUM_CLASSES {
        assert!((CLASS_SIZES[i] as u64).is_multiple_of(GRANULE));
        i += 1;
    }
    // With the default page size every class gets a usable span.
    assert!(blocks_per_span(MAX_CLASS_SIZE, SPAN_PAGES << DEFAULT_PAGE_SHIFT) >= 8);
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
    /// Word index of the first class stack head.
    pub stacks_word: usize,
    /// Word index of the first bitmap word.
    pub bitmap_word: usize,
    /// Number of bitmap words.
    pub bitmap_words: usize,
    /// Word index of page 0's metadata.
    pub page_meta_word: usize,
    /// Byte offset of data page 0.
    pub data_offset: u64,
    /// Bits of an id that name the slot.
    pub slot_bits: u32,
}

impl Geometry {
    /// The geometry of a region of `region_bytes` with pages of `1 << page_shift` bytes, or
    /// `None` if the region cannot hold a single span.
    pub const fn compute(region_bytes: u64, page_shift: u32) -> Option<Geometry> {
        if page_shift < MIN_PAGE_SHIFT || page_shift > MAX_PAGE_SHIFT {
            return None;
        }
        let page = 1u64 << page_shift;
        let stacks_word = HEADER_WORDS;
        let bitmap_word = stacks_word + NUM_CLASSES;
        // Each page costs its own bytes, its metadata and one bitmap bit; start from that
        // estimate and step down until the padded layout fits.
        let per_page_bits = (page + PAGE_META_WORDS as u64 * 8) * 8 + 1;
        let mut num_pages = region_bytes.saturating_mul(8) / per_page_bits;
        if num_pages > MAX_PAGES {
            num_pages = MAX_PAGES;
        }
        loop {
            if num_pages < SPAN_PAGES {
                return None;
            }
            let bitmap_words = num_pages.div_ceil(64) as usize;
            let page_meta_word = bitmap_word + bitmap_words;
            let meta_end = (page_meta_word as u64 + num_pages * PAGE_META_WORDS as u64) * 8;
            let data_offset = meta_end.div_ceil(page) * page;
            if data_offset + num_pages * page <= region_bytes {
                let slots = (num_pages * page) / GRANULE;
                let needed = 64 - slots.leading_zeros();
                let slot_bits = if needed < MIN_SLOT_BITS { MIN_SLOT_BITS } else { needed };
                return Some(Geometry {
                    region_bytes,
                    page_shift,
                    num_pages,
                    stacks_word,
                    bitmap_word,
                    bitmap_words,
                    page_meta_word,
                    data_offset,
                    slot_bits,
                });
            }
            num_pages -= 1;
        }
    }

    /// Bytes in one page.
    #[inline]
    pub const fn page_bytes(&self) -> u64 {
        1 << self.page_shift
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

    /// Word index of metadata word `field` of page `page`.
    #[inline]
    pub const fn page_word(&self, page: u64, field: usize) -> usize {
        self.page_meta_word + page as usize * PAGE_META_WORDS + field
    }

    /// Byte offset (from the region start) of the first byte of `page`.
    #[inline]
    pub const fn page_offset(&self, page: u64) -> u64 {
        self.data_offset + (page << self.page_shift)
    }

    /// Total words the region is made of.
    #[inline]
    pub const fn total_words(&self) -> usize {
        (self.region_bytes / 8) as usize
    }
}

/// Ids keep at least this many slot bits, so the stored 42-bit generation always fits.
pub const MIN_SLOT_BITS: u32 = 64 - BlockState::GEN_BITS;

/// What a data page is part of (the `INFO` word).
///
/// Bits 62–63 hold the kind; the low 40 bits hold the class (span head), the head page (span
/// member, with its class in bits 40–47) or the page count (large head). Zero means free: a fresh region needs no writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageInfo {
    /// Not part of any span or run (or an interior page of a large run, which needs no record).
    Free,
    /// First page of a span of small blocks of the given class.
    SpanHead {
        /// The size class.
        class: usize,
    },
    /// A later page of the span whose first page is `head`, of `class` (recorded here too, so
    /// that finding a block needs one info read).
    SpanMember {
        /// The span's first page.
        head: u64,
        /// The span's size class.
        class: usize,
    },
    /// First page of a large allocation of `pages` pages.
    LargeHead {
        /// Pages in the run.
        pages: u64,
    },
}

impl PageInfo {
    const KIND_SHIFT: u32 = 62;
    const LOW_MASK: u64 = (1 << 40) - 1;

    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        match self {
            PageInfo::Free => 0,
            PageInfo::SpanHead { class } => (1 << Self::KIND_SHIFT) | class as u64,
            PageInfo::SpanMember { head, class } => (2 << Self::KIND_SHIFT) | (class as u64) << 40 | head,
            PageInfo::LargeHead { pages } => (3 << Self::KIND_SHIFT) | pages,
        }
    }

    /// Reads a word back. Values are not range-checked here; callers check them against the
    /// geometry before use.
    pub const fn decode(word: u64) -> PageInfo {
        let low = word & Self::LOW_MASK;
        match word >> Self::KIND_SHIFT {
            0 => PageInfo::Free,
            1 => PageInfo::SpanHead { class: low as usize },
            2 => PageInfo::SpanMember { head: low, class: ((word >> 40) & 0xFF) as usize },
            _ => PageInfo::LargeHead { pages: low },
        }
    }
}

/// A span's anchor word (Michael 2004): the head of its free-block list, how many blocks are
/// free, whether it sits in its class stack, whether it was retired, and an ABA tag.
///
/// | bits  | field   |
/// |-------|---------|
/// | 0–12  | head: index of the first free block, `NULL` if none |
/// | 13–25 | count: free blocks |
/// | 26    | listed: the span is in (or being pushed onto) its class stack |
/// | 27    | retired: the span was given back to the bitmap |
/// | 28–63 | tag: bumped by every change, so a stale compare-exchange fails (36 bits) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Index of the first free block, or [`Anchor::NULL`].
    pub head: u64,
    /// Number of free blocks.
    pub count: u64,
    /// In its class stack.
    pub listed: bool,
    /// Given back to general use.
    pub retired: bool,
    /// ABA tag.
    pub tag: u64,
}

impl Anchor {
    /// No block.
    pub const NULL: u64 = 0x1FFF;
    /// Blocks a span may hold: indices `0..MAX_BLOCKS`, so neither `NULL` nor
    /// `BlockState::CACHED` is ever an index.
    pub const MAX_BLOCKS: u64 = Self::NULL - 1;
    const INDEX_MASK: u64 = 0x1FFF;
    const TAG_SHIFT: u32 = 28;

    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        (self.head & Self::INDEX_MASK)
            | (self.count & Self::INDEX_MASK) << 13
            | (self.listed as u64) << 26
            | (self.retired as u64) << 27
            | self.tag << Self::TAG_SHIFT
    }

    /// Reads a word back.
    pub const fn decode(word: u64) -> Anchor {
        Anchor {
            head: word & Self::INDEX_MASK,
            count: (word >> 13) & Self::INDEX_MASK,
            listed: (word >> 26) & 1 == 1,
            retired: (word >> 27) & 1 == 1,
            tag: word >> Self::TAG_SHIFT,
        }
    }

    /// The same anchor with the tag advanced (wrapping within its 36 bits).
    pub const fn bumped(self) -> Anchor {
        Anchor { tag: (self.tag + 1) & ((1 << (64 - Self::TAG_SHIFT)) - 1), ..self }
    }
}

/// The state word of one allocation slot: a small block's entry in its span's state array, or
/// a large run's `ANCHOR` word.
///
/// | bits  | field |
/// |-------|-------|
/// | 0–12  | live small block: class size minus requested size; free small block: next free index (`NULL` at the end, `CACHED` when held in a cache) |
/// | 13–20 | allocation type |
/// | 21–62 | generation (42 bits), bumped by each allocation of the slot |
/// | 63    | live |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockState {
    /// An allocation occupies the slot.
    pub live: bool,
    /// The generation of the current (or last) allocation.
    pub gen: u64,
    /// The allocation type (`DATA` = 0, ...).
    pub alloc_type: u8,
    /// Slack (live) or next free index (free).
    pub low: u64,
}

impl BlockState {
    /// Bits of the stored generation.
    pub const GEN_BITS: u32 = 42;
    /// Largest generation value.
    pub const GEN_MASK: u64 = (1 << Self::GEN_BITS) - 1;
    /// `low` of a block that is free but held in some participant's cache (its owner word
    /// names that participant). Never a block index: spans hold fewer blocks.
    pub const CACHED: u64 = Anchor::MAX_BLOCKS;

    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        (self.low & 0x1FFF)
            | (self.alloc_type as u64) << 13
            | (self.gen & Self::GEN_MASK) << 21
            | (self.live as u64) << 63
    }

    /// Reads a word back.
    pub const fn decode(word: u64) -> BlockState {
        BlockState {
            low: word & 0x1FFF,
            alloc_type: (word >> 13) as u8,
            gen: (word >> 21) & Self::GEN_MASK,
            live: word >> 63 == 1,
        }
    }
}

/// A class stack head: the top span (page + 1, 0 when empty) and a 32-bit ABA tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackHead {
    /// Top span's page + 1, or 0.
    pub top: u64,
    /// ABA tag, bumped by every push and pop.
    pub tag: u64,
}

impl StackHead {
    /// The word stored in the region.
    pub const fn encode(self) -> u64 {
        (self.top & 0xFFFF_FFFF) | (self.tag & 0xFFFF_FFFF) << 32
    }

    /// Reads a word back.
    pub const fn decode(word: u64) -> StackHead {
        StackHead { top: word & 0xFFFF_FFFF, tag: word >> 32 }
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
        let anchor = Anchor { head: 17, count: 4000, listed: true, retired: false, tag: (1 << 36) - 1 };
        assert_eq!(Anchor::decode(anchor.encode()), anchor);
        assert_eq!(anchor.bumped().tag, 0);
        let state = BlockState { live: true, gen: BlockState::GEN_MASK, alloc_type: 255, low: 0x1FFF };
        assert_eq!(BlockState::decode(state.encode()), state);
        for info in [
            PageInfo::Free,
            PageInfo::SpanHead { class: 23 },
            PageInfo::SpanMember { head: MAX_PAGES, class: 23 },
            PageInfo::LargeHead { pages: MAX_PAGES },
        ] {
            assert_eq!(PageInfo::decode(info.encode()), info);
        }
        let head = StackHead { top: 0xFFFF_FFFF, tag: 0xFFFF_FFFF };
        assert_eq!(StackHead::decode(head.encode()), head);
    }

    #[test]
    fn geometry_fits_inside_the_region_and_keeps_metadata_small() {
        for (bytes, shift) in [(1u64 << 20, 12), (64 << 20, 12), (1 << 40, 12), (1 << 17, 6), (3 << 20, 16)] {
            let geo = Geometry::compute(bytes, shift).expect("large enough");
            assert!(geo.data_offset.is_multiple_of(geo.page_bytes()));
            assert!(geo.data_offset + geo.data_bytes() <= bytes);
            assert!(
                geo.page_meta_word * 8 + geo.num_pages as usize * PAGE_META_WORDS * 8
                    <= geo.data_offset as usize
            );
            // Everything but the data area stays within ~2% of a 4 KiB-page region, plus one page.
            if shift == 12 {
                let overhead = bytes - geo.data_bytes();
                assert!(overhead <= bytes / 50 + geo.page_bytes() * 2, "{overhead} of {bytes}");
            }
            assert!(geo.slot_bits >= MIN_SLOT_BITS);
            assert!((geo.data_bytes() / GRANULE) <= 1 << geo.slot_bits);
        }
        assert_eq!(Geometry::compute(4096, 12), None);
        assert_eq!(Geometry::compute(1 << 20, 5), None);
    }

    #[test]
    fn block_index_equals_division_across_the_largest_span() {
        for (class, &size) in CLASS_SIZES.iter().enumerate() {
            let size = size as u64;
            // Every multiple is exact, and the values just below and above a multiple too.
            let mut distance = 0;
            while distance < MAX_SPAN_BYTES {
                for probe in [distance, distance + 1, distance + size - 1] {
                    assert_eq!(block_index(probe, class), probe / size, "class {class} at {probe}");
                }
                distance += size;
            }
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
