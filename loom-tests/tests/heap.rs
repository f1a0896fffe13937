//! Loom models over a whole (tiny) heap: id and generation publication between participants,
//! and the wait/wake protocol of `alloc_blocking`.
#![cfg(shmpool_loom)]

use alloc_core::primitive::{AtomicU64, Ordering};
use alloc_core::{AllocId, AllocOptions, Error, Heap, Owner, WaitHost, Waited, Wake};
use loom::sync::Arc;
use loom_tests::{LoomRegion, SMALLEST_HEAP, TWO_SPAN_HEAP};

const PAGE_SHIFT: u32 = 6;

/// One participant allocates and publishes the id; another looks it up and frees it. The
/// reader sees either nothing or the whole allocation (type and owner included), and a free
/// by the reader is seen by the writer's second free as a double free.
#[test]
fn an_id_published_by_one_participant_is_complete_for_another() {
    loom::model(|| {
        let memory = Arc::new(LoomRegion::new(SMALLEST_HEAP));
        let _ = Heap::create(memory.region(), PAGE_SHIFT).expect("fits");
        let mailbox = Arc::new(AtomicU64::new(u64::MAX));
        let reader = {
            let (memory, mailbox) = (memory.clone(), mailbox.clone());
            loom::thread::spawn(move || {
                let heap = Heap::open(memory.region()).expect("valid");
                // ORDERING (test): Acquire pairs with the writer's Release of the id.
                let id = mailbox.load(Ordering::Acquire);
                if id == u64::MAX {
                    return false;
                }
                let found = heap.lookup(AllocId(id)).expect("a published id is live");
                assert_eq!((found.alloc_type, found.owner), (7, Owner(42)));
                let _ = heap.free(AllocId(id)).expect("live");
                true
            })
        };
        let heap = Heap::open(memory.region()).expect("valid");
        let options = AllocOptions { alloc_type: 7, owner: Owner(42), ..AllocOptions::default() };
        let allocation = heap.alloc(32, options).expect("space");
        mailbox.store(allocation.id.0, Ordering::Release);
        let reader_freed = reader.join().expect("no panic");
        let second = heap.free(allocation.id);
        if reader_freed {
            assert_eq!(second, Err(Error::NotAllocated { id: allocation.id.0 }));
        } else {
            assert_eq!(second, Ok(Wake::Nobody));
        }
        heap.check().expect("consistent");
    });
}

/// Two participants allocate one block each from the same class concurrently, with room for a
/// span each; the blocks differ and the heap ends empty and consistent.
#[test]
fn two_participants_allocating_get_distinct_blocks() {
    loom::model(|| {
        let memory = Arc::new(LoomRegion::new(TWO_SPAN_HEAP));
        let heap = Heap::create(memory.region(), PAGE_SHIFT).expect("fits");
        assert!(heap.geometry().num_pages >= 32, "room for two spans");
        let other = {
            let memory = memory.clone();
            loom::thread::spawn(move || {
                let heap = Heap::open(memory.region()).expect("valid");
                heap.alloc(16, AllocOptions::default()).expect("space")
            })
        };
        let mine = heap.alloc(16, AllocOptions::default()).expect("space");
        let theirs = other.join().expect("no panic");
        assert_ne!(mine.offset, theirs.offset);
        let _ = heap.free(mine.id).expect("live");
        let _ = heap.free(theirs.id).expect("live");
        let stats = heap.check().expect("consistent");
        assert_eq!(stats.live_allocations, 0);
    });
}

/// With pages for one span only, two participants race to set it up. The one that loses the
/// page claim may fail while the winner has not yet published the span (lock-freedom forbids
/// waiting for it), but at least one succeeds and the heap stays consistent.
#[test]
fn racing_for_the_last_span_lets_at_least_one_participant_through() {
    // The loser's failing path walks every class stack: many atomic steps, no spinning.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    builder.check(|| {
        let memory = Arc::new(LoomRegion::new(SMALLEST_HEAP));
        let heap = Heap::create(memory.region(), PAGE_SHIFT).expect("fits");
        let other = {
            let memory = memory.clone();
            loom::thread::spawn(move || {
                let heap = Heap::open(memory.region()).expect("valid");
                heap.alloc(16, AllocOptions::default()).ok()
            })
        };
        let mine = heap.alloc(16, AllocOptions::default()).ok();
        let theirs = other.join().expect("no panic");
        let granted: Vec<_> = mine.iter().chain(theirs.iter()).collect();
        assert!(!granted.is_empty(), "nobody got a block");
        for allocation in &granted {
            let _ = heap.free(allocation.id).expect("live");
        }
        heap.check().expect("consistent");
    });
}

/// Two participants with caches free the same block concurrently (a double free racing with
/// itself): exactly one free succeeds, and after both flush the heap is empty and consistent.
#[test]
fn cached_frees_of_one_block_by_two_participants_succeed_once() {
    loom::model(|| {
        let memory = Arc::new(LoomRegion::new(SMALLEST_HEAP));
        let heap = Heap::create(memory.region(), PAGE_SHIFT).expect("fits");
        let block = heap.alloc(48, AllocOptions::default()).expect("space");
        let other = {
            let memory = memory.clone();
            loom::thread::spawn(move || {
                let heap = Heap::open(memory.region()).expect("valid");
                let mut cache = heap.new_cache(Owner(2));
                let freed = heap.free_with(&mut cache, block.id).is_ok();
                let _ = heap.flush(&mut cache).expect("same heap");
                freed
            })
        };
        let mut cache = heap.new_cache(Owner(1));
        let mine = heap.free_with(&mut cache, block.id).is_ok();
        let theirs = other.join().expect("no panic");
        assert!(mine ^ theirs, "exactly one free succeeds (mine {mine}, theirs {theirs})");
        let _ = heap.flush(&mut cache).expect("same heap");
        let stats = heap.check().expect("consistent");
        assert_eq!((stats.live_allocations, stats.cached_blocks), (0, 0));
    });
}

/// Waits by yielding to loom until the wake word moves. A lost wake-up would spin forever,
/// which loom reports.
struct YieldingHost;

impl WaitHost for YieldingHost {
    fn wait(&mut self, word: &AtomicU64, seen: u64) -> Waited {
        while word.load(Ordering::SeqCst) as u32 == seen as u32 {
            loom::thread::yield_now();
        }
        Waited::Woken
    }
}

/// The heap is full; a waiter blocks in `alloc_blocking` while another participant frees. The
/// waiter must always get the space: either its retry sees the free, or the free sees it
/// waiting and bumps the wake word.
#[test]
fn a_free_always_wakes_or_is_seen_by_a_blocked_allocator() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let memory = Arc::new(LoomRegion::new(SMALLEST_HEAP));
        let heap = Heap::create(memory.region(), PAGE_SHIFT).expect("fits");
        let all = heap.alloc(heap.geometry().data_bytes(), AllocOptions::default()).expect("whole area");
        let waiter = {
            let memory = memory.clone();
            loom::thread::spawn(move || {
                let heap = Heap::open(memory.region()).expect("valid");
                heap.alloc_blocking(64, AllocOptions::default(), &mut YieldingHost).expect("woken")
            })
        };
        let _ = heap.free(all.id).expect("live");
        let got = waiter.join().expect("no panic");
        assert_eq!(heap.waiters(), 0);
        let _ = heap.free(got.id).expect("live");
    });
}
