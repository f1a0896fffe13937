//! Runs that caches claiming often claim are kept apart per participant, in blocks of
//! `BLOCK_PAGES` pages (issue 9): two threads whose cached runs interleaved page by page made
//! each other's metadata lines travel between their cores (the prefetchers of one fetching what
//! the other writes next), and two threads replacing 64 KiB buffers scaled 1.2× instead of 2×.

mod common;

use alloc_core::layout::BLOCK_PAGES;
use alloc_core::{Cache, Heap, OWN_BLOCKS_AFTER};
use common::{head_of, plain, Participant, TestMemory};

const MIB: usize = 1 << 20;
const RUN: u64 = 64 << 10;

/// The block of each of `count` runs `cache` claims.
fn claim_blocks(heap: &Heap<'_>, cache: &mut Cache, count: usize) -> Vec<u64> {
    (0..count)
        .map(|_| head_of(heap, heap.alloc_with(cache, RUN, plain()).expect("room").offset) / BLOCK_PAGES)
        .collect()
}

/// Seen failing before the blocks (pure first fit: the two caches' runs alternate).
#[test]
fn two_caches_claiming_in_turn_keep_their_runs_in_separate_blocks() {
    let memory = TestMemory::new(64 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let (mut a, mut b) = (p.cache(), p.cache());
    // Their first claims share the first block: caches that claim a few runs take no blocks.
    for _ in 0..OWN_BLOCKS_AFTER {
        claim_blocks(&heap, &mut a, 1);
        claim_blocks(&heap, &mut b, 1);
    }
    let (mut blocks_a, mut blocks_b) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        blocks_a.extend(claim_blocks(&heap, &mut a, 1));
        blocks_b.extend(claim_blocks(&heap, &mut b, 1));
    }
    let shared: Vec<u64> = blocks_a.iter().filter(|block| blocks_b.contains(block)).copied().collect();
    assert!(shared.is_empty(), "blocks holding runs of both caches: {shared:?}");
    p.check().expect("consistent");
}

/// From the review of 26d327c: a cache that claimed one run (a main thread's at startup, then
/// idle) kept every other cache out of its block for as long as it lived.
#[test]
fn a_cache_that_claimed_a_few_runs_keeps_nobody_out_of_its_block() {
    let memory = TestMemory::new(64 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let mut idle = p.cache();
    let _startup = claim_blocks(&heap, &mut idle, 1);
    let mut busy = p.cache();
    let blocks = claim_blocks(&heap, &mut busy, 40);
    assert!(blocks.iter().all(|&block| block == 0), "the busy cache's blocks: {blocks:?}");
    p.check().expect("consistent");
}

/// One cache alone places its runs by first fit, as before the blocks.
#[test]
fn one_cache_alone_places_by_first_fit() {
    let memory = TestMemory::new(64 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let mut a = p.cache();
    let pages = RUN >> heap.geometry().page_shift;
    let heads: Vec<u64> = (0..300)
        .map(|_| head_of(&heap, heap.alloc_with(&mut a, RUN, plain()).expect("room").offset))
        .collect();
    let expected: Vec<u64> = (0..300).map(|i| i * pages).collect();
    assert_eq!(heads, expected);
    p.check().expect("consistent");
}

/// The blocks of a participant that left go to the next one that claims there.
#[test]
fn the_blocks_of_a_participant_that_left_are_taken_over() {
    let memory = TestMemory::new(64 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let (mut a, mut b) = (p.cache(), p.cache());
    // a claims often enough to take block 0; b then claims outside it.
    let mine: Vec<_> =
        (0..=OWN_BLOCKS_AFTER).map(|_| heap.alloc_with(&mut a, RUN, plain()).expect("room")).collect();
    claim_blocks(&heap, &mut b, OWN_BLOCKS_AFTER as usize);
    assert_ne!(claim_blocks(&heap, &mut b, 1), vec![0], "b keeps out of a's block");
    for run in &mine {
        let _ = heap.free_with(&mut a, run.id()).expect("live");
    }
    let _ = heap.flush(&mut a).expect("flushed");
    heap.release_participant(a.into_session()).expect("released");
    let run = heap.alloc_with(&mut b, 2 * RUN, plain()).expect("room");
    assert_eq!(head_of(&heap, run.offset), 0, "the lowest fit, in the block of a participant gone");
    p.check().expect("consistent");
}

/// Blocks never make a claim refuse: with room left only in another participant's blocks, a
/// cache that claims in blocks of its own claims there.
#[test]
fn a_claim_takes_room_in_another_participants_block_rather_than_refuse() {
    let memory = TestMemory::new(8 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let (mut a, mut b) = (p.cache(), p.cache());
    // b claims often enough to claim in blocks of its own, then keeps those runs.
    let _kept = claim_blocks(&heap, &mut b, OWN_BLOCKS_AFTER as usize);
    // a claims runs until the pool is full, then gives every second one back to the pool.
    let mut mine = Vec::new();
    while let Ok(run) = heap.alloc_with(&mut a, RUN, plain()) {
        mine.push(run);
    }
    for run in mine.iter().step_by(2) {
        let _ = p.free(run.id()).expect("live");
    }
    let got = heap.alloc_with(&mut b, RUN, plain());
    assert!(got.is_ok(), "b refused with room in a's blocks: {got:?}");
    p.check().expect("consistent");
}

/// From the review of 5ef09e2: owner words name a participant by its record's index, and a
/// record is reused lowest first, so a new participant that never claims took over the blocks
/// of one that left, and kept every other cache out of them. A cache now gives its blocks up
/// when it is flushed (as a `LocalPool` is when dropped).
#[test]
fn a_record_reused_after_its_cache_left_brings_no_blocks_with_it() {
    let memory = TestMemory::new(64 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let mut gone = p.cache();
    let runs: Vec<_> =
        (0..=OWN_BLOCKS_AFTER).map(|_| heap.alloc_with(&mut gone, RUN, plain()).expect("room")).collect();
    for run in &runs {
        let _ = heap.free_with(&mut gone, run.id()).expect("live");
    }
    let _ = heap.flush(&mut gone).expect("flushed");
    heap.release_participant(gone.into_session()).expect("released");
    let _idle = p.cache(); // takes the record `gone` left, and never claims
    let mut busy = p.cache();
    let blocks = claim_blocks(&heap, &mut busy, 40);
    assert!(blocks.iter().all(|&block| block == 0), "the busy cache's blocks: {blocks:?}");
    p.check().expect("consistent");
}
