//! A claimer stopped at `claim/unmarked` (after a conflict in the second word of its run: its
//! marker off the head, its summaries not yet refreshed; df00208), and a second claimer of its
//! head. The regression test of df00208, and the crash-point tests of its review.

mod common;

use alloc_core::{AllocOptions, Allocation, Error, Heap};
use common::{fill, holds, stopped_at, Participant, TestMemory};
use std::sync::atomic::{AtomicU64, Ordering};

const PAGE: u64 = 4096;
const POOL: usize = 512 << 20;

fn pages(p: &mut Participant<'_, '_>, count: u64) -> Result<Allocation, Error> {
    p.alloc(count * PAGE, AllocOptions::default())
}

fn page_of(p: &Participant<'_, '_>, a: &Allocation) -> u64 {
    (a.offset - p.heap.geometry().data_offset) / PAGE
}

/// The address of a bitmap word and the bits `hook` sets in it at `claim/marked` (once), as
/// another claimer would in the doomed claimer's way.
static CONFLICT: std::sync::Mutex<Option<(usize, u64)>> = std::sync::Mutex::new(None);
/// The step at which `hook` stops the thread (once).
static STOP_AT: std::sync::Mutex<Option<&'static str>> = std::sync::Mutex::new(None);

fn hook(name: &'static str) {
    if name == "claim/marked" {
        if let Some((word, bits)) = CONFLICT.lock().expect("not poisoned").take() {
            // SAFETY: the address of a bitmap word of the test's region, which outlives the claim.
            let word = unsafe { &*(word as *const AtomicU64) };
            word.fetch_or(bits, Ordering::SeqCst);
        }
    }
    let mut stop = STOP_AT.lock().expect("not poisoned");
    if *stop == Some(name) {
        *stop = None;
        drop(stop);
        std::panic::panic_any("stopped");
    }
}

/// Runs `f` with `hook` set to stop it at `step`; whether it stopped there.
fn stop(step: &'static str, f: impl FnOnce()) -> bool {
    alloc_core::set_hook(hook);
    *STOP_AT.lock().expect("not poisoned") = Some(step);
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
    *STOP_AT.lock().expect("not poisoned") = None;
    alloc_core::clear_hook();
    stopped
}

/// Pages 0..100 free, the rest held by `p`; `doomed` claims 100 pages, loses page 40 (forged,
/// then given back) and stops at `claim/unmarked`. Returns the run that fills the rest.
fn doomed_stopped_unmarked<'h, 'a>(
    memory: &TestMemory,
    heap: &'h Heap<'a>,
    p: &mut Participant<'h, 'a>,
    doomed: &mut Participant<'h, 'a>,
) -> Allocation {
    let n = heap.geometry().num_pages;
    let filler = pages(p, n).expect("room");
    let _ = p.free(filler.id()).expect("live");
    let head = pages(p, 100).expect("room");
    let rest = pages(p, n - 100).expect("room");
    let _ = p.free(head.id()).expect("live");
    let word = heap.geometry().bitmap_word + 1;
    let bits = alloc_core::bitmap::PageBits::page_mask(40, true, true);
    // SAFETY: test-only: the address of a word of the region `memory` holds.
    let address = unsafe { (memory.region().base() as *const u64).add(word) } as usize;
    *CONFLICT.lock().expect("not poisoned") = Some((address, bits));
    assert!(stop("claim/unmarked", || {
        let _ = pages(doomed, 100);
    }));
    // Page 40 stood for another claimer's run: out of the bitmap again.
    // SAFETY: as above.
    let atomic = unsafe { &*(address as *const AtomicU64) };
    atomic.fetch_and(!bits, Ordering::SeqCst);
    rest
}

fn all_allocatable(p: &mut Participant<'_, '_>, heap: &Heap<'_>) {
    let all = p.alloc(heap.geometry().data_bytes(), AllocOptions::default()).expect("everything");
    let _ = p.free(all.id()).expect("live");
    p.check().expect("consistent");
}

/// The head is claimable at once (with the marker taken off after the refresh, a claim
/// meanwhile took the fit one page later: seen failing, page 1), and reclaim leaves the index
/// exact.
#[test]
fn a_claimer_stopped_after_a_conflict_does_not_keep_a_claim_off_the_head() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let _rest = doomed_stopped_unmarked(&memory, &heap, &mut p, &mut doomed);
    common::takes_the_head_then_reclaims(&mut p, 10 * PAGE, 666);
}

/// Two runs of a second claimer from the head on keep their pages and bytes through the stopped
/// one's reclaim.
#[test]
fn second_claimer_of_the_head_keeps_its_run_through_reclaim() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let rest = doomed_stopped_unmarked(&memory, &heap, &mut p, &mut doomed);
    let a = pages(&mut p, 30).expect("room");
    assert_eq!(page_of(&p, &a), 0);
    let b = pages(&mut p, 60).expect("room");
    assert_eq!(page_of(&p, &b), 30);
    fill(&heap, &a, 1);
    fill(&heap, &b, 2);
    p.reclaim(&[666]).expect("reclaim");
    p.check().expect("consistent");
    assert!(heap.run_index_is_exact());
    assert!(holds(&heap, &a, 1) && holds(&heap, &b, 2));
    assert!(pages(&mut p, 11).is_err(), "only 10 pages free");
    let c = pages(&mut p, 10).expect("pages 90..100");
    assert_eq!(page_of(&p, &c), 90);
    for x in [a, b, c, rest] {
        let _ = p.free(x.id()).expect("live");
    }
    all_allocatable(&mut p, &heap);
}

/// A second claimer of the head stopped at each step of its claim: the first one's reclaim
/// releases none of its pages, in either order of the two reclaims.
#[test]
fn second_claimer_of_the_head_stopped_holding_bits_is_not_released_by_the_first_ones_reclaim() {
    for (step, order) in [
        ("claim/claimed", 0),
        ("claim/claimed", 1),
        ("claim/marked", 0),
        ("large/initialised", 0),
        ("large/initialised", 1),
    ] {
        let memory = TestMemory::new(POOL);
        let heap = memory.create();
        let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
        let mut second = Participant::new(&heap, 777);
        let rest = doomed_stopped_unmarked(&memory, &heap, &mut p, &mut doomed);
        assert!(stopped_at(step, || {
            let _ = pages(&mut second, 30);
        }));
        let dead: [&[u32]; 2] = if order == 0 { [&[666], &[777]] } else { [&[777], &[666]] };
        p.reclaim(dead[0]).expect("reclaim");
        if order == 0 && step != "claim/marked" {
            let x = pages(&mut p, 10).expect("room");
            assert_eq!(page_of(&p, &x), 30, "{step}: 0..30 held by the second claimer");
            let _ = p.free(x.id()).expect("live");
        }
        p.reclaim(dead[1]).expect("reclaim");
        p.check().unwrap_or_else(|e| panic!("{step} {order}: {e:?}"));
        assert!(heap.run_index_is_exact(), "{step} {order}");
        let x = pages(&mut p, 100).expect("0..100 free again");
        assert_eq!(page_of(&p, &x), 0);
        let _ = p.free(x.id()).expect("live");
        let _ = p.free(rest.id()).expect("live");
        all_allocatable(&mut p, &heap);
    }
}

/// A second claimer's run from the head survives a repair.
#[test]
fn second_claimer_of_the_head_keeps_its_run_through_repair() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let rest = doomed_stopped_unmarked(&memory, &heap, &mut p, &mut doomed);
    let a = pages(&mut p, 100).expect("room");
    assert_eq!(page_of(&p, &a), 0);
    fill(&heap, &a, 5);
    let repaired = heap.repair(&mut p.session).expect("repairable");
    p.check().unwrap_or_else(|e| panic!("{e:?} after {repaired:?}"));
    assert!(heap.run_index_is_exact());
    assert!(holds(&heap, &a, 5));
    let _ = p.free(a.id()).expect("live");
    let _ = p.free(rest.id()).expect("live");
    all_allocatable(&mut p, &heap);
}

/// The head's run claimed by another, whose release of it stops at `release/unmarked`; then a
/// third claim there; both stopped ones reclaimed together.
#[test]
fn head_reused_then_its_releaser_stopped_unmarked_then_both_reclaimed() {
    let memory = TestMemory::new(POOL);
    let heap = memory.create();
    let (mut p, mut doomed) = (Participant::new(&heap, 2), Participant::new(&heap, 666));
    let mut second = Participant::new(&heap, 777);
    let rest = doomed_stopped_unmarked(&memory, &heap, &mut p, &mut doomed);
    let a = pages(&mut second, 70).expect("room");
    assert_eq!(page_of(&second, &a), 0);
    assert!(stopped_at("release/unmarked", || {
        let _ = second.free(a.id());
    }));
    let b = pages(&mut p, 20).expect("room");
    assert_eq!(page_of(&p, &b), 0);
    fill(&heap, &b, 9);
    p.reclaim(&[666, 777]).expect("reclaim");
    p.check().expect("consistent");
    assert!(heap.run_index_is_exact());
    assert!(holds(&heap, &b, 9));
    let _ = p.free(b.id()).expect("live");
    let _ = p.free(rest.id()).expect("live");
    all_allocatable(&mut p, &heap);
}
