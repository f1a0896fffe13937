//! One walk over the whole heap, used two ways: `stats` (tolerant, for a heap in use) and
//! `check` (strict, for a quiescent heap: every invariant below must hold).
//!
//! Invariants verified by the strict walk:
//! 1. Every claimed page belongs to exactly one span or large run, and every page of a span or
//!    run is claimed; interior pages of a large run have no info.
//! 2. A span's members point back to its head; its anchor is not retired; its free list has
//!    exactly `count` blocks, each in range, none twice, none live; every other block is live.
//! 3. A large run's page count matches its size; its state is live.
//! 4. Every class stack holds only listed spans of its class, each once, and every listed span
//!    is in its stack.
//! 5. Nobody is left counted as waiting.

use crate::error::Error;
use crate::heap::{ClassStats, Heap, Stats};
use crate::layout::{page, Anchor, BlockState, PageInfo, CLASS_SIZES, NUM_CLASSES, SPAN_PAGES};
use crate::primitive::Ordering;

fn corrupt(what: &'static str, page: u64) -> Error {
    Error::Corrupt { what, page }
}

pub(crate) fn check(heap: &Heap<'_>) -> Result<Stats, Error> {
    let stats = survey(heap, true)?;
    if heap.waiters() != 0 {
        return Err(corrupt("waiter count is not zero on a quiescent heap", 0));
    }
    Ok(stats)
}

pub(crate) fn survey(heap: &Heap<'_>, strict: bool) -> Result<Stats, Error> {
    let geo = *heap.geometry();
    let bitmap = heap.bitmap();
    let mut stats = Stats {
        data_bytes: geo.data_bytes(),
        claimed_pages: bitmap.count_set(),
        largest_free_run: bitmap.largest_free_run() << geo.page_shift,
        classes: [ClassStats::default(); NUM_CLASSES],
        ..Stats::default()
    };
    let mut free_bytes = (geo.num_pages - stats.claimed_pages) << geo.page_shift;
    let mut listed = [0u64; NUM_CLASSES];
    let ensure = |ok: bool, what: &'static str, page: u64| {
        if ok || !strict {
            Ok(())
        } else {
            Err(corrupt(what, page))
        }
    };

    let mut page_index = 0;
    while page_index < geo.num_pages {
        let here = page_index;
        match heap.info(here) {
            PageInfo::Free => {
                ensure(!bitmap.is_set(here), "claimed page belongs to no span or run", here)?;
                page_index += 1;
            }
            PageInfo::SpanMember { .. } => {
                ensure(false, "span member page without its head", here)?;
                page_index += 1;
            }
            PageInfo::SpanHead { class } => {
                let Ok((span, _, _)) = heap.span_parts(here, class) else {
                    ensure(false, "span head with a bad class or range", here)?;
                    page_index += 1;
                    continue;
                };
                for member in here..here + SPAN_PAGES {
                    ensure(bitmap.is_set(member), "span page not claimed", member)?;
                    if member > here {
                        let back = heap.info(member) == PageInfo::SpanMember { head: here, class };
                        ensure(back, "span member does not point to its head", member)?;
                    }
                }
                let blocks = heap.blocks_of(class);
                let anchor = span.anchor();
                ensure(!anchor.retired, "retired span still recorded", here)?;
                ensure(anchor.count <= blocks, "span free count exceeds its blocks", here)?;
                if strict {
                    verify_free_list(&span, anchor, here)?;
                }
                let class_stats = &mut stats.classes[class];
                class_stats.spans += 1;
                class_stats.blocks += blocks;
                let class_size = CLASS_SIZES[class] as u64;
                let (mut live, mut cached) = (0, 0);
                for index in 0..blocks {
                    // ORDERING: Acquire pairs with the Release store (or release sequence) that last wrote this
                    // state word, so the block's owner and size are those of the state seen.
                    let state = BlockState::decode(span.state(index).load(Ordering::Acquire));
                    if state.live {
                        live += 1;
                        stats.live_bytes += class_size.saturating_sub(state.low);
                    } else if state.low == BlockState::CACHED {
                        cached += 1;
                    }
                }
                ensure(
                    live + cached + anchor.count == blocks,
                    "live, cached and free blocks do not add up to the span's blocks",
                    here,
                )?;
                stats.cached_blocks += cached;
                class_stats.live += live;
                stats.live_allocations += live;
                free_bytes += (blocks - live) * class_size;
                if anchor.listed {
                    listed[class] += 1;
                }
                page_index += SPAN_PAGES;
            }
            PageInfo::LargeHead { pages } => {
                if pages == 0 || pages > geo.num_pages - here {
                    ensure(false, "large run out of range", here)?;
                    page_index += 1;
                    continue;
                }
                let state = BlockState::decode(heap.page_meta(here, page::STATE));
                let size = heap.page_meta(here, page::LINK);
                ensure(state.live, "large run recorded but not live", here)?;
                ensure(size.div_ceil(geo.page_bytes()) <= pages, "large size exceeds its pages", here)?;
                for member in here..here + pages {
                    ensure(bitmap.is_set(member), "large run page not claimed", member)?;
                    if member > here {
                        ensure(
                            heap.info(member) == PageInfo::Free,
                            "large run interior page has info",
                            member,
                        )?;
                    }
                }
                if state.live {
                    stats.live_allocations += 1;
                    stats.live_bytes = stats.live_bytes.saturating_add(size);
                }
                page_index += pages;
            }
        }
    }
    stats.free_bytes = free_bytes;
    if strict {
        verify_stacks(heap, &listed)?;
    }
    Ok(stats)
}

/// Walks a span's free list: `count` distinct in-range non-live blocks, ending in `NULL`.
fn verify_free_list(span: &crate::span::Span<'_>, anchor: Anchor, head_page: u64) -> Result<(), Error> {
    let blocks = span.blocks();
    // One bit per block; spans hold at most `Anchor::MAX_BLOCKS` blocks.
    let mut seen = [0u64; (Anchor::MAX_BLOCKS as usize).div_ceil(64)];
    let mut index = anchor.head;
    for _ in 0..anchor.count {
        if index >= blocks {
            return Err(corrupt("free list leaves its span", head_page));
        }
        let (word, bit) = ((index / 64) as usize, index % 64);
        if seen[word] & (1 << bit) != 0 {
            return Err(corrupt("free list has a cycle", head_page));
        }
        seen[word] |= 1 << bit;
        // ORDERING: Acquire pairs with the Release store (or release sequence) that last wrote this
        // state word, so the block's owner and size are those of the state seen.
        let state = BlockState::decode(span.state(index).load(Ordering::Acquire));
        if state.live {
            return Err(corrupt("live block on the free list", head_page));
        }
        index = state.low;
    }
    if index != Anchor::NULL {
        return Err(corrupt("free list longer than the free count", head_page));
    }
    Ok(())
}

fn verify_stacks(heap: &Heap<'_>, listed: &[u64; NUM_CLASSES]) -> Result<(), Error> {
    let max_spans = heap.geometry().num_pages / SPAN_PAGES;
    for (class, &expected) in listed.iter().enumerate() {
        let stack = heap.stack(class);
        let mut entries = 0;
        let mut next = stack.peek()?;
        while let Some(head) = next {
            entries += 1;
            if entries > max_spans {
                return Err(corrupt("class stack has a cycle", head));
            }
            if heap.info(head) != (PageInfo::SpanHead { class }) {
                return Err(corrupt("class stack holds a page that is not a span of its class", head));
            }
            let (span, _, _) = heap.span_parts(head, class)?;
            if !span.anchor().listed {
                return Err(corrupt("class stack holds an unlisted span", head));
            }
            next = stack.next_detached(head)?;
        }
        if entries != expected {
            return Err(corrupt("listed spans and class stack entries differ", 0));
        }
    }
    Ok(())
}
