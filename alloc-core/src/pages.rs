//! Pages: finding spans with free blocks, carving new spans, large runs, giving pages back, and
//! retiring entirely free spans.
//!
//! Claims and releases of page runs follow one protocol, so that a participant killed half way
//! leaves something `reclaim_dead` recognises and undoes:
//! - claim `[s, s + n)`: `PENDING := s`; `INFO[s]`: `Free → Transient(me)` (only one claimer can
//!   start a run at `s`); set the page bits ascending (head bit at `s`); set the run up;
//!   publish `INFO[s]` as a span head or large head (a span's member pages after its head);
//!   `PENDING := 0`. A claim that finds a page taken clears the bits it set, takes its marker
//!   off `INFO[s]` (before the refresh, as a release does), refreshes the summaries of the words
//!   it set bits in and cleared, then `PENDING := 0`.
//! - release `[s, s + n)`: raise the pages' epochs; `PENDING := s`; take the release (a large run:
//!   its state word `Live → Releasing(me)`; a span: its retirement, below); `INFO[s] →
//!   Transient(me)`; `PENDING := (s, n)`; clear the page bits descending; `INFO[s]`:
//!   `Transient(me) → Free`; refresh the run index over the pages (after the marker, so that a
//!   claim meanwhile is not turned from `s` to the fit a page later; a reclaimer of ours finds
//!   `INFO[s]` not ours and only refreshes, from `PENDING`); `PENDING := 0`.
//!
//! While `INFO[s]` is `Transient(p)`, the page bits p holds are a prefix of the run starting
//! with a head bit at `s` (or nothing, if it has no head bit): reclaim clears exactly that. Every
//! write that takes a `Transient` marker away is a compare-exchange from the writer's own marker,
//! so it never overwrites page info that someone else wrote meanwhile.
//!
//! Retiring a span `X` (one at a time, on demand, when a claim fails):
//! 1. `PENDING := X`; anchor: entirely free and normal `→ retiring` (no pop can succeed any
//!    more, no push can happen: no block is outside the list); re-read `INFO[X]` (the anchor
//!    may belong to a newer span than the one we looked at): else back out.
//! 2. `INFO[X] := SpanHead { retiring: me }`, member pages flagged: from now on every hazard
//!    holder that reads them backs out.
//! 3. Heavy fence; if any other participant has a hazard on a page of `X`: back out.
//! 4. Raise the 16 pages' epochs to the span's highest generation, and the head's by one more
//!    (so that it always moves: inspectors seal a span with it); `INFO[X]`:
//!    `SpanHead { retiring: me } → Transient(me)`; member info `→ Free`; clear its list bits;
//!    release its page bits; `INFO[X] → Free`; refresh the run index; `PENDING := 0`.
//!
//! Backing out (the retirer, or the reclaimer that adopted a dead one) clears the member flags,
//! then `INFO[X]: SpanHead { retiring: me } → SpanHead`, then the anchor `retiring → normal`,
//! and lists the span again.

use crate::bitmap::PAGES_PER_WORD;
use crate::crash::step;
use crate::error::Error;
use crate::heap::{AllocOptions, Allocation, Heap};
use crate::layout::{
    gen, page, participant, BlockState, Extra, Kind, PageInfo, RecordState, BLOCK_PAGES, MAX_SPARE,
    SPAN_PAGES,
};
use crate::participant::Session;
use crate::primitive::Ordering;

/// Where a search for free pages stands: past the claims it lost (a claim lost is another
/// claimer's progress: giving up after a few would fail with free pages), and how often it may
/// still look through the bitmap from the start.
///
/// The run index may hide free pages while a participant is stopped in the middle of
/// refreshing them (`crate::runs`), so before an allocation refuses it looks through the page
/// bitmap: from the start when its search came up empty after lost claims took it past pages it
/// could not see, and below the high-water mark when the pages it found above it cannot be
/// backed. It looks from the start again after each claim lost since, a few times at most: a
/// claim lost to a stopped participant's marker is no one's progress, and looking again for
/// ever would be waiting for it. (So claims lost that often to allocations and frees racing it
/// can still make an allocation refuse with a run free behind it: `alloc_blocking` tries again.)
struct Search {
    from: u64,
    swept: bool,
    sweeps: u32,
}

impl Search {
    /// Looks from the start this many times at most.
    const SWEEPS: u32 = 4;

    fn new() -> Search {
        Search { from: 0, swept: false, sweeps: Search::SWEEPS }
    }

    /// Whether to look from the start now (once since the last claim lost, and `SWEEPS` times
    /// in all).
    fn sweep(&mut self) -> bool {
        let sweep = self.from > 0 && !self.swept && self.sweeps > 0;
        if sweep {
            (self.swept, self.sweeps) = (true, self.sweeps - 1);
        }
        sweep
    }

    /// The next candidate: what `find` finds from where the search stands, else maybe what
    /// `in_bitmap` finds from the start.
    fn next(
        &mut self,
        find: impl FnOnce(u64) -> Option<u64>,
        in_bitmap: impl FnOnce(u64) -> Option<u64>,
    ) -> Option<u64> {
        find(self.from).or_else(|| self.sweep().then(|| in_bitmap(0)).flatten())
    }

    /// The candidate found could not be backed: what `below_mark` finds from where the search
    /// stands, else maybe from the start (pages below the high-water mark are backed).
    fn unbacked(&mut self, below_mark: impl Fn(u64) -> Option<u64>) -> Option<u64> {
        below_mark(self.from).or_else(|| self.sweep().then(|| below_mark(0)).flatten())
    }

    /// A claim was lost: go on from `next`.
    fn lost(&mut self, next: u64) {
        (self.from, self.swept) = (next, false);
    }
}

/// A cache's request for a run: rounded up to `pages`, and placed in blocks of the session's
/// own (`own_blocks`: a cache that claims runs often; see [`Heap::fit_in_own_block`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ForCache {
    pub(crate) pages: u64,
    pub(crate) own_blocks: bool,
}

/// Most blocks one [`Heap::take_blocks`] takes.
const MAX_TAKE: usize = 64;
/// Fits in further blocks (see [`BLOCK_PAGES`]) a cache's claim looks at for one in a block
/// of its own before it takes the lowest fit, in another participant's.
const BLOCK_HOPS: usize = 8;

impl Heap<'_> {
    /// Takes up to `max` free blocks of `class` (at least one unless the pool has no room): from
    /// this process's hint span, else a span of the class list, else a freshly carved span. The
    /// blocks all come from one span; each is handed to `take` as (span head, index) while the
    /// session's hazard is on its span; it belongs to the caller and is not yet live or cached:
    /// `take` must mark it.
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
        let listed = self.used_slots();
        // Bounded: every slot is looked at most once per round, plus a few rounds of races.
        let mut budget = self.geometry().num_slots + 8;
        while let Some(slot) = list.find_from(from, listed) {
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
            self.unlist(session, slot, class);
            from = slot + 1;
        }
        loop {
            let Some(head) = self.carve_span(session, class)? else {
                return Ok(0);
            };
            // The session's hazard is on the new span; take from it, then list what is left.
            let taken = self.pop_marked(session, head, class, max, &mut take);
            if self.span(head, class).anchor().count > 0 {
                self.class_list(class).set(head / SPAN_PAGES);
                step!("carve/listed");
            }
            self.clear_hazard(session);
            self.hints[class].store(head / SPAN_PAGES + 1, Ordering::Relaxed);
            let taken = taken?;
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
            Ok(PageInfo::SpanHead { class: found, retiring: 0 }) if found == class => self
                .check_span_head(head, class)
                .and_then(|()| self.pop_marked(session, head, class, max, take)),
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
        let mut popped = [0u16; MAX_TAKE];
        let taken = self.pop_from(head, class, &mut popped[..(max as usize).min(MAX_TAKE)])?;
        for &index in &popped[..taken] {
            take(self, session, head, index as u64);
        }
        Ok(taken as u64)
    }

    /// Pops up to `into.len()` blocks of the span at `head` (hazard held) into `into`.
    #[inline]
    pub(crate) fn pop_from(&self, head: u64, class: usize, into: &mut [u16]) -> Result<usize, Error> {
        let taken = self.span(head, class).pop_into(into).map_err(|error| match error {
            Error::Corrupt { what, .. } => Error::Corrupt { what, page: head },
            other => other,
        })?;
        step!("pop/popped");
        Ok(taken)
    }

    /// Clears span `slot`'s bit in `class`'s list (it was found full, or is no longer a span
    /// of the class), then looks again and sets it back if the span has free blocks after all.
    /// Under a hazard on the span, so that a participant stopped in between is healed.
    fn unlist(&self, session: &mut Session, slot: u64, class: usize) {
        let head = slot * SPAN_PAGES;
        self.publish_hazard(session, head);
        let list = self.class_list(class);
        list.clear(slot);
        step!("unlist/cleared");
        if self.span_of_class(head, class) && self.span(head, class).anchor().count > 0 {
            list.set(slot);
        }
        self.clear_hazard(session);
    }

    /// Whether `head` is a span of `class` that is not being retired.
    pub(crate) fn span_of_class(&self, head: u64, class: usize) -> bool {
        matches!(self.info(head), Ok(PageInfo::SpanHead { class: found, retiring: 0 }) if found == class)
            && self.check_span_head(head, class).is_ok()
    }

    /// Claims a free span slot and sets it up as a span of `class` with every block free.
    /// Returns its head page with the session's hazard on it, or `None` if no slot is free.
    fn carve_span(&self, session: &mut Session, class: usize) -> Result<Option<u64>, Error> {
        // The lowest free slot past the last one we failed to claim. `from` only rises, so the
        // search ends (a claim lost is another claimer's progress: giving up after a few would
        // fail with free slots).
        let mut search = Search::new();
        loop {
            let Some(mut slot) = search.next(|from| self.find_free_slot(from), |from| self.bitmap_slot(from))
            else {
                return Ok(None);
            };
            if !self.back_pages((slot + 1) * SPAN_PAGES) {
                let below_mark = |from| self.page_bits().find_slot(from, self.used_slots());
                let Some(lower) = search.unbacked(below_mark) else {
                    return Ok(None);
                };
                slot = lower;
            }
            let head = slot * SPAN_PAGES;
            self.publish_hazard(session, head);
            if self.claim_run(session, head, SPAN_PAGES).is_err() {
                self.clear_hazard(session);
                search.lost(slot + 1);
                continue;
            }
            let base = (head..head + SPAN_PAGES)
                .map(|page| self.page_word(page, page::EPOCH).load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            self.span(head, class).init(base);
            step!("carve/initialised");
            // The head first: a reader that finds member info knows the span was published, so
            // the span can only go away through retirement (which looks for hazards).
            self.set_info(head, PageInfo::SpanHead { class, retiring: 0 });
            self.clear_pending(session);
            step!("carve/published");
            self.write_members(head, class);
            step!("carve/members");
            return Ok(Some(head));
        }
    }

    /// The lowest run of `pages` free pages at or after page `from`, by the run index; else (the
    /// run is longer than the index counts, or a stalled participant left its summaries stale)
    /// by the page bitmap. Pages above the high-water mark are free without a look.
    fn find_free_run(&self, pages: u64, from: u64) -> Option<u64> {
        self.run_index().find_run(pages, from).or_else(|| self.bitmap_run(pages, from))
    }

    /// The lowest run of `pages` free pages at or after page `from`, by the page bitmap.
    fn bitmap_run(&self, pages: u64, from: u64) -> Option<u64> {
        let used = self.used_bits();
        let tail = used.free_tail().max(from);
        used.find_run(pages, from).or((tail + pages <= self.geometry().num_pages).then_some(tail))
    }

    /// The lowest free span slot at or after slot `from`, by the run index, else by the bitmap
    /// (as [`Heap::find_free_run`]).
    fn find_free_slot(&self, from: u64) -> Option<u64> {
        self.run_index().find_slot(from).or_else(|| self.bitmap_slot(from))
    }

    /// The lowest free span slot at or after slot `from`, by the page bitmap (as
    /// [`Heap::bitmap_run`]).
    fn bitmap_slot(&self, from: u64) -> Option<u64> {
        let slots = self.geometry().num_slots;
        let used = self.used_slots().min(slots);
        self.page_bits().find_slot(from, used).or((used.max(from) < slots).then_some(used.max(from)))
    }

    /// Writes the member info of the span at `head` (pages we hold as part of it; a stale
    /// transient marker of a claimer that lost these pages to us is overwritten, and its own
    /// compare-exchange back to free then fails).
    pub(crate) fn write_members(&self, head: u64, class: usize) {
        for member in head + 1..head + SPAN_PAGES {
            let info = PageInfo::SpanMember { head, class, retiring: false };
            // ORDERING: Release, as `set_info`: a reader of the member info sees the span.
            self.page_word(member, page::INFO).store(info.encode(), Ordering::Release);
        }
    }

    /// Claims pages `head..head + pages` for the session: marks `INFO[head]` transient, then
    /// sets the page bits. On failure nothing is held, and the error is the first page a run
    /// could start at that does not overlap what another claimer was found holding.
    fn claim_run(&self, session: &Session, head: u64, pages: u64) -> Result<(), u64> {
        self.set_pending_run(session, head, pages);
        let transient = PageInfo::Transient { participant: session.participant };
        // ORDERING: Acquire pairs with the Release that last freed this page's info.
        if self
            .page_word(head, page::INFO)
            .compare_exchange(
                PageInfo::Free.encode(),
                transient.encode(),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_err()
        {
            self.clear_pending(session);
            return Err(head + 1);
        }
        step!("claim/marked");
        self.raise_page_hwm(head + pages);
        if let Err(taken) = self.page_bits().try_claim(head, head + pages) {
            step!("claim/conflict");
            // The marker goes first, as in a release, so that a claim of the head meanwhile is
            // not turned away for as long as the refresh takes; PENDING still names the run, so
            // a reclaimer refreshes for us should we die now (and finds the head not ours).
            self.unmark(head, transient);
            if taken / PAGES_PER_WORD > head / PAGES_PER_WORD {
                step!("claim/unmarked");
                // Our bits in the words before came and went: a refresh of their summaries
                // meanwhile may have seen them.
                self.run_index().refresh(head, taken);
            }
            self.clear_pending(session);
            return Err(taken + 1);
        }
        step!("claim/claimed");
        self.run_index().refresh_claimed(head, head + pages);
        Ok(())
    }

    /// Takes our transient marker off `INFO[head]` (if nobody overwrote it).
    pub(crate) fn unmark(&self, head: u64, transient: PageInfo) {
        // ORDERING: Release publishes what we did under the marker.
        let _ = self.page_word(head, page::INFO).compare_exchange(
            transient.encode(),
            PageInfo::Free.encode(),
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// Allocates a run of whole pages for `size` bytes, owned by the caller; `None` if no run
    /// is free. For a cache (`for_cache`: its size for the request, more pages than it needs),
    /// a run of that many pages if one is free, the pages beyond the capacity spare, so that the
    /// run can serve any request of that size when the cache takes it back; else an exact one.
    /// Either goes to the session's own blocks if the cache asks (see
    /// [`Heap::fit_in_own_block`]).
    pub(crate) fn alloc_large(
        &self,
        session: &mut Session,
        size: u64,
        for_cache: Option<ForCache>,
        options: AllocOptions,
    ) -> Result<Option<Allocation>, Error> {
        let pages = self.geometry().pages_for(size);
        let cached = for_cache.is_some_and(|request| request.own_blocks);
        let rounded = for_cache.map(|request| request.pages);
        if let Some(run) = rounded.filter(|&run| run > pages && run - pages <= MAX_SPARE) {
            if let Some(allocation) = self.alloc_run(session, size, pages, run, cached, options)? {
                return Ok(Some(allocation));
            }
        }
        self.alloc_run(session, size, pages, pages, cached, options)
    }

    /// [`Heap::alloc_large`] of a run of `run` pages for an allocation of `pages`; with
    /// `cached`, a run for a cache, kept in the session's blocks (see [`Heap::fit_in_own_block`]).
    fn alloc_run(
        &self,
        session: &mut Session,
        size: u64,
        pages: u64,
        run: u64,
        cached: bool,
        options: AllocOptions,
    ) -> Result<Option<Allocation>, Error> {
        // The lowest run past the pages the winner of the last claim we lost was found holding.
        // `from` only rises, so the search ends (a claim lost is another claimer's progress:
        // giving up after a few would fail with free pages).
        let mut search = Search::new();
        loop {
            let find = |from| self.find_free_run(run, from);
            let Some(mut head) = search.next(find, |from| self.bitmap_run(run, from)) else {
                return Ok(None);
            };
            if !self.back_pages(head + run) {
                let Some(lower) = search.unbacked(|from| self.used_bits().find_run(run, from)) else {
                    return Ok(None);
                };
                head = lower;
            }
            if cached {
                head = self.fit_in_own_block(session, run, head);
            }
            if let Err(next) = self.claim_run(session, head, run) {
                search.lost(next);
                continue;
            }
            // The generation is issued from here on: a claim undone after the state store below
            // must not let the next run here issue it again (its state word could then be ours
            // bit for bit, and a reclaimer holding ours would take it).
            let (allocation, live) = self.issue_run(session, head, pages, size, options);
            // ORDERING: Release: a reclaimer that acquires this word sees our marker on the
            // info (or what came after it), never the info of a run that was here before.
            self.page_word(head, page::STATE).store(live, Ordering::Release);
            step!("large/initialised");
            self.set_info(head, PageInfo::LargeHead { pages: run, spare: run - pages });
            self.clear_pending(session);
            step!("large/published");
            return Ok(Some(allocation));
        }
    }

    /// Where a cache's claim of a run of `run` pages goes, `head` being the lowest fit (backed):
    /// there if its block is the session's or nobody's, else the next fit above it in a block
    /// that is (looking at [`BLOCK_HOPS`] more fits at most, each backed before its block's
    /// owner word is read), else `head` all the same. A hint: claims stay first fit wherever
    /// one participant claims alone, and never refuse for it.
    fn fit_in_own_block(&self, session: &Session, run: u64, head: u64) -> u64 {
        let me = session.participant + 1;
        let mut fit = head;
        for _ in 0..=BLOCK_HOPS {
            if self.takes_block(me, fit) {
                return fit;
            }
            let next_block = (fit / BLOCK_PAGES + 1) * BLOCK_PAGES;
            match self.find_free_run(run, next_block) {
                Some(next) if self.back_pages(next + run) => fit = next,
                _ => break,
            }
        }
        head
    }

    /// Whether the block holding `page` is participant `me - 1`'s to claim cached runs in: it
    /// says so, or it names nobody (or a participant whose record is free) and now names `me`.
    fn takes_block(&self, me: u64, page: u64) -> bool {
        let word = self.block_owner(page);
        // ORDERING: Relaxed: a placement hint; it orders nothing.
        let owner = word.load(Ordering::Relaxed);
        if owner == me {
            return true;
        }
        let gone = owner == 0
            || owner > self.geometry().table_size
            || self.participant_state(owner - 1).state == RecordState::Free;
        // ORDERING: Relaxed, as above.
        gone && word.compare_exchange(owner, me, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// The block holding byte `offset` of the region if it names participant `me - 1`'s as its
    /// owner (see [`Heap::takes_block`]).
    pub(crate) fn own_block_at(&self, me: u64, offset: u64) -> Option<u64> {
        let geo = self.geometry();
        let page = offset.checked_sub(geo.data_offset)? >> geo.page_shift;
        // ORDERING: Relaxed: a placement hint.
        (page < geo.num_pages && self.block_owner(page).load(Ordering::Relaxed) == me)
            .then_some(page / BLOCK_PAGES)
    }

    /// Gives block `block` up if it names participant `me - 1` as its owner.
    pub(crate) fn give_up_block(&self, me: u64, block: u64) {
        // ORDERING: Relaxed: a placement hint.
        let _ = self.block_owner(block * BLOCK_PAGES).compare_exchange(
            me,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Issues a new generation for the run at `head` (held by the session, claimed or cached)
    /// and writes its extra word: the allocation of `pages` pages' capacity it becomes, and the
    /// state word that makes it live. The run's epoch is the caller's alone to write while it
    /// holds the run.
    fn issue_run(
        &self,
        session: &Session,
        head: u64,
        pages: u64,
        size: u64,
        options: AllocOptions,
    ) -> (Allocation, u64) {
        let geo = self.geometry();
        let epoch = self.page_word(head, page::EPOCH);
        let generation = gen::next(epoch.load(Ordering::Relaxed));
        // ORDERING: Relaxed: the Release of the state word that makes the run live publishes
        // these (and the adopter of an undone claim acquires the claimer's marker first).
        epoch.store(generation, Ordering::Relaxed);
        let extra = Extra { alloc_type: options.alloc_type, gen_high: gen::high(generation) };
        self.page_word(head, page::GEN).store(extra.encode() as u64, Ordering::Relaxed);
        let capacity = pages << geo.page_shift;
        let owner = session.owner();
        let live = BlockState::live(owner.0 as u64, capacity - size, gen::tag(generation));
        let offset = geo.page_offset(head);
        let allocation = Allocation::new(
            self.make_id(offset, generation),
            offset,
            size,
            capacity,
            options.alloc_type,
            owner,
        );
        (allocation, live.encode())
    }

    /// Makes the run at `head` of `pages` pages, which a cache of the session's process holds
    /// with state word `cached`, the live allocation of `size` bytes (at most the run's pages;
    /// the pages beyond its capacity become the run's spare); `None` (nothing changed) if it is
    /// not that run any more: another participant released it (see
    /// [`Heap::release_cached_runs`]). The run is taken first (`Releasing` by us, under
    /// `PENDING`, as a release would take it), so that its info, epoch and extra word are ours
    /// to write; a reclaimer finishes the release should we die before it is live.
    pub(crate) fn hand_out_run(
        &self,
        session: &Session,
        head: u64,
        pages: u64,
        cached: u64,
        size: u64,
        options: AllocOptions,
    ) -> Option<Allocation> {
        let needed = self.geometry().pages_for(size);
        let spare = match self.info(head) {
            Ok(PageInfo::LargeHead { pages: p, spare }) if p == pages && needed <= pages => spare,
            _ => return None,
        };
        self.set_pending(session, head);
        let taken = BlockState::releasing(session.participant, BlockState::tag_of(cached)).encode();
        let state = self.page_word(head, page::STATE);
        // ORDERING: Acquire: the run is ours after its last user's accesses.
        if state.compare_exchange(cached, taken, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.clear_pending(session);
            return None;
        }
        step!("run-cache/taken");
        // (The info read above is the run's still: only a holder of the run changes it, and the
        // state word we exchanged was ours, unchanged, since we cached it.)
        if spare != pages - needed {
            self.set_info(head, PageInfo::LargeHead { pages, spare: pages - needed });
        }
        let (allocation, live) = self.issue_run(session, head, needed, size, options);
        step!("run-cache/issued");
        // ORDERING: Release publishes the extra word (and the allocation) to lookups, as in
        // `alloc_large`. Nobody else changes a state word that names us releasing it.
        state.store(live, Ordering::Release);
        self.clear_pending(session);
        step!("run-cache/handed-out");
        Some(allocation)
    }

    /// Releases the run at `head` of `pages` pages whose state word was `word` (a cached run
    /// taken from any cache, or a dead owner's run) to the page bitmap: one compare-exchange
    /// makes it ours to release, as a free does. Its last generation; `None` if the word changed
    /// (someone else took it).
    pub(crate) fn release_run_from(
        &self,
        session: &Session,
        head: u64,
        pages: u64,
        word: u64,
    ) -> Option<u64> {
        self.set_pending(session, head);
        let tag = BlockState::tag_of(word);
        let releasing = BlockState::releasing(session.participant, tag).encode();
        let state = self.page_word(head, page::STATE);
        // ORDERING: Acquire on success pairs with the Release that made `word` (the caching
        // compare-exchange, or the store that made the run live): the run is ours after its last
        // user's accesses.
        if state.compare_exchange(word, releasing, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.clear_pending(session);
            return None;
        }
        step!("release/taken");
        let extra = Extra::decode(self.page_word(head, page::GEN).load(Ordering::Relaxed) as u32);
        let generation = gen::join(extra.gen_high, tag);
        self.finish_large_release(session, head, pages, generation);
        Some(generation)
    }

    /// Releases every run that any participant's cache holds (below the high-water mark): what
    /// an allocation that found no room does before it reports `OutOfMemory`, so that runs an
    /// idle or stopped participant cached never make a pool refuse, nor keep a blocked
    /// allocation waiting. The caches that held them find them gone when they next look
    /// (their entries name the exact state word they cached). Whether it released any.
    pub(crate) fn release_cached_runs(&self, session: &Session) -> bool {
        let bits = self.used_bits();
        let mut released = false;
        let mut here = bits.next_claimed(0);
        while here < bits.pages() {
            let next = match bits.is_head(here).then(|| self.info(here)) {
                Some(Ok(PageInfo::SpanHead { .. })) => here + SPAN_PAGES,
                Some(Ok(PageInfo::LargeHead { pages, .. })) if pages >= 1 && pages <= bits.pages() - here => {
                    // ORDERING: Acquire pairs with the Release of the caching compare-exchange.
                    let word = self.page_word(here, page::STATE).load(Ordering::Acquire);
                    // The length read first may be a former run's: the run of this word is the
                    // one whose length we read only if the info still says so after the word (a
                    // run's info stays while its state word does).
                    if BlockState::decode(word).is_some_and(|state| state.kind == Kind::Cached)
                        && matches!(self.info(here), Ok(PageInfo::LargeHead { pages: p, .. }) if p == pages)
                    {
                        released |= self.release_run_from(session, here, pages, word).is_some();
                    }
                    here + pages
                }
                _ => here + 1,
            };
            here = bits.next_claimed(next);
        }
        released
    }

    /// Gives back the pages of the large run at `head`, whose state word the session made
    /// `Releasing(me)` (its last generation `generation`), `PENDING` already naming `head`.
    pub(crate) fn finish_large_release(&self, session: &Session, head: u64, pages: u64, generation: u64) {
        // The epoch first: every generation issued in this page must be below the next one.
        self.page_word(head, page::EPOCH).fetch_max(generation, Ordering::Relaxed);
        step!("release/epoch");
        let transient = PageInfo::Transient { participant: session.participant };
        let info = self.page_word(head, page::INFO);
        // ORDERING: Relaxed: the exchange below acquires what it compares.
        let word = info.load(Ordering::Relaxed);
        let ours = matches!(PageInfo::decode(word), Some(PageInfo::LargeHead { pages: p, .. }) if p == pages);
        // ORDERING: AcqRel: acquires the run from whoever published it, releases our marking.
        // Only the participant that made the state `Releasing` releases (no ABA on the info).
        if !ours
            || info.compare_exchange(word, transient.encode(), Ordering::AcqRel, Ordering::Relaxed).is_err()
        {
            // Not the run we were told of (only a corrupted pool gets here): better to leave
            // its pages held than to free someone else's.
            self.clear_pending(session);
            return;
        }
        self.release_marked(session, head, pages);
    }

    /// Clears the page bits of the run at `head` (marked `Transient(me)`), then its marker.
    pub(crate) fn release_marked(&self, session: &Session, head: u64, pages: u64) {
        step!("release/info-marked");
        self.set_pending_run(session, head, pages);
        step!("release/marked");
        self.page_bits().release(head, pages);
        step!("release/cleared");
        // The marker goes before the refresh, so that a claim of these pages meanwhile is not
        // turned away from the head for as long as the refresh takes. PENDING still names the
        // run: a reclaimer refreshes its summaries should we die now (and finds the head not
        // ours, so it touches nothing else).
        self.unmark(head, PageInfo::Transient { participant: session.participant });
        step!("release/unmarked");
        self.run_index().refresh(head, head + pages);
        self.clear_pending(session);
    }

    /// Retires one entirely free span, giving its pages back; `false` if none could be.
    pub(crate) fn retire_one(&self, session: &mut Session) -> Result<bool, Error> {
        if !self.can_heavy_fence() {
            return Ok(false);
        }
        let empty = self.empty_set();
        let mut from = self.empty_hint.load(Ordering::Relaxed);
        let listed = self.used_slots();
        let mut budget = self.geometry().num_slots + 8;
        while let Some(slot) = empty.find_from(from, listed) {
            if budget == 0 {
                break;
            }
            budget -= 1;
            from = slot + 1;
            let head = slot * SPAN_PAGES;
            // Our own hazard on the span, from before we read its class until our retiring mark
            // is on its info: meanwhile nobody else can retire it and carve another class there,
            // so the anchor we mark is of the class we read (other retirers skip our hazard's
            // span; the check after our own heavy fence ignores it).
            self.publish_hazard(session, head);
            let class = match self.info(head) {
                Ok(PageInfo::SpanHead { class, retiring: 0 })
                    if self.check_span_head(head, class).is_ok() =>
                {
                    class
                }
                _ => {
                    self.unmark_empty(session, slot);
                    continue;
                }
            };
            step!("retire/class-read");
            let retired = self.try_retire(session, head, class);
            self.clear_hazard(session);
            if retired? {
                self.empty_hint.store(slot + 1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Clears `slot`'s bit in the empty set, then sets it back if the slot holds an entirely free
    /// span after all (a free that emptied it may have raced with us). Under a hazard, so that
    /// a participant stopped in between is healed.
    fn unmark_empty(&self, session: &mut Session, slot: u64) {
        let head = slot * SPAN_PAGES;
        self.publish_hazard(session, head);
        let empty = self.empty_set();
        empty.clear(slot);
        step!("unmark-empty/cleared");
        if let Ok(PageInfo::SpanHead { class, retiring: 0 }) = self.info(head) {
            if self.check_span_head(head, class).is_ok() {
                let span = self.span(head, class);
                if span.anchor().count == span.blocks() {
                    empty.set(slot);
                }
            }
        }
        self.clear_hazard(session);
    }

    /// Retires the span at `head` if it is entirely free and nobody has a hazard on it.
    fn try_retire(&self, session: &mut Session, head: u64, class: usize) -> Result<bool, Error> {
        let span = self.span(head, class);
        let slot = head / SPAN_PAGES;
        let me = session.participant;
        self.set_pending(session, head);
        let stash = self.participant_word(me, participant::RETIRE_ANCHOR);
        // ORDERING: Release, as PENDING (read to act on only by whoever holds our record once
        // we are dead): the anchor to put back is recorded before it is replaced.
        if !span.try_retire(me, |before| stash.store(before, Ordering::Release)) {
            self.clear_pending(session);
            self.unmark_empty(session, slot);
            return Ok(false);
        }
        step!("retire/anchor-retiring");
        // The anchor may belong to a span carved here since we read the info: take the
        // geometry from the info as it is now, under the retiring anchor (nobody changes it).
        let flagged = PageInfo::SpanHead { class, retiring: me };
        // ORDERING: AcqRel: acquires the span as published; releases the flag to hazard holders.
        if self
            .page_word(head, page::INFO)
            .compare_exchange(
                PageInfo::SpanHead { class, retiring: 0 }.encode(),
                flagged.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            span.back_out_retire(me, stash.load(Ordering::Relaxed));
            self.clear_pending(session);
            return Ok(false);
        }
        self.flag_members(head, class, true);
        step!("retire/info-retiring");
        if let Err(error) = self.heavy_fence() {
            self.back_out_retirement(session, head, class, me);
            return Err(error);
        }
        if self.hazard_on(me, head, SPAN_PAGES, false) {
            step!("retire/hazard-found");
            self.back_out_retirement(session, head, class, me);
            return Ok(false);
        }
        step!("retire/no-hazard");
        // The span is ours alone and nobody can be looking at its in-span words.
        let max_gen = span.max_gen();
        for page in head..head + SPAN_PAGES {
            self.page_word(page, page::EPOCH).fetch_max(max_gen, Ordering::Relaxed);
        }
        // The head's epoch always moves (even for a span that never issued a generation), so
        // that an inspector's seal (info, epoch) read before this retirement never matches a
        // span carved here after it (adversarial review; `check.rs` test seen failing).
        // ORDERING: Release, so that an inspector whose Acquire load of the epoch sees the bump
        // also sees the retiring info stored before it.
        self.page_word(head, page::EPOCH).fetch_add(1, Ordering::Release);
        step!("retire/epochs-raised");
        let transient = PageInfo::Transient { participant: me };
        // ORDERING: AcqRel, as in `finish_large_release`. Only we change our flagged info.
        if self
            .page_word(head, page::INFO)
            .compare_exchange(flagged.encode(), transient.encode(), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Err(Error::Corrupt {
                what: "a retiring span's info changed under its retirer",
                page: head,
            });
        }
        step!("retire/marked");
        self.clear_members(head);
        self.class_list(class).clear(slot);
        self.empty_set().clear(slot);
        step!("retire/unlisted");
        self.release_marked(session, head, SPAN_PAGES);
        Ok(true)
    }

    /// Sets or clears the `retiring` flag in the info of the member pages of the span at `head`
    /// (pages of a span we hold retiring: only we write them).
    pub(crate) fn flag_members(&self, head: u64, class: usize, retiring: bool) {
        for member in head + 1..head + SPAN_PAGES {
            let info = PageInfo::SpanMember { head, class, retiring };
            // ORDERING: Release, as `set_info`.
            self.page_word(member, page::INFO).store(info.encode(), Ordering::Release);
        }
    }

    /// Frees the member info of the span at `head` where it still names that span (a page the
    /// span no longer holds may carry someone else's info by now).
    pub(crate) fn clear_members(&self, head: u64) {
        for member in head + 1..(head + SPAN_PAGES).min(self.geometry().num_pages) {
            let word = self.page_word(member, page::INFO);
            let current = word.load(Ordering::Acquire);
            if matches!(PageInfo::decode(current), Some(PageInfo::SpanMember { head: h, .. }) if h == head) {
                // ORDERING: Release, as `set_info`.
                let _ = word.compare_exchange(
                    current,
                    PageInfo::Free.encode(),
                    Ordering::Release,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Takes back a retirement by `retirer` that cannot go on: the span stays, entirely free
    /// and listed. By the retirer itself, or by the reclaimer that adopted it (it is dead).
    pub(crate) fn back_out_retirement(&self, session: &Session, head: u64, class: usize, retirer: u64) {
        if retirer == 0 || retirer >= self.geometry().table_size {
            // Garbage in the page info (a damaged region): not a retirement anyone can own.
            return;
        }
        let flagged = PageInfo::SpanHead { class, retiring: retirer };
        if self.info(head) == Ok(flagged) {
            self.flag_members(head, class, false);
            step!("back-out/members");
            // ORDERING: Release: hazard holders that see the unflagged info see the span as it was.
            let _ = self.page_word(head, page::INFO).compare_exchange(
                flagged.encode(),
                PageInfo::SpanHead { class, retiring: 0 }.encode(),
                Ordering::Release,
                Ordering::Relaxed,
            );
            step!("back-out/head");
        }
        let before = self.participant_word(retirer, participant::RETIRE_ANCHOR).load(Ordering::Acquire);
        self.span(head, class).back_out_retire(retirer, before);
        step!("back-out/anchor-normal");
        self.class_list(class).set(head / SPAN_PAGES);
        self.empty_set().set(head / SPAN_PAGES);
        self.clear_pending(session);
    }
}

#[cfg(all(test, feature = "crash-points", not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;
    use crate::crash::testing::{self, identity, Memory};

    /// Found by the adversarial review of heap v2. A retirer read `INFO[head] = SpanHead { A }`
    /// and was preempted; meanwhile the span was retired by someone else and carved again at
    /// `head` as a smaller class B, whose anchor happened to count `blocks(A)` free blocks. The
    /// retirer then marked B's anchor retiring, a free of a B block pushed onto it, and the
    /// back-out failed: B stayed retiring for good. (Seen failing at 141d99e in the reviewer's
    /// form, which called `try_retire` with the stale class: `Anchor { head: 2308, count: 32,
    /// retiring: true, .. }`; this form failed too before the fix, at the first assertion.) Now
    /// a retirer publishes its hazard before it reads the class, so nobody retires the span
    /// under it, and the class it read stays the span's.
    #[test]
    fn a_span_whose_class_a_retirer_has_read_is_not_retired_and_recarved_under_it() {
        let memory = Memory::new();
        let heap = memory.create();
        let owner = heap.register_process(identity(1)).expect("room");
        let mut s = heap.register_participant(owner).expect("room");
        let mut retirer = heap.register_participant(owner).expect("room");
        // An entirely free span of class A (2048 bytes), the only one.
        let x = heap.alloc(&mut s, 2048, AllocOptions::default()).expect("space");
        let head = (x.offset - heap.geometry().data_offset) / heap.geometry().page_bytes();
        let head = head - head % SPAN_PAGES;
        let _ = heap.free(&mut s, x.id()).expect("live");
        let hook = testing::install();
        let heap_ref = &heap;
        std::thread::scope(|scope| {
            let retiring = scope.spawn(move || {
                testing::pause_at("retire/class-read");
                heap_ref.retire_one(&mut retirer)
            });
            testing::wait_until_paused();
            // The retirer has read class A. Someone else looking for a span to retire must
            // leave this one alone.
            let other = heap.retire_one(&mut s);
            testing::resume();
            let retired = retiring.join().expect("no panic");
            assert_eq!(other, Ok(false), "the span was retired under the retirer");
            assert_eq!(retired, Ok(true), "the retirer retires it with the class it read");
        });
        drop(hook);
        assert_eq!(heap.info(head), Ok(PageInfo::Free));
        heap.check(&mut s).expect("consistent");
    }
}
