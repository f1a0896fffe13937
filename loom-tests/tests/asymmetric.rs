//! Loom models of asymmetric pools (what alloc-shm creates where the process-wide barrier
//! exists): hazards are published with a compiler fence only, which orders nothing between
//! threads, so every other ordering must come from the atomics themselves. Built only with
//! `--cfg shmpool_loom_signal_fence` (`scripts/loom` runs it so); no retirement happens in these
//! models, so the process-wide barrier is never needed.
#![cfg(all(shmpool_loom, shmpool_loom_signal_fence))]

use alloc_core::primitive::Ordering;
use alloc_core::{AllocOptions, Cache, Error, Heap, Platform};
use loom::sync::Arc;
use loom_tests::{attach, explore, spawn, LoomRegion, ONE_SPAN_HEAP, PAGE_SHIFT};

/// Page-aligned requests are runs (64-byte pages): 100 bytes is a run of two pages.
const RUN: AllocOptions = AllocOptions { align: 64, alloc_type: 3, owner: None };

fn heavy() -> bool {
    loom::sync::atomic::fence(Ordering::SeqCst);
    true
}

const ASYMMETRIC: Platform = Platform { heavy_fence: Some(heavy), ..Platform::SYMMETRIC };

/// Interleaving: the last user of a run writes into it and frees it into its cache, while
/// another participant, finding no room, takes the cached run and allocates its pages.
/// Review 13 of 041b140, seen failing there (the caching compare-exchange was Acquire only).
///
/// Invariant: a new owner that got the run from another's cache sees the last user's write.
#[test]
fn the_last_users_writes_happen_before_a_participant_taking_the_cached_run_reuses_it() {
    explore(40_000, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = Heap::create(memory.region(), PAGE_SHIFT, ASYMMETRIC).expect("fits");
        let (_, holder) = attach(&heap, 1);
        let (_, mut other) = attach(&heap, 2);
        let mut cache = Box::new(Cache::new(holder));
        let run = heap.alloc_with(&mut cache, 100, RUN).expect("an empty heap has room");
        let data_bytes = heap.geometry().data_bytes();
        let _rest = heap.alloc(&mut other, data_bytes - run.capacity, RUN).expect("the rest");
        let user = {
            let memory = memory.clone();
            spawn(move || {
                let heap = Heap::open(memory.region(), ASYMMETRIC).expect("ready");
                memory.word_at(run.offset).store(7, Ordering::Relaxed);
                let _ = heap.free_with(&mut cache, run.id()).expect("live");
                cache
            })
        };
        let taker = {
            let memory = memory.clone();
            spawn(move || {
                let heap = Heap::open(memory.region(), ASYMMETRIC).expect("ready");
                let got = heap.alloc(&mut other, 100, RUN);
                let seen = got.as_ref().ok().map(|got| memory.word_at(got.offset).load(Ordering::Relaxed));
                (got, seen)
            })
        };
        let _cache = user.join().expect("the user does not panic");
        match taker.join().expect("the taker does not panic") {
            (Ok(got), seen) => {
                assert_eq!(got.offset, run.offset);
                assert_eq!(seen, Some(7), "the new owner's access is not ordered after the last user's");
            }
            (Err(Error::OutOfMemory { .. }), _) => {}
            (Err(other), _) => panic!("{other:?}"),
        }
    });
}
