//! Giving back what dead processes held or left half done, online, while others keep working.
//!
//! The host says which processes are dead (alloc-shm asks the kernel about each record's pid and
//! start time); the core does the rest, in this order:
//! 1. Mark each dead process's record `Dead` (a compare-exchange from the very record that was
//!    judged), then a full fence (so no hand-over to it can slip past the walk below).
//! 2. *Adopt* each participant record of a dead process (a compare-exchange to
//!    `Dead { adopter: me }`; a record whose adopter died is adopted again), and as its only
//!    writer: finish or undo its *pending* claim, release or retirement; *heal* the span its
//!    *hazard* names (blocks it was popping or pushing go back on the list); redo the check of a
//!    *hand-over* it was making; re-adopt the records it had adopted; free the record.
//! 3. Give back the waiter slots dead processes held.
//! 4. Walk the heap (claimed pages only, one span at a time under our own hazard): free every
//!    live allocation whose owner's record is not alive, return every cached block whose holder
//!    (index and incarnation) is gone, and put every span's list bits right.
//! 5. Free the records of dead processes none of whose participants is left.
//!
//! Every step validates what it changes in the same compare-exchange, re-reading the owner's
//! record after the block's state, so any number of reclaimers may run at once, alongside normal
//! traffic, and a slow one never mistakes a new process at a reused index for the dead one. A
//! step that cannot be done safely yet (a span a live participant has a hazard on) is
//! *deferred*: the dead participant's record is handed back (`Dead { adopter: 0 }`) when the
//! reclaim ends, and the next `reclaim_dead`, by anyone, adopts it again. (A record left adopted
//! by a session that then ended would wait for good: its index may be a live stranger's.)
//!
//! Healing a span `X` (for a dead participant whose hazard named it), with our own (healer's)
//! hazard on `X`: read the anchor `A`, walk its list, and collect the free blocks that are on no
//! list ("orphans"). Then the heavy fence and a hazard scan: if any live participant other than
//! healers has a hazard on `X`, the heal is deferred. Re-read the anchor: if it changed, start
//! again before writing anything. Otherwise link the orphans into a chain (each by a
//! compare-exchange from the value read) ending at `A`'s head, and swing the anchor from `A` to
//! the chain. A block a live participant popped before `A` was read, or began pushing before we
//! read its state, is never taken for an orphan: that participant published its hazard first
//! and keeps it until the block is marked or its push is done, and we saw its pop (in `A`) or
//! its store (in the state word) before the fence, so the scan sees the hazard, or the push is
//! done and the re-read sees the anchor it left. A pop or push after the re-read changes the
//! anchor, and the swing fails; the chained blocks are still free and on no list, so nothing is
//! disturbed. (A scan before reading `A` misses a popper that came after it, and a re-read
//! before the scan misses a push that finished between the two: the loom models
//! `healing_a_dead_poppers_span_never_relists_a_block_a_live_participant_popped` and
//! `healing_a_dead_poppers_span_leaves_a_block_a_live_participant_is_freeing` found those.)

use crate::crash::step;
use crate::error::Error;
use crate::heap::{AllocId, Heap, Owner, Place, Wake};
use crate::layout::{
    gen, header, large_capacity, page, participant, pending, process, Anchor, BlockState, Extra, Kind,
    PageInfo, ParticipantState, ProcessState, RecordState, HEALER, SPAN_PAGES, WAITER_SLOTS,
};
use crate::participant::{ProcessRecord, Session};
use crate::primitive::{fence, AtomicU64, Ordering};
use crate::span::Span;
use crate::wait::{clearing_word, slot_bit, waiter_owner_word};

/// What [`Heap::reclaim_dead`] gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Processes found dead (now, or by an earlier pass that did not finish).
    pub dead_processes: u64,
    /// Process records freed.
    pub released_processes: u64,
    /// Participant records of dead processes resolved and freed.
    pub participants: u64,
    /// Live allocations of dead owners that were freed.
    pub allocations: u64,
    /// Their requested bytes.
    pub bytes: u64,
    /// Free blocks and runs held in dead processes' caches that went back to their spans and
    /// the page bitmap.
    pub cached_blocks: u64,
    /// Blocks found in transit (popped or pushed half way by the dead) put back on their lists.
    pub orphan_blocks: u64,
    /// Claims, releases and retirements left half done by the dead that were finished or undone.
    pub pending: u64,
    /// Waiter slots dead processes held, given back.
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
    /// freed allocation's id, owner and size. `is_dead` is asked about registering and active
    /// records (a registering one has no start time yet: judge it by its pid alone).
    pub fn reclaim_dead(
        &self,
        session: &mut Session,
        is_dead: impl FnMut(&ProcessRecord) -> bool,
        report: impl FnMut(AllocId, Owner, u64),
    ) -> Result<Reclaimed, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        let outcome = self.reclaim_adopting(session, is_dead, report);
        self.hand_back_adopted(session);
        outcome
    }

    /// [`Heap::reclaim_dead`]'s work; records it adopts and cannot resolve yet stay adopted by
    /// the session until the caller hands them back.
    fn reclaim_adopting(
        &self,
        session: &mut Session,
        mut is_dead: impl FnMut(&ProcessRecord) -> bool,
        mut report: impl FnMut(AllocId, Owner, u64),
    ) -> Result<Reclaimed, Error> {
        let mut reclaimed = Reclaimed::default();
        // 1. Mark the dead.
        for record in self.processes() {
            if record.owner != session.owner()
                && matches!(record.state, RecordState::Active | RecordState::Registering)
                && is_dead(&record)
            {
                self.mark_dead(&record);
            }
        }
        // ORDERING: SeqCst fence pairs with the one in `finish_handover` (Dekker): a hand-over to
        // a process we just marked either sees the mark, or is seen by the walk below.
        fence(Ordering::SeqCst);
        reclaimed.dead_processes =
            self.processes().filter(|record| record.state == RecordState::Dead).count() as u64;
        let any_dead_participant = (1..self.participant_hwm())
            .any(|index| index != session.participant && self.participant_is_dead(index));
        if reclaimed.dead_processes == 0 && !any_dead_participant {
            return Ok(reclaimed);
        }
        // 2. Their participants.
        for index in 1..self.participant_hwm() {
            if index == session.participant || !self.adopt(session, index) {
                continue;
            }
            match self.resolve_participant(session, index, &mut reclaimed)? {
                Resolved::Done => reclaimed.participants += 1,
                Resolved::Deferred => reclaimed.deferred += 1,
            }
        }
        // 3. Their waiter slots.
        reclaimed.waiter_slots = self.clear_dead_waiters(session);
        // 4. What they owned and held (each freed allocation's charge going back to the budget).
        let mut report = |id: AllocId, owner: Owner, size: u64| {
            let charge = self.charge_of(size);
            if charge != 0 {
                let _ = self.give_back(charge);
            }
            report(id, owner, size);
        };
        self.walk_for_dead(session, &mut reclaimed, &mut report)?;
        // 5. Their records.
        for record in self.processes() {
            if record.state == RecordState::Dead && !self.has_participants(record.owner) {
                let dead = ProcessState {
                    state: RecordState::Dead,
                    incarnation: record.incarnation,
                    pid: record.identity.pid,
                };
                let free = ProcessState { state: RecordState::Free, ..dead };
                // ORDERING: Release: everything we gave back happens before the record's reuse.
                if self
                    .process_word(record.owner.0 as u64, process::STATE)
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
        let judged =
            ProcessState { state: record.state, incarnation: record.incarnation, pid: record.identity.pid };
        let dead = ProcessState { state: RecordState::Dead, ..judged };
        // ORDERING: SeqCst, with the fence after the marking (see `reclaim_dead`).
        let _ = self.process_word(record.owner.0 as u64, process::STATE).compare_exchange(
            judged.encode(),
            dead.encode(),
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
    }

    fn has_participants(&self, owner: Owner) -> bool {
        (1..self.participant_hwm()).any(|index| {
            let state = self.participant_state(index);
            state.state != RecordState::Free && state.process == owner.0 as u64
        })
    }

    /// Makes the session the only one resolving participant `index`, if it is a dead one nobody
    /// (alive) resolves yet. Returns whether the session now holds it.
    fn adopt(&self, session: &Session, index: u64) -> bool {
        let word = self.participant_word(index, participant::STATE);
        // ORDERING: Acquire: the dead participant's (or dead adopter's) last writes happen
        // before we act on its record.
        let current = ParticipantState::decode(word.load(Ordering::Acquire));
        let adoptable = match current.state {
            RecordState::Active => !self.process_alive(Owner(current.process as u16)),
            RecordState::Dead => {
                current.adopter == session.participant || self.participant_is_gone(current.adopter)
            }
            RecordState::Free | RecordState::Registering => false,
        };
        if !adoptable {
            return false;
        }
        let adopted = ParticipantState {
            state: RecordState::Dead,
            process: current.process,
            adopter: session.participant,
        };
        word.compare_exchange(current.encode(), adopted.encode(), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Marks every dead participant the session adopted and did not resolve (deferred, or left
    /// by an error) as adopted by nobody: once the session has ended, its index may be a live
    /// stranger's, and a record adopted by it would never be taken up again.
    fn hand_back_adopted(&self, session: &Session) {
        for index in 1..self.participant_hwm() {
            let word = self.participant_word(index, participant::STATE);
            // ORDERING: Relaxed: only our own adoptions matter here, and the exchange below
            // compares the whole word.
            let current = ParticipantState::decode(word.load(Ordering::Relaxed));
            if current.state == RecordState::Dead && current.adopter == session.participant {
                let orphan = ParticipantState { adopter: 0, ..current };
                // ORDERING: Release: what we did for it happens before its next adopter's work
                // (which acquires the word in `adopt`).
                let _ = word.compare_exchange(
                    current.encode(),
                    orphan.encode(),
                    Ordering::Release,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Whether the participant `index` (an adopter) can no longer act: it is 0 (the record was
    /// handed back), its process is gone, or its record was itself adopted.
    fn participant_is_gone(&self, index: u64) -> bool {
        index == 0 || index >= self.geometry().table_size || self.participant_is_dead(index)
    }

    /// Finishes or undoes what dead participant `index` (adopted by us) left, then frees its
    /// record.
    fn resolve_participant(
        &self,
        session: &mut Session,
        index: u64,
        reclaimed: &mut Reclaimed,
    ) -> Result<Resolved, Error> {
        // Records it had adopted itself become ours, so that none is left with a gone adopter.
        for other in 1..self.participant_hwm() {
            let state = self.participant_state(other);
            if other != index && state.state == RecordState::Dead && state.adopter == index {
                let _ = self.adopt(session, other);
            }
        }
        if self.resolve_work(session, index, reclaimed, false)? == Resolved::Deferred {
            return Ok(Resolved::Deferred);
        }
        // Waiter slots it was clearing when it died.
        for slot in 0..WAITER_SLOTS {
            let owner = self.waiter_owner(slot);
            if owner.load(Ordering::Acquire) == clearing_word(index) {
                self.finish_clearing(slot, clearing_word(index));
            }
        }
        let state = self.participant_state(index);
        let free = ParticipantState { state: RecordState::Free, process: 0, adopter: 0 };
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
    /// hand-over participant `index` (which does nothing any more, and whose record we hold)
    /// left, clearing each word once it is dealt with. `offline`: nobody else is inside an
    /// operation (repair).
    pub(crate) fn resolve_work(
        &self,
        session: &mut Session,
        index: u64,
        reclaimed: &mut Reclaimed,
        offline: bool,
    ) -> Result<Resolved, Error> {
        if self.resolve_budget_pending(index) {
            reclaimed.pending += 1;
        }
        let pending = self.participant_word(index, participant::PENDING).load(Ordering::Acquire);
        if pending != 0 {
            // (A word naming no page, only a length, is damage: cleared all the same.)
            if let Some((first, pages)) = pending::decode(pending) {
                self.resolve_pending(session, index, first)?;
                self.reindex_pending(first, pages);
            }
            reclaimed.pending += 1;
            self.participant_word(index, participant::PENDING).store(0, Ordering::Release);
        }
        // Its own hazard must not stop the healing of its span: take it off first, and put it
        // back if the span cannot be healed yet.
        let hazard = self.participant_word(index, participant::HAZARD).swap(0, Ordering::AcqRel);
        if hazard != 0 {
            match self.heal_page(session, (hazard & !HEALER) - 1, offline)? {
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

    /// Refreshes the run index over the `pages` pages from `first` whose bits a dead
    /// participant was changing (it records them in `PENDING` before, and refreshes their
    /// summaries before it clears `PENDING`).
    fn reindex_pending(&self, first: u64, pages: u64) {
        if pages > 0 {
            self.run_index().refresh(first, first.saturating_add(pages));
        }
    }

    /// Finishes or undoes the claim, release or retirement dead participant `dead` owned at
    /// page `first`. Each case is recognised by a marker that names `dead` (whose record we
    /// hold, so the name cannot be a newer participant's).
    fn resolve_pending(&self, session: &mut Session, dead: u64, first: u64) -> Result<(), Error> {
        if first >= self.geometry().num_pages {
            return Err(Error::Corrupt { what: "pending page out of range", page: first });
        }
        if first >= self.backed_pages() {
            // Never backed, so never claimed (and its info may have no memory behind it).
            return Ok(());
        }
        match self.info(first)? {
            PageInfo::Transient { participant } if participant == dead => {
                // Adopt the marker, then release the prefix of page bits it held. Epochs were
                // raised before any release was marked, and by a large claim before it issued
                // its generation.
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
                    .is_err()
                {
                    self.clear_pending(session);
                    return Ok(());
                }
                step!("reclaim/transient-adopted");
                let bits = self.page_bits();
                let end = bits.held_prefix(first, self.page_hwm());
                // A retirement cut short may have left member info naming this span.
                if first.is_multiple_of(SPAN_PAGES) && end > first {
                    self.clear_members(first);
                }
                self.release_marked(session, first, end - first);
                Ok(())
            }
            PageInfo::SpanHead { class, retiring }
                if self.check_span_head(first, class).is_ok()
                    && (retiring == dead || (retiring == 0 && self.span(first, class).retiring_by(dead))) =>
            {
                // A retirement it started and never took the pages of: the span stays.
                self.set_pending(session, first);
                self.back_out_retirement(session, first, class, dead);
                Ok(())
            }
            PageInfo::LargeHead { pages, .. } => {
                let state = self.page_word(first, page::STATE);
                let word = state.load(Ordering::Acquire);
                let Some(decoded) =
                    BlockState::decode(word).filter(|s| s.kind == Kind::Releasing && s.link == dead)
                else {
                    return Ok(());
                };
                if pages == 0 || pages > self.geometry().num_pages - first {
                    return Err(Error::Corrupt { what: "large run out of range", page: first });
                }
                self.set_pending(session, first);
                let mine = BlockState::releasing(session.participant, decoded.tag);
                // ORDERING: AcqRel, as for the transient marker above.
                if state.compare_exchange(word, mine.encode(), Ordering::AcqRel, Ordering::Relaxed).is_err() {
                    self.clear_pending(session);
                    return Ok(());
                }
                // A releaser's bits are the whole run until it marks the info: a count that says
                // more than they hold is damage, and only what they hold is released.
                let held = self
                    .page_bits()
                    .held_prefix(first, (first + pages).min(self.backed_pages()))
                    .max(first + 1);
                let pages = match held - first {
                    held_pages if held_pages != pages => {
                        self.set_info(first, PageInfo::LargeHead { pages: held_pages, spare: 0 });
                        held_pages
                    }
                    _ => pages,
                };
                let extra = Extra::decode(self.page_word(first, page::GEN).load(Ordering::Relaxed) as u32);
                self.finish_large_release(session, first, pages, gen::join(extra.gen_high, decoded.tag));
                Ok(())
            }
            // The claim, release or retirement completed, or a release or a claim lost to a
            // conflict only has its refresh left (`release/unmarked`, `claim/unmarked`:
            // `reindex_pending` does it); the page may be in use again.
            _ => Ok(()),
        }
    }

    /// Heals the span (if any) that `page` belongs to; `None` if that must wait. Returns the
    /// number of orphaned blocks put back.
    fn heal_page(&self, session: &mut Session, page: u64, offline: bool) -> Result<Option<u64>, Error> {
        if page >= self.geometry().num_pages {
            return Err(Error::Corrupt { what: "hazard page out of range", page });
        }
        // Spans start at multiples of SPAN_PAGES: the page's span (if any) starts there, whatever
        // a (possibly corrupted) member info says. No span was ever in pages never backed (whose
        // metadata may have no memory behind it).
        let head = page - page % SPAN_PAGES;
        if head / SPAN_PAGES >= self.geometry().num_slots || head >= self.backed_pages() {
            return Ok(Some(0));
        }
        self.heal_span(session, head, offline)
    }

    /// Heals the span at `head` (see the module docs); `None` if it must wait. `offline`: nobody
    /// else is inside an operation (repair), so other participants' hazards guard nothing.
    pub(crate) fn heal_span(
        &self,
        session: &mut Session,
        head: u64,
        offline: bool,
    ) -> Result<Option<u64>, Error> {
        self.publish_healer_hazard(session, head);
        let outcome = self.heal_span_hazarded(session, head, offline);
        self.clear_hazard(session);
        outcome
    }

    fn heal_span_hazarded(&self, session: &Session, head: u64, offline: bool) -> Result<Option<u64>, Error> {
        let class = match self.info(head)? {
            PageInfo::SpanHead { class, retiring: 0 } => class,
            // A retiring span is its retirer's (or, if it died, its adopter's) business.
            PageInfo::SpanHead { .. } => return Ok(None),
            _ => return Ok(Some(0)),
        };
        self.check_span_head(head, class)?;
        // A carver stopped after publishing the head may not have written the members.
        self.fill_members(head, class);
        let span = self.span(head, class);
        for _attempt in 0..8 {
            let current = span.anchor_word().load(Ordering::Acquire);
            let anchor = Anchor::decode(current);
            if anchor.retiring {
                return Ok(None);
            }
            let Some(on_list) = listed_blocks(&span, anchor) else {
                continue; // the list changed under the walk: look again
            };
            let mut orphans = [0u16; Anchor::MAX_BLOCKS as usize];
            let mut words = [0u64; Anchor::MAX_BLOCKS as usize];
            let mut count = 0;
            for index in 0..span.blocks() {
                if on_list[(index / 64) as usize] & (1 << (index % 64)) != 0 {
                    continue;
                }
                // ORDERING: Acquire, like every load of a state word (see `Span::pop_into`).
                let word = span.state(index).load(Ordering::Acquire);
                if BlockState::decode(word).is_some_and(|state| state.kind == Kind::Free) {
                    orphans[count] = index as u16;
                    words[count] = word;
                    count += 1;
                }
            }
            // Whoever popped a block off the list we read, or began pushing a block we read as
            // free, published its hazard first and keeps it until the block is marked or its
            // push is done; we saw its pop (in the anchor) or its store (in the state word), so
            // after the heavy fence the scan sees its hazard, or it is done and the re-read
            // below sees the anchor it left.
            if count > 0 && !offline {
                self.heavy_fence()?;
                if self.hazard_on(session.participant, head, SPAN_PAGES, true) {
                    return Ok(None);
                }
            }
            // ORDERING: Acquire fence: the state and hazard reads above happen before this
            // re-read. An unchanged anchor means every block collected is still free and on no
            // list: nobody but a healer can touch it now (a pop takes only listed blocks, a free
            // only live ones), so chaining it cannot disturb the list even if the swing fails.
            fence(Ordering::Acquire);
            if span.anchor_word().load(Ordering::Relaxed) != current {
                continue;
            }
            if count == 0 {
                self.relist_span(head, class, anchor);
                return Ok(Some(0));
            }
            // Chain them (each by a CAS from the value read), ending at the list's head.
            for at in 0..count {
                let next = if at + 1 < count { orphans[at + 1] as u64 } else { anchor.head };
                let linked = BlockState::free(next, session.participant, words[at] >> 28).encode();
                // ORDERING: Release, like every store to a state word (see `Span::pop`).
                if span
                    .state(orphans[at] as u64)
                    .compare_exchange(words[at], linked, Ordering::Release, Ordering::Relaxed)
                    .is_err()
                {
                    // Another healer took it first.
                    return Ok(None);
                }
            }
            step!("heal/chained");
            let healed =
                Anchor { head: orphans[0] as u64, count: anchor.count + count as u64, ..anchor }.bumped();
            // ORDERING: AcqRel: publishes the chain's links (as a push does) and acquires the
            // anchor's history.
            if span
                .anchor_word()
                .compare_exchange(current, healed.encode(), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                step!("heal/swung");
                self.relist_span(head, class, healed);
                return Ok(Some(count as u64));
            }
        }
        Ok(None)
    }

    /// Writes member info the span's carver did not get to (only where the page has none).
    fn fill_members(&self, head: u64, class: usize) {
        for member in head + 1..head + SPAN_PAGES {
            let info = PageInfo::SpanMember { head, class, retiring: false }.encode();
            // ORDERING: Release, as `set_info`.
            let _ = self.page_word(member, page::INFO).compare_exchange(
                PageInfo::Free.encode(),
                info,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
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

    /// Gives back the waiter slots of processes that are gone; returns how many.
    fn clear_dead_waiters(&self, session: &Session) -> u64 {
        let mut cleared = 0;
        for slot in 0..WAITER_SLOTS {
            let owner_word = self.waiter_owner(slot);
            let owner = owner_word.load(Ordering::Acquire);
            if owner == 0 || owner & (1 << 63) != 0 {
                continue;
            }
            let (process, incarnation) = (owner & 0xFFFF, owner >> 16);
            let alive = self.process_record(Owner(process as u16)).is_some_and(|r| {
                r.state != RecordState::Dead && r.state != RecordState::Free && r.incarnation == incarnation
            });
            if alive || waiter_owner_word(process, incarnation) != owner {
                continue;
            }
            // The slot becomes ours to clear: then its bit, then the slot (a slot a newer waiter
            // took meanwhile has another owner word, so this fails).
            let clearing = clearing_word(session.participant);
            // ORDERING: AcqRel: takes the slot over from its dead owner.
            if owner_word.compare_exchange(owner, clearing, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.finish_clearing(slot, clearing);
                cleared += 1;
            }
        }
        cleared
    }

    /// Clears the bit of waiter slot `slot`, held as `clearing`, then gives the slot back.
    fn finish_clearing(&self, slot: usize, clearing: u64) {
        // ORDERING: SeqCst, the order of the waiter bits everywhere.
        self.region().word(header::STATUS).fetch_and(!slot_bit(slot), Ordering::SeqCst);
        // ORDERING: Release: the bit is clear before the slot can be taken again.
        let _ = self.waiter_owner(slot).compare_exchange(clearing, 0, Ordering::Release, Ordering::Relaxed);
    }

    /// Frees live allocations whose owner is gone, returns blocks held by caches of processes
    /// that are gone, and makes every span's list bits match its anchor.
    fn walk_for_dead(
        &self,
        session: &mut Session,
        reclaimed: &mut Reclaimed,
        report: &mut impl FnMut(AllocId, Owner, u64),
    ) -> Result<(), Error> {
        let bits = self.used_bits();
        let mut page = bits.next_claimed(0);
        while page < bits.pages() {
            if !bits.is_head(page) {
                page = bits.next_claimed(page + 1);
                continue;
            }
            match self.info(page)? {
                PageInfo::SpanHead { class, retiring: 0 } if self.check_span_head(page, class).is_ok() => {
                    self.publish_hazard(session, page);
                    let outcome = self.reclaim_in_span(session, page, class, reclaimed, report);
                    self.clear_hazard(session);
                    outcome?;
                    page = bits.next_claimed(page + SPAN_PAGES);
                }
                PageInfo::LargeHead { pages, .. } if pages >= 1 && pages <= bits.pages() - page => {
                    self.reclaim_large(session, page, reclaimed, report)?;
                    page = bits.next_claimed(page + pages);
                }
                _ => page = bits.next_claimed(page + 1),
            }
        }
        Ok(())
    }

    /// Whether the owner (or holder) of a block in state `state` is gone: its record is free or
    /// dead, or (for a cached block) the record belongs to a later incarnation.
    fn holder_gone(&self, state: &BlockState) -> bool {
        if state.link == 0 {
            return false;
        }
        match self.process_record(Owner(state.link as u16)) {
            None => true,
            Some(record) => match record.state {
                RecordState::Free | RecordState::Dead => true,
                RecordState::Active | RecordState::Registering => {
                    state.kind == Kind::Cached && record.incarnation & BlockState::AUX_MASK != state.aux
                }
            },
        }
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
        if self.info(head)? != (PageInfo::SpanHead { class, retiring: 0 }) {
            return Ok(());
        }
        let span = self.span(head, class);
        let base = self.geometry().page_offset(head);
        for index in 0..span.blocks() {
            let state = span.state(index);
            // ORDERING: Acquire pairs with the Release store that made the block what it is, so
            // the owner's record as read below is at least as new as the block's state.
            let word = state.load(Ordering::Acquire);
            let Some(decoded) = BlockState::decode(word) else { continue };
            if !matches!(decoded.kind, Kind::Live | Kind::Cached) || !self.holder_gone(&decoded) {
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
                let size =
                    self.capacity_of(Place::Small { head, class, index, base }).saturating_sub(decoded.aux);
                reclaimed.allocations += 1;
                reclaimed.bytes += size;
                report(
                    self.make_id(offset, gen::join(extra.gen_high, decoded.tag)),
                    Owner(decoded.link as u16),
                    size,
                );
            } else {
                reclaimed.cached_blocks += 1;
            }
        }
        // Put the span's list bits right (a setter or clearer killed half way loses nothing).
        self.relist_span(head, class, span.anchor());
        Ok(())
    }

    /// Frees the large run at `head` (where the walk saw one) if its owner (or the process whose
    /// cache holds it) is gone.
    fn reclaim_large(
        &self,
        session: &Session,
        head: u64,
        reclaimed: &mut Reclaimed,
        report: &mut impl FnMut(AllocId, Owner, u64),
    ) -> Result<(), Error> {
        let state = self.page_word(head, page::STATE);
        // ORDERING: Acquire pairs with the Release store that made the run live: the info read
        // next is its claimer's marker or newer, never a former run's.
        let word = state.load(Ordering::Acquire);
        let Some(decoded) = BlockState::decode(word) else { return Ok(()) };
        if !matches!(decoded.kind, Kind::Live | Kind::Cached) || !self.holder_gone(&decoded) {
            // A run being released is its releaser's (or its adopter's) business.
            return Ok(());
        }
        step!("reclaim/large-judged");
        // The run's length as published with it. What the walk read may be a former run's:
        // if the exchange below succeeds, the run of `word` lived all along, so this is its own.
        // Its spare too: a cache rewrites it only while it holds the run (its state word other).
        let (pages, spare) = match self.info(head)? {
            PageInfo::LargeHead { pages, spare }
                if pages >= 1 && pages <= self.geometry().num_pages - head =>
            {
                (pages, spare)
            }
            // Not published yet (its claimer's adopter undoes the claim), or gone already.
            _ => return Ok(()),
        };
        let Some(generation) = self.release_run_from(session, head, pages, word) else {
            return Ok(());
        };
        if decoded.kind == Kind::Cached {
            reclaimed.cached_blocks += 1;
            return Ok(());
        }
        let size = (large_capacity(pages, spare) << self.geometry().page_shift).saturating_sub(decoded.aux);
        reclaimed.allocations += 1;
        reclaimed.bytes += size;
        report(self.make_id(self.geometry().page_offset(head), generation), Owner(decoded.link as u16), size);
        Ok(())
    }

    // ----- hand-over ---------------------------------------------------------------------------

    /// Records a hand-over of `id` to `target` in the session's record, before the change.
    pub(crate) fn begin_handover(&self, session: &Session, id: AllocId, target: ProcessRecord) {
        let word = target.owner.0 as u64 | target.incarnation << 16;
        self.participant_word(session.participant, participant::HANDOVER_TARGET)
            .store(word, Ordering::Relaxed);
        self.participant_word(session.participant, participant::HANDOVER_GEN)
            .store(id.generation(), Ordering::Relaxed);
        // ORDERING: SeqCst: the record is complete (the slot word last: it says "valid") before
        // the owner changes.
        self.participant_word(session.participant, participant::HANDOVER_SLOT)
            .store(id.slot() + 1, Ordering::SeqCst);
    }

    pub(crate) fn end_handover(&self, session: &Session) {
        self.participant_word(session.participant, participant::HANDOVER_SLOT).store(0, Ordering::Release);
    }

    /// Whether `owner` is still the active process of incarnation `incarnation`.
    fn still_active(&self, owner: Owner, incarnation: u64) -> bool {
        self.process_record(owner)
            .is_some_and(|r| r.state == RecordState::Active && r.incarnation == incarnation)
    }

    /// After the owner of `id` (at `place`, state word `state`) became `target`: if `target` is
    /// no longer the same active process, free the allocation as `reclaim_dead` would have (its
    /// walk may have passed the allocation before the change) and report the failed hand-over.
    pub(crate) fn finish_handover(
        &self,
        session: &Session,
        id: AllocId,
        place: Place,
        state: &AtomicU64,
        target: ProcessRecord,
    ) -> Result<(), Error> {
        // ORDERING: SeqCst fence pairs with the fence after `mark_dead` (Dekker): either the
        // reclaimer's walk (after its mark) sees the new owner, or we see the record changed.
        fence(Ordering::SeqCst);
        if self.still_active(target.owner, target.incarnation) {
            return Ok(());
        }
        // Only while it is still the target's: the new owner may already have freed it.
        let _ = self.release(session, id, place, state, Some(target.owner.0 as u64));
        Err(Error::InvalidOwner { owner: target.owner.0 })
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
        let freed = self.locate(id, page).is_ok_and(|(place, state)| {
            self.release(session, id, place, state, Some(owner.0 as u64)).is_ok()
        });
        self.clear_hazard(session);
        Ok(freed)
    }
}

/// Which blocks are on the list of `anchor` (one bit each); `None` if the walk met a block that
/// is not free or left the span (the list changed under it).
fn listed_blocks(span: &Span<'_>, anchor: Anchor) -> Option<[u64; 64]> {
    let blocks = span.blocks();
    let mut on_list = [0u64; 64];
    let mut index = anchor.head;
    for _ in 0..anchor.count {
        if index >= blocks || on_list[(index / 64) as usize] & (1 << (index % 64)) != 0 {
            return None;
        }
        on_list[(index / 64) as usize] |= 1 << (index % 64);
        // ORDERING: Acquire, as in `Span::pop` (the list's links were published by pushes).
        let state =
            BlockState::decode(span.state(index).load(Ordering::Acquire)).filter(|s| s.kind == Kind::Free)?;
        index = state.link;
    }
    Some(on_list)
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;
    use crate::crash::testing::{identity, Memory};
    use crate::heap::AllocOptions;

    /// Found by the adversarial review of heap v2. `walk_for_dead` reads `INFO[p] = LargeHead {
    /// pages }` without any protection, then `reclaim_large` judged and took whatever *state
    /// word* was at `p` by then, and released `pages` page bits from the stale read. If, between
    /// the two reads, the run at `p` was freed and a shorter run allocated at `p` by a process
    /// that then died, the reclaimer cleared the page bits of the run *after* it: a live
    /// allocation's pages were handed out again (seen failing at 141d99e: "new run D at
    /// 24576..28672 overlaps live C at 20480..28672"). Now `reclaim_large` reads the length
    /// from the info after the state word it takes.
    ///
    /// The stale read is modelled by the walk's read before the run changed.
    #[test]
    fn a_reclaimer_whose_walk_read_a_former_runs_length_frees_only_the_dead_owners_run() {
        let memory = Memory::new();
        let heap = memory.create();
        let page_bytes = heap.geometry().page_bytes();
        let x = heap.register_process(identity(1)).expect("room");
        let mut xs = heap.register_participant(x).expect("room");
        let r = heap.register_process(identity(2)).expect("room");
        let mut rs = heap.register_participant(r).expect("room");

        // Run A: two pages at page 0 (owned by live X).
        let a = heap.alloc(&mut xs, 3 * page_bytes, AllocOptions::default()).expect("space");
        let head = (a.offset - heap.geometry().data_offset) / page_bytes;
        // The reclaimer's walk reads INFO[head] here...
        let stale = match heap.info(head).expect("info") {
            PageInfo::LargeHead { pages, .. } => pages,
            other => panic!("{other:?}"),
        };
        assert_eq!(stale, 3);
        // ... and is preempted. X frees A; E allocates B (one page) at the same head; a pool-owned
        // run C (two pages) lands right after it.
        let _ = heap.free(&mut xs, a.id()).expect("live");
        let e = heap.register_process(identity(3)).expect("room");
        let mut es = heap.register_participant(e).expect("room");
        // The same memory, viewed by E's process (its own page hint).
        let fresh = memory.open();
        let b = fresh.alloc(&mut es, page_bytes, AllocOptions::default()).expect("space");
        assert_eq!(b.offset, a.offset, "B starts where A did");
        let pool = AllocOptions { owner: Some(Owner::POOL), ..AllocOptions::default() };
        let c = fresh.alloc(&mut es, 2 * page_bytes, pool).expect("space");
        assert_eq!(c.offset, a.offset + page_bytes, "C is A's second and third page");
        // E dies; another reclaimer marks it dead (it has not reached B yet).
        let _ = heap.release_participant(es);
        let record = heap.process_record(e).expect("record");
        heap.mark_dead(&record);
        // The preempted reclaimer resumes at the head it saw.
        let mut reclaimed = Reclaimed::default();
        // (At 141d99e `reclaim_large` took the walk's page count; it now reads its own.)
        heap.reclaim_large(&rs, head, &mut reclaimed, &mut |_, _, _| {}).expect("ok");
        // C is still live (pool-owned) ...
        assert!(heap.lookup(&mut rs, c.id()).is_ok(), "C is live");
        // ... so its page must still be claimed, and no one else may get it.
        let claimed = heap.page_bits().is_claimed(head + 2);
        // Another process's view (page hint 0).
        let other = memory.open();
        let d = other.alloc(&mut rs, page_bytes, AllocOptions::default()).expect("space");
        let overlap = d.offset < c.offset + c.capacity && c.offset < d.offset + d.capacity;
        assert!(
            claimed && !overlap,
            "C's page bits cleared while C is live (claimed: {claimed}); new run D at {}..{} overlaps live C at {}..{}",
            d.offset,
            d.offset + d.capacity,
            c.offset,
            c.offset + c.capacity
        );
    }
}

#[cfg(all(test, feature = "crash-points", not(all(shmpool_loom, feature = "loom"))))]
mod tests_with_hooks {
    use super::*;
    use crate::crash::testing::{self, identity, Memory};
    use crate::heap::AllocOptions;

    /// Found by the second adversarial review, seen failing at cbf751e (W reported one freed
    /// allocation; F's lookup then gave `NotAllocated`). A large claimer E stored its run's Live
    /// state word, then died before publishing the run. Its claim was undone without raising
    /// the page's epoch, so the next run at the same
    /// head gets the *same* generation; if its owner has E's (freed and reused) process index
    /// and the same slack, its state word is bit for bit E's. A reclaimer W that loaded E's
    /// word (and judged E gone) before all this then reads the new run's info and its
    /// compare-exchange succeeds: it frees a live allocation of a live process.
    #[test]
    fn a_reclaimer_holding_a_dead_claimers_state_word_does_not_free_a_live_run_at_the_same_head() {
        let hook = testing::install();
        let memory = Memory::new();
        let view = || memory.open();
        let heap = memory.create();
        let page_bytes = heap.geometry().page_bytes();
        let r = heap.register_process(identity(2)).expect("room");
        let ws = heap.register_participant(r).expect("room");
        let mut r2 = heap.register_participant(r).expect("room");
        let e = heap.register_process(identity(3)).expect("room");
        let mut es = heap.register_participant(e).expect("room");
        // E claims one page at the first free page and dies after storing the state word.
        let e_heap = view();
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            testing::stop_at("large/initialised");
            e_heap.alloc(&mut es, page_bytes, AllocOptions::default())
        }));
        assert!(stopped.is_err(), "E stopped at large/initialised");
        let head = 0u64;
        let e_word = heap.page_word(head, page::STATE).load(Ordering::Relaxed);
        assert_eq!(BlockState::decode(e_word).map(|s| s.kind), Some(Kind::Live), "E's run at page 0");
        let record = heap.process_record(e).expect("record");
        heap.mark_dead(&record);

        let heap_ref = &heap;
        let (f_alloc, f_owner) = std::thread::scope(|scope| {
            // W: a reclaimer whose walk saw a head at page 0; it judges E's word and is preempted.
            let w = scope.spawn(move || {
                testing::pause_at("reclaim/large-judged");
                let mut reclaimed = Reclaimed::default();
                heap_ref.reclaim_large(&ws, head, &mut reclaimed, &mut |_, _, _| {}).expect("ok");
                (reclaimed, ws)
            });
            testing::wait_until_paused();
            // Another reclaimer resolves E: its claim is undone, its records freed.
            let pass = heap.reclaim_dead(&mut r2, |rec| rec.identity.pid == 3, |_, _, _| {}).expect("ok");
            assert_eq!(pass.pending, 1, "E's claim undone: {pass:?}");
            // A new process F gets E's index and allocates one page at the same head.
            let f = heap.register_process(identity(4)).expect("room");
            let mut fs = heap.register_participant(f).expect("room");
            let f_alloc = view().alloc(&mut fs, page_bytes, AllocOptions::default()).expect("space");
            assert_eq!(f_alloc.offset, heap.geometry().page_offset(head), "F's run is at page 0");
            let f_word = heap.page_word(head, page::STATE).load(Ordering::Relaxed);
            assert_ne!(f_word, e_word, "F's run reissued E's generation (and so its state word)");
            testing::resume();
            let (reclaimed, _w_session) = w.join().expect("no panic");
            assert_eq!(reclaimed.allocations, 0, "W freed a run: {reclaimed:?}");
            ((f_alloc, fs), f)
        });
        drop(hook);
        let (f_alloc, mut fs) = f_alloc;
        let _ = f_owner;
        let live = heap.lookup(&mut fs, f_alloc.id());
        let claimed = heap.page_bits().is_claimed(head);
        assert!(
            live.is_ok() && claimed,
            "live process F's run was freed by a reclaimer judging dead E: lookup {live:?}, page claimed {claimed}"
        );
    }
}
