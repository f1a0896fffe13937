//! Giving back what dead processes held or left half done, online, while others keep working.
//!
//! The host says which processes are dead (alloc-shm asks the kernel about each record's pid and
//! start time); the core does the rest, in this order:
//! 1. Mark each dead process's record `Dead` (so no hand-over to it succeeds any more).
//! 2. For each participant of a dead process: finish or undo its *pending* claim, release or
//!    retirement; *heal* the span its *hazard* names (blocks it was popping or pushing go back
//!    on the list); redo the check of a *hand-over* it was making; release its record.
//! 3. Clear the waiter slots dead processes held.
//! 4. Walk the heap (claimed pages only, one span at a time under our own hazard): free every
//!    live allocation whose owner is not an active process, return every cached block a dead
//!    process's cache held, and finish large releases left half done.
//! 5. Release the records of dead processes none of whose participants is left.
//!
//! Every step is a compare-exchange that validates what it changes, so several reclaimers may
//! run at once, and alongside normal traffic. A step that cannot be done safely yet (a span a
//! live participant has a hazard on) is *deferred*: the dead participant's record stays, and the
//! next `reclaim_dead` tries again.
//!
//! Healing a span `X` (for a dead participant whose hazard named it): with our own hazard on
//! `X`, after the heavy fence, and only if no live participant has a hazard on `X`: read the
//! anchor `A`, walk its list, and collect the free blocks that are on no list ("orphans"),
//! skipping any whose last pusher is live with a hazard on `X` (a push in progress). Link the
//! orphans into a chain (each by a compare-exchange from the value read) ending at `A`'s head,
//! and swing the anchor from `A` to the chain. Any pop or push that completes meanwhile changes
//! the anchor and fails the swing; blocks popped before `A` was read were popped by a
//! participant whose hazard the scan saw (it publishes it first and keeps it until the blocks
//! are marked), so they are never taken for orphans.

use crate::crash::step;
use crate::error::Error;
use crate::heap::{AllocId, Heap, Owner, Place, Wake};
use crate::layout::{
    gen, header, page, participant, status, Anchor, BlockState, Extra, Kind, PageInfo, ParticipantState, ProcessState,
    RecordState, SPAN_PAGES, WAITER_SLOTS,
};
use crate::participant::{ProcessRecord, Session};
use crate::primitive::{fence, Ordering};

/// What [`Heap::reclaim_dead`] gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Processes found dead (now, or by an earlier pass that did not finish).
    pub dead_processes: u64,
    /// Process records released.
    pub released_processes: u64,
    /// Participant records of dead processes resolved and released.
    pub participants: u64,
    /// Live allocations of dead owners that were freed.
    pub allocations: u64,
    /// Their requested bytes.
    pub bytes: u64,
    /// Free blocks held in dead processes' caches that went back to their spans.
    pub cached_blocks: u64,
    /// Blocks found in transit (popped or pushed half way by the dead) put back on their lists.
    pub orphan_blocks: u64,
    /// Claims, releases and retirements left half done by the dead that were finished or undone.
    pub pending: u64,
    /// Waiter slots dead processes held, cleared.
    pub waiter_slots: u64,
    /// Work that could not be done yet (a live participant was using the span): call again.
    pub deferred: u64,
    /// Whether waiters must be woken (as for a free).
    pub wake: bool,
}

/// Whether a dead participant's leftovers are all dealt with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    Done,
    Deferred,
}

impl Heap<'_> {
    /// Gives back everything the processes `is_dead` says are gone held or left half done (see
    /// the module docs). [`Owner::POOL`]'s allocations are never touched. `report` sees each
    /// freed allocation's id, owner and size.
    pub fn reclaim_dead(
        &self,
        session: &mut Session,
        mut is_dead: impl FnMut(&ProcessRecord) -> bool,
        mut report: impl FnMut(AllocId, Owner, u64),
    ) -> Result<Reclaimed, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        let mut reclaimed = Reclaimed::default();
        // 1. Mark the dead.
        let mut dead_any = false;
        for record in self.processes() {
            if record.owner == session.owner() {
                continue;
            }
            if record.state == RecordState::Active && is_dead(&record) {
                self.mark_dead(&record);
            }
            if self.process_record(record.owner).is_some_and(|r| r.state == RecordState::Dead) {
                reclaimed.dead_processes += 1;
                dead_any = true;
            }
        }
        if !dead_any {
            return Ok(reclaimed);
        }
        // 2. Their participants.
        for index in 1..self.participant_hwm() {
            if index == session.participant || !self.participant_is_dead(index) {
                continue;
            }
            match self.resolve_participant(session, index, &mut reclaimed)? {
                Resolved::Done => reclaimed.participants += 1,
                Resolved::Deferred => reclaimed.deferred += 1,
            }
        }
        // 3. Their waiter slots.
        reclaimed.waiter_slots = self.clear_dead_waiters();
        // 4. What they owned and held.
        self.walk_for_dead(session, &mut reclaimed, &mut report)?;
        // 5. Their records.
        for record in self.processes() {
            if record.state == RecordState::Dead && !self.has_participants(record.owner) {
                let dead = ProcessState { state: RecordState::Dead, incarnation: record.incarnation, pid: record.identity.pid };
                let free = ProcessState { state: RecordState::Free, ..dead };
                // ORDERING: Release: everything we gave back happens before the record's reuse.
                if self
                    .process_word(record.owner.0 as u64, crate::layout::process::STATE)
                    .compare_exchange(dead.encode(), free.encode(), Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    reclaimed.released_processes += 1;
                }
            }
        }
        if reclaimed.allocations + reclaimed.cached_blocks + reclaimed.orphan_blocks + reclaimed.pending > 0
            && self.wake_if_waiting() == Wake::Waiters
        {
            reclaimed.wake = true;
        }
        Ok(reclaimed)
    }

    fn mark_dead(&self, record: &ProcessRecord) {
        let active = ProcessState { state: RecordState::Active, incarnation: record.incarnation, pid: record.identity.pid };
        let dead = ProcessState { state: RecordState::Dead, ..active };
        // ORDERING: SeqCst: a hand-over that re-reads this record after its own change (SeqCst
        // fence) either sees it dead or is seen by the walk below.
        let _ = self
            .process_word(record.owner.0 as u64, crate::layout::process::STATE)
            .compare_exchange(active.encode(), dead.encode(), Ordering::SeqCst, Ordering::Relaxed);
    }

    fn has_participants(&self, owner: Owner) -> bool {
        (1..self.participant_hwm()).any(|index| {
            let state = self.participant_state(index);
            state.state != RecordState::Free && state.process == owner.0 as u64
        })
    }

    /// Finishes or undoes what dead participant `index` left, then releases its record.
    fn resolve_participant(&self, session: &mut Session, index: u64, reclaimed: &mut Reclaimed) -> Result<Resolved, Error> {
        if self.resolve_work(session, index, reclaimed, false)? == Resolved::Deferred {
            return Ok(Resolved::Deferred);
        }
        let state = self.participant_state(index);
        let free = ParticipantState { state: RecordState::Free, process: 0 };
        // ORDERING: Release: what we did for it happens before the record's reuse.
        let _ = self.participant_word(index, participant::STATE).compare_exchange(
            state.encode(),
            free.encode(),
            Ordering::Release,
            Ordering::Relaxed,
        );
        Ok(Resolved::Done)
    }

    /// Finishes or undoes the pending claim/release/retirement, the span in transit and the
    /// hand-over participant `index` (which does nothing any more) left, clearing each word
    /// once it is dealt with.
    pub(crate) fn resolve_work(
        &self,
        session: &mut Session,
        index: u64,
        reclaimed: &mut Reclaimed,
        offline: bool,
    ) -> Result<Resolved, Error> {
        let pending = self.participant_word(index, participant::PENDING).load(Ordering::Acquire);
        if pending != 0 {
            if self.resolve_pending(session, index, pending - 1)? == Resolved::Deferred {
                return Ok(Resolved::Deferred);
            }
            reclaimed.pending += 1;
            self.participant_word(index, participant::PENDING).store(0, Ordering::Release);
        }
        // Its own hazard must not stop the healing of its span: take it off first, and put it
        // back if the span cannot be healed yet.
        let hazard = self.participant_word(index, participant::HAZARD).swap(0, Ordering::AcqRel);
        if hazard != 0 {
            match self.heal_page(session, hazard - 1, offline)? {
                None => {
                    self.participant_word(index, participant::HAZARD).store(hazard, Ordering::Release);
                    return Ok(Resolved::Deferred);
                }
                Some(orphans) => reclaimed.orphan_blocks += orphans,
            }
        }
        let handover = self.participant_word(index, participant::HANDOVER_SLOT).load(Ordering::Acquire);
        if handover != 0 {
            let generation = self.participant_word(index, participant::HANDOVER_GEN).load(Ordering::Acquire);
            let target = self.participant_word(index, participant::HANDOVER_TARGET).load(Ordering::Acquire);
            let id = AllocId::new(handover - 1, generation);
            if self.recheck_handover(session, id, target)? {
                reclaimed.allocations += 1;
            }
            self.participant_word(index, participant::HANDOVER_SLOT).store(0, Ordering::Release);
        }
        Ok(Resolved::Done)
    }

    /// Finishes or undoes the claim, release or retirement a dead participant `dead` owned at
    /// page `first`.
    fn resolve_pending(&self, session: &mut Session, dead: u64, first: u64) -> Result<Resolved, Error> {
        if first >= self.geometry().num_pages {
            return Err(Error::Corrupt { what: "pending page out of range", page: first });
        }
        match self.info(first)? {
            PageInfo::Transient { participant } if participant == dead => {
                // Take the run over (only one reclaimer does), then release the prefix of page
                // bits the dead one held. Its epochs were raised before it was marked.
                self.set_pending(session, first);
                let mine = PageInfo::Transient { participant: session.participant };
                // ORDERING: AcqRel: acquires the dead one's work on the run, releases ours.
                if self
                    .page_word(first, page::INFO)
                    .compare_exchange(
                        PageInfo::Transient { participant: dead }.encode(),
                        mine.encode(),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    let bits = self.page_bits();
                    let end = bits.held_prefix(first, self.geometry().num_pages);
                    if end > first {
                        bits.release(first, end - first);
                    }
                    for member in first + 1..end.min(first + SPAN_PAGES) {
                        // A span being set up or given back may have member info already.
                        if matches!(self.info(member)?, PageInfo::SpanMember { head, .. } if head == first) {
                            self.page_word(member, page::INFO).store(PageInfo::Free.encode(), Ordering::Relaxed);
                        }
                    }
                    self.set_info(first, PageInfo::Free);
                    step!("reclaim/transient-released");
                }
                self.clear_pending(session);
                Ok(Resolved::Done)
            }
            PageInfo::SpanHead { class, retiring: true } => {
                // A retirement the dead one started and never finished (it had not yet taken
                // the pages): the span stays.
                self.check_span_head(first, class)?;
                self.back_out_retirement(session, first, class);
                Ok(Resolved::Done)
            }
            PageInfo::LargeHead { pages } => {
                let state = self.page_word(first, page::WORD).load(Ordering::Acquire);
                if let Some(decoded) = BlockState::decode(state).filter(|s| s.kind == Kind::Free) {
                    if pages == 0 || pages > self.geometry().num_pages - first {
                        return Err(Error::Corrupt { what: "large run out of range", page: first });
                    }
                    let extra = Extra::decode(self.page_word(first, page::GEN).load(Ordering::Relaxed) as u32);
                    self.finish_large_release(session, first, pages, gen::join(extra.gen_high, decoded.tag));
                }
                Ok(Resolved::Done)
            }
            // The claim or release completed (and the page may be in use again).
            _ => Ok(Resolved::Done),
        }
    }

    /// Heals the span (if any) that `page` belongs to; `None` if that must wait. Returns the
    /// number of orphaned blocks put back.
    fn heal_page(&self, session: &mut Session, page: u64, offline: bool) -> Result<Option<u64>, Error> {
        if page >= self.geometry().num_pages {
            return Err(Error::Corrupt { what: "hazard page out of range", page });
        }
        let head = match self.info(page)? {
            PageInfo::SpanHead { .. } => page,
            PageInfo::SpanMember { head, .. } => head,
            _ => return Ok(Some(0)),
        };
        self.heal_span(session, head, offline)
    }

    /// Heals the span at `head` (see the module docs); `None` if it must wait. `offline`: nobody
    /// else is inside an operation (repair), so other participants' hazards guard nothing.
    pub(crate) fn heal_span(&self, session: &mut Session, head: u64, offline: bool) -> Result<Option<u64>, Error> {
        self.publish_hazard(session, head);
        let outcome = self.heal_span_hazarded(session, head, offline);
        self.clear_hazard(session);
        outcome
    }

    fn heal_span_hazarded(&self, session: &Session, head: u64, offline: bool) -> Result<Option<u64>, Error> {
        let class = match self.info(head)? {
            PageInfo::SpanHead { class, retiring: false } => class,
            // A retiring span is its retirer's (or, if it died, its pending's) business.
            PageInfo::SpanHead { retiring: true, .. } => return Ok(None),
            _ => return Ok(Some(0)),
        };
        self.check_span_head(head, class)?;
        if !offline {
            self.heavy_fence()?;
            if self.hazard_on(session.participant, head, SPAN_PAGES, true) {
                return Ok(None);
            }
        }
        let span = self.span(head, class);
        let blocks = span.blocks();
        for _attempt in 0..8 {
            let current = span.anchor_word().load(Ordering::Acquire);
            let anchor = Anchor::decode(current);
            if anchor.retiring {
                return Ok(None);
            }
            let Some(on_list) = self.listed_blocks(&span, anchor) else {
                // The list changed under the walk; look again.
                continue;
            };
            // Collect the orphans: free, on no list, and not a live participant's push.
            let mut orphans = [0u16; Anchor::MAX_BLOCKS as usize];
            let mut words = [0u64; Anchor::MAX_BLOCKS as usize];
            let mut count = 0;
            for index in 0..blocks {
                if on_list[(index / 64) as usize] & (1 << (index % 64)) != 0 {
                    continue;
                }
                // ORDERING: Acquire pairs with the Release stores to state words, so a pusher's
                // hazard (published before its store) is visible when we look at it below.
                let word = span.state(index).load(Ordering::Acquire);
                let Some(state) = BlockState::decode(word).filter(|s| s.kind == Kind::Free) else {
                    continue;
                };
                if !offline && state.aux != 0 && state.aux != session.participant && self.pushing_into(state.aux, head) {
                    continue;
                }
                orphans[count] = index as u16;
                words[count] = word;
                count += 1;
            }
            if count == 0 {
                self.relist_span(head, class, anchor);
                return Ok(Some(0));
            }
            // Chain them (each by a CAS from the value read), ending at the list's head.
            for at in 0..count {
                let next = if at + 1 < count { orphans[at + 1] as u64 } else { anchor.head };
                let tag = words[at] >> 28;
                let linked = BlockState::free(next, session.participant, tag).encode();
                // ORDERING: Release, like every store to a state word (see `Span::pop`).
                if span.state(orphans[at] as u64).compare_exchange(words[at], linked, Ordering::Release, Ordering::Relaxed).is_err() {
                    // A live participant took it: it was not an orphan after all.
                    return Ok(None);
                }
                words[at] = linked;
            }
            step!("heal/chained");
            let healed = Anchor { head: orphans[0] as u64, count: anchor.count + count as u64, ..anchor }.bumped();
            // ORDERING: AcqRel: publishes the chain's links (as a push does) and acquires the
            // anchor's history.
            if span.anchor_word().compare_exchange(current, healed.encode(), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                step!("heal/swung");
                self.relist_span(head, class, healed);
                return Ok(Some(count as u64));
            }
        }
        Ok(None)
    }

    /// Which blocks are on the list of `anchor` (one bit each); `None` if the walk met a block
    /// that is not free or left the span (the list changed under it).
    fn listed_blocks(&self, span: &crate::span::Span<'_>, anchor: Anchor) -> Option<[u64; 64]> {
        let blocks = span.blocks();
        let mut on_list = [0u64; 64];
        let mut index = anchor.head;
        for _ in 0..anchor.count {
            if index >= blocks || on_list[(index / 64) as usize] & (1 << (index % 64)) != 0 {
                return None;
            }
            on_list[(index / 64) as usize] |= 1 << (index % 64);
            // ORDERING: Acquire, as in `Span::pop` (the list's links were published by pushes).
            let state = BlockState::decode(span.state(index).load(Ordering::Acquire)).filter(|s| s.kind == Kind::Free)?;
            index = state.link;
        }
        Some(on_list)
    }

    /// Whether participant `pusher` is alive and has a hazard on the span at `head`.
    fn pushing_into(&self, pusher: u64, head: u64) -> bool {
        if pusher >= self.geometry().table_size || self.participant_is_dead(pusher) {
            return false;
        }
        if self.participant_state(pusher).state != RecordState::Active {
            return false;
        }
        // ORDERING: Acquire, as in `hazard_on`.
        let hazard = self.participant_word(pusher, participant::HAZARD).load(Ordering::Acquire);
        hazard != 0 && (head..head + SPAN_PAGES).contains(&(hazard - 1))
    }

    /// Makes the span's list memberships match its anchor (idempotent).
    fn relist_span(&self, head: u64, class: usize, anchor: Anchor) {
        let slot = head / SPAN_PAGES;
        if anchor.count > 0 {
            self.class_list(class).set(slot);
        }
        if anchor.count == self.blocks_of(class) {
            self.empty_set().set(slot);
        }
    }

    /// Clears the waiter slots of processes that are not active; returns how many.
    fn clear_dead_waiters(&self) -> u64 {
        let mut cleared = 0;
        for slot in 0..WAITER_SLOTS {
            let owner_word = self.region().word(self.geometry().waiter_word + slot);
            let owner = owner_word.load(Ordering::Acquire);
            if owner == 0 || self.process_record(Owner(owner as u16)).is_some_and(|r| r.state == RecordState::Active) {
                continue;
            }
            // The bit first: the slot stays ours (its dead owner's) until the owner word is
            // cleared, so nobody else sets this bit meanwhile.
            // ORDERING: SeqCst, the order of the status word's waiter bits everywhere.
            self.region().word(header::STATUS).fetch_and(!(1 << (slot as u32 + status::WAITER_SHIFT)), Ordering::SeqCst);
            if owner_word.compare_exchange(owner, 0, Ordering::Release, Ordering::Relaxed).is_ok() {
                cleared += 1;
            }
        }
        cleared
    }

    /// Frees live allocations whose owner is not an active process, returns blocks held by
    /// caches of processes that are not active, and finishes large releases left half done.
    fn walk_for_dead(
        &self,
        session: &mut Session,
        reclaimed: &mut Reclaimed,
        report: &mut impl FnMut(AllocId, Owner, u64),
    ) -> Result<(), Error> {
        let geo = *self.geometry();
        let bits = self.page_bits();
        let mut page = bits.next_claimed(0);
        while page < geo.num_pages {
            if !bits.is_head(page) {
                page = bits.next_claimed(page + 1);
                continue;
            }
            match self.info(page)? {
                PageInfo::SpanHead { class, retiring: false } if self.check_span_head(page, class).is_ok() => {
                    self.publish_hazard(session, page);
                    let outcome = self.reclaim_in_span(session, page, class, reclaimed, report);
                    self.clear_hazard(session);
                    outcome?;
                    page = bits.next_claimed(page + SPAN_PAGES);
                }
                PageInfo::LargeHead { pages } if pages >= 1 && pages <= geo.num_pages - page => {
                    self.reclaim_large(session, page, pages, reclaimed, report)?;
                    page = bits.next_claimed(page + pages);
                }
                _ => page = bits.next_claimed(page + 1),
            }
        }
        Ok(())
    }

    fn owner_gone(&self, owner: u64) -> bool {
        owner != 0 && self.process_record(Owner(owner as u16)).is_none_or(|r| r.state != RecordState::Active)
    }

    fn reclaim_in_span(
        &self,
        session: &Session,
        head: u64,
        class: usize,
        reclaimed: &mut Reclaimed,
        report: &mut impl FnMut(AllocId, Owner, u64),
    ) -> Result<(), Error> {
        // Re-check under the hazard: the span may have been retired since the walk saw it.
        if self.info(head)? != (PageInfo::SpanHead { class, retiring: false }) {
            return Ok(());
        }
        let span = self.span(head, class);
        let base = self.geometry().page_offset(head);
        for index in 0..span.blocks() {
            let state = span.state(index);
            // ORDERING: Acquire pairs with the Release store that made the block what it is.
            let word = state.load(Ordering::Acquire);
            let Some(decoded) = BlockState::decode(word) else { continue };
            let give_back = match decoded.kind {
                Kind::Live | Kind::Cached => self.owner_gone(decoded.link),
                Kind::Free => false,
            };
            if !give_back {
                continue;
            }
            let freed = BlockState::free(BlockState::NULL, session.participant, decoded.tag);
            // ORDERING: Acquire: the block is ours after whatever its last holder did.
            if state.compare_exchange(word, freed.encode(), Ordering::Acquire, Ordering::Relaxed).is_err() {
                continue;
            }
            step!("reclaim/block-taken");
            self.push_blocks(session, head, class, &[index as u16], &[decoded.tag]);
            if decoded.kind == Kind::Live {
                let extra = Extra::decode(self.block_extra(base, class, index).load(Ordering::Relaxed));
                let offset = self.block_offset(base, class, index);
                let size = self.capacity_of(Place::Small { head, class, index, base }).saturating_sub(decoded.aux);
                reclaimed.allocations += 1;
                reclaimed.bytes += size;
                report(self.make_id(offset, gen::join(extra.gen_high, decoded.tag)), Owner(decoded.link as u16), size);
            } else {
                reclaimed.cached_blocks += 1;
            }
        }
        Ok(())
    }

    fn reclaim_large(
        &self,
        session: &Session,
        head: u64,
        pages: u64,
        reclaimed: &mut Reclaimed,
        report: &mut impl FnMut(AllocId, Owner, u64),
    ) -> Result<(), Error> {
        let state = self.page_word(head, page::WORD);
        let word = state.load(Ordering::Acquire);
        let Some(decoded) = BlockState::decode(word) else { return Ok(()) };
        let extra = Extra::decode(self.page_word(head, page::GEN).load(Ordering::Relaxed) as u32);
        let generation = gen::join(extra.gen_high, decoded.tag);
        match decoded.kind {
            Kind::Live if self.owner_gone(decoded.link) => {
                let freed = BlockState::free(0, session.participant, decoded.tag);
                // ORDERING: Acquire: the run is ours after its last user's accesses.
                if state.compare_exchange(word, freed.encode(), Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    step!("reclaim/large-taken");
                    self.finish_large_release(session, head, pages, generation);
                    let size = (pages << self.geometry().page_shift).saturating_sub(decoded.aux);
                    reclaimed.allocations += 1;
                    reclaimed.bytes += size;
                    report(self.make_id(self.geometry().page_offset(head), generation), Owner(decoded.link as u16), size);
                }
            }
            // A free whose release was not finished (its freer died, or is slow: only one of us
            // does it).
            Kind::Free if self.info(head)? == (PageInfo::LargeHead { pages }) => {
                self.finish_large_release(session, head, pages, generation);
                reclaimed.pending += 1;
            }
            _ => {}
        }
        Ok(())
    }

    // ----- hand-over ---------------------------------------------------------------------------

    /// Records a hand-over of `id` to `target` in the session's record, before the change.
    pub(crate) fn begin_handover(&self, session: &Session, id: AllocId, target: ProcessRecord) {
        let word = target.owner.0 as u64 | target.incarnation << 16;
        self.participant_word(session.participant, participant::HANDOVER_TARGET).store(word, Ordering::Relaxed);
        self.participant_word(session.participant, participant::HANDOVER_GEN).store(id.generation(), Ordering::Relaxed);
        // ORDERING: SeqCst: the record is complete before the owner changes (a reclaimer that
        // sees the new owner and not the target alive finds this).
        self.participant_word(session.participant, participant::HANDOVER_SLOT).store(id.slot() + 1, Ordering::SeqCst);
    }

    pub(crate) fn end_handover(&self, session: &Session) {
        self.participant_word(session.participant, participant::HANDOVER_SLOT).store(0, Ordering::Release);
    }

    /// Whether `owner` is still the active process of incarnation `incarnation`.
    fn still_active(&self, owner: Owner, incarnation: u64) -> bool {
        self.process_record(owner).is_some_and(|r| r.state == RecordState::Active && r.incarnation == incarnation)
    }

    /// After the owner of `id` (at `place`, state word `state`) became `target`: if `target` is
    /// no longer the same active process, free the allocation as `reclaim_dead` would have (its
    /// walk may have passed the allocation before the change) and report the failed hand-over.
    pub(crate) fn finish_handover(
        &self,
        session: &Session,
        id: AllocId,
        place: Place,
        state: &crate::primitive::AtomicU64,
        target: ProcessRecord,
        extra: Extra,
    ) -> Result<(), Error> {
        // ORDERING: SeqCst fence pairs with `mark_dead`'s SeqCst exchange (Dekker): either the
        // reclaimer's walk (after its mark) sees the new owner, or we see the record changed.
        fence(Ordering::SeqCst);
        if self.still_active(target.owner, target.incarnation) {
            return Ok(());
        }
        self.free_if_owned(session, id, place, state, target.owner.0 as u64, extra);
        Err(Error::InvalidOwner { owner: target.owner.0 })
    }

    /// Frees `id` if it is still live and owned by process `owner`; whether it did.
    fn free_if_owned(
        &self,
        session: &Session,
        id: AllocId,
        place: Place,
        state: &crate::primitive::AtomicU64,
        owner: u64,
        extra: Extra,
    ) -> bool {
        let word = state.load(Ordering::Acquire);
        match BlockState::decode(word) {
            Some(decoded)
                if decoded.kind == Kind::Live && decoded.link == owner && decoded.tag == gen::tag(id.generation()) =>
            {
                self.release(session, id, place, state, word, decoded, extra).is_ok()
            }
            _ => false,
        }
    }

    /// A dead participant was handing `id` over to the process in `target` (index and
    /// incarnation): redo its check, and free the allocation if the target is gone.
    fn recheck_handover(&self, session: &mut Session, id: AllocId, target: u64) -> Result<bool, Error> {
        let owner = Owner(target as u16);
        if self.still_active(owner, target >> 16) {
            return Ok(false);
        }
        let Ok(page) = self.page_of(id) else { return Ok(false) };
        self.publish_hazard(session, page);
        let freed = match self.locate(id, page).and_then(|(place, state)| {
            self.live_state(id, place, state).map(|(_, _, extra)| (place, state, extra))
        }) {
            Ok((place, state, extra)) => self.free_if_owned(session, id, place, state, owner.0 as u64, extra),
            Err(_) => false,
        };
        self.clear_hazard(session);
        Ok(freed)
    }
}
