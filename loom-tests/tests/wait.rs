//! Loom models of `alloc_blocking`'s wait/wake protocol: a waiter registers in a waiter slot
//! (bit in the status word), fences, reads the wake word, retries, and waits; a free makes
//! room, fences, reads the status word, and if anyone waits clears the bits and bumps the wake
//! word.
#![cfg(shmpool_loom)]

use alloc_core::{AllocOptions, Cache, Wake};
use loom::sync::Arc;
use loom_tests::{
    attach, create, explore, open, spawn, LoomRegion, YieldingHost, ONE_SPAN_HEAP, SMALL, SMALL_BLOCKS,
};

/// Branch budget of the wait models: ~2500 steps per execution, and a waiter that is woken late
/// may spin through a few yields first; a lost wake-up exhausts any budget.
const WAIT_BRANCHES: usize = 40_000;

/// Interleaving: the heap is full (one run of the whole data area); a participant blocks in
/// `alloc_blocking` for a small block while another frees the run. The freer's fence and
/// status load may come before or after the waiter's bit, fence and retry.
///
/// Invariant: the waiter always gets its block (its retry sees the room, or the free sees its
/// bit and bumps the wake word); no waiter slot is left taken; `check` passes.
#[test]
fn a_free_always_wakes_or_is_seen_by_a_blocked_allocator() {
    explore(WAIT_BRANCHES, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, mut holder) = attach(&heap, 1);
        let (_, mut waiter) = attach(&heap, 2);
        let all = heap.alloc(&mut holder, heap.geometry().data_bytes(), AllocOptions::default());
        let all = all.expect("an empty heap serves its whole data area");
        let waiting = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_blocking(&mut waiter, SMALL, AllocOptions::default(), &mut YieldingHost);
                got.expect("a blocked allocator gets the freed room")
            })
        };
        let freeing = {
            let memory = memory.clone();
            spawn(move || {
                let _: Wake = open(&memory).free(&mut holder, all.id()).expect("the run is live");
                holder
            })
        };
        let mut holder = freeing.join().expect("the freer does not panic");
        let got = waiting.join().expect("the waiter does not panic");
        assert_eq!(heap.waiters(), 0, "a waiter slot is left taken");
        let _ = heap.free(&mut holder, got.id()).expect("the waiter's block is live");
        heap.check(&mut holder).expect("every invariant holds at the end");
    });
}

/// Interleaving: the heap is full of small blocks; a participant blocks in `alloc_blocking`
/// while another frees one block through its cache (`free_with`: with nobody registered yet
/// the block is cached; with a waiter bit set the free goes to the shared heap and wakes) and
/// then flushes the cache (as it does at detach): the waiter's registration may fall before,
/// between or after those.
///
/// Invariant: the waiter always gets the block; a `free_with` that reported waiters did not keep
/// the block in its cache; no waiter slot is left taken; `check` passes.
#[test]
fn a_cached_free_and_flush_always_wake_or_are_seen_by_a_blocked_allocator() {
    explore(WAIT_BRANCHES, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, mut holder) = attach(&heap, 1);
        let (_, mut waiter) = attach(&heap, 2);
        let blocks: Vec<_> = (0..SMALL_BLOCKS)
            .map(|_| heap.alloc(&mut holder, SMALL, AllocOptions::default()).expect("the span has room"))
            .collect();
        let freed = blocks[3];
        let waiting = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_blocking(&mut waiter, SMALL, AllocOptions::default(), &mut YieldingHost);
                (waiter, got.expect("a blocked allocator gets the freed block"))
            })
        };
        let freeing = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let mut cache = Box::new(Cache::new(holder));
                let wake = heap.free_with(&mut cache, freed.id()).expect("the block is live");
                if wake == Wake::Waiters {
                    assert_eq!(cache.held(), 0, "a free that saw a waiter kept the block in its cache");
                }
                let _ = heap.flush(&mut cache).expect("the cache's own heap");
                cache.into_session()
            })
        };
        let (mut waiter, got) = waiting.join().expect("the waiter does not panic");
        let mut holder = freeing.join().expect("the freer does not panic");
        assert_eq!(got.offset, freed.offset, "the only free block goes to the waiter");
        assert_eq!(heap.waiters(), 0, "a waiter slot is left taken");
        let stats = heap.check(&mut waiter).expect("every invariant holds at the end");
        assert_eq!(stats.live_allocations, SMALL_BLOCKS);
        let _ = heap.free(&mut holder, got.id()).expect("live");
    });
}

/// Interleaving: a participant's cache holds the heap's free blocks; another participant blocks
/// in `alloc_blocking` (nothing in the shared heap) while the first allocates through its cache,
/// then frees both its allocations through the cache and flushes it.
///
/// Invariant: the cached allocation succeeds whatever the waiter does (a waiter bit in the
/// status word must not stop the cache's fast path); the waiter always gets a block, the only
/// live one at the end; no waiter slot is left taken; `check` passes.
#[test]
fn cached_allocation_keeps_working_while_someone_waits() {
    explore(WAIT_BRANCHES, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, holder) = attach(&heap, 1);
        let (_, mut waiter) = attach(&heap, 2);
        let mut cache = Box::new(Cache::new(holder));
        // The refill takes every block of the span: the shared heap has nothing left.
        let first =
            heap.alloc_with(&mut cache, SMALL, AllocOptions::default()).expect("an empty heap has room");
        assert_eq!(cache.held() as u64, SMALL_BLOCKS - 1, "the cache holds the rest of the span");
        let waiting = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_blocking(&mut waiter, SMALL, AllocOptions::default(), &mut YieldingHost);
                (waiter, got.expect("a blocked allocator gets a block once the cache gives them back"))
            })
        };
        let caching = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let second = heap.alloc_with(&mut cache, SMALL, AllocOptions::default());
                let second = second.expect("a cached allocation works while someone waits");
                let _ = heap.free_with(&mut cache, second.id()).expect("live");
                let _ = heap.free_with(&mut cache, first.id()).expect("live");
                let _ = heap.flush(&mut cache).expect("the cache's own heap");
                cache.into_session()
            })
        };
        let (mut waiter, got) = waiting.join().expect("the waiter does not panic");
        let _ = caching.join().expect("the cached allocator does not panic");
        assert_eq!(heap.waiters(), 0, "a waiter slot is left taken");
        let stats = heap.check(&mut waiter).expect("every invariant holds at the end");
        assert_eq!(stats.live_allocations, 1);
        let _ = heap.free(&mut waiter, got.id()).expect("live");
    });
}
