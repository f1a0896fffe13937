//! Loom models of the pool-wide budget (`alloc_core::budget`): one word of charges changed by
//! compare-exchange, a pending record per participant, and the waiters an allocation the budget
//! refused registers (the same wait/wake protocol as room in the heap: see `wait.rs`).
#![cfg(shmpool_loom)]

use alloc_core::primitive::{AtomicU64, Ordering};
use alloc_core::{AllocOptions, Budget, Heap, Platform, WaitHost, Waited, Wake};
use loom::sync::Arc;
use loom_tests::{attach, explore, spawn, LoomRegion, ONE_SPAN_HEAP, PAGE_SHIFT, TWO_SPAN_HEAP};

/// The limit of every modelled budget: one 64-byte allocation (a small block: the heap has
/// room for many, so only the budget can refuse).
const LIMIT: u64 = 64;

fn budgeted(memory: &LoomRegion) -> Heap<'_> {
    budgeted_to(memory, LIMIT)
}

fn budgeted_to(memory: &LoomRegion, limit: u64) -> Heap<'_> {
    let budget = Budget { limit, max_allocations: 0 };
    Heap::create_with_budget(memory.region(), PAGE_SHIFT, Platform::SYMMETRIC, Some(budget))
        .expect("region fits a budgeted heap")
}

fn open(memory: &LoomRegion) -> Heap<'_> {
    Heap::open(memory.region(), Platform::SYMMETRIC).expect("a ready heap")
}

/// Waits by yielding to loom until the wake word moves, as in `wait.rs`: a lost wake-up spins
/// until the execution runs out of branches.
struct YieldingHost;

impl WaitHost for YieldingHost {
    fn wait(&mut self, word: &AtomicU64, seen: u64, registered: bool) -> Waited {
        if !registered {
            loom::thread::yield_now();
            return Waited::Woken;
        }
        while word.load(Ordering::SeqCst) as u32 == seen as u32 {
            loom::thread::yield_now();
        }
        Waited::Woken
    }
}

const BRANCHES: usize = 40_000;

/// Interleaving: two participants ask for the whole limit at once; each charge is a
/// compare-exchange loop on the one word, the other's charge may land between its read and its
/// exchange.
///
/// Invariant: exactly one gets its allocation, the other `OutOfMemory`; the budget charges
/// exactly the live allocation, and nothing once it is freed; `check` passes.
#[test]
fn two_charges_for_the_whole_limit_make_exactly_one_allocation() {
    explore(BRANCHES, || {
        let memory = Arc::new(LoomRegion::new(TWO_SPAN_HEAP));
        let heap = budgeted(&memory);
        let (_, mut checker) = attach(&heap, 9);
        let racers: Vec<_> = (1..=2)
            .map(|pid| {
                let memory = memory.clone();
                spawn(move || {
                    let heap = open(&memory);
                    let (_, mut me) = attach(&heap, pid);
                    let got = heap.alloc(&mut me, LIMIT, AllocOptions::default());
                    (me, got)
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|racer| racer.join().expect("no panic")).collect();
        let made: Vec<_> = results.iter().filter(|(_, got)| got.is_ok()).collect();
        assert_eq!(made.len(), 1, "both or neither fitted a limit of one: {results:?}");
        assert!(results.iter().any(|(_, got)| matches!(got, Err(alloc_core::Error::OutOfMemory { .. }))));
        assert_eq!(heap.budget_used().bytes, LIMIT);
        heap.check(&mut checker).expect("every invariant holds with one allocation live");
        for (mut me, got) in results {
            if let Ok(allocation) = got {
                let _: Wake = heap.free(&mut me, allocation.id()).expect("live");
            }
        }
        assert_eq!(heap.budget_used().bytes, 0);
        heap.check(&mut checker).expect("every invariant holds at the end");
    });
}

/// Interleaving: the budget is spent by one live allocation; a participant blocks in
/// `alloc_blocking` (the budget refuses it) while another frees that allocation and gives its
/// charge back. The give-back and its look for waiters may come before or after the waiter's
/// registration, fence and retry.
///
/// Invariant: the waiter always gets its allocation (its retry sees the charge given back, or
/// the give-back sees its waiter bit and wakes it); no waiter slot is left taken; the budget
/// charges exactly the waiter's allocation; `check` passes.
#[test]
fn a_charge_given_back_always_wakes_or_is_seen_by_an_allocator_the_budget_refused() {
    explore(BRANCHES, || {
        let memory = Arc::new(LoomRegion::new(TWO_SPAN_HEAP));
        let heap = budgeted(&memory);
        let (_, mut holder) = attach(&heap, 1);
        let (_, mut waiter) = attach(&heap, 2);
        let all = heap.alloc(&mut holder, LIMIT, AllocOptions::default()).expect("an empty budget");
        let waiting = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_blocking(&mut waiter, LIMIT, AllocOptions::default(), &mut YieldingHost);
                (waiter, got.expect("a blocked allocator gets the charge given back"))
            })
        };
        let freeing = {
            let memory = memory.clone();
            spawn(move || {
                let _: Wake = open(&memory).free(&mut holder, all.id()).expect("the allocation is live");
                holder
            })
        };
        let mut holder = freeing.join().expect("the freer does not panic");
        let (mut waiter, got) = waiting.join().expect("the waiter does not panic");
        assert_eq!(heap.waiters(), 0, "a waiter slot is left taken");
        assert_eq!(heap.budget_used().bytes, LIMIT, "the budget charges the waiter's allocation");
        heap.check(&mut holder).expect("every invariant holds with the waiter's allocation live");
        let _ = heap.free(&mut waiter, got.id()).expect("the waiter's allocation is live");
        heap.check(&mut holder).expect("every invariant holds at the end");
    });
}

/// Interleaving: the heap's one span holds blocks of 64 bytes, all taken but one (their charges
/// given back early, so the budget of 128 bytes is empty); a participant asks for 128 bytes: the
/// budget takes its charge (the whole limit), the heap has no room for that size, and the charge
/// goes back. Meanwhile another blocks in `alloc_blocking` for 64 bytes, and the budget may
/// refuse it while the charge is held.
///
/// Invariant: the blocked allocator always gets the last block (a refusal while the charge was
/// held makes the give-back wake it, or its retry sees the charge gone); no waiter slot is left
/// taken; nothing stays charged but its block; `check` passes.
#[test]
fn a_charge_given_back_after_a_failed_allocation_wakes_an_allocator_it_kept_out() {
    explore(BRANCHES, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = budgeted_to(&memory, 128);
        let (_, mut filler) = attach(&heap, 1);
        let (_, mut waiter) = attach(&heap, 2);
        let (_, mut asker) = attach(&heap, 3);
        let mut kept = Vec::new();
        while let Ok(block) = heap.alloc(&mut filler, LIMIT, AllocOptions::default()) {
            let (uncharged, _) = heap.give_back_charge(&mut filler, block.id()).expect("live");
            kept.push(uncharged);
        }
        let last = kept.pop().expect("the span holds blocks of 64 bytes");
        let _ = heap.free_given_back(&mut filler, last).expect("live");
        assert_eq!(heap.budget_used().bytes, 0);
        let waiting = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_blocking(&mut waiter, LIMIT, AllocOptions::default(), &mut YieldingHost);
                (waiter, got.expect("a blocked allocator gets the last block"))
            })
        };
        let asking = {
            let memory = memory.clone();
            spawn(move || {
                let got = open(&memory).alloc(&mut asker, 128, AllocOptions::default());
                assert!(matches!(got, Err(alloc_core::Error::OutOfMemory { .. })), "{got:?}");
                asker
            })
        };
        let _asker = asking.join().expect("the asker does not panic");
        let (mut waiter, got) = waiting.join().expect("the waiter does not panic");
        assert_eq!(heap.waiters(), 0, "a waiter slot is left taken");
        assert_eq!(heap.budget_used().bytes, LIMIT, "the budget charges the waiter's block");
        let _ = heap.free(&mut waiter, got.id()).expect("the waiter's block is live");
        for uncharged in kept {
            let _ = heap.free_given_back(&mut filler, uncharged).expect("live");
        }
        assert_eq!(heap.budget_used().bytes, 0);
        heap.check(&mut filler).expect("every invariant holds at the end");
    });
}

fn budgeted_with(memory: &LoomRegion, limit: u64, max_allocations: u64) -> Heap<'_> {
    let budget = Budget { limit, max_allocations };
    Heap::create_with_budget(memory.region(), PAGE_SHIFT, Platform::SYMMETRIC, Some(budget))
        .expect("region fits a budgeted heap")
}

/// The heap's one span holds blocks of `size` bytes, all live but one (their charges given back
/// early): the participant's tokens for them.
fn all_but_one_block(
    heap: &Heap<'_>,
    filler: &mut alloc_core::Session,
    size: u64,
) -> Vec<alloc_core::Uncharged> {
    let mut kept = Vec::new();
    while let Ok(block) = heap.alloc(filler, size, AllocOptions::default()) {
        let (uncharged, _) = heap.give_back_charge(filler, block.id()).expect("live");
        kept.push(uncharged);
    }
    let last = kept.pop().expect("the span holds blocks");
    let _ = heap.free_given_back(filler, last).expect("live");
    kept
}

/// Interleaving: a limit of 256 bytes; the last block of 256 bytes is free; two participants
/// each ask for 64 bytes, which the heap has no room for: each holds a charge of 64 for a moment.
/// A third blocks in `alloc_blocking` for the 256-byte block: the budget refuses it while either
/// charge is held, on its first try or on its retry after it registered. Only the second
/// give-back of the two lets it in.
///
/// Invariant: the blocked allocator always gets the block (a give-back after its refusal wakes
/// it, or its retry sees the charges gone); no waiter slot is left taken.
#[test]
fn two_failed_allocations_holding_charges_at_once_wake_an_allocator_they_kept_out() {
    explore(BRANCHES, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = budgeted_with(&memory, 256, 0);
        let (_, mut filler) = attach(&heap, 1);
        let (_, mut waiter) = attach(&heap, 2);
        let (_, other) = attach(&heap, 3);
        let kept = all_but_one_block(&heap, &mut filler, 256);
        let waiting = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_blocking(&mut waiter, 256, AllocOptions::default(), &mut YieldingHost);
                (waiter, got.expect("a blocked allocator gets the last block"))
            })
        };
        let askers: Vec<_> = [filler, other]
            .into_iter()
            .map(|mut asker| {
                let memory = memory.clone();
                spawn(move || {
                    let got = open(&memory).alloc(&mut asker, 64, AllocOptions::default());
                    assert!(matches!(got, Err(alloc_core::Error::OutOfMemory { .. })), "{got:?}");
                    asker
                })
            })
            .collect();
        let mut askers: Vec<_> = askers.into_iter().map(|asker| asker.join().expect("no panic")).collect();
        let (mut waiter, got) = waiting.join().expect("the waiter does not panic");
        assert_eq!(heap.waiters(), 0, "a waiter slot is left taken");
        assert_eq!(heap.budget_used().bytes, 256);
        let _ = heap.free(&mut waiter, got.id()).expect("live");
        for uncharged in kept {
            let _ = heap.free_given_back(&mut askers[0], uncharged).expect("live");
        }
        heap.check(&mut askers[0]).expect("every invariant holds at the end");
    });
}

/// Interleaving: a count limit of two allocations; the last block of 64 bytes is free; two
/// participants each ask for 128 bytes, which the heap has no room for: together they hold the
/// whole count for a moment. A third blocks in `alloc_blocking` for the 64-byte block: the
/// count refuses it while both are held (it lacks no bytes).
///
/// Invariant: the blocked allocator always gets the block; no waiter slot is left taken.
#[test]
fn a_count_given_back_after_a_failed_allocation_wakes_an_allocator_it_kept_out() {
    explore(BRANCHES, || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = budgeted_with(&memory, 4096, 2);
        let (_, mut filler) = attach(&heap, 1);
        let (_, mut waiter) = attach(&heap, 2);
        let (_, other) = attach(&heap, 3);
        let kept = all_but_one_block(&heap, &mut filler, LIMIT);
        let waiting = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_blocking(&mut waiter, LIMIT, AllocOptions::default(), &mut YieldingHost);
                (waiter, got.expect("a blocked allocator gets the last block"))
            })
        };
        let askers: Vec<_> = [filler, other]
            .into_iter()
            .map(|mut asker| {
                let memory = memory.clone();
                spawn(move || {
                    let got = open(&memory).alloc(&mut asker, 128, AllocOptions::default());
                    assert!(matches!(got, Err(alloc_core::Error::OutOfMemory { .. })), "{got:?}");
                    asker
                })
            })
            .collect();
        let mut askers: Vec<_> = askers.into_iter().map(|asker| asker.join().expect("no panic")).collect();
        let (mut waiter, got) = waiting.join().expect("the waiter does not panic");
        assert_eq!(heap.waiters(), 0, "a waiter slot is left taken");
        assert_eq!(heap.budget_used().allocations, 1);
        let _ = heap.free(&mut waiter, got.id()).expect("live");
        for uncharged in kept {
            let _ = heap.free_given_back(&mut askers[0], uncharged).expect("live");
        }
        heap.check(&mut askers[0]).expect("every invariant holds at the end");
    });
}
