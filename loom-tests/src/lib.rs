//! Helpers for the loom models in `tests/`. Everything here only exists under
//! `--cfg shmpool_loom` (see `scripts/loom`); a normal build compiles an empty crate.
//!
//! The models run the real alloc-core over regions made of loom atomics. They use the smallest
//! geometry there is, 64-byte pages, so that a span is 16 pages (1 KiB) and a size class of
//! [`SMALL`] bytes has only [`SMALL_BLOCKS`] blocks per span: every walk of a span (carving,
//! `check`, `reclaim_dead`, retirement) stays a handful of atomic steps.
#![cfg(shmpool_loom)]

use alloc_core::layout::{blocks_per_span, page, Geometry, CLASS_SIZES};
use alloc_core::primitive::{AtomicU32, AtomicU64, Ordering};
use alloc_core::span::Span;
use alloc_core::{AllocOptions, Heap, Owner, Platform, ProcessIdentity, Region, Session, WaitHost, Waited};

/// The page shift of every modelled heap: 64-byte pages, 1 KiB spans.
pub const PAGE_SHIFT: u32 = 6;
/// Bytes of the smallest region that holds a heap: one span's worth of data pages (16).
pub const ONE_SPAN_HEAP: usize = 4160;
/// Bytes of the smallest region whose data area holds two spans (32 pages).
pub const TWO_SPAN_HEAP: usize = 5824;
/// A request served by the size class with the fewest blocks per span (112 bytes: 8 blocks).
pub const SMALL: u64 = 112;
/// Blocks per span of [`SMALL`]'s class with 64-byte pages.
pub const SMALL_BLOCKS: u64 = blocks_per_span(CLASS_SIZES[6] as u64, 16 << PAGE_SHIFT);

const _: () = {
    assert!(CLASS_SIZES[6] as u64 == SMALL);
    assert!(SMALL_BLOCKS == 8);
};

/// A region made of loom atomics: the two views the core expects, as separate arrays (so an
/// in-span state word and an extra word never alias here, unlike in a real mapping).
pub struct LoomRegion {
    words: Vec<AtomicU64>,
    halves: Vec<AtomicU32>,
}

impl LoomRegion {
    /// A zeroed region of `bytes` bytes (a multiple of 8).
    pub fn new(bytes: usize) -> LoomRegion {
        LoomRegion {
            words: (0..bytes / 8).map(|_| AtomicU64::new(0)).collect(),
            halves: (0..bytes / 4).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The region over these atomics.
    pub fn region(&self) -> Region<'_> {
        Region::from_parts(&self.words, &self.halves)
    }

    /// The 64-bit word at byte `offset` from the region's start (8-aligned): what a user writes
    /// into its allocation, or what the core keeps there as in-span metadata.
    pub fn word_at(&self, offset: u64) -> &AtomicU64 {
        assert_eq!(offset % 8, 0, "words are 8-aligned");
        &self.words[(offset / 8) as usize]
    }

    /// `count` 64-bit words from byte `offset` (8-aligned).
    pub fn words_at(&self, offset: u64, count: u64) -> &[AtomicU64] {
        assert_eq!(offset % 8, 0, "words are 8-aligned");
        &self.words[(offset / 8) as usize..(offset / 8 + count) as usize]
    }

    /// `count` 32-bit words from byte `offset` (4-aligned).
    pub fn halves_at(&self, offset: u64, count: u64) -> &[AtomicU32] {
        assert_eq!(offset % 4, 0, "halves are 4-aligned");
        &self.halves[(offset / 4) as usize..(offset / 4 + count) as usize]
    }

    /// The span of [`SMALL`] blocks whose head is page `head`, over this region's words, laid
    /// out as the core lays it out: its anchor in the head page's metadata, then at the span's
    /// start one state word and one extra word per block.
    pub fn small_span(&self, head: u64) -> Span<'_> {
        let geo = self.geometry();
        let anchor = &self.words[geo.page_word(head, page::ANCHOR)];
        let start = geo.page_offset(head);
        Span::new(
            anchor,
            self.words_at(start, SMALL_BLOCKS),
            self.halves_at(start + SMALL_BLOCKS * 8, SMALL_BLOCKS),
        )
    }

    /// Word `field` (see `alloc_core::layout::participant`) of participant `index`'s record.
    pub fn participant_word(&self, index: u64, field: usize) -> &AtomicU64 {
        &self.words[self.geometry().participant_field(index, field)]
    }

    /// The geometry a heap over this region has with [`PAGE_SHIFT`].
    pub fn geometry(&self) -> Geometry {
        Geometry::compute(self.words.len() as u64 * 8, PAGE_SHIFT).expect("big enough for a heap")
    }
}

/// Makes a heap over `memory` (64-byte pages, symmetric fences).
pub fn create(memory: &LoomRegion) -> Heap<'_> {
    Heap::create(memory.region(), PAGE_SHIFT, Platform::SYMMETRIC).expect("region fits a heap")
}

/// Another participant's view of the heap `create` made over `memory`.
pub fn open(memory: &LoomRegion) -> Heap<'_> {
    Heap::open(memory.region(), Platform::SYMMETRIC).expect("a ready heap")
}

/// The identity of the modelled process with pid `pid`.
pub fn identity(pid: u32) -> ProcessIdentity {
    ProcessIdentity { pid, start_time: 1000 + pid as u64, namespace: 1 }
}

/// Registers process `pid` and one participant of it.
pub fn attach(heap: &Heap<'_>, pid: u32) -> (Owner, Session) {
    let owner = heap.register_process(identity(pid)).expect("room in the process table");
    let session = heap.register_participant(owner).expect("room in the participant table");
    (owner, session)
}

/// Allocation options with type `alloc_type` and the caller's process as owner.
pub fn typed(alloc_type: u8) -> AllocOptions {
    AllocOptions { alloc_type, ..AllocOptions::default() }
}

/// Allocates everything a participant can get with small requests (until `OutOfMemory`) and
/// returns the offsets.
pub fn drain_small(heap: &Heap<'_>, session: &mut Session) -> Vec<u64> {
    let mut offsets = Vec::new();
    while let Ok(allocation) = heap.alloc(session, SMALL, AllocOptions::default()) {
        offsets.push(allocation.offset);
    }
    offsets
}

/// Asserts that no offset occurs twice (no block handed to two owners).
pub fn assert_distinct(offsets: &[u64], what: &str) {
    let mut sorted = offsets.to_vec();
    sorted.sort_unstable();
    for pair in sorted.windows(2) {
        assert_ne!(pair[0], pair[1], "{what}: offset {} handed out twice", pair[0]);
    }
}

/// Stack of every modelled thread: the core keeps a few arrays on the stack (a heal's orphan
/// list is 40 KiB, a [`alloc_core::Cache`] 12 KiB), more than loom's default 32 KiB. The model's
/// own closure runs on that default stack, so it only sets up, joins and checks.
///
/// Every racing operation of a model runs on a spawned thread, never on the model's closure
/// itself: loom's exploration missed races between the closure and a thread it had just
/// spawned and not yet run (a span model explored 1 execution that way, 23 with both sides
/// spawned).
pub const THREAD_STACK: usize = 256 << 10;

/// Spawns a modelled thread with a stack big enough for any heap operation.
pub fn spawn<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> loom::thread::JoinHandle<T> {
    loom::thread::Builder::new().stack_size(THREAD_STACK).spawn(body).expect("loom spawns the thread")
}

/// Runs `model` under loom with a branch budget of `max_branches` atomic steps per execution
/// (the bound on preemptions comes from `LOOM_MAX_PREEMPTIONS`, set by `scripts/loom`). With
/// `SHMPOOL_LOOM_COUNT` set, prints how many executions loom explored.
pub fn explore(max_branches: usize, model: impl Fn() + Sync + Send + 'static) {
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut builder = loom::model::Builder::new();
    builder.max_branches = max_branches;
    let counted = executions.clone();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    if std::env::var_os("SHMPOOL_LOOM_COUNT").is_some() {
        let bound = builder.preemption_bound.map_or("none".to_string(), |bound| bound.to_string());
        eprintln!(
            "{} executions (preemption bound {bound})",
            executions.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

/// A vector of `n` zeroed loom atomics.
pub fn words(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// A vector of `n` zeroed 32-bit loom atomics.
pub fn halves(n: usize) -> Vec<AtomicU32> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

/// Reads a word as the last writer left it (for checks after every thread was joined).
pub fn read(word: &AtomicU64) -> u64 {
    word.load(Ordering::Acquire)
}

/// Waits by yielding to loom until the wake word moves (an unregistered waiter, whom nobody
/// wakes, yields once and tries again). A lost wake-up spins forever, which loom reports when
/// the execution runs out of branches.
pub struct YieldingHost;

impl WaitHost for YieldingHost {
    fn wait(&mut self, word: &AtomicU64, seen: u64, registered: bool) -> Waited {
        if !registered {
            loom::thread::yield_now();
            return Waited::Woken;
        }
        while word.load(Ordering::SeqCst) as u32 == seen as u32 {
            loom::thread::yield_now();
        }
        Waited::Woken
    }
}
