//! The run cache (issue 9) under damage, tag boundaries, dying processes, waiters and full pools.
//! From review 12 of eb50b32; each test says whether it was seen failing there.

mod common;

use alloc_core::bitmap::PageBits;
use alloc_core::layout::{page, PageInfo};
use alloc_core::{AllocOptions, Error, Heap};
use common::{fill, head_of, holds, plain, stopped_at, Participant, TestMemory};

const MIB: usize = 1 << 20;
const RUN: u64 = 64 << 10;

/// Marks page `page` claimed (no head bit) in the page bitmap: the damage of a stray write.
fn claim_bit(memory: &TestMemory, heap: &Heap<'_>, page: u64) {
    let word = heap.geometry().bitmap_word + (page / 32) as usize;
    memory.set_word(word, memory.word(word) | PageBits::page_mask(page, true, false));
}

// ----- finding: repair releases a cached run but leaves its state word CACHED ----------------

/// Seen failing at eb50b32. `repair_pages` keeps a cached run only if its extent is intact;
/// otherwise it released the pages (`finish_large_release`) but left the head's state word
/// `CACHED(holder)`. The
/// holder's cache still lists (head, pages); `hand_out_run` only checks that the state word is
/// *some* run cached by *this process* (tag taken from the word itself) and that INFO says
/// `LargeHead { pages }`. Once the same process caches a new run at that head in another of its
/// caches (another thread's `LocalPool`), the stale entry matches it: one run listed by two
/// caches, which the first cache hands out under the second's feet. With the two caches in
/// `hand_out_run` at once, both pass the check and both write EPOCH/GEN before their CAS: the
/// loser's GEN write can land on the winner's allocation (wrong alloc_type; at a 2^36 tag
/// boundary, a gen_high that makes the winner's id invalid: a live run nobody can free).
#[test]
fn repair_of_a_cached_run_with_damaged_bits_leaves_no_cached_state_behind() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let mut first = p.cache(); // thread 1's cache
    let mut second = p.cache(); // thread 2's cache, same process
    let a = heap.alloc_with(&mut first, RUN, plain()).expect("space");
    let head = head_of(&heap, a.offset);
    let pages = RUN >> heap.geometry().page_shift;
    let _ = heap.free_with(&mut first, a.id()).expect("live");
    assert_eq!(first.held(), 1);
    // Damage: the page after the run is claimed without a head bit (bits say one page more).
    claim_bit(&memory, &heap, head + pages);
    let _ = heap.repair(&mut p.session).expect("repairable");
    p.check().expect("consistent after repair");
    let state = memory.word(heap.geometry().page_word(head, page::STATE));
    let info = PageInfo::decode(memory.word(heap.geometry().page_word(head, page::INFO)));
    // The pages went back to the bitmap; the state word still says CACHED by our process.
    assert_eq!(info, Some(PageInfo::Free));
    // The same process (thread 2) gets a run there and caches it.
    let b = heap.alloc(second.session(), RUN, plain()).expect("space");
    assert_eq!(b.offset, a.offset, "the released pages come back first");
    let _ = heap.free_with(&mut second, b.id()).expect("live");
    assert_eq!(second.held(), 1);
    // Thread 1's stale entry takes thread 2's cached run.
    let c = heap.alloc_with(&mut first, RUN, plain()).expect("space");
    assert!(
        c.offset != b.offset,
        "a cache handed out a run it never cached: thread 2's cached run at {:#x} (repair left the \
         released run's state word {state:#x} CACHED, so thread 1's stale entry matched the new one)",
        b.offset
    );
}

// ----- probes of what was found sound (these pass) -------------------------------------------

/// Stale ids from before caching, across a 2^36 tag boundary: the cached run's state keeps the
/// old tag, the hand-out issues epoch + 1 (tag 0, gen_high + 1). Neither the id from before the
/// cache nor one with the new tag and the old high is accepted.
#[test]
fn ids_across_a_tag_boundary_stay_stale_through_the_run_cache() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let mut cache = p.cache();
    let epoch_of = |offset: u64| heap.geometry().page_word(head_of(&heap, offset), page::EPOCH);
    let a0 = heap.alloc_with(&mut cache, RUN, plain()).expect("space");
    let _ = heap.free_with(&mut cache, a0.id()).expect("live");
    // While cached, the run's epoch is ours: move it to just below a tag boundary.
    memory.set_word(epoch_of(a0.offset), (1 << 36) - 2);
    let a = heap.alloc_with(&mut cache, RUN, plain()).expect("space");
    assert_eq!((a.offset, a.id().generation()), (a0.offset, (1 << 36) - 1));
    let _ = heap.free_with(&mut cache, a.id()).expect("live");
    let b = heap.alloc_with(&mut cache, RUN, plain()).expect("space");
    assert_eq!((b.offset, b.id().generation()), (a.offset, 1 << 36), "a new generation past the boundary");
    let na = |id: alloc_core::AllocId| Error::NotAllocated { id: id.to_u128() };
    let slot = a.id().slot();
    for stale in [a0.id(), a.id(), alloc_core::AllocId::new(slot, 0), alloc_core::AllocId::new(slot, 1 << 37)]
    {
        assert_eq!(p.lookup(stale).map(drop), Err(na(stale)));
        assert_eq!(p.free(stale).map(drop), Err(na(stale)));
    }
    assert_eq!(p.lookup(b.id()).map(|x| x.offset), Ok(b.offset));
    let _ = heap.free_with(&mut cache, b.id()).expect("live");
    // Killed between issuing a generation across the next boundary and the compare-exchange:
    // reclaim gives the run back with its epoch at least what was issued.
    let doomed = Participant::new(&heap, 2);
    let mut dcache = doomed.cache();
    let c = heap.alloc_with(&mut dcache, RUN, plain()).expect("space");
    let _ = heap.free_with(&mut dcache, c.id()).expect("live");
    memory.set_word(epoch_of(c.offset), (1 << 37) - 1);
    assert!(stopped_at("run-cache/issued", || {
        let _ = heap.alloc_with(&mut dcache, RUN, plain());
    }));
    let reclaimed = p.reclaim(&[2]).expect("reclaim");
    assert_eq!(reclaimed.pending, 1, "the run being taken back is released: {reclaimed:?}");
    p.check().expect("consistent");
    assert!(memory.word(epoch_of(c.offset)) >= 1 << 37, "the issued generation may be reissued");
    let _ = doomed;
}

/// A run freed through a cache keeps its bytes for the next owner only as far as the user
/// writes them; a run cached by a process that then dies, and the caches of others, never
/// overlap a live allocation (a small random model with reclaim).
#[test]
fn cached_runs_never_overlap_live_allocations_through_reclaim_and_realloc() {
    let memory = TestMemory::new(8 * MIB);
    let heap = memory.create();
    let mut survivor = Participant::new(&heap, 1);
    let mut cache = survivor.cache();
    let mut seed = 0x1234_5678_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut live: Vec<(alloc_core::Allocation, u64)> = Vec::new();
    for round in 0..40u64 {
        let pid = 100 + round as u32;
        let doomed = Participant::new(&heap, pid);
        let mut dcache = doomed.cache();
        let mut mine = Vec::new();
        for _ in 0..12 {
            let size =
                [RUN, RUN - 1, 3 * 4096, 4096, 0, 256 << 10, 9 * 4096, 17 * 4096 + 1][(next() % 8) as usize];
            let align = [16, 4096][(next() % 2) as usize];
            let opts = AllocOptions { align, ..plain() };
            if let Ok(x) = heap.alloc_with(&mut dcache, size, opts) {
                mine.push(x);
            }
            if next() % 3 == 0 {
                if let Some(x) = mine.pop() {
                    let _ = heap.free_with(&mut dcache, x.id()).expect("live");
                }
            }
        }
        // Doomed dies with cached runs and live runs; a survivor uses its own cache meanwhile.
        for _ in 0..8 {
            let size = [RUN, 2 * 4096, 4096 + 1, 11 * 4096 - 1, 9 * 4096][(next() % 5) as usize];
            let x = heap.alloc_with(&mut cache, size, plain()).expect("space");
            fill(&heap, &x, x.offset ^ round);
            live.push((x, x.offset ^ round));
            if live.len() > 24 || next() % 2 == 0 {
                let (y, s) = live.swap_remove((next() % live.len() as u64) as usize);
                assert!(holds(&heap, &y, s), "an allocation's bytes changed");
                if next() % 2 == 0 {
                    let r = survivor.realloc(y.id(), y.capacity).expect("fits");
                    assert_eq!(r.offset, y.offset);
                    let _ = heap.free_with(&mut cache, r.id()).expect("live");
                } else {
                    let _ = heap.free_with(&mut cache, y.id()).expect("live");
                }
            }
        }
        // The dying process's cache is dropped without a flush (as a killed process's).
        let _ = dcache.into_session();
        let _ = survivor.reclaim(&[pid]).expect("reclaim");
        let stats = survivor.check().expect("consistent");
        assert_eq!(stats.live_allocations, live.len() as u64);
        assert_eq!(stats.cached_blocks, heap.still_cached(&cache) as u64);
        for (x, s) in &live {
            assert!(holds(&heap, x, *s), "round {round}: a live allocation's bytes changed");
        }
        let _ = doomed;
    }
    let _ = heap.flush(&mut cache).expect("ours");
    for (x, _) in live {
        let _ = survivor.free(x.id()).expect("live");
    }
    let whole = survivor.alloc(heap.geometry().data_bytes(), plain()).expect("everything is free again");
    let _ = survivor.free(whole.id()).expect("live");
}

/// A free through a cache while someone waits bypasses the cache and says to wake; an
/// allocation that finds no room takes the runs caches hold (here, of the same process), and the
/// cache that held one finds it gone.
#[test]
fn frees_with_waiters_bypass_the_run_cache_and_no_room_takes_cached_runs() {
    use alloc_core::layout::{header, status};
    let memory = TestMemory::new(2 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let mut cache = p.cache();
    let a = heap.alloc_with(&mut cache, RUN, plain()).expect("space");
    let b = heap.alloc_with(&mut cache, RUN, plain()).expect("space");
    let _ = heap.free_with(&mut cache, a.id()).expect("live");
    let status_word = header::STATUS;
    let ready = memory.word(status_word);
    memory.set_word(status_word, ready | 1 << status::WAITER_SHIFT);
    assert_eq!(heap.free_with(&mut cache, b.id()), Ok(alloc_core::Wake::Waiters));
    assert_eq!(cache.held(), 1, "the run freed while someone waits was not cached");
    memory.set_word(status_word, ready);
    // Fill everything: the cached run's pages too, taken from the cache when nothing else is free.
    let mut held = Vec::new();
    while let Ok(x) = heap.alloc(cache.session(), 4096, plain()) {
        held.push(x);
    }
    assert!(
        held.iter().any(|x| x.offset >= a.offset && x.offset < a.offset + RUN),
        "the cached run was taken"
    );
    assert_eq!(cache.held(), 1, "the cache does not know yet");
    let stale = heap.alloc_with(&mut cache, RUN, plain());
    assert!(matches!(stale, Err(Error::OutOfMemory { .. })), "{stale:?}");
    assert_eq!(cache.held(), 0);
    p.check().expect("consistent");
}

// ----- rounded runs (a cache's run sizes) ---------------------------------------------------

/// The info word of the run at `offset`.
fn info_of(memory: &TestMemory, heap: &Heap<'_>, offset: u64) -> Option<PageInfo> {
    PageInfo::decode(memory.word(heap.geometry().page_word(head_of(heap, offset), page::INFO)))
}

/// A request through a cache gets a run of its run size, the pages beyond its capacity spare:
/// its size and capacity are exactly what it asked for (lookups, walks and realloc agree), and
/// the run serves any request of its run size once freed, its spare rewritten each time.
#[test]
fn a_cached_request_is_rounded_to_a_run_size_its_capacity_exact() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let mut cache = p.cache();
    let page = heap.geometry().page_bytes();
    let a = heap.alloc_with(&mut cache, 9 * page - 10, plain()).expect("space");
    assert_eq!((a.size, a.capacity), (9 * page - 10, 9 * page));
    assert_eq!(info_of(&memory, &heap, a.offset), Some(PageInfo::LargeHead { pages: 10, spare: 1 }));
    assert_eq!(p.lookup(a.id()), Ok(a));
    assert_eq!(p.live(), vec![a]);
    let stats = p.check().expect("consistent");
    assert_eq!((stats.claimed_pages, stats.live_bytes), (10, a.size));
    // In place within its capacity only: the spare page is not the allocation's.
    let same = p.realloc(a.id(), 9 * page).expect("fits");
    assert_eq!((same.id(), same.capacity), (a.id(), 9 * page));
    let moved = p.realloc(a.id(), 9 * page + 1).expect("room");
    assert_ne!(moved.offset, a.offset);
    assert_eq!(info_of(&memory, &heap, moved.offset), Some(PageInfo::LargeHead { pages: 10, spare: 0 }));
    let _ = heap.free_with(&mut cache, moved.id()).expect("live");
    // The freed run (ten pages) serves nine pages and a byte, then eight and a byte.
    for (size, spare) in [(9 * page + 1, 0), (8 * page + 1, 1)] {
        let b = heap.alloc_with(&mut cache, size, plain()).expect("space");
        assert_eq!((b.offset, b.size, b.capacity), (moved.offset, size, size.div_ceil(page) * page));
        assert_eq!(info_of(&memory, &heap, b.offset), Some(PageInfo::LargeHead { pages: 10, spare }));
        assert_eq!(p.lookup(b.id()), Ok(b));
        p.check().expect("consistent");
        let _ = heap.free_with(&mut cache, b.id()).expect("live");
    }
    // Not through a cache: an exact run.
    let exact = p.alloc(9 * page, plain()).expect("space");
    assert_eq!(info_of(&memory, &heap, exact.offset), Some(PageInfo::LargeHead { pages: 9, spare: 0 }));
    let _ = p.free(exact.id()).expect("live");
    let _ = heap.flush(&mut cache).expect("ours");
    assert_eq!(p.check().expect("consistent").claimed_pages, 0);
}

/// Rounding never refuses: with no run of the rounded size free, the exact one is taken.
#[test]
fn a_rounded_request_takes_an_exact_run_when_no_rounded_one_is_free() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let page = heap.geometry().page_bytes();
    let mut runs = Vec::new();
    while let Ok(a) = p.alloc(9 * page, plain()) {
        runs.push(a);
    }
    // A hole of nine pages between live runs (the pages after the last are fewer than ten).
    let hole = runs.remove(runs.len() / 2);
    let _ = p.free(hole.id()).expect("live");
    let mut cache = p.cache();
    let a = heap.alloc_with(&mut cache, 9 * page, plain()).expect("the nine pages fit");
    assert_eq!(a.offset, hole.offset);
    assert_eq!(info_of(&memory, &heap, a.offset), Some(PageInfo::LargeHead { pages: 9, spare: 0 }));
    p.check().expect("consistent");
}

/// Under a budget, caches keep no runs, so nothing is rounded: a budgeted data area is only a
/// little larger than its limit.
#[test]
fn a_budgeted_heap_rounds_nothing() {
    use alloc_core::layout::DEFAULT_PAGE_SHIFT;
    use alloc_core::{Budget, Platform};
    let memory = TestMemory::new(4 * MIB);
    let budget = Some(Budget { limit: 1 << 20, max_allocations: 0 });
    let heap = Heap::create_with_budget(memory.region(), DEFAULT_PAGE_SHIFT, Platform::SYMMETRIC, budget)
        .expect("fits");
    let p = Participant::new(&heap, 1);
    let mut cache = p.cache();
    let page = heap.geometry().page_bytes();
    let a = heap.alloc_with(&mut cache, 9 * page, plain()).expect("space");
    assert_eq!(info_of(&memory, &heap, a.offset), Some(PageInfo::LargeHead { pages: 9, spare: 0 }));
    let _ = heap.free_with(&mut cache, a.id()).expect("live");
    assert_eq!(cache.held(), 0);
}

/// A run of ten pages made through a cache for nine (one spare page), its info then damaged
/// to say `spare` spare pages; its allocation, filled.
fn rounded_run_damaged_to(
    memory: &TestMemory,
    p: &mut Participant<'_, '_>,
    spare: u64,
) -> alloc_core::Allocation {
    let heap = p.heap;
    let mut cache = p.cache();
    let page = heap.geometry().page_bytes();
    let a = heap.alloc_with(&mut cache, 9 * page, plain()).expect("space");
    fill(heap, &a, 7);
    let word = heap.geometry().page_word(head_of(heap, a.offset), page::INFO);
    memory.set_word(word, PageInfo::LargeHead { pages: 10, spare }.encode());
    assert!(p.check().is_err(), "the damage is seen");
    a
}

/// A spare as large as its run is damage: check says so, and repair gives the allocation the
/// whole run (its bytes may be anywhere in it).
#[test]
fn check_refuses_a_spare_of_the_whole_run_and_repair_mends_it() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let page = heap.geometry().page_bytes();
    let a = rounded_run_damaged_to(&memory, &mut p, 10);
    assert!(p.lookup(a.id()).is_err(), "a lookup refuses the damaged run");
    let _ = heap.repair(&mut p.session).expect("repairable");
    p.check().expect("consistent after repair");
    let kept = p.lookup(a.id()).expect("kept");
    assert_eq!(kept.offset, a.offset);
    assert_eq!((kept.capacity, kept.size), (10 * page, 10 * page));
    assert!(holds(&heap, &a, 7));
}

/// Seen failing at 9010be6 (review: a subtraction overflow in debug builds, sizes near 2^64 in
/// release ones). The walks that tolerate damage (stats, for_each_allocation, inspect) read a
/// spare of more than the run as none, as repair does.
#[test]
fn the_walks_read_a_spare_beyond_its_run_as_none() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let page = heap.geometry().page_bytes();
    let a = rounded_run_damaged_to(&memory, &mut p, 11);
    let stats = p.stats().expect("a walk that tolerates damage");
    assert_eq!((stats.live_allocations, stats.live_bytes), (1, 10 * page));
    let live = p.live();
    assert_eq!(live.iter().map(|x| (x.offset, x.capacity)).collect::<Vec<_>>(), vec![(a.offset, 10 * page)]);
    let inspected = heap.inspect(|_| {}).expect("inspectable");
    assert_eq!(inspected.live_bytes, 10 * page);
}
