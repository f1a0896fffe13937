//! Test regions: zeroed, 8-byte aligned memory owned by the test, viewed as a `Region`, and a
//! participant that bundles a heap with its session.
#![allow(dead_code)]

use alloc_core::{
    AllocId, AllocOptions, Allocation, Cache, Error, Heap, Owner, ProcessIdentity, Reclaimed, Region,
    Session, Stats, Wake,
};

/// Zeroed memory for one region; lives as long as the test holds it.
pub struct TestMemory {
    words: Vec<u64>,
}

impl TestMemory {
    pub fn new(bytes: usize) -> TestMemory {
        TestMemory { words: vec![0; bytes / 8] }
    }

    pub fn region(&self) -> Region<'_> {
        // SAFETY: the vector lives as long as the returned region borrows `self`, is 8-byte
        // aligned, and is only touched through regions and allocation-owned byte writes.
        unsafe { Region::from_raw(self.words.as_ptr() as *mut u8, self.words.len() * 8) }.expect("aligned")
    }

    /// A fresh heap with 4 KiB pages.
    pub fn create(&self) -> Heap<'_> {
        Heap::create_default(self.region()).expect("region large enough")
    }

    /// Another view of the same heap (as another process would open it).
    pub fn open(&self) -> Heap<'_> {
        Heap::open_default(self.region()).expect("valid heap")
    }

    pub fn word(&self, index: usize) -> u64 {
        // SAFETY: test-only peek at an in-bounds word while nothing runs concurrently.
        unsafe { std::ptr::read_volatile(self.words.as_ptr().add(index)) }
    }

    pub fn set_word(&self, index: usize, value: u64) {
        // SAFETY: test-only corruption of an in-bounds word while nothing runs concurrently.
        unsafe { std::ptr::write_volatile(self.words.as_ptr().add(index) as *mut u64, value) }
    }
}

/// A process identity for tests: `pid` with a fixed start time.
pub fn identity(pid: u32) -> ProcessIdentity {
    ProcessIdentity { pid, start_time: 1000 + pid as u64, namespace: 1 }
}

/// A heap and one participant of a (fake) process: what a thread of a process would hold.
pub struct Participant<'h, 'a> {
    pub heap: &'h Heap<'a>,
    pub session: Session,
}

impl<'h, 'a> Participant<'h, 'a> {
    /// A participant of the process `pid` (registered if it is not yet).
    pub fn new(heap: &'h Heap<'a>, pid: u32) -> Participant<'h, 'a> {
        let owner = heap.register_process(identity(pid)).expect("room for a process");
        Participant { heap, session: heap.register_participant(owner).expect("room for a participant") }
    }

    pub fn owner(&self) -> Owner {
        self.session.owner()
    }

    pub fn alloc(&mut self, size: u64, options: AllocOptions) -> Result<Allocation, Error> {
        self.heap.alloc(&mut self.session, size, options)
    }

    pub fn free(&mut self, id: AllocId) -> Result<Wake, Error> {
        self.heap.free(&mut self.session, id)
    }

    pub fn lookup(&mut self, id: AllocId) -> Result<Allocation, Error> {
        self.heap.lookup(&mut self.session, id)
    }

    pub fn contains(&mut self, id: AllocId) -> bool {
        self.heap.contains(&mut self.session, id)
    }

    pub fn realloc(&mut self, id: AllocId, size: u64) -> Result<Allocation, Error> {
        self.heap.realloc(&mut self.session, id, size)
    }

    pub fn set_owner(&mut self, id: AllocId, owner: Owner) -> Result<(), Error> {
        self.heap.set_owner(&mut self.session, id, owner)
    }

    pub fn check(&mut self) -> Result<Stats, Error> {
        self.heap.check(&mut self.session)
    }

    pub fn stats(&mut self) -> Result<Stats, Error> {
        self.heap.stats(&mut self.session)
    }

    pub fn live(&mut self) -> Vec<Allocation> {
        let mut all = Vec::new();
        self.heap.for_each_allocation(&mut self.session, |a| all.push(a)).expect("walkable");
        all
    }

    /// Reclaims the processes whose pids are in `dead`.
    pub fn reclaim(&mut self, dead: &[u32]) -> Result<Reclaimed, Error> {
        self.heap.reclaim_dead(&mut self.session, |record| dead.contains(&record.identity.pid), |_, _, _| {})
    }

    /// A cache for another thread of the same process.
    pub fn cache(&self) -> Cache {
        Cache::new(self.heap.register_participant(self.owner()).expect("room for a participant"))
    }
}

/// After participant `dead` stopped with its marker off page 0 and its summaries not refreshed:
/// an allocation of `bytes` by `p` gets page 0 (the lowest fit, no longer marked), and reclaiming
/// `dead` leaves the heap consistent and its run index exact.
pub fn takes_the_head_then_reclaims(p: &mut Participant<'_, '_>, bytes: u64, dead: u32) {
    let taken = p.alloc(bytes, AllocOptions::default()).expect("the pages are free in the bitmap");
    assert_eq!(taken.offset, p.heap.geometry().data_offset, "the lowest fit: the head, no longer marked");
    p.reclaim(&[dead]).expect("reclaim");
    p.check().expect("consistent");
    assert!(p.heap.run_index_is_exact(), "reclaim refreshed the dead one's summaries");
}

/// Fills `allocation` with a pattern derived from `seed`.
pub fn fill(heap: &Heap<'_>, allocation: &Allocation, seed: u64) {
    let base = heap.region().base();
    for i in 0..allocation.size {
        // SAFETY: the allocation is live and owned by the caller; offsets stay inside it.
        unsafe { *base.add((allocation.offset + i) as usize) = pattern(seed, i) };
    }
}

/// Whether `allocation` still holds the pattern of `seed`.
pub fn holds(heap: &Heap<'_>, allocation: &Allocation, seed: u64) -> bool {
    let base = heap.region().base();
    (0..allocation.size).all(|i| {
        // SAFETY: as in `fill`.
        unsafe { *base.add((allocation.offset + i) as usize) == pattern(seed, i) }
    })
}

pub fn pattern(seed: u64, i: u64) -> u8 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i.wrapping_mul(31)) >> 24) as u8
}

/// The first `len` bytes of `allocation`, as an allocation for `holds`.
pub fn prefix(allocation: &Allocation, len: u64) -> Allocation {
    let mut prefix = *allocation;
    prefix.size = len;
    prefix
}

/// Stops the calling thread (by unwinding) when it reaches the step named in `STOP`.
fn stop_hook(name: &'static str) {
    if STOP.with(|stop| stop.get() == Some(name)) {
        STOP.with(|stop| stop.set(None));
        std::panic::panic_any("stopped");
    }
}

thread_local! {
    static STOP: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Runs `f`, stopping this thread for good at step `step` (unwinding leaves the region as a
/// participant killed there would); whether it got there.
pub fn stopped_at(step: &'static str, f: impl FnOnce()) -> bool {
    alloc_core::set_hook(stop_hook);
    STOP.with(|stop| stop.set(Some(step)));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    STOP.with(|stop| stop.set(None));
    outcome.is_err()
}

/// Default allocation options.
pub fn plain() -> AllocOptions {
    AllocOptions::default()
}

/// The page of the run at byte `offset` of the region.
pub fn head_of(heap: &Heap<'_>, offset: u64) -> u64 {
    (offset - heap.geometry().data_offset) >> heap.geometry().page_shift
}
