//! Loom models of the pool-wide budget (`alloc_core::budget`): one word of charges changed by
//! compare-exchange, a pending record per participant, and the waiters an allocation the budget
//! refused registers (the same wait/wake protocol as room in the heap: see `wait.rs`).
#![cfg(shmpool_loom)]

use alloc_core::{AllocOptions, Budget, BudgetUsed, Heap, Platform, Uncharged, Wake};
use loom::sync::Arc;
use loom_tests::{
    attach, explore, open, spawn, LoomRegion, YieldingHost, ONE_SPAN_HEAP, PAGE_SHIFT, TWO_SPAN_HEAP,
};

/// The limit of every modelled budget: one 64-byte allocation (a small block: the heap has
/// room for many, so only the budget can refuse).
const LIMIT: u64 = 64;

fn budgeted(memory: &LoomRegion) -> Heap<'_> {
    budgeted_with(memory, LIMIT, 0)
}

fn budgeted_with(memory: &LoomRegion, limit: u64, max_allocations: u64) -> Heap<'_> {
    let budget = Budget { limit, max_allocations };
    Heap::create_with_budget(memory.region(), PAGE_SHIFT, Platform::SYMMETRIC, Some(budget))
        .expect("region fits a budgeted heap")
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

/// The heap's one span holds blocks of `size` bytes, all live but one (their charges given back
/// early): the participant's tokens for them.
fn all_but_one_block(heap: &Heap<'_>, filler: &mut alloc_core::Session, size: u64) -> Vec<Uncharged> {
    let mut kept = Vec::new();
    while let Ok(block) = heap.alloc(filler, size, AllocOptions::default()) {
        let (uncharged, _) = heap.give_back_charge(filler, block.id()).expect("live");
        kept.push(uncharged);
    }
    let last = kept.pop().expect("the span holds blocks");
    let _ = heap.free_given_back(filler, last).expect("live");
    kept
}

/// Interleaving: a budget of `limit` bytes and `max_allocations` live allocations (0: no count
/// limit); the heap's one span holds blocks of `block` bytes (a power of two), all live but the
/// last (their charges given back early). A participant blocks in `alloc_blocking` for the last
/// block while others ask for each of `asks` bytes, sizes the heap has no room for: each takes
/// its charge, fails, and gives it back. The budget refuses the blocked one while those charges
/// are held: on its first try or on its retry after it registered.
///
/// Invariant: the blocked allocator always gets the block (a give-back after its refusal wakes
/// it, or its retry sees the charges gone); no waiter slot is left taken; nothing stays charged
/// but its block; `check` passes.
fn failed_allocations_wake_an_allocator_they_kept_out(
    limit: u64,
    max_allocations: u64,
    block: u64,
    asks: &'static [u64],
) {
    explore(BRANCHES, move || {
        let memory = Arc::new(LoomRegion::new(ONE_SPAN_HEAP));
        let heap = budgeted_with(&memory, limit, max_allocations);
        let (_, mut waiter) = attach(&heap, 1);
        let (_, mut filler) = attach(&heap, 2);
        let kept = all_but_one_block(&heap, &mut filler, block);
        assert_eq!(heap.budget_used(), BudgetUsed::default());
        let mut askers = vec![filler];
        for pid in 3..2 + asks.len() as u32 {
            askers.push(attach(&heap, pid).1);
        }
        let waiting = {
            let memory = memory.clone();
            spawn(move || {
                let heap = open(&memory);
                let got = heap.alloc_blocking(&mut waiter, block, AllocOptions::default(), &mut YieldingHost);
                (waiter, got.expect("a blocked allocator gets the last block"))
            })
        };
        let asking: Vec<_> = askers
            .into_iter()
            .zip(asks)
            .map(|(mut asker, &ask)| {
                let memory = memory.clone();
                spawn(move || {
                    let got = open(&memory).alloc(&mut asker, ask, AllocOptions::default());
                    assert!(matches!(got, Err(alloc_core::Error::OutOfMemory { .. })), "{got:?}");
                })
            })
            .collect();
        asking.into_iter().for_each(|asker| asker.join().expect("an asker does not panic"));
        let (mut waiter, got) = waiting.join().expect("the waiter does not panic");
        assert_eq!(heap.waiters(), 0, "a waiter slot is left taken");
        let counted = u64::from(max_allocations > 0);
        assert_eq!(heap.budget_used(), BudgetUsed { bytes: block, allocations: counted });
        let _ = heap.free(&mut waiter, got.id()).expect("the waiter's block is live");
        for uncharged in kept {
            let _ = heap.free_given_back(&mut waiter, uncharged).expect("live");
        }
        assert_eq!(heap.budget_used(), BudgetUsed::default());
        heap.check(&mut waiter).expect("every invariant holds at the end");
    });
}

/// A limit of 128 bytes, blocks of 64: one failed allocation of 128 bytes holds the whole limit
/// for a moment.
#[test]
fn a_charge_given_back_after_a_failed_allocation_wakes_an_allocator_it_kept_out() {
    failed_allocations_wake_an_allocator_they_kept_out(128, 0, LIMIT, &[128]);
}

/// A limit of 256 bytes, blocks of 256: two failed allocations of 64 bytes each keep the
/// blocked one out alone, and only the second give-back of the two lets it in.
#[test]
fn two_failed_allocations_holding_charges_at_once_wake_an_allocator_they_kept_out() {
    failed_allocations_wake_an_allocator_they_kept_out(256, 0, 256, &[64, 64]);
}

/// A count limit of two, blocks of 64 bytes: two failed allocations of 128 bytes together hold
/// the whole count for a moment (the blocked one lacks no bytes).
#[test]
fn a_count_given_back_after_a_failed_allocation_wakes_an_allocator_it_kept_out() {
    failed_allocations_wake_an_allocator_they_kept_out(4096, 2, LIMIT, &[128, 128]);
}
