//! The pool-wide budget (`alloc_core::budget`): what allocations are charged, what a limit
//! admits and refuses, realloc under it, frees and early give-backs waking waiters, and what
//! reclaim gives back after a participant stopped for good at each of the budget's steps (the
//! budget may end up looser, never tighter, than its live allocations). `check()` runs after
//! every step.

mod common;

use std::time::{Duration, Instant};

use alloc_core::layout::DEFAULT_PAGE_SHIFT;
use alloc_core::primitive::AtomicU64;
use alloc_core::{AllocOptions, Allocation, Budget, Error, Heap, Platform, WaitHost, Waited, Wake};
use common::{stopped_at, Participant, TestMemory};

const HEAP_BYTES: usize = 8 << 20;
const LIMIT: u64 = 1 << 20;
const DOOMED: u32 = 666;
const BYSTANDER: u32 = 2;

fn budgeted(memory: &TestMemory, limit: u64, max_allocations: u64) -> Heap<'_> {
    let budget = Budget { limit, max_allocations };
    Heap::create_with_budget(memory.region(), DEFAULT_PAGE_SHIFT, Platform::SYMMETRIC, Some(budget))
        .expect("a valid budget in a large enough region")
}

fn alloc(p: &mut Participant<'_, '_>, size: u64) -> Result<Allocation, Error> {
    let made = p.alloc(size, AllocOptions::default());
    p.check().expect("consistent after an allocation");
    made
}

fn free(p: &mut Participant<'_, '_>, allocation: &Allocation) {
    let _wake = p.free(allocation.id()).expect("live");
    p.check().expect("consistent after a free");
}

fn used(p: &Participant<'_, '_>) -> u64 {
    p.heap.budget_used().bytes
}

/// What the live allocations are charged: sizes rounded up to powers of two, from 1, at most
/// the limit.
fn charged(p: &mut Participant<'_, '_>) -> u64 {
    let limit = p.heap.budget().expect("budgeted").limit;
    p.live().iter().map(|a| a.size.max(1).next_power_of_two().min(limit)).sum()
}

/// The powers of two adding up to `size` (its set bits).
fn power_of_two_parts(size: u64) -> Vec<u64> {
    (0..64).rev().map(|bit| 1u64 << bit).filter(|part| size & part != 0).collect()
}

#[test]
fn allocations_are_charged_their_size_rounded_up_to_a_power_of_two_from_one_byte() {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, LIMIT, 0);
    let mut p = Participant::new(&heap, 1);
    let mut expected = 0;
    for (size, charge) in [(0, 1), (1, 1), (3, 4), (16, 16), (17, 32), (1000, 1024), (4097, 8192)] {
        alloc(&mut p, size).expect("within the budget");
        expected += charge;
        assert_eq!(used(&p), expected, "after an allocation of {size} bytes");
    }
    assert_eq!(charged(&mut p), expected);
    assert_eq!(heap.budget_used().allocations, 0, "no count without a count limit");
}

#[test]
fn a_limit_holds_one_allocation_of_its_size_and_nothing_beside_it() {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, 40_000, 0);
    let mut p = Participant::new(&heap, 1);
    let whole = alloc(&mut p, 40_000).expect("the whole limit");
    assert_eq!(used(&p), 40_000, "a charge stops at the limit");
    for size in [0, 1] {
        assert!(matches!(alloc(&mut p, size), Err(Error::OutOfMemory { .. })), "{size} bytes beside it");
    }
    assert_eq!(used(&p), 40_000, "a refusal takes nothing");
    assert!(matches!(alloc(&mut p, 40_001), Err(Error::TooLarge { requested: 40_001, capacity: 40_000 })));
    free(&mut p, &whole);
    assert_eq!(used(&p), 0);
}

#[test]
fn power_of_two_allocations_adding_up_to_a_limit_that_is_no_power_of_two_fit() {
    let memory = TestMemory::new(HEAP_BYTES);
    let limit = 300_007;
    let heap = budgeted(&memory, limit, 0);
    let mut p = Participant::new(&heap, 1);
    let mut sizes = power_of_two_parts(limit - 8);
    sizes.extend([1; 8]);
    let held: Vec<Allocation> = sizes.iter().map(|&size| alloc(&mut p, size).expect("fits")).collect();
    assert_eq!(used(&p), limit);
    assert!(matches!(alloc(&mut p, 0), Err(Error::OutOfMemory { .. })));
    for allocation in &held {
        free(&mut p, allocation);
    }
    assert_eq!(used(&p), 0);
    alloc(&mut p, limit).expect("the whole limit again");
}

#[test]
fn a_count_limit_bounds_the_live_allocations() {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, LIMIT, 3);
    let mut p = Participant::new(&heap, 1);
    let held: Vec<Allocation> = (0..3).map(|_| alloc(&mut p, 60).expect("counted in")).collect();
    assert_eq!(heap.budget_used().allocations, 3);
    assert!(matches!(alloc(&mut p, 60), Err(Error::OutOfMemory { .. })));
    free(&mut p, &held[0]);
    assert_eq!(heap.budget_used().allocations, 2);
    alloc(&mut p, 60).expect("room for one again");
}

#[test]
fn realloc_stays_in_place_only_while_the_charge_stays_the_same_and_within_the_limit() {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, 40_000, 0);
    let mut p = Participant::new(&heap, 1);
    let small = alloc(&mut p, 100).expect("fits");
    let same_charge = p.realloc(small.id(), 110).expect("in place (a 112-byte block)");
    p.check().expect("consistent");
    assert_eq!((same_charge.id(), used(&p)), (small.id(), 128));
    let more = p.realloc(small.id(), 129).expect("moved");
    p.check().expect("consistent");
    assert_ne!(more.id(), small.id(), "a larger charge goes through the budget as a move");
    assert_eq!(used(&p), 256);
    free(&mut p, &more);
    // The whole limit in a run of ten pages: growing within the run would pass the limit.
    let whole = alloc(&mut p, 40_000).expect("the whole limit");
    assert!(matches!(p.realloc(whole.id(), 40_500), Err(Error::TooLarge { .. })));
    p.check().expect("consistent");
    assert_eq!((p.lookup(whole.id()).expect("untouched").size, used(&p)), (40_000, 40_000));
}

/// A host that polls the wake word until it changes or a deadline passes.
struct PollingHost {
    deadline: Instant,
}

impl WaitHost for PollingHost {
    fn wait(&mut self, word: &AtomicU64, seen: u64, _registered: bool) -> Waited {
        while word.load(std::sync::atomic::Ordering::SeqCst) as u32 == seen as u32 {
            if Instant::now() >= self.deadline {
                return Waited::TimedOut;
            }
            std::thread::yield_now();
        }
        Waited::Woken
    }
}

/// Holds the whole budget, lets another thread (another process's participant) wait in
/// `alloc_blocking` for half of it, then lets go with `release`: the waiter must be woken and
/// served.
fn a_waiter_is_woken_by(release: impl FnOnce(&mut Participant<'_, '_>, Allocation) -> Wake) {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, LIMIT, 0);
    let mut p = Participant::new(&heap, 1);
    let whole = alloc(&mut p, LIMIT).expect("the whole budget");
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let heap = memory.open();
            let mut other = Participant::new(&heap, 2);
            let mut host = PollingHost { deadline: Instant::now() + Duration::from_secs(20) };
            heap.alloc_blocking(&mut other.session, LIMIT / 2, AllocOptions::default(), &mut host)
        });
        let watchdog = Instant::now() + Duration::from_secs(20);
        while heap.waiters() == 0 {
            assert!(Instant::now() < watchdog, "the waiter never registered");
            std::thread::yield_now();
        }
        assert_eq!(release(&mut p, whole), Wake::Waiters, "the waiter is woken");
        let served = waiter.join().expect("no panic").expect("served once the budget was given back");
        assert_eq!(served.size, LIMIT / 2);
        assert_eq!(used(&p), LIMIT / 2, "only the waiter's charge is left");
    });
    p.check().expect("consistent");
}

#[test]
fn a_free_gives_its_charge_back_and_wakes_a_waiter() {
    a_waiter_is_woken_by(|p, whole| p.free(whole.id()).expect("live"));
}

#[test]
fn an_early_give_back_wakes_a_waiter_and_the_later_free_gives_nothing_back() {
    a_waiter_is_woken_by(|p, whole| {
        let (uncharged, wake) = p.heap.give_back_charge(&mut p.session, whole.id()).expect("live");
        assert_eq!(uncharged.id(), whole.id());
        // Let the waiter in first, then free the memory: the budget keeps the waiter's charge.
        while used(p) != LIMIT / 2 {
            std::thread::yield_now();
        }
        let _wake = p.heap.free_given_back(&mut p.session, uncharged).expect("still live");
        assert_eq!(used(p), LIMIT / 2);
        wake
    });
}

#[test]
fn an_early_give_back_needs_a_live_allocation_and_a_later_free_of_a_stale_one_fails() {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, LIMIT, 0);
    let mut p = Participant::new(&heap, 1);
    let gone = alloc(&mut p, 64).expect("fits");
    free(&mut p, &gone);
    assert!(heap.give_back_charge(&mut p.session, gone.id()).is_err());
    assert_eq!(used(&p), 0);
    // Freed by someone else in between (a double free of the user's making): the later free
    // fails and gives nothing back; the budget is looser by the charge, never tighter.
    let held = alloc(&mut p, 4096).expect("fits");
    let other = alloc(&mut p, 1000).expect("fits");
    let (uncharged, _) = heap.give_back_charge(&mut p.session, held.id()).expect("live");
    p.check().expect("consistent with a charge given back ahead of its free");
    free(&mut p, &held);
    assert!(heap.free_given_back(&mut p.session, uncharged).is_err());
    p.check().expect("consistent");
    assert_eq!(used(&p), 0, "1024 - 4096 - 4096 stops at 0");
    free(&mut p, &other);
}

/// What the doomed participant does, to be stopped at one of the budget's steps.
#[derive(Clone, Copy, Debug)]
enum Op {
    Alloc,
    Free,
    GiveBack,
}

const STEPS: [(&str, Op); 7] = [
    ("budget/alloc-pending", Op::Alloc),
    ("budget/alloc-charged", Op::Alloc),
    ("budget/alloc-made", Op::Alloc),
    ("budget/free-pending", Op::Free),
    ("budget/free-freed", Op::Free),
    ("budget/free-given-back", Op::Free),
    ("budget/charge-given-back", Op::GiveBack),
];

#[test]
fn a_participant_stopped_at_any_budget_step_and_reclaimed_leaves_the_budget_never_too_high() {
    for (step, op) in STEPS {
        for count_limit in [0, 100] {
            let memory = TestMemory::new(HEAP_BYTES);
            let heap = budgeted(&memory, LIMIT, count_limit);
            let mut bystander = Participant::new(&heap, BYSTANDER);
            let mut doomed = Participant::new(&heap, DOOMED);
            for size in [64, 3000, 20_000] {
                alloc(&mut bystander, size).expect("fits");
            }
            let own = alloc(&mut doomed, 5000).expect("fits");
            alloc(&mut doomed, 100).expect("fits");
            // A pool-owned allocation the doomed participant frees: reclaim does not free it.
            let handed = alloc(&mut doomed, 700).expect("fits");
            doomed.set_owner(handed.id(), alloc_core::Owner::POOL).expect("live");
            let target = if step.starts_with("budget/free") && count_limit > 0 { handed } else { own };
            let reached = stopped_at(step, || {
                let _ = match op {
                    Op::Alloc => doomed.alloc(9000, AllocOptions::default()).map(|_| ()),
                    Op::Free => doomed.free(target.id()).map(|_| ()),
                    Op::GiveBack => heap.give_back_charge(&mut doomed.session, own.id()).map(|_| ()),
                };
            });
            assert!(reached, "{step}: the operation reaches the step");
            let reclaimed = bystander.reclaim(&[DOOMED]).expect("reclaim");
            assert!(reclaimed.dead_processes >= 1, "{step}");
            bystander.check().unwrap_or_else(|error| panic!("{step}: check after reclaim: {error}"));
            let live_charges = charged(&mut bystander);
            let used = heap.budget_used();
            assert!(
                used.bytes <= live_charges,
                "{step}: {} charged, live allocations take {live_charges}",
                used.bytes
            );
            if count_limit > 0 {
                assert!(used.allocations <= bystander.live().len() as u64, "{step}: count too high");
            }
            // Nothing was lost for good: the rest of the budget is there to take.
            let rest: Vec<Allocation> = power_of_two_parts(LIMIT - live_charges)
                .into_iter()
                .map(|part| alloc(&mut bystander, part).expect("the rest of the budget"))
                .collect();
            for allocation in &rest {
                free(&mut bystander, allocation);
            }
        }
    }
}

/// A participant stopped for good after its allocation failed in the heap and gave its charge
/// back, before it updated the record of what refused allocations lack (and woke anyone):
/// reclaim gives its pending charge back once more (the budget only looser) and wakes.
#[test]
fn a_participant_stopped_after_a_failed_allocation_gave_its_charge_back_is_reclaimed() {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, LIMIT, 0);
    let mut f = Participant::new(&heap, 1);
    let mut doomed = Participant::new(&heap, DOOMED);
    let live = alloc(&mut f, 64 << 10).expect("room");
    for size in [64 << 10, 4 << 10, 64] {
        while let Ok(a) = f.alloc(size, AllocOptions::default()) {
            let _ = heap.give_back_charge(&mut f.session, a.id()).expect("live");
        }
    }
    let reached = stopped_at("budget/failure-given-back", || {
        let _ = doomed.alloc(64, AllocOptions::default());
    });
    assert!(reached, "the allocation failed in the heap after its charge was taken");
    assert_eq!(used(&f), 64 << 10, "its charge was given back");
    let reclaimed = f.reclaim(&[DOOMED]).expect("reclaim");
    assert!(reclaimed.dead_processes >= 1);
    f.check().expect("consistent after reclaim");
    assert!(used(&f) <= 64 << 10, "never more than the live charges");
    free(&mut f, &live);
}

#[test]
fn a_budgeted_heap_keeps_no_runs_in_caches_so_freed_runs_are_first_fit_again() {
    // A run held in a cache stays where it was and splits the free space; a budgeted heap's
    // data area is only a little larger than its limit, so it must not.
    for budget in [None, Some(Budget { limit: LIMIT, max_allocations: 0 })] {
        let memory = TestMemory::new(HEAP_BYTES);
        let heap = Heap::create_with_budget(memory.region(), DEFAULT_PAGE_SHIFT, Platform::SYMMETRIC, budget)
            .expect("fits");
        let mut p = Participant::new(&heap, 1);
        let mut cache = p.cache();
        let run = heap.alloc_with(&mut cache, 64 << 10, AllocOptions::default()).expect("fits");
        let _wake = heap.free_with(&mut cache, run.id()).expect("live");
        let again = alloc(&mut p, 64 << 10).expect("fits");
        assert_eq!(again.offset == run.offset, budget.is_some(), "budget {budget:?}");
        let _wake = heap.flush(&mut cache).expect("flushed");
        p.check().expect("consistent");
    }
}

/// Counts waits, and those that would not have slept (the wake word had moved already).
struct CountingHost {
    waits: u32,
    moved: u32,
}

impl WaitHost for CountingHost {
    fn wait(&mut self, word: &AtomicU64, seen: u64, registered: bool) -> Waited {
        assert!(registered, "a waiter slot was free");
        self.waits += 1;
        if word.load(std::sync::atomic::Ordering::SeqCst) as u32 != seen as u32 {
            self.moved += 1;
        }
        if self.waits >= 50 {
            Waited::TimedOut
        } else {
            Waited::Woken
        }
    }
}

/// The heap is full but the budget has room (each allocation's charge was given back early): a
/// blocked allocator's every try takes a charge, fails in the heap and gives the charge back.
/// That give-back must not wake it (and every other waiter): nobody was refused meanwhile. At
/// ef1878d every wait found the word moved, a waiter spun at full speed for as long as it waited.
#[test]
fn a_charge_given_back_after_a_failed_allocation_wakes_nobody_that_nothing_refused() {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, LIMIT, 0);
    let mut f = Participant::new(&heap, 1);
    let mut w = Participant::new(&heap, BYSTANDER);
    for size in [64 << 10, 4 << 10, 64] {
        while let Ok(a) = f.alloc(size, AllocOptions::default()) {
            let _ = heap.give_back_charge(&mut f.session, a.id()).expect("live");
        }
    }
    assert_eq!(used(&f), 0, "every charge was given back");
    let before = heap.wake_word().load(std::sync::atomic::Ordering::SeqCst);
    let mut host = CountingHost { waits: 0, moved: 0 };
    let got = heap.alloc_blocking(&mut w.session, 64, AllocOptions::default(), &mut host);
    assert!(matches!(got, Err(Error::TimedOut { .. })), "{got:?}");
    assert_eq!(
        (host.waits, host.moved),
        (50, 0),
        "waits that found the word moved (a futex would not sleep)"
    );
    assert_eq!(heap.wake_word().load(std::sync::atomic::Ordering::SeqCst), before, "nobody was woken");
    assert_eq!(heap.waiters(), 0);
    f.check().expect("consistent");
}

/// Waits for the wake word to move for `patience` at most, counting the times it did.
struct PatientHost {
    patience: Duration,
    woken: u32,
    waiting: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WaitHost for PatientHost {
    fn wait(&mut self, word: &AtomicU64, seen: u64, registered: bool) -> Waited {
        assert!(registered, "a waiter slot was free");
        self.waiting.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + self.patience;
        while word.load(std::sync::atomic::Ordering::SeqCst) as u32 == seen as u32 {
            if Instant::now() > deadline {
                return Waited::TimedOut;
            }
            std::thread::yield_now();
        }
        self.woken += 1;
        Waited::Woken
    }
}

/// A 64 KiB charge is live and the heap is full for small blocks (their charges given back
/// early). B blocks for the whole limit: the live charge alone keeps it out. Then allocations
/// of 64 bytes take their charge, fail in the heap and give it back, again and again: they
/// never kept B out, and must not wake it. At 7ad448a (a flag "someone was refused") each of
/// them woke B, and B, refused again, set the flag again: two blocked allocators woke each
/// other without sleeping (review of 7ad448a).
#[test]
fn charges_given_back_after_failed_allocations_do_not_wake_an_allocator_they_did_not_keep_out() {
    let memory = TestMemory::new(HEAP_BYTES);
    let heap = budgeted(&memory, LIMIT, 0);
    let mut f = Participant::new(&heap, 1);
    let live = alloc(&mut f, 64 << 10).expect("room");
    for size in [64 << 10, 4 << 10, 64] {
        while let Ok(a) = f.alloc(size, AllocOptions::default()) {
            let _ = heap.give_back_charge(&mut f.session, a.id()).expect("live");
        }
    }
    assert_eq!(used(&f), 64 << 10, "only the live allocation is charged");
    let waiting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let woken = std::thread::scope(|scope| {
        let b = scope.spawn(|| {
            let mut b = Participant::new(&heap, 3);
            let patience = Duration::from_millis(300);
            let mut host = PatientHost { patience, woken: 0, waiting: waiting.clone() };
            let got = heap.alloc_blocking(&mut b.session, LIMIT, AllocOptions::default(), &mut host);
            assert!(matches!(got, Err(Error::TimedOut { .. })), "{got:?}");
            host.woken
        });
        while !waiting.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
        for _ in 0..20 {
            assert!(f.alloc(64, AllocOptions::default()).is_err(), "the heap is full for 64 bytes");
        }
        b.join().expect("B does not panic")
    });
    assert_eq!(woken, 0, "B was woken by charges that never kept it out");
    assert_eq!(heap.waiters(), 0);
    free(&mut f, &live);
}
