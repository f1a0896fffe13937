//! One walk over the heap, used two ways: `stats` (tolerant, for a heap in use) and `check`
//! (strict, for a quiescent heap: every invariant below must hold). Both visit only claimed
//! pages (the page bitmap says where they are) and hold a hazard on each span they read.
//!
//! Invariants verified by the strict walk:
//! 1. Every claimed page belongs to exactly one span or large run: runs start with a head bit
//!    and continue with claimed pages without one; no page info is transient; a span's members
//!    point back to its head; a large run's interior pages have no info.
//! 2. A span's anchor is not retiring; its free list has exactly `count` blocks, each in range,
//!    none twice, all free; every other block is live or cached (no block is in transit).
//! 3. A span with free blocks is in its class list; an entirely free span is in the empty set;
//!    every summary bit above a set leaf is set.
//! 4. A large run is live, and its slack is within its pages.
//! 5. No participant has a hazard, a pending claim or release, or a hand-over; no participant
//!    or process record is left from a dead process; no waiter slot is taken.

use crate::error::Error;
use crate::heap::{Allocation, ClassStats, Heap, Owner, Stats};
use crate::layout::{
    gen, header, page, participant, status, Anchor, BlockState, Extra, Kind, PageInfo, RecordState,
    CLASS_SIZES, NUM_CLASSES, SPAN_PAGES, WAITER_SLOTS,
};
use crate::participant::Session;
use crate::primitive::Ordering;

fn corrupt(what: &'static str, page: u64) -> Error {
    Error::Corrupt { what, page }
}

impl Heap<'_> {
    /// Usage figures from one walk of the claimed pages.
    pub fn stats(&self, session: &mut Session) -> Result<Stats, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        self.survey(session, false, &mut |_| {})
    }

    /// Walks the whole heap and verifies every invariant; meaningful on a quiescent heap (no
    /// call in progress in any process). Returns the same figures as [`Heap::stats`].
    pub fn check(&self, session: &mut Session) -> Result<Stats, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        let stats = self.survey(session, true, &mut |_| {})?;
        self.check_records()?;
        Ok(stats)
    }

    /// Calls `visit` with every live allocation, page by page: a snapshot that is consistent for
    /// each allocation but may miss or include allocations made or freed during the walk.
    pub fn for_each_allocation(
        &self,
        session: &mut Session,
        mut visit: impl FnMut(Allocation),
    ) -> Result<(), Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        self.survey(session, false, &mut visit).map(|_| ())
    }

    fn survey(
        &self,
        session: &mut Session,
        strict: bool,
        visit: &mut dyn FnMut(Allocation),
    ) -> Result<Stats, Error> {
        let geo = *self.geometry();
        let bits = self.page_bits();
        let mut stats = Stats {
            data_bytes: geo.data_bytes(),
            claimed_pages: bits.count_claimed(),
            largest_free_run: bits.largest_free_run() << geo.page_shift,
            classes: [ClassStats::default(); NUM_CLASSES],
            ..Stats::default()
        };
        let mut free_bytes = (geo.num_pages - stats.claimed_pages) << geo.page_shift;
        let ensure = |ok: bool, what: &'static str, page: u64| {
            if ok || !strict {
                Ok(())
            } else {
                Err(corrupt(what, page))
            }
        };
        let mut here = bits.next_claimed(0);
        while here < geo.num_pages {
            if !bits.is_head(here) {
                ensure(false, "claimed page belongs to no span or run", here)?;
                here = bits.next_claimed(here + 1);
                continue;
            }
            match self.info(here) {
                Ok(PageInfo::SpanHead { class, retiring }) if self.check_span_head(here, class).is_ok() => {
                    ensure(retiring == 0, "span left retiring", here)?;
                    for member in here + 1..here + SPAN_PAGES {
                        ensure(
                            bits.is_claimed(member) && !bits.is_head(member),
                            "span page not claimed as part of it",
                            member,
                        )?;
                        let back = self.info(member)
                            == Ok(PageInfo::SpanMember { head: here, class, retiring: false });
                        ensure(back, "span member does not point to its head", member)?;
                    }
                    self.publish_hazard(session, here);
                    let outcome = self.survey_span(here, class, strict, &mut stats, &mut free_bytes, visit);
                    self.clear_hazard(session);
                    outcome?;
                    here = bits.next_claimed(here + SPAN_PAGES);
                }
                Ok(PageInfo::LargeHead { pages }) if pages >= 1 && pages <= geo.num_pages - here => {
                    for member in here + 1..here + pages {
                        ensure(
                            bits.is_claimed(member) && !bits.is_head(member),
                            "large run page not claimed as part of it",
                            member,
                        )?;
                        if strict {
                            ensure(
                                self.info(member) == Ok(PageInfo::Free),
                                "large run interior page has info",
                                member,
                            )?;
                        }
                    }
                    let capacity = pages << geo.page_shift;
                    let word = self.page_word(here, page::STATE).load(Ordering::Acquire);
                    let state = BlockState::decode(word);
                    match state {
                        Some(state) if state.kind == Kind::Live && state.aux <= capacity => {
                            let extra =
                                Extra::decode(self.page_word(here, page::GEN).load(Ordering::Relaxed) as u32);
                            let size = capacity - state.aux;
                            stats.live_allocations += 1;
                            stats.live_bytes = stats.live_bytes.saturating_add(size);
                            visit(Allocation::new(
                                self.make_id(geo.page_offset(here), gen::join(extra.gen_high, state.tag)),
                                geo.page_offset(here),
                                size,
                                capacity,
                                extra.alloc_type,
                                Owner(state.link as u16),
                            ));
                        }
                        _ => ensure(false, "large run recorded but not live", here)?,
                    }
                    here = bits.next_claimed(here + pages);
                }
                Ok(PageInfo::Transient { .. }) => {
                    ensure(false, "a claim or release of pages is in progress", here)?;
                    here = bits.next_claimed(here + 1);
                }
                _ => {
                    ensure(false, "claimed page belongs to no span or run", here)?;
                    here = bits.next_claimed(here + 1);
                }
            }
        }
        stats.free_bytes = free_bytes;
        if strict {
            for class in 0..NUM_CLASSES {
                if !self.class_list(class).summaries_cover_leaves() {
                    return Err(corrupt("a class list hides a span", 0));
                }
            }
            if !self.empty_set().summaries_cover_leaves() {
                return Err(corrupt("the empty set hides a span", 0));
            }
        }
        Ok(stats)
    }

    fn survey_span(
        &self,
        head: u64,
        class: usize,
        strict: bool,
        stats: &mut Stats,
        free_bytes: &mut u64,
        visit: &mut dyn FnMut(Allocation),
    ) -> Result<(), Error> {
        let ensure =
            |ok: bool, what: &'static str| if ok || !strict { Ok(()) } else { Err(corrupt(what, head)) };
        // Re-check under the hazard: the span may have been retired since the bits were read.
        if !matches!(self.info(head), Ok(PageInfo::SpanHead { class: found, retiring: 0 }) if found == class)
        {
            return ensure(false, "span changed during a strict check");
        }
        let span = self.span(head, class);
        let blocks = span.blocks();
        let anchor = span.anchor();
        ensure(anchor.count <= blocks, "span free count exceeds its blocks")?;
        if strict {
            verify_free_list(&span, anchor, head)?;
        }
        let class_size = CLASS_SIZES[class] as u64;
        let base = self.geometry().page_offset(head);
        let (mut live, mut cached) = (0, 0);
        for index in 0..blocks {
            // ORDERING: Acquire pairs with the Release store that made the block what it is, so
            // its extra word is the one of the state seen.
            let word = span.state(index).load(Ordering::Acquire);
            match BlockState::decode(word) {
                Some(state) if state.kind == Kind::Live => {
                    live += 1;
                    let size = class_size.saturating_sub(state.aux);
                    stats.live_bytes += size;
                    let extra = Extra::decode(span.extra(index).load(Ordering::Relaxed));
                    let offset = self.block_offset(base, class, index);
                    visit(Allocation::new(
                        self.make_id(offset, gen::join(extra.gen_high, state.tag)),
                        offset,
                        size,
                        class_size,
                        extra.alloc_type,
                        Owner(state.link as u16),
                    ));
                }
                Some(state) if state.kind == Kind::Cached => cached += 1,
                Some(_) => {}
                None => ensure(false, "unknown block state")?,
            }
        }
        ensure(live + cached + anchor.count == blocks, "free blocks on no list (in transit)")?;
        let slot = head / SPAN_PAGES;
        ensure(
            anchor.count == 0 || self.class_list(class).is_set(slot),
            "span with free blocks missing from its class list",
        )?;
        ensure(
            anchor.count < blocks || self.empty_set().is_set(slot),
            "entirely free span missing from the empty set",
        )?;
        let class_stats = &mut stats.classes[class];
        class_stats.spans += 1;
        class_stats.blocks += blocks;
        class_stats.live += live;
        stats.cached_blocks += cached;
        stats.live_allocations += live;
        *free_bytes += (blocks - live) * class_size;
        Ok(())
    }

    /// Invariant 5 (records), on a quiescent heap.
    fn check_records(&self) -> Result<(), Error> {
        for index in 1..self.participant_hwm() {
            let state = self.participant_state(index);
            if state.state == RecordState::Free {
                continue;
            }
            if self.participant_is_dead(index) {
                return Err(corrupt("a dead process's participant was not reclaimed", 0));
            }
            if state.state != RecordState::Active {
                return Err(corrupt("a participant record in an unknown state", 0));
            }
            for (field, what) in [
                (participant::HAZARD, "a participant holds a hazard on a quiescent heap"),
                (participant::PENDING, "a participant has a claim or release in progress"),
                (participant::HANDOVER_SLOT, "a participant has a hand-over in progress"),
            ] {
                if self.participant_word(index, field).load(Ordering::Acquire) != 0 {
                    return Err(corrupt(what, 0));
                }
            }
        }
        if self.processes().any(|record| record.state == RecordState::Dead) {
            return Err(corrupt("a dead process was not reclaimed", 0));
        }
        if self.processes().any(|record| record.state == RecordState::Registering) {
            return Err(corrupt("a process record was left half registered", 0));
        }
        let status = self.region().word(header::STATUS).load(Ordering::Acquire);
        if status >> status::WAITER_SHIFT != 0 {
            return Err(corrupt("a waiter slot is taken on a quiescent heap", 0));
        }
        if (0..WAITER_SLOTS)
            .any(|slot| self.region().word(self.geometry().waiter_word + slot).load(Ordering::Acquire) != 0)
        {
            return Err(corrupt("a waiter slot has an owner on a quiescent heap", 0));
        }
        Ok(())
    }
}

/// Walks a span's free list: `count` distinct in-range free blocks, ending in `NULL`.
fn verify_free_list(span: &crate::span::Span<'_>, anchor: Anchor, head: u64) -> Result<(), Error> {
    let blocks = span.blocks();
    let mut seen = [0u64; (Anchor::MAX_BLOCKS as usize).div_ceil(64)];
    let mut index = anchor.head;
    for _ in 0..anchor.count {
        if index >= blocks {
            return Err(corrupt("free list leaves its span", head));
        }
        let (word, bit) = ((index / 64) as usize, index % 64);
        if seen[word] & (1 << bit) != 0 {
            return Err(corrupt("free list has a cycle", head));
        }
        seen[word] |= 1 << bit;
        // ORDERING: Acquire, as in `Span::pop` (the list's links were published by pushes).
        match BlockState::decode(span.state(index).load(Ordering::Acquire)) {
            Some(state) if state.kind == Kind::Free => index = state.link,
            _ => return Err(corrupt("a block on the free list is not free", head)),
        }
    }
    if index != Anchor::NULL {
        return Err(corrupt("free list longer than the free count", head));
    }
    Ok(())
}
