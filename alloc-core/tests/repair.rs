//! `repair`, the offline fsck: each test damages one kind of metadata the way a bug or a stray
//! write could, sees `check` refuse it, repairs, and then requires `check` to pass, every live
//! allocation to keep its place, owner and bytes, and the whole data area to be allocatable once
//! they are freed. On a heap with nothing wrong it reports nothing.

mod common;

use alloc_core::bitmap::PageBits;
use alloc_core::layout::{header, page, Anchor, PageInfo, SPAN_PAGES, WAITER_SLOTS};
use alloc_core::{AllocOptions, Allocation, Heap};
use common::{fill, holds, Participant, TestMemory};

const MIB: usize = 1 << 20;

fn opts() -> AllocOptions {
    AllocOptions::default()
}

/// A heap with a few live small and large allocations (filled with patterns) and some freed.
fn populated<'h, 'a>(heap: &'h Heap<'a>) -> (Participant<'h, 'a>, Vec<(Allocation, u64)>) {
    let mut p = Participant::new(heap, 1);
    let mut live = Vec::new();
    for (seed, size) in [(1, 64), (2, 64), (3, 100), (4, 5000), (5, 64), (6, 2048), (7, 20_000)] {
        let a = p.alloc(size, opts()).expect("space");
        fill(heap, &a, seed);
        live.push((a, seed));
    }
    // Free every other one, so spans have free blocks on their lists and pages are free.
    let mut kept = Vec::new();
    for (at, (a, seed)) in live.into_iter().enumerate() {
        if at % 2 == 1 {
            let _ = p.free(a.id()).expect("live");
        } else {
            kept.push((a, seed));
        }
    }
    (p, kept)
}

/// After a repair: consistent, every kept allocation intact, and once they are freed the whole
/// data area is one allocation.
fn assert_sound(p: &mut Participant<'_, '_>, kept: &[(Allocation, u64)]) {
    p.check().expect("consistent after repair");
    assert!(p.heap.run_index_is_exact(), "repair rebuilds the run index from the bitmap");
    for (a, seed) in kept {
        let found = p.lookup(a.id()).expect("a live allocation survives repair");
        assert_eq!((found.offset, found.size, found.owner), (a.offset, a.size, a.owner));
        assert!(holds(p.heap, a, *seed), "repair changed an allocation's bytes");
        let _ = p.free(a.id()).expect("live");
    }
    let all = p.heap.geometry().data_bytes();
    let whole = p.alloc(all, opts()).expect("the whole data area after repair");
    let _ = p.free(whole.id()).expect("live");
    p.check().expect("consistent at the end");
}

fn page_word(heap: &Heap<'_>, page: u64, field: usize) -> usize {
    heap.geometry().page_word(page, field)
}

fn first_span_head(heap: &Heap<'_>, memory: &TestMemory) -> u64 {
    (0..heap.geometry().num_pages)
        .step_by(SPAN_PAGES as usize)
        .find(|&head| {
            matches!(
                PageInfo::decode(memory.word(page_word(heap, head, page::INFO))),
                Some(PageInfo::SpanHead { .. })
            )
        })
        .expect("the heap has a span")
}

#[test]
fn a_heap_with_nothing_wrong_reports_nothing_and_keeps_everything() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let (mut p, kept) = populated(&heap);
    let before = p.check().expect("consistent");
    let repaired = heap.repair(&mut p.session).expect("repairable");
    assert!(repaired.is_clean(), "{repaired:?}");
    assert_eq!(p.check().expect("consistent"), before, "repair changed what the heap holds");
    assert_sound(&mut p, &kept);
}

#[test]
fn free_blocks_lost_from_a_span_list_are_put_back() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let (mut p, kept) = populated(&heap);
    let head = first_span_head(&heap, &memory);
    // Drop the whole free list: count 0, no head (as a pop that lost its blocks would).
    let anchor_word = page_word(&heap, head, page::ANCHOR);
    let anchor = Anchor::decode(memory.word(anchor_word));
    assert!(anchor.count > 0, "the span has free blocks to lose");
    memory.set_word(anchor_word, Anchor { head: Anchor::NULL, count: 0, ..anchor }.bumped().encode());
    assert!(p.check().is_err(), "check must see the lost blocks");
    let repaired = heap.repair(&mut p.session).expect("repairable");
    assert_eq!(repaired.orphan_blocks, anchor.count, "{repaired:?}");
    assert_sound(&mut p, &kept);
}

#[test]
fn a_span_left_retiring_by_nobody_is_taken_back_into_use() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let mut p = Participant::new(&heap, 1);
    let a = p.alloc(64, opts()).expect("space");
    let _ = p.free(a.id()).expect("live");
    let head = first_span_head(&heap, &memory);
    // A retirer that marked the anchor and the page info, then vanished without a trace.
    let anchor_word = page_word(&heap, head, page::ANCHOR);
    let anchor = Anchor::decode(memory.word(anchor_word));
    memory.set_word(anchor_word, Anchor { head: 7, retiring: true, ..anchor }.bumped().encode());
    let PageInfo::SpanHead { class, .. } =
        PageInfo::decode(memory.word(page_word(&heap, head, page::INFO))).expect("valid")
    else {
        panic!("a span head");
    };
    memory.set_word(page_word(&heap, head, page::INFO), PageInfo::SpanHead { class, retiring: 7 }.encode());
    assert!(p.check().is_err(), "check must see the abandoned retirement");
    let repaired = heap.repair(&mut p.session).expect("repairable");
    assert_eq!(repaired.unfinished, 1, "{repaired:?}");
    assert_sound(&mut p, &[]);
}

#[test]
fn claimed_pages_that_belong_to_nothing_are_released() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let (mut p, kept) = populated(&heap);
    // Claim the last eight pages in the bitmap (2 bits a page: claimed, head) with no run info.
    let geo = *heap.geometry();
    let last = geo.num_pages - 1;
    for page in last - 7..=last {
        let word = geo.bitmap_word + (page / 32) as usize;
        let bits = PageBits::page_mask(page, true, true);
        memory.set_word(word, memory.word(word) | bits);
    }
    // (`check` reads the bitmap only below the page high-water mark: untouched metadata of a
    // sparse pool must stay untouched. Damage there with the mark raised over it is seen.)
    memory.set_word(header::PAGE_HWM, geo.num_pages);
    assert!(p.check().is_err(), "check must see claimed pages outside every run");
    let repaired = heap.repair(&mut p.session).expect("repairable");
    assert!(repaired.unfinished + repaired.orphan_pages > 0, "{repaired:?}");
    assert_sound(&mut p, &kept);
}

#[test]
fn damaged_run_summaries_are_rebuilt_and_never_cost_a_free_run() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let (mut p, kept) = populated(&heap);
    // Every summary says "all claimed": searches must still find room (through the bitmap),
    // and repair must make them exact again.
    let geo = *heap.geometry();
    for word in geo.runs_word..geo.runs_word + geo.runs.total_words() {
        memory.set_word(word, 1 << 63);
    }
    assert!(!heap.run_index_is_exact());
    let found = p.alloc(64 * 4096, opts()).expect("room, found in the bitmap");
    let _ = p.free(found.id()).expect("live");
    heap.repair(&mut p.session).expect("repairable");
    assert_sound(&mut p, &kept);
}

#[test]
fn class_lists_that_lost_a_span_are_rebuilt() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let (mut p, kept) = populated(&heap);
    // Wipe every class list and the empty set: the spans with free blocks can no longer be found.
    let geo = *heap.geometry();
    for word in geo.class_word..geo.page_meta_word {
        memory.set_word(word, 0);
    }
    assert!(p.check().is_err(), "check must see listable spans missing from their lists");
    heap.repair(&mut p.session).expect("repairable");
    assert_sound(&mut p, &kept);
}

#[test]
fn waiter_slots_of_nobody_are_cleared() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let (mut p, kept) = populated(&heap);
    let geo = *heap.geometry();
    for slot in 0..WAITER_SLOTS {
        memory.set_word(geo.waiter_word + slot, 0xDEAD_0000 + slot as u64);
    }
    let repaired = heap.repair(&mut p.session).expect("repairable");
    assert_eq!(repaired.waiter_slots, WAITER_SLOTS as u64, "{repaired:?}");
    assert_eq!(heap.waiters(), 0);
    assert_sound(&mut p, &kept);
}

/// Review of issue 8 (seen failing before the fix: check passed, blind to the last run). A
/// high-water mark damaged to below a claimed page hides that page from every walk; check looks
/// at the bitmap word just past the mark, and repair raises the mark again.
#[test]
fn a_lowered_high_water_mark_is_noticed_and_raised() {
    let memory = TestMemory::new(4 * MIB);
    let heap = memory.create();
    let (mut p, kept) = populated(&heap);
    let hwm = memory.word(header::PAGE_HWM);
    memory.set_word(header::PAGE_HWM, hwm - 1);
    assert!(p.check().is_err(), "check must see a claimed page above the mark");
    heap.repair(&mut p.session).expect("repairable");
    assert_eq!(memory.word(header::PAGE_HWM), hwm);
    assert_sound(&mut p, &kept);
}
