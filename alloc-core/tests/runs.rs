//! The free-run index inside the heap: participants stopped between changing page bits and
//! refreshing their summaries, reclaim, lost claims, and threads churning runs. Each test was a
//! counter-example found in review (of 20b5b8f) and seen failing there.

mod common;

use alloc_core::layout::{participant, pending};
use alloc_core::{AllocOptions, Allocation, Backing, Error, Heap, Platform};
use common::{stopped_at, Participant, TestMemory};

const PAGE: u64 = 4096;

/// Pools of three index levels, as a 2 GiB pool has (the top level is the first of at most
/// `RunShape::ROOT_WORDS` words): summaries above summaries, which smaller pools do not have.
const POOL: usize = 512 << 20;

fn pages(p: &mut Participant<'_, '_>, count: u64) -> Result<Allocation, Error> {
    p.alloc(count * PAGE, AllocOptions::default())
}

fn page_of(p: &Participant<'_, '_>, a: &Allocation) -> u64 {
    (a.offset - p.heap.geometry().data_offset) / PAGE
}

/// A pool filled with a 1024-page run (4 leaves) at page 0 and two runs after it, the last of
/// `tail` pages; the first run's owner frees it and is stopped between clearing its page bits and
/// refreshing their summaries; a bystander then takes page 1 (page 0 still carries the stopped
/// one's marker); the stopped process is declared dead and reclaimed. Returns the last run.
fn releaser_stopped_then_reclaimed(
    p: &mut Participant<'_, '_>,
    doomed: &mut Participant<'_, '_>,
    tail: u64,
) -> Allocation {
    let n = p.heap.geometry().num_pages;
    let run = pages(doomed, 1024).expect("room");
    assert_eq!(page_of(doomed, &run), 0);
    let _filler = pages(p, n - 1024 - tail).expect("room");
    let last = pages(p, tail).expect("room");
    assert!(pages(p, 1).is_err(), "the pool is full");
    assert!(stopped_at("release/cleared", || {
        let _ = doomed.free(run.id());
    }));
    let taken = pages(p, 1).expect("the released pages are free in the bitmap");
    assert_eq!(page_of(p, &taken), 1, "page 0 carries the stopped releaser's marker");
    p.reclaim(&[666]).expect("reclaim");
    p.check().expect("consistent");
    last
}

/// A releaser stopped after it took its marker off the head and before it refreshed the
/// summaries: the head page is claimable at once (at bdfc54a the marker stayed until after the
/// refresh, and a claim meanwhile took the fit one page later: seen failing, page 1), and
/// reclaim leaves the index exact.
#[test]
fn a_releaser_stopped_before_its_summaries_does_not_keep_a_claim_off_the_head() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let n = heap.geometry().num_pages;
    let run = pages(&mut doomed, 1024).expect("room");
    let _filler = pages(&mut p, n - 1024).expect("room");
    assert!(stopped_at("release/unmarked", || {
        let _ = doomed.free(run.id());
    }));
    common::takes_the_head_then_reclaims(&mut p, 100 * PAGE, 666);
}

#[test]
fn reclaim_of_a_releaser_stopped_before_its_summaries_leaves_the_index_exact() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let _ = releaser_stopped_then_reclaimed(&mut p, &mut doomed, 300);
    // Pages 2..1024 are free and nobody is inside an operation: the summaries of all four
    // leaves of the dead one's run must say so.
    assert!(heap.run_index_is_exact(), "reclaim left the summaries of the dead one's run stale");
}

#[test]
fn no_refusal_while_a_free_run_nobody_holds_lies_behind_a_lost_claim() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let wanted = 300;
    let last = releaser_stopped_then_reclaimed(&mut p, &mut doomed, wanted);
    let _ = p.free(last.id()).expect("live");
    assert!(p.stats().expect("stats").largest_free_run >= 1022 * PAGE, "pages 2..1024 are free");
    // Another participant goes for the last run and is stopped having marked its head, before
    // any bit: that run is in transit.
    let mut stalled = Participant::new(&heap, 3);
    assert!(stopped_at("claim/marked", || {
        let _ = pages(&mut stalled, wanted);
    }));
    let mut asker = Participant::new(&heap, 4);
    let got = pages(&mut asker, wanted);
    assert!(got.is_ok(), "refused with 1022 free pages nobody holds: {got:?}");
    asker.reclaim(&[3]).expect("reclaim");
    asker.check().expect("consistent");
    assert!(heap.run_index_is_exact());
}

/// Summaries above a leaf left as they were before two operations (what a claimer stopped
/// between writing the leaf and the word above it leaves, seen by a searcher): they hide a free
/// run and promise pages a stopped claimer holds. The search loses its claim there, and must not
/// refuse while the hidden run is free.
#[test]
fn summaries_that_hide_a_run_behind_a_lost_claim_do_not_make_the_pool_refuse() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let mut a = Participant::new(&heap, 2);
    let n = heap.geometry().num_pages;
    assert!(n > 2080 && heap.geometry().runs.levels == 3, "{n}");
    let _p0 = pages(&mut a, 1800).expect("room");
    let r = pages(&mut a, 64).expect("room");
    assert_eq!(page_of(&a, &r), 1800);
    let _p1 = pages(&mut a, 136).expect("room");
    let c0 = pages(&mut a, 48).expect("room");
    let p2 = pages(&mut a, 32).expect("room");
    let _p3 = pages(&mut a, n - 2080).expect("room");
    let _ = a.free(c0.id()).expect("live");
    let _ = a.free(p2.id()).expect("live");
    assert!(heap.run_index_is_exact());
    let geo = *heap.geometry();
    let upper = geo.runs_word + geo.runs.offsets[1]..geo.runs_word + geo.runs.total_words();
    let before: Vec<u64> = upper.clone().map(|word| memory.word(word)).collect();
    let mut c = Participant::new(&heap, 3);
    assert!(stopped_at("large/initialised", || {
        let _ = pages(&mut c, 48);
    }));
    let _ = a.free(r.id()).expect("live");
    for (word, value) in upper.zip(before) {
        memory.set_word(word, value);
    }
    assert_eq!(a.stats().expect("stats").largest_free_run, 64 * PAGE, "1800..1864 free; 2000..2048 C's");
    let mut b = Participant::new(&heap, 4);
    let got = pages(&mut b, 64).expect("refused while pages 1800..1864 are free and nobody holds them");
    assert_eq!(page_of(&b, &got), 1800);
}

/// Threads churn runs of odd lengths and small blocks; every round they all stop at a barrier
/// and the index must be exact (a claim lost to another one used to leave its transient bits in
/// a summary about once in ten thousand rounds; run longer with `SHMPOOL_RUNS_ROUNDS`).
#[test]
fn threads_churning_runs_leave_the_index_exact_whenever_they_all_stop() {
    use std::sync::Barrier;
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let threads = 4;
    let rounds: usize = std::env::var("SHMPOOL_RUNS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(300);
    let barrier = Barrier::new(threads + 1);
    let mut stale = 0;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (barrier, heap) = (&barrier, &heap);
            scope.spawn(move || {
                let mut me = Participant::new(heap, 10 + t as u32);
                let mut held: Vec<Allocation> = Vec::new();
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
                for _ in 0..rounds {
                    for _ in 0..200 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if held.len() < 12 {
                            let size =
                                if x.is_multiple_of(3) { 64 + x % 1500 } else { (1 + x % 37) * PAGE - 100 };
                            if let Ok(a) = me.alloc(size, AllocOptions::default()) {
                                held.push(a);
                            }
                        } else {
                            let a = held.swap_remove((x >> 8) as usize % held.len());
                            let _ = me.free(a.id()).expect("live");
                        }
                    }
                    barrier.wait();
                    barrier.wait();
                }
            });
        }
        let mut checker = Participant::new(&heap, 99);
        for _ in 0..rounds {
            barrier.wait();
            if !heap.run_index_is_exact() {
                stale += 1;
            }
            checker.check().expect("consistent");
            barrier.wait();
        }
    });
    assert_eq!(stale, 0, "rounds that all stopped with a stale index");
}

/// The host backs bytes below `context` only (a pool file whose filesystem is full past it).
fn back_below(context: usize, offset: u64, len: u64) -> bool {
    offset + len <= context as u64
}

/// A heap whose host can back the first 1024 data pages (one 4 MiB chunk) and no more.
fn limited(memory: &TestMemory) -> Heap<'_> {
    let geo = alloc_core::layout::Geometry::compute(POOL as u64, 12).expect("fits");
    let limit = geo.data_offset + 1024 * PAGE;
    let back = Some(Backing { context: limit as usize, back: back_below });
    let platform = Platform { backing: back, ..Platform::SYMMETRIC };
    Heap::create(memory.region(), 12, platform).expect("created")
}

/// A releaser stopped between clearing its page bits and refreshing their summaries: with the
/// host unable to back more, the index's answer (pages above the mark) cannot be backed, and the
/// allocation must find the pages through the bitmap instead of refusing (it refused at c75320f).
#[test]
fn stale_summaries_and_a_full_backing_do_not_make_the_pool_refuse() {
    let memory = TestMemory::new(POOL);
    let heap = limited(&memory);
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let _a0 = pages(&mut p, 100).expect("room");
    let r = pages(&mut doomed, 300).expect("room");
    assert_eq!(page_of(&doomed, &r), 100);
    let _a1 = pages(&mut p, 624).expect("room");
    assert!(pages(&mut p, 1).is_err(), "every page that can be backed is used");
    assert!(stopped_at("release/cleared", || {
        let _ = doomed.free(r.id());
    }));
    let mut asker = Participant::new(&heap, 4);
    let got = pages(&mut asker, 200);
    assert!(got.is_ok(), "refused 200 pages with pages 101..400 free in the bitmap: {got:?}");
}

/// The same stopped releaser with a host that can back everything (the pool filled to its end
/// instead): the index answers "none", the bitmap finds page 101.
#[test]
fn a_stopped_releasers_pages_are_found_through_the_bitmap() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let n = heap.geometry().num_pages;
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let _a0 = pages(&mut p, 100).expect("room");
    let r = pages(&mut doomed, 300).expect("room");
    let _a1 = pages(&mut p, n - 400).expect("room");
    assert!(stopped_at("release/cleared", || {
        let _ = doomed.free(r.id());
    }));
    let mut asker = Participant::new(&heap, 4);
    let got = pages(&mut asker, 200).expect("found through the bitmap");
    assert_eq!(page_of(&asker, &got), 101);
}
/// A PENDING word damaged in its high half only (its low half 0) decodes as "none": repair
/// left it and reported success, and check then rejected the pool for good (at c75320f).
#[test]
fn a_pending_word_with_only_high_bits_is_repaired() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let q = Participant::new(&heap, 2);
    let word = geo.participant_field(q.session.index(), participant::PENDING);
    memory.set_word(word, 7 << 32);
    assert_eq!(pending::decode(7 << 32), None);
    let repaired = heap.repair(&mut p.session);
    let checked = p.check();
    assert!(checked.is_ok(), "repair said {repaired:?}, then check said {checked:?}");
}

/// Garbage lengths in a dead participant's PENDING: no panic, no fault, bounded work.
#[test]
fn a_pending_length_of_garbage_is_harmless() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let _a = pages(&mut p, 100).expect("room");
    for (n, value) in
        [pending::encode(5, u32::MAX as u64), u64::MAX, pending::encode(geo.num_pages - 1, 1 << 31)]
            .into_iter()
            .enumerate()
    {
        let q = Participant::new(&heap, 100 + n as u32);
        memory.set_word(geo.participant_field(q.session.index(), participant::PENDING), value);
        let _ = p.reclaim(&[100 + n as u32]);
        assert!(heap.run_index_is_exact());
    }
}

/// The only free run's head is marked by a participant stopped before it set any bit: an
/// allocation of that size must refuse, not go round looking from the start for ever (a claim
/// lost to a stopped marker is no one's progress).
#[test]
fn a_run_held_by_a_stopped_claimer_is_refused_not_waited_for() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let n = heap.geometry().num_pages;
    let mut p = Participant::new(&heap, 2);
    let _a = pages(&mut p, 100).expect("room");
    let hole = pages(&mut p, 50).expect("room");
    let _b = pages(&mut p, n - 150).expect("room");
    let _ = p.free(hole.id()).expect("live");
    let mut stalled = Participant::new(&heap, 3);
    assert!(stopped_at("claim/marked", || {
        let _ = pages(&mut stalled, 50);
    }));
    let started = std::time::Instant::now();
    assert!(matches!(pages(&mut p, 50), Err(Error::OutOfMemory { .. })));
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "it went round for a long time");
    assert!(pages(&mut p, 49).is_ok(), "pages 101..150 are free and nobody holds them");
}
