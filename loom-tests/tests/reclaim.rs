//! Loom models of `reclaim_dead` running online, alongside live participants that touch what
//! the dead process owned or the span it was using.

#![cfg(shmpool_loom)]

use alloc_core::layout::participant;
use alloc_core::primitive::Ordering;
use alloc_core::{AllocOptions, Cache, Error, Owner, ProcessRecord};
use loom::sync::Arc;
use loom_tests::{
    assert_distinct, attach, create, drain_small, explore, open, spawn, LoomRegion, ONE_SPAN_HEAP, SMALL,
    SMALL_BLOCKS,
};

/// The modelled dead process: pid 1.
fn pid_1_is_dead(record: &ProcessRecord) -> bool {
    record.identity.pid == 1
}

/// Interleaving: process 1 allocated a block and died; a participant of live process 2 frees
/// the block through its cache (`free_with`: hazard, locate, compare-exchange Live → Cached)
/// and then allocates through the cache, while a participant of process 3 runs `reclaim_dead`
/// (marks process 1 dead, adopts and frees its participant, walks the span: compare-exchange
/// Live(1) → Free, push) and then allocates from the span. The two compare-exchanges on the
/// block's state word may come in either order, and each side's reads of the word may be stale.
///
/// Invariant: exactly one of them gets the block (the cached free succeeds, or the reclaim
/// reports the allocation, never both and never neither); no two allocations made during or
/// after the race share an offset; every block is accounted for (the span's blocks are all
/// allocated in the end); `check` passes. (v1 handed this block to both: to the cache and, via
/// the reclaimer's free, to the span's list.)
#[test]
fn reclaim_and_a_cached_free_of_a_dead_owners_block_hand_it_to_exactly_one() {
    // One execution makes ~2000 atomic steps (reclaim walks the records, the waiter slots and
    // the span; `check` walks everything): far more than loom's default branch budget.
    explore(20_000, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, mut dead) = attach(&heap, 1);
        let (_, live) = attach(&heap, 2);
        let (_, mut reclaimer) = attach(&heap, 3);
        let block = heap.alloc(&mut dead, SMALL, AllocOptions::default()).expect("an empty heap has room");
        let _ = dead; // process 1 dies between operations: its session is never used again
        let freer = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let mut cache = Box::new(Cache::new(live));
                let freed = heap.free_with(&mut cache, block.id());
                let next = heap.alloc_with(&mut cache, SMALL, AllocOptions::default());
                (cache, freed, next.map(|allocation| allocation.offset))
            })
        };
        let reclaiming = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let mut reported = Vec::new();
                let reclaimed = heap
                    .reclaim_dead(&mut reclaimer, pid_1_is_dead, |id, owner, size| {
                        reported.push((id, owner, size))
                    })
                    .expect("reclaim works alongside a free");
                let mine = heap.alloc(&mut reclaimer, SMALL, AllocOptions::default());
                (reclaimed, reported, mine.map(|allocation| allocation.offset))
            })
        };
        let (mut cache, freed, theirs) = freer.join().expect("the freer does not panic");
        let (reclaimed, reported, mine) = reclaiming.join().expect("the reclaimer does not panic");

        let reclaimed_block = reported.iter().any(|&(id, _, _)| id == block.id());
        match freed {
            Ok(_) => assert!(!reclaimed_block, "the block was freed by its user and reclaimed too"),
            Err(error) => {
                assert_eq!(error, Error::NotAllocated { id: block.id().to_u128() });
                assert!(reclaimed_block, "the free failed but the reclaim did not take the block either");
            }
        }
        assert_eq!(reclaimed.allocations, reclaimed_block as u64);
        if reclaimed_block {
            assert_eq!(
                reported,
                [(block.id(), Owner(1), SMALL)],
                "the reclaim reports the dead owner's block"
            );
        }
        assert_eq!(reclaimed.dead_processes, 1);
        let mut offsets: Vec<u64> = [mine, theirs].into_iter().flatten().collect();
        assert_distinct(&offsets, "the allocations made right after the race");

        heap.check(cache.session()).expect("every invariant holds after the race");
        // Every block comes out exactly once: the cache's, then the span's.
        while let Ok(allocation) = heap.alloc_with(&mut cache, SMALL, AllocOptions::default()) {
            offsets.push(allocation.offset);
        }
        assert_distinct(&offsets, "every allocation of the span");
        assert_eq!(offsets.len() as u64, SMALL_BLOCKS, "a block was lost");
        let stats = heap.check(cache.session()).expect("every invariant holds at the end");
        assert_eq!(stats.live_allocations, SMALL_BLOCKS);
    });
}

/// What the live participant does on the span while the dead one's is healed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Alongside {
    /// Allocates a block: publishes its hazard, pops, marks the block live.
    Allocate,
    /// Frees a block: publishes its hazard, marks the block free, pushes it.
    Free,
}

/// Interleaving: participant D of process 1 published its hazard on the span and popped two
/// blocks off its list, then died before marking them (emulated by hand: the hazard word and
/// `Span::pop_into` are what taking blocks does first). A participant of process 3 runs
/// `reclaim_dead`, which adopts D and heals the span (healer's hazard, heavy fence, scan for
/// other hazards, then per attempt: read the anchor, walk the list, collect the free blocks on
/// no list, re-read the anchor, link them, swing the anchor); meanwhile a participant of live
/// process 2 allocates from the span or frees a block of it (`alongside`).
///
/// Invariant: the two orphaned blocks go back on the list exactly once and no block the live
/// participant holds is taken for an orphan: afterwards (after a second reclaim if the first
/// deferred the heal) `check` passes and allocating the whole span hands out every block that
/// is not live exactly once.
fn heal_alongside(alongside: Alongside) {
    // ~2500 atomic steps per execution (reclaim, heal, two `check`s, draining the span).
    explore(30_000, move || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, dead) = attach(&heap, 1);
        let (_, mut live) = attach(&heap, 2);
        let (_, mut reclaimer) = attach(&heap, 3);
        let first = heap.alloc(&mut live, SMALL, AllocOptions::default()).expect("an empty heap has room");
        let head = 0;
        memory.participant_word(dead.index(), participant::HAZARD).store(head + 1, Ordering::SeqCst);
        let popped = memory.small_span(head).pop_into(&mut [0; 2]).expect("a sound list");
        assert_eq!(popped, 2);
        let _ = dead; // process 1 dies with two blocks in transit

        let working = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let kept = match alongside {
                    Alongside::Allocate => {
                        let next = heap.alloc(&mut live, SMALL, AllocOptions::default());
                        vec![first.offset, next.expect("the span has free blocks").offset]
                    }
                    Alongside::Free => {
                        let _ = heap.free(&mut live, first.id()).expect("the block is live");
                        Vec::new()
                    }
                };
                (live, kept)
            })
        };
        let reclaiming = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let reclaimed = heap.reclaim_dead(&mut reclaimer, pid_1_is_dead, |_, _, _| {});
                (reclaimer, reclaimed)
            })
        };
        let (mut live, mut offsets) = working.join().expect("the live participant does not panic");
        let (mut reclaimer, reclaimed) = reclaiming.join().expect("the reclaimer does not panic");
        let reclaimed = reclaimed.expect("reclaim works alongside an allocation or a free");
        let mut orphans_back = reclaimed.orphan_blocks;
        if reclaimed.deferred > 0 {
            // On a thread of its own only for the stack a heal needs; nothing runs alongside.
            let memory = memory.clone();
            let again = spawn(move || {
                open(&memory)
                    .reclaim_dead(&mut reclaimer, pid_1_is_dead, |_, _, _| {})
                    .expect("a quiet reclaim")
            })
            .join()
            .expect("the reclaimer does not panic");
            assert_eq!(again.deferred, 0, "a reclaim with nobody else around defers nothing");
            orphans_back += again.orphan_blocks;
        }
        assert_eq!(
            orphans_back, 2,
            "the dead participant's two popped blocks must go back, and nothing else"
        );
        heap.check(&mut live).expect("every invariant holds after the heal");
        offsets.extend(drain_small(&heap, &mut live));
        assert_distinct(&offsets, "the span's blocks after the heal");
        assert_eq!(offsets.len() as u64, SMALL_BLOCKS, "a block was lost");
        heap.check(&mut live).expect("every invariant holds at the end");
    });
}

/// See [`heal_alongside`]: a live free. This caught a flaw in a draft of the heal fix (hazard
/// scan after the anchor re-read): the freer stores block 0's link but has not swung the
/// anchor; the healer reads the anchor, collects block 0 (free, on no list) and re-reads the
/// anchor (unchanged); the freer swings the anchor and clears its hazard; the healer's scan sees
/// nobody and its chain compare-exchange relinks block 0, which is now on the list ("free list
/// longer than the free count"). The re-read must follow the scan.
#[test]
fn healing_a_dead_poppers_span_leaves_a_block_a_live_participant_is_freeing() {
    heal_alongside(Alongside::Free);
}

/// See [`heal_alongside`]: a live allocation. Failed on fd705a8 (one hazard scan, before the
/// anchor is read); passes with the scan between reading the anchor and re-reading it. Loom's
/// schedule on fd705a8 (bound 2): the healer publishes its hazard, fences and scans hazards before the
/// allocator publishes its own; the healer's first attempt reads the anchor and walks the list;
/// the allocator publishes its hazard, fences, pops block 3 (anchor compare-exchange) and reads
/// its tag; the healer's swing fails (the anchor moved), its next attempt reads the new anchor,
/// finds block 3 free and on no list, links it with blocks 1 and 2 and swings the anchor (3
/// "orphans"); the allocator then stores block 3 live. Block 3 is live and on the free list: the
/// next pop that walks it reports the span corrupt (and loom, whose modification order lets the
/// healer's link win over the plain store, even hands block 3 out twice). Nothing in a popped
/// block names its popper, so only a scan after the anchor read can see it.
#[test]
fn healing_a_dead_poppers_span_never_relists_a_block_a_live_participant_popped() {
    heal_alongside(Alongside::Allocate);
}
