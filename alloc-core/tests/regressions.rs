//! Regression tests for defects that are best shown at the core's level. Those of heap v1 were
//! written against v1 first and seen failing there (branch `regress-evidence`, commit 9b91063,
//! `alloc-core/src/regress.rs`); they pass on v2. Later ones say where they were seen failing.

mod common;

use alloc_core::layout::{blocks_per_span, class_for, gen, BlockState, Extra, CLASS_SIZES, SPAN_PAGES};
use alloc_core::{AllocOptions, Error};
use common::{Participant, TestMemory};

/// Runs `f`, stopping this thread for good at step `step`, which it must reach.
fn stopped_at(step: &'static str, f: impl FnOnce()) {
    assert!(common::stopped_at(step, f), "never reached {step}");
}

/// Defect 7: in v1, a participant stopped inside `release_empty_spans` (after detaching a whole
/// class stack) made every allocation of every other participant fail on an empty pool. Now a
/// participant stopped at any step of a retirement holds at most that one span.
#[test]
fn a_participant_stopped_while_retiring_a_span_never_makes_an_empty_pool_refuse_others() {
    for step in [
        "retire/anchor-retiring",
        "retire/info-retiring",
        "retire/epochs-raised",
        "retire/marked",
        "release/cleared",
        "release/unmarked",
    ] {
        let memory = TestMemory::new(4 << 20);
        let heap = memory.create();
        let mut a = Participant::new(&heap, 1);
        let mut tiny = Vec::new();
        while let Ok(block) = a.alloc(16, AllocOptions::default()) {
            tiny.push(block.id());
        }
        for id in tiny {
            let _ = a.free(id).expect("live");
        }
        // A needs pages: it retires spans one by one, and is stopped at `step` of one of them.
        stopped_at(step, || {
            let _ = a.alloc(1 << 20, AllocOptions::default());
        });
        let other = memory.open();
        let mut b = Participant::new(&other, 2);
        let span = heap.geometry().span_bytes();
        for size in [16, 100, 2048, 65_536, 1 << 20, heap.geometry().data_bytes() - 2 * span] {
            let got = b.alloc(size, AllocOptions::default());
            assert!(
                got.is_ok(),
                "stopped at {step}: the empty pool refused {size} bytes to another: {got:?}"
            );
            let _ = b.free(got.expect("checked").id()).expect("live");
        }
        // A is declared dead: reclaim puts its retirement right, and everything is back.
        b.reclaim(&[1]).expect("reclaimable");
        b.check().expect("consistent after reclaim");
        let all =
            b.alloc(heap.geometry().data_bytes(), AllocOptions::default()).expect("the whole data area");
        let _ = b.free(all.id()).expect("live");
    }
}

/// Defect 9: in v1 an id held `64 - slot_bits` generation bits (28 in a 1 TiB pool), so a hot
/// loop on one slot repeated an id after 2^28 pairs, and a slot at the largest generation
/// restarted at 0 on every reuse of its memory. Now generations have 60 bits, split between the
/// state word (36) and the extra word (24): a slot whose generation crosses the state word's
/// boundary keeps counting, ids never repeat, and the count survives the span's retirement and
/// re-carving.
#[test]
fn generations_keep_counting_across_the_state_words_boundary_and_across_reuse_of_the_memory() {
    let memory = TestMemory::new(1 << 20);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let class = class_for(64).expect("small");
    let first = p.alloc(64, AllocOptions::default()).expect("space");
    // The first block of the first span: its state and extra words sit at the span's start.
    let block_page = (first.offset - heap.geometry().data_offset) >> heap.geometry().page_shift;
    let head_page = block_page - block_page % SPAN_PAGES;
    let base = heap.geometry().page_offset(head_page);
    let blocks = blocks_per_span(CLASS_SIZES[class] as u64, heap.geometry().span_bytes());
    let state_word = (base / 8) as usize;
    let extra_half = ((base + blocks * 8) / 4) as usize;
    let _ = p.free(first.id()).expect("live");
    // Put the slot two allocations below the point where the state word's 36 bits wrap.
    let near = BlockState::TAG_MASK - 1;
    let state = BlockState::decode(memory.word(state_word)).expect("valid");
    memory.set_word(state_word, BlockState { tag: gen::tag(near), ..state }.encode());
    let extra_word = memory.word(extra_half / 2);
    let shift = (extra_half % 2) * 32;
    let extra = Extra::decode((extra_word >> shift) as u32);
    let patched = Extra { gen_high: gen::high(near), ..extra }.encode() as u64;
    memory.set_word(extra_half / 2, (extra_word & !(0xFFFF_FFFF << shift)) | patched << shift);
    let mut seen = std::collections::HashSet::new();
    let mut previous = None;
    for _ in 0..5 {
        let a = p.alloc(64, AllocOptions::default()).expect("space");
        assert_eq!(a.offset, first.offset, "the hot slot is reused");
        assert!(seen.insert(a.id()), "id {:#x} issued twice", a.id().to_u128());
        if let Some(previous) = previous {
            assert!(a.id().generation() > previous, "generations keep growing across the boundary");
            assert_eq!(
                p.lookup(alloc_core::AllocId::new(a.id().slot(), previous)),
                Err(Error::NotAllocated { id: alloc_core::AllocId::new(a.id().slot(), previous).to_u128() })
            );
        }
        previous = Some(a.id().generation());
        let _ = p.free(a.id()).expect("live");
    }
    assert!(previous.expect("ran") > BlockState::TAG_MASK, "crossed the state word's boundary");
    // Retire the span (a large allocation needs its pages), free that, and carve spans again:
    // no id of the new spans may equal one seen before.
    let big = p.alloc(heap.geometry().data_bytes(), AllocOptions::default()).expect("the whole data area");
    assert_eq!(big.offset, heap.geometry().data_offset, "the run covers where the span was");
    assert!(seen.insert(big.id()), "the run's id was issued before");
    let _ = p.free(big.id()).expect("live");
    let mut reused = false;
    let mut again = Vec::new();
    while let Ok(a) = p.alloc(64, AllocOptions::default()) {
        assert!(seen.insert(a.id()), "id {:#x} issued twice", a.id().to_u128());
        if a.offset == first.offset {
            reused = true;
            assert!(
                a.id().generation() > previous.expect("ran"),
                "the slot's generations go on above the old"
            );
        }
        again.push(a.id());
    }
    assert!(reused, "a new span covered the hot slot again");
    for id in again {
        let _ = p.free(id).expect("live");
    }
    p.check().expect("consistent");
}

/// Review 9 of issue 8, finding 3 (spans; seen failing before 71a42d7). A participant stopped (or killed, until `reclaim_dead`) right after
/// marking the info of a free slot below the high-water mark ("claim/marked", before it raises
/// the mark and sets bits) leaves that slot's bits clear. `carve_span` offers the first slot
/// above the mark only when `find_slot` finds nothing below it; it finds the stopped claimer's
/// slot on every round (the hint wraps round to it), so every carve fails and small
/// allocations fail with OutOfMemory although nearly the whole pool is free. The design
/// promises that a stopped participant holds at most the run it was claiming.
#[test]
fn a_claimer_stopped_below_the_mark_does_not_keep_others_from_carving_above_it() {
    let memory = TestMemory::new(4 << 20);
    let heap = memory.create();
    let mut setup = Participant::new(&heap, 1);
    // The mark at page 1; slot 0 free again below it.
    let page = setup.alloc(4096, AllocOptions::default()).expect("room");
    let _ = setup.free(page.id()).expect("live");
    let mut doomed = Participant::new(&heap, 666);
    stopped_at("claim/marked", || {
        let _ = doomed.alloc(64, AllocOptions::default());
    });
    let mut other = Participant::new(&heap, 2);
    other.alloc(64, AllocOptions::default()).expect("the pool is all but empty");
}

/// Review 9 of issue 8, finding 3 (runs; seen failing before 71a42d7). Same for `alloc_large`: the only run below the mark that fits is the
/// stopped claimer's; `find_run` returns it on every round (its hint wraps round to it) and the
/// free tail past it is never offered.
#[test]
fn a_claimer_stopped_below_the_mark_does_not_keep_others_from_runs_above_it() {
    let memory = TestMemory::new(4 << 20);
    let heap = memory.create();
    let mut setup = Participant::new(&heap, 1);
    let size = 8 * 4096;
    let run = setup.alloc(size, AllocOptions::default()).expect("room");
    let _ = setup.free(run.id()).expect("live");
    let mut doomed = Participant::new(&heap, 666);
    stopped_at("claim/marked", || {
        let _ = doomed.alloc(size, AllocOptions::default());
    });
    let mut other = Participant::new(&heap, 2);
    match other.alloc(size, AllocOptions::default()) {
        Ok(_) => {}
        Err(alloc_core::Error::OutOfMemory { .. }) => panic!("OutOfMemory with the pool all but empty"),
        Err(e) => panic!("{e:?}"),
    }
}
