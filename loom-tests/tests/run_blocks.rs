//! Loom model of caches claiming runs in blocks of their own (`pages::fit_in_own_block`): the
//! owner word is a placement hint, taken with a compare-exchange, and the claim itself is the
//! page bitmap's as ever.
#![cfg(shmpool_loom)]

use alloc_core::{AllocOptions, Cache, OWN_BLOCKS_AFTER};
use loom::sync::Arc;
use loom_tests::{attach, create, explore, open, read, spawn, LoomRegion, ONE_SPAN_HEAP};

/// Page-aligned requests are runs (64-byte pages): 100 bytes is a run of two pages.
const RUN: AllocOptions = AllocOptions { align: 64, alloc_type: 3, owner: None };

/// Interleaving: two caches of two processes, each past `OWN_BLOCKS_AFTER` claims, claim a
/// run at once in a heap of one block: each finds page 0 as the lowest fit, takes (or finds
/// taken) the block's owner word, and claims; the loser of the pages goes on to the next fit.
///
/// Invariant: both claims succeed (an owner never makes a claim refuse), on disjoint pages;
/// the block's owner word names one of the two; `check` passes.
#[test]
fn two_caches_taking_one_block_at_once_both_get_disjoint_runs() {
    explore(40_000, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, a) = attach(&heap, 1);
        let (_, b) = attach(&heap, 2);
        let (participant_a, participant_b) = (a.index(), b.index());
        let mut caches = [Box::new(Cache::new(a)), Box::new(Cache::new(b))];
        // Each cache claims often enough to claim in blocks of its own: a claim, a free into
        // the cache, a flush back to the pool, and again.
        for cache in caches.iter_mut() {
            for _ in 0..OWN_BLOCKS_AFTER {
                let run = heap.alloc_with(cache, 100, RUN).expect("an empty heap has room");
                let _ = heap.free_with(cache, run.id()).expect("live");
                let _ = heap.flush(cache).expect("flushed");
            }
        }
        let [first, second] = caches;
        let claim = |mut cache: Box<Cache>| {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_with(&mut cache, 100, RUN);
                (cache, got)
            })
        };
        let (one, two) = (claim(first), claim(second));
        let (mut first, got_first) = one.join().expect("no panic");
        let (_, got_second) = two.join().expect("no panic");
        let (x, y) = (got_first.expect("room for both"), got_second.expect("room for both"));
        assert!(x.offset + x.capacity <= y.offset || y.offset + y.capacity <= x.offset, "{x:?} {y:?}");
        let owner = read(memory.word_at(heap.geometry().block_owner_word(0) as u64 * 8));
        assert!(owner == participant_a + 1 || owner == participant_b + 1, "block owner word {owner}");
        heap.check(first.session()).expect("consistent");
    });
}
