//! Defects found by the adversarial review of heap v2; each test was seen failing at 141d99e
//! (the messages it printed are quoted) and passes since the fix.

mod common;

use alloc_core::{AllocOptions, Cache, Error, Heap, Owner};
use common::{identity, TestMemory};

/// `Heap::alloc` honours `options.owner` (pool-owned allocations survive their maker's death),
/// but `Heap::alloc_with` (the cached path, `LocalPool::alloc_with` in alloc-shm) hands the block
/// out owned by the caller: the requested owner is ignored, an invalid owner is not refused,
/// and `reclaim_dead` frees a "pool-owned" allocation when its maker dies.
#[test]
fn alloc_with_honours_the_requested_owner() {
    let memory = TestMemory::new(1 << 20);
    let heap: Heap<'_> = memory.create();
    let maker = heap.register_process(identity(10)).expect("room");
    let mut cache = Cache::new(heap.register_participant(maker).expect("room"));
    let pool_owned = AllocOptions { owner: Some(Owner::POOL), ..AllocOptions::default() };

    // Uncached path: owner is the pool.
    let plain = heap.alloc(cache.session(), 64, pool_owned).expect("space");
    assert_eq!(plain.owner, Owner::POOL);

    // Cached path (slow refill, then fast pop).
    let first = heap.alloc_with(&mut cache, 64, pool_owned).expect("space");
    let second = heap.alloc_with(&mut cache, 64, pool_owned).expect("space");
    let seen_first = heap.lookup(cache.session(), first.id()).expect("live").owner;
    let seen_second = heap.lookup(cache.session(), second.id()).expect("live").owner;

    // A bad owner must be refused as `alloc` refuses it.
    let bad = AllocOptions { owner: Some(Owner(3000)), ..AllocOptions::default() };
    assert_eq!(
        heap.alloc(cache.session(), 64, bad).map(|a| a.id()),
        Err(Error::InvalidOwner { owner: 3000 })
    );
    let bad_cached = heap.alloc_with(&mut cache, 64, bad).map(|a| a.owner);

    assert_eq!(seen_first, Owner::POOL, "alloc_with (refill path) ignored the requested owner");
    assert_eq!(seen_second, Owner::POOL, "alloc_with (fast path) ignored the requested owner");
    assert_eq!(bad_cached, Err(Error::InvalidOwner { owner: 3000 }), "alloc_with accepted a bad owner");
}

/// A double free through the cache with the class's cache full: `free_with_slow` gives half the
/// cache back (a shared-heap change: anchor, class list, empty set, a wake) *before* it learns
/// that the id is not live. SPEC: a double free "is detected and leaves the heap unchanged".
#[test]
fn a_double_free_through_a_full_cache_changes_nothing() {
    let memory = TestMemory::new(1 << 20);
    let heap: Heap<'_> = memory.create();
    let maker = heap.register_process(identity(10)).expect("room");
    let mut cache = Cache::new(heap.register_participant(maker).expect("room"));
    let blocks: Vec<_> = (0..alloc_core::CACHE_BLOCKS + 1)
        .map(|_| heap.alloc_with(&mut cache, 64, AllocOptions::default()).expect("space"))
        .collect();
    let (last, rest) = blocks.split_last().expect("some");
    let _ = heap.free_with(&mut cache, last.id()).expect("live");
    for block in rest.iter().take(alloc_core::CACHE_BLOCKS - cache.held()) {
        let _ = heap.free_with(&mut cache, block.id()).expect("live");
    }
    assert_eq!(cache.held(), alloc_core::CACHE_BLOCKS, "the class's cache is full");
    let before = heap.stats(cache.session()).expect("ok");
    // Double free of `last` (now cached).
    assert!(heap.free_with(&mut cache, last.id()).is_err(), "detected");
    let after = heap.stats(cache.session()).expect("ok");
    assert_eq!(cache.held(), alloc_core::CACHE_BLOCKS, "the double free moved cached blocks");
    assert_eq!(before, after, "the double free changed the heap");
}

mod adoption {
    use super::*;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Stopped;

    thread_local! {
        /// 1: stop (panic) at "pop/popped"; 2: pause at "pop/popped".
        static MODE: Cell<u8> = const { Cell::new(0) };
    }
    static PAUSED: AtomicBool = AtomicBool::new(false);
    static RESUME: AtomicBool = AtomicBool::new(false);

    fn hook(name: &'static str) {
        if name != "pop/popped" {
            return;
        }
        match MODE.with(|m| m.replace(0)) {
            1 => std::panic::panic_any(Stopped),
            2 => {
                PAUSED.store(true, Ordering::SeqCst);
                while !RESUME.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            }
            _ => {}
        }
    }

    /// A reclaimer adopts a dead participant (`Dead { adopter: me }`) and defers it (a live
    /// participant has a hazard on the span to heal). The reclaimer's participant is then
    /// released (alloc-shm's `reclaim_quietly` does exactly this) and its index reused by a
    /// live participant. `adopt` re-adopts a `Dead` record only if its adopter is "gone"
    /// (`participant_is_dead`), and a Free or reused-by-a-live-participant adopter is not: the
    /// dead participant is never resolved, its hazard keeps its span, its process record is
    /// never freed, and `check()` never passes again without offline repair.
    #[test]
    fn a_deferred_adoption_outlives_its_adopters_session() {
        alloc_core::set_hook(hook);
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Stopped>().is_none() {
                default(info);
            }
        }));
        let memory = TestMemory::new(1 << 20);
        let heap: Heap<'_> = memory.create();
        let dead = heap.register_process(identity(666)).expect("room");
        let live = heap.register_process(identity(2)).expect("room");
        let reclaimer = heap.register_process(identity(3)).expect("room");
        let mut d = heap.register_participant(dead).expect("room");
        let mut l = heap.register_participant(live).expect("room");
        // A span with free blocks; the doomed participant stops for good in a pop on it.
        let first = heap.alloc(&mut d, 64, AllocOptions::default()).expect("space");
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            MODE.with(|m| m.set(1));
            heap.alloc(&mut d, 64, AllocOptions::default())
        }));
        assert!(stopped.is_err(), "stopped in its pop");
        let _ = first;

        let heap_ref = &heap;
        std::thread::scope(|scope| {
            // A live participant in the middle of a pop on the same span (hazard held).
            let worker = scope.spawn(move || {
                MODE.with(|m| m.set(2));
                let got = heap_ref.alloc(&mut l, 64, AllocOptions::default()).expect("space");
                (got, l)
            });
            while !PAUSED.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            // A short-lived reclaimer session, as alloc-shm's reclaim_quietly uses.
            let mut r1 = heap.register_participant(reclaimer).expect("room");
            let first_pass =
                heap.reclaim_dead(&mut r1, |record| record.identity.pid == 666, |_, _, _| {}).expect("ok");
            assert_eq!(first_pass.deferred, 1, "the heal waits for the live participant");
            heap.release_participant(r1).expect("same heap");
            // Its index goes to some live participant (any thread registering).
            let _squatter = heap.register_participant(live).expect("room");
            RESUME.store(true, Ordering::SeqCst);
            let (_got, _l) = worker.join().expect("no panic");
        });
        alloc_core::clear_hook();
        // Nothing is in progress any more: a later reclaim must finish the job.
        let mut r2 = heap.register_participant(reclaimer).expect("room");
        let second = heap.reclaim_dead(&mut r2, |record| record.identity.pid == 666, |_, _, _| {});
        let third = heap.reclaim_dead(&mut r2, |record| record.identity.pid == 666, |_, _, _| {});
        let checked = heap.check(&mut r2).map(|_| ());
        assert_eq!(checked, Ok(()), "dead participant never resolved: {second:?} then {third:?}");
    }
}
