//! Offline repair: what a participant killed in the middle of an operation can leave behind,
//! put right. Lock-free operations never wait for a stalled participant, so its half-done
//! step stays half-done:
//! - a block taken off a span's free list but not yet marked live or cached (an orphan);
//! - pages claimed in the bitmap but not yet recorded as a span or run;
//! - a span flagged `listed` but never pushed (or a whole class stack detached by a flush);
//! - a retired span whose pages were not yet given back, a large free not yet finished;
//! - a count of blocked allocators that includes the dead.
//!
//! None of this corrupts an allocation, but it holds memory and fails `check`. [`Heap::repair`]
//! fixes all of it. It must run while **no participant is inside an operation** (the others
//! are dead or stopped): it cannot tell a dead participant's half-done step from a live one's.
//! Run [`Heap::reclaim_dead`] first so that dead participants' caches are given back too.

use crate::error::Error;
use crate::heap::Heap;
use crate::layout::{header, page, status, Anchor, BlockState, PageInfo, NUM_CLASSES, SPAN_PAGES};
use crate::primitive::Ordering;

/// What [`Heap::repair`] put right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Blocks off every list and neither live nor cached, put back on their span's list.
    pub orphan_blocks: u64,
    /// Claimed pages no span or run recorded, released.
    pub orphan_pages: u64,
    /// Retired spans and freed large runs whose pages had not been given back, given back.
    pub unfinished_releases: u64,
    /// Spans with free blocks that were in no class stack, listed again.
    pub relisted_spans: u64,
    /// Blocked-allocator counts cleared (the count included dead waiters).
    pub stale_waiters: u64,
}

impl Repaired {
    /// Whether anything needed repair.
    pub fn is_clean(&self) -> bool {
        *self == Repaired::default()
    }
}

impl Heap<'_> {
    /// Puts right what participants killed mid-operation left behind (see the module docs).
    /// Call only when no other participant is inside an operation.
    pub fn repair(&self) -> Result<Repaired, Error> {
        self.ensure_ready()?;
        let mut repaired = Repaired::default();
        // Every stack is rebuilt from scratch below; the chains detached here are only counted.
        let geo = *self.geometry();
        let mut detached = 0;
        for class in 0..NUM_CLASSES {
            let stack = self.stack(class);
            let mut next = stack.take_all()?;
            while let Some(head) = next {
                detached += 1;
                next = if detached > geo.num_pages { None } else { stack.next_detached(head)? };
            }
        }
        let mut listed = 0;
        let bitmap = self.bitmap();
        let mut here = 0;
        while here < geo.num_pages {
            match self.info(here) {
                PageInfo::SpanHead { class } if self.span_parts(here, class).is_ok() => {
                    listed += u64::from(self.repair_span(here, class, &mut repaired));
                    here += SPAN_PAGES;
                }
                PageInfo::LargeHead { pages } if pages >= 1 && pages <= geo.num_pages - here => {
                    let state = BlockState::decode(self.page_meta(here, page::STATE));
                    if !state.live {
                        self.finish_large_free(here, pages, state.gen);
                        repaired.unfinished_releases += 1;
                    }
                    here += pages;
                }
                PageInfo::Free if !bitmap.is_set(here) => here += 1,
                // A claimed page nobody recorded, a member without a (valid) head, or a head
                // with garbage: clear it and give the page back.
                _ => {
                    self.clear_info(here);
                    if bitmap.is_set(here) {
                        bitmap.release(here, 1);
                        repaired.orphan_pages += 1;
                    }
                    here += 1;
                }
            }
        }
        repaired.relisted_spans = listed.saturating_sub(detached);
        let status_word = self.region().word(header::STATUS);
        let waiters = status_word.load(Ordering::Relaxed) >> 32;
        if waiters > 0 {
            status_word.fetch_and(status::STATE_MASK, Ordering::Relaxed);
            repaired.stale_waiters = waiters;
        }
        Ok(repaired)
    }

    /// Repairs one span; returns whether it ends up listed.
    fn repair_span(&self, head: u64, class: usize, repaired: &mut Repaired) -> bool {
        let (span, _, _) = self.span(head, class);
        if span.anchor().retired {
            self.retire_span(head, &span);
            repaired.unfinished_releases += 1;
            return false;
        }
        // Which blocks are on the free list (the list itself is always whole: every change to
        // it is one compare-exchange).
        let blocks = span.blocks();
        let mut on_list = [0u64; (Anchor::MAX_BLOCKS as usize).div_ceil(64)];
        let anchor = span.anchor();
        let mut index = anchor.head;
        for _ in 0..anchor.count.min(blocks) {
            if index >= blocks {
                break;
            }
            on_list[(index / 64) as usize] |= 1 << (index % 64);
            // ORDERING: Acquire, as in `Span::pop_batch` (the list's links were published by pushes).
            index = BlockState::decode(span.state(index).load(Ordering::Acquire)).low;
        }
        for index in 0..blocks {
            // ORDERING: Acquire pairs with the Release store (or release sequence) that last wrote this
            // state word, so the block's owner and size are those of the state seen.
            let state = BlockState::decode(span.state(index).load(Ordering::Acquire));
            let listed = on_list[(index / 64) as usize] & (1 << (index % 64)) != 0;
            if !state.live && state.low != BlockState::CACHED && !listed {
                self.give_back(head, class, index);
                repaired.orphan_blocks += 1;
            }
        }
        // The stacks were emptied above: list every span that has free blocks.
        span.unlist();
        self.relist(head, class, &span);
        span.anchor().listed
    }

    fn finish_large_free(&self, head: u64, pages: u64, gen: u64) {
        let epoch = self.page_word(head, page::EPOCH);
        epoch.fetch_max(gen, Ordering::Relaxed);
        self.clear_info(head);
        self.bitmap().release(head, pages);
    }

    fn clear_info(&self, at: u64) {
        self.page_word(at, page::INFO).store(PageInfo::Free.encode(), Ordering::Relaxed);
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;
    use crate::layout::class_for;
    use crate::{AllocOptions, Region};

    fn with_heap(test: impl FnOnce(&Heap<'_>)) {
        let mut words = vec![0u64; (4 << 20) / 8];
        // SAFETY: the vector outlives the heap and is only used through it.
        let region =
            unsafe { Region::from_raw(words.as_mut_ptr().cast(), words.len() * 8) }.expect("aligned");
        test(&Heap::create_default(region).expect("fits"));
    }

    /// After `crash` leaves the heap inconsistent, `check` fails, `repair` reports `expect`,
    /// and afterwards the heap checks clean and can hand out most of its data area.
    fn repairs(crash: impl FnOnce(&Heap<'_>), expect: impl FnOnce(&Repaired) -> bool) {
        with_heap(|heap| {
            let keep = heap.alloc(100, AllocOptions::default()).expect("space");
            crash(heap);
            assert!(heap.check().is_err(), "the crash left the heap inconsistent");
            let repaired = heap.repair().expect("repairable");
            assert!(expect(&repaired), "{repaired:?}");
            let stats = heap.check().expect("clean after repair");
            assert_eq!(stats.live_allocations, 1);
            assert!(heap.contains(keep.id), "live allocations survive repair");
            let _ = heap.free(keep.id).expect("live");
            let most = heap.geometry().data_bytes() * 9 / 10;
            assert!(heap.alloc(most, AllocOptions::default()).is_ok(), "everything came back");
        });
    }

    #[test]
    fn blocks_taken_but_never_recorded_go_back() {
        repairs(
            |heap| {
                let class = class_for(64).expect("small");
                let _ = heap.take_blocks(class, 5, |_, _| {}).expect("space");
            },
            |r| r.orphan_blocks == 5,
        );
    }

    #[test]
    fn pages_claimed_but_never_recorded_are_released() {
        repairs(|heap| assert!(heap.bitmap().claim(3, 40).is_some()), |r| r.orphan_pages == 3);
    }

    #[test]
    fn a_detached_class_stack_is_rebuilt() {
        repairs(
            |heap| {
                let class = class_for(100).expect("small");
                let _ = heap.stack(class).take_all().expect("valid");
            },
            |r| r.relisted_spans == 1,
        );
    }

    #[test]
    fn a_large_free_cut_short_is_finished() {
        repairs(
            |heap| {
                let large = heap.alloc(20_000, AllocOptions::default()).expect("space");
                let (_, state) = heap.locate(large.id).expect("live");
                let word = state.load(Ordering::Relaxed);
                let dead = BlockState { live: false, ..BlockState::decode(word) };
                state.store(dead.encode(), Ordering::Relaxed);
            },
            |r| r.unfinished_releases == 1,
        );
    }

    #[test]
    fn a_retirement_cut_short_is_finished() {
        repairs(
            |heap| {
                let class = class_for(512).expect("small");
                let a = heap.alloc(512, AllocOptions::default()).expect("space");
                let _ = heap.free(a.id).expect("live");
                let head = heap.stack(class).pop().expect("valid").expect("listed");
                let (span, _, _) = heap.span_parts(head, class).expect("span");
                span.unlist();
                assert!(span.try_retire());
            },
            |r| r.unfinished_releases == 1,
        );
    }

    #[test]
    fn dead_waiters_are_no_longer_counted() {
        repairs(
            |heap| {
                heap.region().word(header::STATUS).fetch_add(2 * status::WAITER, Ordering::Relaxed);
            },
            |r| r.stale_waiters == 2,
        );
    }

    #[test]
    fn a_consistent_heap_needs_nothing() {
        with_heap(|heap| {
            let _a = heap.alloc(64, AllocOptions::default()).expect("space");
            assert!(heap.repair().expect("ok").is_clean());
            heap.check().expect("still clean");
        });
    }
}
