//! Loom models of id publication: what another participant sees of an allocation whose id was
//! handed to it, while the allocation is freed and its slot reused.
#![cfg(shmpool_loom)]

use alloc_core::primitive::{AtomicU64, Ordering};
use alloc_core::{AllocId, AllocOptions, Error, Owner};
use loom::sync::Arc;
use loom_tests::{attach, create, explore, open, spawn, typed, LoomRegion, ONE_SPAN_HEAP};

/// An id handed from one thread to another: the generation (never 0 for an issued id) is the
/// flag, stored last with Release.
struct Mailbox {
    slot: AtomicU64,
    generation: AtomicU64,
}

impl Mailbox {
    fn new() -> Mailbox {
        Mailbox { slot: AtomicU64::new(0), generation: AtomicU64::new(0) }
    }

    fn post(&self, id: AllocId) {
        self.slot.store(id.slot(), Ordering::Relaxed);
        // ORDERING (test): Release pairs with `take`'s Acquire: the slot is visible with it.
        self.generation.store(id.generation(), Ordering::Release);
    }

    fn take(&self) -> Option<AllocId> {
        let generation = self.generation.load(Ordering::Acquire);
        (generation != 0).then(|| AllocId::new(self.slot.load(Ordering::Relaxed), generation))
    }
}

/// Interleaving: participant A allocates (type 7, 100 bytes) and posts the id; participant B
/// (another process) looks the id up at any point while A frees the allocation and allocates
/// the same slot again with another type, size and generation. B's lookup runs its three reads
/// (state word, extra word, state word again) between any of A's steps.
///
/// Invariant: B sees either the whole first allocation (type, owner and size as A made it) or
/// `NotAllocated`, never the second allocation's type or size under the first id; afterwards
/// the first id is `NotAllocated`, the reused slot has a new id, and `check` passes.
#[test]
fn a_published_id_is_seen_whole_or_not_at_all_while_its_slot_is_reused() {
    // ~1500 atomic steps per execution (`check` walks the records and every block).
    explore(20_000, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (writer_owner, mut writer) = attach(&heap, 1);
        let (_, mut reader) = attach(&heap, 2);
        let mailbox = Arc::new(Mailbox::new());
        let looker = {
            let (memory, mailbox) = (memory.clone(), mailbox.clone());
            spawn(move || {
                let heap = open(&memory);
                let id = mailbox.take()?;
                Some((id, heap.lookup(&mut reader, id)))
            })
        };
        let writing = {
            let (memory, mailbox) = (memory.clone(), mailbox.clone());
            spawn(move || {
                let heap = open(&memory);
                let first = heap.alloc(&mut writer, 100, typed(7)).expect("an empty heap has room");
                mailbox.post(first.id());
                let _ = heap.free(&mut writer, first.id()).expect("the first allocation is live");
                let second = heap
                    .alloc(&mut writer, 104, AllocOptions { owner: Some(Owner::POOL), ..typed(9) })
                    .expect("the freed block is free again");
                (writer, first, second)
            })
        };
        let (mut writer, first, second) = writing.join().expect("the writer does not panic");
        if let Some((id, seen)) = looker.join().expect("the reader does not panic") {
            assert_eq!(id, first.id(), "the reader took the posted id");
            match seen {
                Ok(found) => {
                    assert_eq!(
                        (found.alloc_type, found.owner, found.size, found.offset),
                        (7, writer_owner, 100, first.offset),
                        "a lookup of the first id described something else"
                    );
                }
                Err(error) => assert_eq!(
                    error,
                    Error::NotAllocated { id: first.id().to_u128() },
                    "a lookup of a freed id must say NotAllocated"
                ),
            }
        }
        assert_eq!(second.offset, first.offset, "the model reuses the slot");
        assert_ne!(second.id(), first.id(), "a reused slot gets a new id");
        assert_eq!(
            heap.lookup(&mut writer, first.id()),
            Err(Error::NotAllocated { id: first.id().to_u128() }),
            "the freed id must never be found live again"
        );
        let found = heap.lookup(&mut writer, second.id()).expect("the second allocation is live");
        assert_eq!((found.alloc_type, found.owner, found.size), (9, Owner::POOL, 104));
        let stats = heap.check(&mut writer).expect("every invariant holds at the end");
        assert_eq!(stats.live_allocations, 1);
    });
}

/// Interleaving: participant A allocates, posts the id and frees it, then allocates again (the
/// slot's next generation); participant B takes the posted id and frees it twice (a double
/// free by a stale id). B's frees may come before A's free, between it and the reuse, or after
/// the reuse.
///
/// Invariant: of the three frees of the first id exactly one succeeds; the stale id never frees
/// the slot's next allocation (it is live at the end, with the size A asked for); the first id
/// is `NotAllocated`; every allocation is accounted for and `check` passes.
#[test]
fn a_stale_id_racing_free_and_reuse_never_frees_the_next_allocation() {
    // ~1500 atomic steps per execution (`check` walks the records and every block).
    explore(20_000, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (_, mut writer) = attach(&heap, 1);
        let (_, mut stale) = attach(&heap, 2);
        let mailbox = Arc::new(Mailbox::new());
        let double_freeing = {
            let (memory, mailbox) = (memory.clone(), mailbox.clone());
            spawn(move || {
                let heap = open(&memory);
                let Some(id) = mailbox.take() else { return 0 };
                let frees = [heap.free(&mut stale, id), heap.free(&mut stale, id)];
                frees.iter().filter(|outcome| outcome.is_ok()).count()
            })
        };
        let writing = {
            let (memory, mailbox) = (memory.clone(), mailbox.clone());
            spawn(move || {
                let heap = open(&memory);
                let first = heap.alloc(&mut writer, 100, typed(7)).expect("an empty heap has room");
                mailbox.post(first.id());
                let freed = heap.free(&mut writer, first.id()).is_ok();
                let second = heap.alloc(&mut writer, 104, typed(9)).expect("the heap has room");
                (writer, first, freed, second)
            })
        };
        let (mut writer, first, writer_freed, second) = writing.join().expect("the writer does not panic");
        let stale_frees = double_freeing.join().expect("the stale freer does not panic");
        assert_eq!(
            stale_frees + writer_freed as usize,
            1,
            "the first id was freed {} times",
            stale_frees + writer_freed as usize
        );
        let found =
            heap.lookup(&mut writer, second.id()).expect("a stale id freed the slot's next allocation");
        assert_eq!((found.size, found.alloc_type), (104, 9));
        assert_eq!(
            heap.lookup(&mut writer, first.id()),
            Err(Error::NotAllocated { id: first.id().to_u128() })
        );
        let stats = heap.check(&mut writer).expect("every invariant holds at the end");
        assert_eq!(stats.live_allocations, 1, "an allocation is not accounted for");
    });
}

/// Interleaving: participant A owns a live allocation and hands it to the pool (`set_owner`:
/// one compare-exchange of the state word) while participant B, which was given the id, looks
/// it up (state word, extra word, fence, state word again).
///
/// Invariant: the allocation is live throughout, so the lookup succeeds and shows the old owner
/// or the new one. The schedule that found the defect: B reads the state word (owner 1) and the
/// extra word; A's compare-exchange makes the owner the pool; B's re-read differed from its
/// first read and `lookup` returned `NotAllocated` for a live id (a compare of the whole word
/// read treated any change as the allocation's end).
#[test]
fn a_lookup_racing_set_owner_of_a_live_allocation_finds_it() {
    // ~1000 atomic steps per execution.
    explore(20_000, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = create(&memory);
        let (owner, mut giver) = attach(&heap, 1);
        let (_, mut reader) = attach(&heap, 2);
        let given = heap.alloc(&mut giver, 100, typed(7)).expect("an empty heap has room");
        let looking = {
            let memory = memory.clone();
            spawn(move || open(&memory).lookup(&mut reader, given.id()))
        };
        let handing = {
            let memory = memory.clone();
            spawn(move || open(&memory).set_owner(&mut giver, given.id(), Owner::POOL))
        };
        assert_eq!(handing.join().expect("no panic"), Ok(()), "set_owner of a live allocation");
        let found = looking.join().expect("no panic").expect("a live allocation was reported not allocated");
        assert!([owner, Owner::POOL].contains(&found.owner), "the lookup showed owner {:?}", found.owner);
        assert_eq!((found.size, found.alloc_type), (100, 7));
    });
}
