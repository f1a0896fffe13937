//! Loom models of the one-word changes of a live allocation (owner, size) racing its free and
//! the reuse of its slot.
//!
//! They found that a free racing an owner change or an in-place resize of the same allocation
//! failed with `NotAllocated` although the allocation was live and nobody else freed it (the
//! free's compare-exchange expected the word it read, the other change replaced it, and the
//! failure was reported as a double free); every change of a live allocation now retries while
//! the allocation stays live (`Heap::change_live`).
#![cfg(shmpool_loom)]

use alloc_core::{Error, Owner};
use loom::sync::Arc;
use loom_tests::{attach, create, explore, open, spawn, typed, LoomRegion, ONE_SPAN_HEAP};

/// Interleaving: an allocation of process 1 (100 bytes, type 3) is handed to process 2 by a
/// participant of process 1 (`set_owner`: hazard, read the state word, record the hand-over,
/// compare-exchange the owner, fence, re-check the target) while a participant of process 2
/// frees it and allocates the slot again (104 bytes, type 5). The set_owner's read and its
/// compare-exchange can fall before, between or after the free and the new allocation.
///
/// Invariant: the set_owner is all-or-nothing and never lands on the slot's next allocation,
/// which has the owner, size and type its allocator chose; the old id is `NotAllocated`; no
/// hand-over is left recorded and `check` passes; the free (the only one) succeeds at once.
fn set_owner_racing_a_free() {
    // ~1500 atomic steps per execution (`check` walks the records and every block).
    explore(20_000, move || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, mut giver) = attach(&heap, 1);
        let (receiver, mut freer) = attach(&heap, 2);
        let given = heap.alloc(&mut giver, 100, typed(3)).expect("an empty heap has room");
        let handing = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let outcome = heap.set_owner(&mut giver, given.id(), receiver);
                (giver, outcome)
            })
        };
        let freeing = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let freed = heap.free(&mut freer, given.id()).map(|_| ());
                let next = heap.alloc(&mut freer, 104, typed(5)).expect("the freed block is free again");
                (freed, next)
            })
        };
        let (mut giver, handed) = handing.join().expect("the giver does not panic");
        let (freed, next) = freeing.join().expect("the freer does not panic");

        assert_eq!(freed, Ok(()), "the only free of a live allocation failed");
        match handed {
            Ok(()) => {}
            Err(error) => {
                assert_eq!(error, Error::NotAllocated { id: given.id().to_u128() }, "set_owner failed oddly")
            }
        }
        assert_eq!(next.offset, given.offset, "the model reuses the slot");
        let found = heap.lookup(&mut giver, next.id()).expect("the slot's next allocation is live");
        assert_eq!(
            (found.owner, found.size, found.alloc_type),
            (receiver, 104, 5),
            "the slot's next allocation lost the owner, size or type its allocator chose"
        );
        assert_eq!(
            heap.lookup(&mut giver, given.id()),
            Err(Error::NotAllocated { id: given.id().to_u128() })
        );
        let stats = heap.check(&mut giver).expect("every invariant holds at the end");
        assert_eq!(stats.live_allocations, 1);
    });
}

/// See [`set_owner_racing_a_free`]. The schedule that found the defect: the freer reads the
/// state word (Live, owner 1) under its hazard; the giver's compare-exchange makes it Live,
/// owner 2; the freer's compare-exchange from the word it read failed and `free` returned
/// `NotAllocated`, leaving a live allocation its user believed freed.
#[test]
fn set_owner_racing_a_free_never_lands_on_the_slots_next_allocation() {
    set_owner_racing_a_free();
}

/// Interleaving: a participant resizes an allocation in place (`realloc` to 60 bytes: hazard,
/// read the state word, compare-exchange the slack) while another participant frees it and
/// allocates the slot again (104 bytes).
///
/// Invariant: the resize is all-or-nothing (it returns the same id with the new size, or
/// `NotAllocated`) and never lands on the slot's next allocation, whose size stays 104; the
/// free (the only one) succeeds at once; `check` passes.
fn realloc_racing_a_free() {
    // ~1500 atomic steps per execution (`check` walks the records and every block).
    explore(20_000, move || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, mut resizer) = attach(&heap, 1);
        let (freer_owner, mut freer) = attach(&heap, 2);
        let original = heap.alloc(&mut resizer, 100, typed(3)).expect("an empty heap has room");
        let resizing = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let outcome = heap.realloc(&mut resizer, original.id(), 60);
                (resizer, outcome)
            })
        };
        let freeing = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let freed = heap.free(&mut freer, original.id()).map(|_| ());
                let next = heap.alloc(&mut freer, 104, typed(5)).expect("the freed block is free again");
                (freed, next)
            })
        };
        let (mut resizer, resized) = resizing.join().expect("the resizer does not panic");
        let (freed, next) = freeing.join().expect("the freer does not panic");

        assert_eq!(freed, Ok(()), "the only free of a live allocation failed");
        match resized {
            Ok(resized) => assert_eq!(
                (resized.id(), resized.offset, resized.size, resized.alloc_type),
                (original.id(), original.offset, 60, 3),
                "a resize that fits must happen in place, keeping the id"
            ),
            Err(error) => {
                assert_eq!(error, Error::NotAllocated { id: original.id().to_u128() }, "realloc failed oddly")
            }
        }
        assert_eq!(next.offset, original.offset, "the model reuses the slot");
        let found = heap.lookup(&mut resizer, next.id()).expect("the slot's next allocation is live");
        assert_eq!(
            (found.size, found.owner, found.alloc_type),
            (104, freer_owner, 5),
            "a stale resize changed the slot's next allocation"
        );
        assert_ne!(freer_owner, Owner::POOL);
        heap.check(&mut resizer).expect("every invariant holds at the end");
    });
}

/// See [`realloc_racing_a_free`]. The schedule that found the defect: the freer reads the
/// state word (Live, slack 12) under its hazard; the resizer's compare-exchange makes the
/// slack 52; the freer's compare-exchange from the word it read failed and `free` returned
/// `NotAllocated`.
#[test]
fn realloc_in_place_racing_a_free_never_resizes_the_slots_next_allocation() {
    realloc_racing_a_free();
}
