//! Loom models of span retirement: an entirely free span is given back (anchor retiring, page
//! info flagged, heavy fence, hazard scan, epochs, bits released) when a claim of pages fails,
//! while other participants still use ids, blocks and pages of it.
#![cfg(shmpool_loom)]

use alloc_core::{AllocOptions, Error};
use loom::sync::Arc;
use loom_tests::{
    attach, create, explore, open, read, spawn, LoomRegion, ONE_SPAN_HEAP, SMALL, SMALL_BLOCKS, TWO_SPAN_HEAP,
};

/// Interleaving: a block was allocated and freed, so the heap's only span is entirely free. A
/// participant frees the block's id again (a stale, double free: hazard on the block's page,
/// fence, page info, state word, compare-exchange) while another allocates a run of the whole
/// data area, which needs the span's pages: its claim fails, it retires the span, claims the
/// pages as a large run and writes, as the run's user, a copy of the block's old live state
/// word exactly where that state word was (the run's first word).
///
/// Invariant: the stale free fails with `NotAllocated` and changes nothing: the run's first
/// word still holds what its user wrote. The large allocation fails only with `OutOfMemory`
/// (the stale free's hazard held the span), and then succeeds once the stale free is over.
/// `check` passes.
#[test]
fn a_stale_free_racing_retirement_and_reuse_as_a_large_run_never_writes_user_memory() {
    // ~2000 atomic steps per execution (a retirement touches every page of the span).
    explore(30_000, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, mut user) = attach(&heap, 1);
        let (_, mut stale) = attach(&heap, 2);
        let data_bytes = heap.geometry().data_bytes();
        let block = heap.alloc(&mut user, SMALL, AllocOptions::default()).expect("an empty heap has room");
        let span_start = heap.geometry().data_offset;
        let old_state = read(memory.word_at(span_start));
        let _ = heap.free(&mut user, block.id()).expect("the block is live");

        let freeing = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                heap.free(&mut stale, block.id()).map(|_| ())
            })
        };
        let reusing = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let run = heap.alloc(&mut user, data_bytes, AllocOptions::default());
                if let Ok(run) = &run {
                    assert_eq!(run.offset, span_start, "the run takes the span's pages");
                    // ORDERING (test): Relaxed, as any user write; the join orders it.
                    memory.word_at(run.offset).store(old_state, alloc_core::primitive::Ordering::Relaxed);
                }
                (user, run)
            })
        };
        let stale_free = freeing.join().expect("the stale freer does not panic");
        let (mut user, run) = reusing.join().expect("the reuser does not panic");

        assert_eq!(
            stale_free,
            Err(Error::NotAllocated { id: block.id().to_u128() }),
            "a double free succeeded"
        );
        let run = match run {
            Ok(run) => run,
            Err(error) => {
                assert_eq!(
                    error,
                    Error::OutOfMemory { requested: data_bytes },
                    "the large allocation failed oddly"
                );
                let run = heap.alloc(&mut user, data_bytes, AllocOptions::default());
                let run = run.expect("with the stale free over, the span can be retired");
                memory.word_at(run.offset).store(old_state, alloc_core::primitive::Ordering::Relaxed);
                run
            }
        };
        assert_eq!(
            read(memory.word_at(run.offset)),
            old_state,
            "the stale free wrote into the large run's user memory"
        );
        let found = heap.lookup(&mut user, run.id()).expect("the run is live");
        assert_eq!(found.size, data_bytes);
        assert_eq!(heap.lookup(&mut user, block.id()), Err(Error::NotAllocated { id: block.id().to_u128() }));
        let stats = heap.check(&mut user).expect("every invariant holds at the end");
        assert_eq!((stats.live_allocations, stats.claimed_pages), (1, heap.geometry().num_pages));
    });
}

/// Interleaving: a heap of two spans of one class; the second has a live block and free ones,
/// the first has one live block. One participant frees that block (the first span becomes
/// entirely free and is marked in the empty set) and then allocates a run of half the data
/// area, which only the first span's pages can hold (its claim fails, it looks for an entirely
/// free span and retires it: anchor retiring, page info flagged, heavy fence, hazard scan,
/// pages released, claim again), while another participant allocates a small block, looking at
/// the first span first (hazard, page info, pop; or unlisting it and moving on to the second).
///
/// Invariant: the free succeeds; the small block never lies inside the large run; the small
/// allocation always succeeds (the second span has room); the large one fails only with
/// `OutOfMemory` (the small allocator's hazard or block kept the span), and then succeeds once
/// the small block is freed; the live allocations are exactly the granted ones; `check` passes.
#[test]
fn retirement_racing_a_small_allocation_on_the_span_it_empties_hands_out_no_page_twice() {
    // ~3000 atomic steps per execution (a retirement touches every page of the span). The
    // second span keeps the small allocator off its out-of-memory path (carving, retiring):
    // with it, bound 2 took 150k executions.
    explore(30_000, || {
        let memory = Arc::new(LoomRegion::new(TWO_SPAN_HEAP));
        let heap = create(&memory);
        let (_, mut retirer) = attach(&heap, 1);
        let (_, mut small) = attach(&heap, 2);
        let half = heap.geometry().data_bytes() / 2;
        let first_span: Vec<_> = (0..SMALL_BLOCKS)
            .map(|_| heap.alloc(&mut retirer, SMALL, AllocOptions::default()).expect("room for two spans"))
            .collect();
        let kept = heap.alloc(&mut retirer, SMALL, AllocOptions::default()).expect("a second span");
        assert!(kept.offset >= heap.geometry().page_offset(16), "the ninth block opens the second span");
        for block in &first_span[1..] {
            let _ = heap.free(&mut retirer, block.id()).expect("live");
        }
        let last = first_span[0];

        let retiring = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let freed = heap.free(&mut retirer, last.id()).map(|_| ());
                let run = heap.alloc(&mut retirer, half, AllocOptions::default());
                (retirer, freed, run)
            })
        };
        let allocating = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                heap.alloc(&mut small, SMALL, AllocOptions::default())
            })
        };
        let (mut session, freed, run) = retiring.join().expect("the retirer does not panic");
        let block = allocating.join().expect("the small allocator does not panic");

        assert_eq!(freed, Ok(()), "the free of the live block failed");
        let block = block.expect("the second span has room for a small block");
        let run = match run {
            Ok(run) => {
                let inside = run.offset <= block.offset && block.offset < run.offset + run.capacity;
                assert!(
                    !inside,
                    "the small block {} lies inside the large run at {}",
                    block.offset, run.offset
                );
                let stats = heap.check(&mut session).expect("every invariant holds after the race");
                assert_eq!(stats.live_allocations, 3, "an allocation is not accounted for");
                run
            }
            Err(error) => {
                assert_eq!(
                    error,
                    Error::OutOfMemory { requested: half },
                    "the large allocation failed oddly"
                );
                let stats = heap.check(&mut session).expect("every invariant holds after the race");
                assert_eq!(stats.live_allocations, 2, "an allocation is not accounted for");
                let _ = heap.free(&mut session, block.id()).expect("the small block is live");
                heap.alloc(&mut session, half, AllocOptions::default())
                    .expect("with the small block freed, the first span can go")
            }
        };
        assert_eq!(run.offset, heap.geometry().page_offset(0), "the run takes the first span's pages");
        heap.check(&mut session).expect("every invariant holds at the end");
    });
}
