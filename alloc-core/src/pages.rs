//! Pages: finding spans with free blocks, carving new spans, large runs, giving pages back, and
//! retiring entirely free spans.
//!
//! Claims and releases of page runs follow one protocol, so that a participant killed half way
//! leaves something `reclaim_dead` recognises and undoes:
//! - claim `[s, s + n)`: `PENDING := s`; `INFO[s]`: `Free → Transient(me)` (only one claimer can
//!   start a run at `s`); set the page bits ascending (head bit at `s`); set the run up;
//!   publish `INFO[s]` as a span head or large head; `PENDING := 0`.
//! - release `[s, s + n)`: raise the pages' epochs; `PENDING := s`; `INFO[s]`: head `→
//!   Transient(me)` (only one releaser); clear the page bits descending; `INFO[s] := Free`;
//!   `PENDING := 0`.
//!
//! While `INFO[s]` is `Transient(p)`, the page bits p holds are a prefix of the run starting
//! with a head bit at `s` (or nothing, if it has no head bit): reclaim clears exactly that.

use crate::crash::step;
use crate::error::Error;
use crate::heap::{AllocOptions, Allocation, Heap};
use crate::layout::{gen, page, BlockState, Extra, PageInfo, SPAN_PAGES};
use crate::participant::Session;
use crate::primitive::Ordering;

impl Heap<'_> {
    /// Takes up to `max` free blocks of `class` (at least one unless the pool has no room): from
    /// this process's hint span, else a span of the class list, else a freshly carved span. Each
    /// block is handed to `take` as (span head, index) while the session's hazard is on its
    /// span; it belongs to the caller and is not yet live or cached: `take` must mark it.
    pub(crate) fn take_blocks(
        &self,
        session: &mut Session,
        class: usize,
        max: u64,
        mut take: impl FnMut(&Self, &Session, u64, u64),
    ) -> Result<u64, Error> {
        let hint = self.hints[class].load(Ordering::Relaxed);
        if hint != 0 {
            let taken = self.take_from_span(session, (hint - 1) * SPAN_PAGES, class, max, &mut take)?;
            if taken > 0 {
                return Ok(taken);
            }
        }
        let list = self.class_list(class);
        let mut from = hint.saturating_sub(1);
        // Bounded: every slot is looked at most once per round, plus a few rounds of races.
        let mut budget = self.geometry().num_slots + 8;
        while let Some(slot) = list.find_from(from) {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let head = slot * SPAN_PAGES;
            let taken = self.take_from_span(session, head, class, max, &mut take)?;
            if taken > 0 {
                self.hints[class].store(slot + 1, Ordering::Relaxed);
                return Ok(taken);
            }
            self.unlist(session, slot, class)?;
            from = slot + 1;
        }
        loop {
            let Some(head) = self.carve_span(session, class)? else {
                return Ok(0);
            };
            // The session's hazard is on the new span; take from it, then list what is left.
            let taken = self.pop_marked(session, head, class, max, &mut take)?;
            if self.span(head, class).anchor().count > 0 {
                self.class_list(class).set(head / SPAN_PAGES);
                step!("carve/listed");
            }
            self.clear_hazard(session);
            self.hints[class].store(head / SPAN_PAGES + 1, Ordering::Relaxed);
            if taken > 0 {
                return Ok(taken);
            }
            // Others emptied the new span first: go round.
        }
    }

    /// Takes up to `max` blocks from the span at `head` if it is still a span of `class`.
    fn take_from_span(
        &self,
        session: &mut Session,
        head: u64,
        class: usize,
        max: u64,
        take: &mut impl FnMut(&Self, &Session, u64, u64),
    ) -> Result<u64, Error> {
        self.publish_hazard(session, head);
        let taken = match self.info(head) {
            Ok(PageInfo::SpanHead { class: found, retiring: false }) if found == class => {
                self.check_span_head(head, class).and_then(|()| self.pop_marked(session, head, class, max, take))
            }
            Ok(_) => Ok(0),
            Err(error) => Err(error),
        };
        self.clear_hazard(session);
        taken
    }

    /// Pops up to `max` blocks of the span at `head` and lets `take` mark each (hazard held).
    fn pop_marked(
        &self,
        session: &Session,
        head: u64,
        class: usize,
        max: u64,
        take: &mut impl FnMut(&Self, &Session, u64, u64),
    ) -> Result<u64, Error> {
        let mut popped = [0u16; crate::span::Span::MAX_BATCH];
        let mut taken = 0usize;
        let result = self.span(head, class).pop(max, |index| {
            popped[taken] = index as u16;
            taken += 1;
        });
        let result = result.map_err(|error| match error {
            Error::Corrupt { what, .. } => Error::Corrupt { what, page: head },
            other => other,
        })?;
        step!("pop/popped");
        for &index in &popped[..taken] {
            take(self, session, head, index as u64);
        }
        Ok(result)
    }

    /// Clears span `slot`'s bit in `class`'s list (it was found full, or is no longer a span
    /// of the class), then looks again and sets it back if the span has free blocks after all.
    fn unlist(&self, session: &mut Session, slot: u64, class: usize) -> Result<(), Error> {
        let head = slot * SPAN_PAGES;
        self.publish_hazard(session, head);
        let list = self.class_list(class);
        list.clear(slot);
        step!("unlist/cleared");
        let relist = match self.info(head) {
            Ok(PageInfo::SpanHead { class: found, retiring: false }) if found == class => {
                self.check_span_head(head, class).is_ok() && self.span(head, class).anchor().count > 0
            }
            _ => false,
        };
        if relist {
            list.set(slot);
        }
        self.clear_hazard(session);
        Ok(())
    }

    /// Claims a free span slot and sets it up as a span of `class` with every block free.
    /// Returns its head page with the session's hazard on it, or `None` if no slot is free.
    fn carve_span(&self, session: &mut Session, class: usize) -> Result<Option<u64>, Error> {
        let slots = self.geometry().num_slots;
        let bits = self.page_bits();
        let mut hint = self.slot_hint.load(Ordering::Relaxed);
        for _ in 0..slots.min(64) + 1 {
            let Some(slot) = bits.find_slot(hint, slots) else {
                return Ok(None);
            };
            hint = slot + 1;
            let head = slot * SPAN_PAGES;
            self.publish_hazard(session, head);
            if !self.claim_run(session, head, SPAN_PAGES) {
                self.clear_hazard(session);
                continue;
            }
            self.slot_hint.store(slot + 1, Ordering::Relaxed);
            let base = (head..head + SPAN_PAGES)
                .map(|page| self.page_word(page, page::EPOCH).load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            self.span(head, class).init(base);
            for member in head + 1..head + SPAN_PAGES {
                self.page_word(member, page::INFO)
                    .store(PageInfo::SpanMember { head, class, retiring: false }.encode(), Ordering::Relaxed);
            }
            step!("carve/initialised");
            self.set_info(head, PageInfo::SpanHead { class, retiring: false });
            self.clear_pending(session);
            step!("carve/published");
            return Ok(Some(head));
        }
        Ok(None)
    }

    /// Claims pages `head..head + pages` for the session: marks `INFO[head]` transient, then
    /// sets the page bits. On `false` nothing is held.
    fn claim_run(&self, session: &Session, head: u64, pages: u64) -> bool {
        self.set_pending(session, head);
        let info = self.page_word(head, page::INFO);
        let transient = PageInfo::Transient { participant: session.participant }.encode();
        // ORDERING: Acquire pairs with the Release that last freed this page's info.
        if info.compare_exchange(PageInfo::Free.encode(), transient, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.clear_pending(session);
            return false;
        }
        step!("claim/marked");
        if self.page_bits().try_claim(head, head + pages).is_err() {
            step!("claim/conflict");
            self.set_info(head, PageInfo::Free);
            self.clear_pending(session);
            return false;
        }
        step!("claim/claimed");
        true
    }

    /// Allocates a run of whole pages for `size` bytes; `None` if no run is free.
    pub(crate) fn alloc_large(
        &self,
        session: &mut Session,
        size: u64,
        options: AllocOptions,
    ) -> Result<Option<Allocation>, Error> {
        let geo = *self.geometry();
        let pages = size.div_ceil(geo.page_bytes()).max(1);
        let bits = self.page_bits();
        let mut hint = self.page_hint.load(Ordering::Relaxed);
        for _ in 0..64 {
            let Some(head) = bits.find_run(pages, hint) else {
                return Ok(None);
            };
            hint = head + 1;
            if !self.claim_run(session, head, pages) {
                continue;
            }
            self.page_hint.store(head + pages, Ordering::Relaxed);
            let generation = gen::next(self.page_word(head, page::EPOCH).load(Ordering::Relaxed));
            let extra = Extra { alloc_type: options.alloc_type, gen_high: gen::high(generation) };
            self.page_word(head, page::GEN).store(extra.encode() as u64, Ordering::Relaxed);
            let capacity = pages << geo.page_shift;
            let owner = options.owner.unwrap_or(session.owner());
            let live = BlockState::live(owner.0 as u64, capacity - size, gen::tag(generation));
            self.page_word(head, page::WORD).store(live.encode(), Ordering::Relaxed);
            step!("large/initialised");
            self.set_info(head, PageInfo::LargeHead { pages });
            self.clear_pending(session);
            step!("large/published");
            let offset = geo.page_offset(head);
            return Ok(Some(Allocation {
                id: self.make_id(offset, generation),
                offset,
                size,
                capacity,
                alloc_type: options.alloc_type,
                owner,
            }));
        }
        Ok(None)
    }

    /// Gives back the pages of the large run at `head`, whose state word is already free (its
    /// last generation `generation`). Anyone may do it (the freer, or a reclaimer helping a
    /// dead freer); only one does.
    pub(crate) fn finish_large_release(&self, session: &Session, head: u64, pages: u64, generation: u64) {
        // The epoch first: every generation issued in this page must be below the next one.
        self.page_word(head, page::EPOCH).fetch_max(generation, Ordering::Relaxed);
        self.release_run(session, head, PageInfo::LargeHead { pages }, pages);
    }

    /// Releases the run at `head` whose info reads `expected`: marks it transient (only one
    /// participant can), clears its bits, frees its info. Epochs must already be raised.
    pub(crate) fn release_run(&self, session: &Session, head: u64, expected: PageInfo, pages: u64) -> bool {
        self.set_pending(session, head);
        let transient = PageInfo::Transient { participant: session.participant }.encode();
        // ORDERING: AcqRel: acquires the run from whoever published it, releases our marking.
        if self
            .page_word(head, page::INFO)
            .compare_exchange(expected.encode(), transient, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.clear_pending(session);
            return false;
        }
        step!("release/marked");
        self.page_bits().release(head, pages);
        step!("release/cleared");
        self.set_info(head, PageInfo::Free);
        self.clear_pending(session);
        true
    }

    /// Retires one entirely free span, giving its pages back; `false` if none could be.
    pub(crate) fn retire_one(&self, session: &mut Session) -> Result<bool, Error> {
        if !self.can_heavy_fence() {
            return Ok(false);
        }
        let empty = self.empty_set();
        let mut from = self.empty_hint.load(Ordering::Relaxed);
        let mut budget = self.geometry().num_slots + 8;
        while let Some(slot) = empty.find_from(from) {
            if budget == 0 {
                break;
            }
            budget -= 1;
            from = slot + 1;
            let head = slot * SPAN_PAGES;
            let class = match self.info(head) {
                Ok(PageInfo::SpanHead { class, retiring: false }) if self.check_span_head(head, class).is_ok() => class,
                _ => {
                    self.unmark_empty(slot);
                    continue;
                }
            };
            if self.try_retire(session, head, class)? {
                self.empty_hint.store(slot + 1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Clears `slot`'s bit in the empty set, then sets it back if the slot holds an entirely free
    /// span after all (a free that emptied it may have raced with us).
    fn unmark_empty(&self, slot: u64) {
        let empty = self.empty_set();
        empty.clear(slot);
        let head = slot * SPAN_PAGES;
        if let Ok(PageInfo::SpanHead { class, retiring: false }) = self.info(head) {
            if self.check_span_head(head, class).is_ok() {
                let span = self.span(head, class);
                if span.anchor().count == span.blocks() {
                    empty.set(slot);
                }
            }
        }
    }

    /// Retires the span at `head` if it is entirely free and nobody has a hazard on it.
    fn try_retire(&self, session: &mut Session, head: u64, class: usize) -> Result<bool, Error> {
        let span = self.span(head, class);
        let slot = head / SPAN_PAGES;
        self.set_pending(session, head);
        if !span.try_retire() {
            self.clear_pending(session);
            self.unmark_empty(slot);
            return Ok(false);
        }
        step!("retire/anchor-retiring");
        self.mark_retiring(head, class, true);
        step!("retire/info-retiring");
        if let Err(error) = self.heavy_fence() {
            self.back_out_retirement(session, head, class);
            return Err(error);
        }
        if self.hazard_on(session.participant, head, SPAN_PAGES, false) {
            step!("retire/hazard-found");
            self.back_out_retirement(session, head, class);
            return Ok(false);
        }
        step!("retire/no-hazard");
        // The span is ours alone and nobody can be looking at its in-span words.
        let max_gen = span.max_gen();
        for page in head..head + SPAN_PAGES {
            self.page_word(page, page::EPOCH).fetch_max(max_gen, Ordering::Relaxed);
        }
        step!("retire/epochs-raised");
        let retiring = PageInfo::SpanHead { class, retiring: true };
        let transient = PageInfo::Transient { participant: session.participant }.encode();
        // ORDERING: AcqRel, as in `release_run`. Only we change a retiring span's info.
        if self
            .page_word(head, page::INFO)
            .compare_exchange(retiring.encode(), transient, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // A reclaimer took our retirement for a dead one's and backed it out.
            self.clear_pending(session);
            return Ok(false);
        }
        step!("retire/marked");
        for member in head + 1..head + SPAN_PAGES {
            self.page_word(member, page::INFO).store(PageInfo::Free.encode(), Ordering::Relaxed);
        }
        self.class_list(class).clear(slot);
        self.empty_set().clear(slot);
        step!("retire/unlisted");
        self.page_bits().release(head, SPAN_PAGES);
        step!("retire/released");
        self.set_info(head, PageInfo::Free);
        self.clear_pending(session);
        Ok(true)
    }

    /// Sets or clears the `retiring` flag in the info of every page of the span at `head`.
    pub(crate) fn mark_retiring(&self, head: u64, class: usize, retiring: bool) {
        self.page_word(head, page::INFO).store(PageInfo::SpanHead { class, retiring }.encode(), Ordering::Release);
        for member in head + 1..head + SPAN_PAGES {
            let info = PageInfo::SpanMember { head, class, retiring };
            self.page_word(member, page::INFO).store(info.encode(), Ordering::Release);
        }
    }

    /// Takes back a retirement that cannot go on: the span stays, entirely free and listed.
    pub(crate) fn back_out_retirement(&self, session: &Session, head: u64, class: usize) {
        self.mark_retiring(head, class, false);
        step!("back-out/info-cleared");
        self.span(head, class).back_out_retire();
        step!("back-out/anchor-normal");
        self.class_list(class).set(head / SPAN_PAGES);
        self.empty_set().set(head / SPAN_PAGES);
        self.clear_pending(session);
    }
}
