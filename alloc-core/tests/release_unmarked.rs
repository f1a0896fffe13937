//! A releaser stopped after it took its marker off the head and before it refreshed the run
//! index (`release/unmarked`, d9e2d06): whoever claims the head meanwhile keeps it through
//! reclaim and repair (review of d9e2d06).

mod common;

use alloc_core::{Allocation, Error};
use common::{fill, holds, plain, stopped_at, Participant, TestMemory};

const PAGE: u64 = 4096;

fn page_of(p: &Participant<'_, '_>, a: &Allocation) -> u64 {
    (a.offset - p.heap.geometry().data_offset) / PAGE
}

fn pages(p: &mut Participant<'_, '_>, count: u64) -> Result<Allocation, Error> {
    p.alloc(count * PAGE, plain())
}

/// A retirer stopped at `release/unmarked` (its hazard still on the slot); another participant
/// carves a span of another class there, or takes a run, and keeps it live; reclaim heals the
/// slot's new span and leaves the other's allocation, its data and an exact index.
#[test]
fn retirer_stopped_unmarked_then_slot_recarved_then_reclaimed() {
    for large in [false, true] {
        let memory = TestMemory::new(4 << 20);
        let heap = memory.create();
        let mut a = Participant::new(&heap, 666);
        let mut tiny = Vec::new();
        while let Ok(block) = a.alloc(16, plain()) {
            tiny.push(block.id());
        }
        for id in tiny {
            let _ = a.free(id).expect("live");
        }
        assert!(stopped_at("release/unmarked", || {
            let _ = a.alloc(1 << 20, plain());
        }));
        let mut b = Participant::new(&heap, 2);
        let x = if large { b.alloc(3 * PAGE, plain()) } else { b.alloc(2048, plain()) }.expect("room");
        fill(&heap, &x, 7);
        b.reclaim(&[666]).expect("reclaim");
        b.check().expect("consistent");
        assert!(holds(&heap, &x, 7));
        assert_eq!(b.lookup(x.id()).expect("live").offset, x.offset);
        assert!(heap.run_index_is_exact());
        let _ = b.free(x.id()).expect("live");
        b.check().expect("consistent");
        let all = b.alloc(heap.geometry().data_bytes(), plain()).expect("everything");
        let _ = b.free(all.id()).expect("live");
    }
}

/// A large releaser stopped at `release/unmarked`; another participant claims the head; repair
/// keeps the new run and its data, and the rest of the old run is found.
#[test]
fn large_releaser_stopped_unmarked_then_head_claimed_then_repaired() {
    let memory = TestMemory::new(64 << 20);
    let heap = memory.create();
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let n = heap.geometry().num_pages;
    let run = pages(&mut doomed, 600).expect("room");
    assert_eq!(page_of(&doomed, &run), 0);
    let _filler = pages(&mut p, n - 600).expect("room");
    assert!(stopped_at("release/unmarked", || {
        let _ = doomed.free(run.id());
    }));
    let taken = pages(&mut p, 300).expect("room");
    assert_eq!(page_of(&p, &taken), 0);
    fill(&heap, &taken, 3);
    let repaired = heap.repair(&mut p.session).expect("repairable");
    p.check().unwrap_or_else(|error| panic!("{error:?} after {repaired:?}"));
    assert!(heap.run_index_is_exact());
    assert!(holds(&heap, &taken, 3));
    let rest = pages(&mut p, 300).expect("the rest");
    assert_eq!(page_of(&p, &rest), 300);
    assert!(pages(&mut p, 1).is_err());
}

/// A reclaimer that adopted a dead releaser's marker is itself stopped at `release/unmarked`;
/// a claimer takes the head; reclaiming both leaves the claimer's run, its data and an exact
/// index.
#[test]
fn adopting_reclaimer_stopped_unmarked_then_head_claimed_then_reclaimed() {
    let memory = TestMemory::new(64 << 20);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 2);
    let mut doomed = Participant::new(&heap, 666);
    let mut q = Participant::new(&heap, 777);
    let n = heap.geometry().num_pages;
    let run = pages(&mut doomed, 600).expect("room");
    let _filler = pages(&mut p, n - 600).expect("room");
    assert!(stopped_at("release/marked", || {
        let _ = doomed.free(run.id());
    }));
    assert!(stopped_at("release/unmarked", || {
        let _ = q.reclaim(&[666]);
    }));
    let taken = pages(&mut p, 600).expect("room");
    assert_eq!(page_of(&p, &taken), 0);
    fill(&heap, &taken, 5);
    p.reclaim(&[666, 777]).expect("reclaim");
    p.check().expect("consistent");
    assert!(heap.run_index_is_exact());
    assert!(holds(&heap, &taken, 5));
    let _ = p.free(taken.id()).expect("live");
    p.check().expect("consistent");
}
