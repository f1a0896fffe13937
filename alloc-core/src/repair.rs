//! Offline repair: an fsck for a pool whose metadata was damaged (by a bug, a bad write through a
//! stale pointer, or a hostile process). Crashes do not need it: `reclaim_dead` recovers from
//! those online.
//!
//! It must run while **no other participant is inside an operation** (every other process
//! stopped or gone): it treats every other participant record as abandoned, and rebuilds what
//! can be rebuilt from the page bitmap, page info and block states: runs cut short are released,
//! retirements backed out, blocks on no list put back, waiter slots cleared, class lists and the
//! empty set made to match the spans. Live allocations and their owners are kept.
//!
//! The page bitmap says where runs are: a head bit, then claimed pages. A span or live run that
//! lost its head bit still says what it is by its info and state, and gets the bit back; a run's
//! extent is what its bits hold, and beyond that what its count says over pages whose bits were
//! lost. Where bits and count cannot be told apart, a live run keeps a page too many rather than
//! give one back that its owner may still use. The high-water mark is rebuilt from the spans and
//! runs kept; only backed pages are read.

use crate::bitmap::PageBits;
use crate::error::Error;
use crate::heap::Heap;
use crate::layout::{
    gen, header, large_capacity, page, participant, status, Anchor, BlockState, Extra, Kind, PageInfo,
    RecordState, NUM_CLASSES, SPAN_PAGES, WAITER_SLOTS,
};
use crate::participant::Session;
use crate::primitive::Ordering;
use crate::reclaim::Reclaimed;

/// What [`Heap::repair`] put right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Participant records of others released (with their pending work finished or undone).
    pub participants: u64,
    /// Claimed pages that belonged to no span or run, released.
    pub orphan_pages: u64,
    /// Claims, releases and retirements left half done, finished or undone.
    pub unfinished: u64,
    /// Free blocks on no list, put back.
    pub orphan_blocks: u64,
    /// Waiter slots cleared.
    pub waiter_slots: u64,
    /// Spans and large runs whose page bits or count were damaged, made to agree again (a live
    /// run is kept, with its owner).
    pub damaged_runs: u64,
}

impl Repaired {
    /// Whether anything needed repair.
    pub fn is_clean(&self) -> bool {
        *self == Repaired::default()
    }
}

impl Heap<'_> {
    /// Rebuilds the span at `head` from its blocks' states (nobody else is inside an operation):
    /// its page info unflagged, its free list made of exactly its free blocks, its anchor normal,
    /// its list bits set as its count requires. Returns how many free blocks were on no list.
    fn rebuild_span(&self, head: u64, class: usize) -> u64 {
        self.set_info(head, PageInfo::SpanHead { class, retiring: 0 });
        self.write_members(head, class);
        let span = self.span(head, class);
        let before = span.anchor();
        let mut next = Anchor::NULL;
        let mut count = 0;
        for index in (0..span.blocks()).rev() {
            let tag = match BlockState::decode(span.state(index).load(Ordering::Acquire)) {
                Some(state) if state.kind == Kind::Free => state.tag,
                Some(state) if matches!(state.kind, Kind::Live | Kind::Cached) => continue,
                // No version writes this for a block: call it free (it holds nothing).
                _ => 0,
            };
            span.state(index).store(BlockState::free(next, 0, tag).encode(), Ordering::Release);
            next = index;
            count += 1;
        }
        let anchor = Anchor { head: next, count, retiring: false, tag: before.tag }.bumped();
        span.anchor_word().store(anchor.encode(), Ordering::Release);
        let slot = head / SPAN_PAGES;
        if count > 0 {
            self.class_list(class).set(slot);
        }
        if count == span.blocks() {
            self.empty_set().set(slot);
        }
        if before.retiring {
            0
        } else {
            count.saturating_sub(before.count)
        }
    }

    /// Puts right what the metadata says is inconsistent (see the module docs). Call only when
    /// no other participant is inside an operation.
    pub fn repair(&self, session: &mut Session) -> Result<Repaired, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        let mut repaired = Repaired::default();
        let mut scratch = Reclaimed::default();
        for index in 1..self.participant_hwm() {
            if index == session.participant || self.participant_state(index).state == RecordState::Free {
                continue;
            }
            let busy = [participant::HAZARD, participant::PENDING, participant::HANDOVER_SLOT]
                .iter()
                .any(|&field| self.participant_word(index, field).load(Ordering::Acquire) != 0);
            if busy {
                // Nobody else is inside an operation, so no hazard guards anything: heal offline.
                self.resolve_work(session, index, &mut scratch, true)?;
                repaired.participants += 1;
            }
        }
        repaired.unfinished += scratch.pending;
        repaired.orphan_blocks += scratch.orphan_blocks;
        for slot in 0..WAITER_SLOTS {
            let owner = self.region().word(self.geometry().waiter_word + slot);
            if owner.swap(0, Ordering::AcqRel) != 0 {
                repaired.waiter_slots += 1;
            }
        }
        let status_word = self.region().word(header::STATUS);
        if status_word.fetch_and(status::STATE_MASK, Ordering::AcqRel) >> status::WAITER_SHIFT != 0
            && repaired.waiter_slots == 0
        {
            repaired.waiter_slots += 1;
        }
        self.repair_pages(session, &mut repaired)?;
        let slots = self.backed_pages().div_ceil(SPAN_PAGES);
        for class in 0..NUM_CLASSES {
            self.class_list(class).rebuild_summaries(slots);
        }
        self.empty_set().rebuild_summaries(slots);
        self.run_index().rebuild(self.backed_pages());
        Ok(repaired)
    }

    fn repair_pages(&self, session: &mut Session, repaired: &mut Repaired) -> Result<(), Error> {
        // Every backed page, not only those below the high-water mark: a damaged mark may hide
        // runs. The mark starts again from nothing and every run kept raises it. (Pages never
        // backed were never claimed; their metadata is not read, as it may have no memory behind
        // it.)
        // A mark above the backed pages: either word may be the damaged one. Backing up to the
        // mark (idempotent) puts the backed count right if it was; if the host cannot, the mark
        // was, and it is read as the backed pages.
        let _ = self.back_pages(self.raw_page_hwm());
        let limit = self.backed_pages();
        self.region().word(header::PAGE_HWM).store(0, Ordering::Release);
        let bits = self.bits_below(limit);
        let mut here = bits.next_claimed(0);
        while here < limit {
            let info = self.info(here).unwrap_or(PageInfo::Free);
            if !bits.is_head(here) && self.names_a_run(here, info) {
                // A span or run whose head bit was lost: its info and state say what it is.
                bits.mark_head(here);
                repaired.damaged_runs += 1;
            }
            let next = match info {
                _ if !bits.is_head(here) => {
                    // A claimed page outside every run: nobody's.
                    bits.release(here, 1);
                    repaired.orphan_pages += 1;
                    here + 1
                }
                PageInfo::SpanHead { class, retiring } if self.check_span_head(here, class).is_ok() => {
                    if retiring != 0 {
                        repaired.unfinished += 1;
                    }
                    let end = here + SPAN_PAGES;
                    if bits.held_prefix(here, end) < end
                        && !(here + 1..end).any(|member| bits.is_head(member))
                    {
                        bits.mark_members(here + 1, end);
                        repaired.damaged_runs += 1;
                    }
                    repaired.orphan_blocks += self.rebuild_span(here, class);
                    self.raise_page_hwm(end);
                    end
                }
                PageInfo::LargeHead { pages, spare } => {
                    let end = self.run_extent(&bits, here, pages, limit);
                    // A run whose bits held more than its count keeps its spare, a shorter one
                    // as much of its capacity as it still holds; a spare of the whole run is
                    // damage, read as none (the user's bytes may be anywhere in the run).
                    let spare = pages - large_capacity(pages, spare);
                    let kept = end - here;
                    let capacity = match kept >= pages {
                        true => kept - spare,
                        false => (pages - spare).min(kept),
                    };
                    let fixed = PageInfo::LargeHead { pages: kept, spare: kept - capacity };
                    if Ok(fixed) != self.info(here) {
                        self.set_info(here, fixed);
                        repaired.damaged_runs += 1;
                    }
                    let state_word = self.page_word(here, page::STATE);
                    let state = BlockState::decode(state_word.load(Ordering::Acquire));
                    match state {
                        // Kept with its owner, or in the cache of a process that may still run.
                        Some(state)
                            if state.kind == Kind::Live
                                || (state.kind == Kind::Cached && end == here + pages) =>
                        {
                            if state.kind == Kind::Live {
                                self.fit_slack(state, here, pages - spare, capacity);
                            }
                            self.clear_interior(here, end);
                            self.raise_page_hwm(end);
                        }
                        state => {
                            let extra =
                                Extra::decode(self.page_word(here, page::GEN).load(Ordering::Relaxed) as u32);
                            let tag = state.map_or(0, |s| s.tag);
                            // Ours to release (a cache that held it finds it gone).
                            let releasing = BlockState::releasing(session.participant, tag);
                            state_word.store(releasing.encode(), Ordering::Release);
                            self.set_pending(session, here);
                            self.finish_large_release(
                                session,
                                here,
                                end - here,
                                gen::join(extra.gen_high, tag),
                            );
                            repaired.unfinished += 1;
                        }
                    }
                    end
                }
                _ => {
                    // Transient, or garbage: give back the prefix of bits starting here.
                    let end = bits.held_prefix(here, limit).max(here + 1);
                    if here.is_multiple_of(SPAN_PAGES) {
                        self.clear_members(here);
                    }
                    bits.release(here, end - here);
                    self.set_info(here, PageInfo::Free);
                    repaired.unfinished += 1;
                    end
                }
            };
            here = bits.next_claimed(next);
        }
        Ok(())
    }

    /// Whether the claimed page `here`, which carries no head bit, is the head of a span or of
    /// a live or cached run all the same (by its info and state).
    fn names_a_run(&self, here: u64, info: PageInfo) -> bool {
        match info {
            PageInfo::SpanHead { class, .. } => self.check_span_head(here, class).is_ok(),
            PageInfo::LargeHead { .. } => {
                let word = self.page_word(here, page::STATE).load(Ordering::Acquire);
                BlockState::decode(word).is_some_and(|state| matches!(state.kind, Kind::Live | Kind::Cached))
            }
            _ => false,
        }
    }

    /// The end of the large run at `here` whose head says `pages`, by the page bitmap: the
    /// pages its bits hold (claimed pages without a head bit after a head are its own), and
    /// beyond them the pages its count says where they are backed, hold no other head and end
    /// where a member does not go on (bits lost there are claimed again). Where bits and count
    /// disagree, a run rather keeps a page too many than gives one its owner still uses.
    fn run_extent(&self, bits: &PageBits<'_>, here: u64, pages: u64, limit: u64) -> u64 {
        let held = bits.held_prefix(here, limit);
        let end = here.saturating_add(pages);
        if end <= held {
            return held;
        }
        let fits = end <= limit
            && !(held..end).any(|page| bits.is_head(page))
            && (end == limit || !bits.is_claimed(end) || bits.is_head(end));
        if !fits {
            return held;
        }
        bits.mark_members(held, end);
        end
    }

    /// Makes the slack of the live run at `here` (its capacity was `pages` pages, it is now
    /// `kept`) fit its capacity: a smaller one keeps as much of the size as fits, a larger one
    /// keeps its slack.
    fn fit_slack(&self, state: BlockState, here: u64, pages: u64, kept: u64) {
        let page_bytes = self.geometry().page_bytes();
        let capacity = kept * page_bytes;
        let size = match kept < pages {
            true => pages.saturating_mul(page_bytes).saturating_sub(state.aux).min(capacity),
            false => capacity.saturating_sub(state.aux),
        };
        if capacity - size != state.aux {
            let fitted = BlockState { aux: capacity - size, ..state };
            self.page_word(here, page::STATE).store(fitted.encode(), Ordering::Release);
        }
    }

    /// Clears any info left on the interior pages of the run at `here..end`.
    fn clear_interior(&self, here: u64, end: u64) {
        for interior in here + 1..end {
            let info = self.page_word(interior, page::INFO);
            if info.load(Ordering::Relaxed) != PageInfo::Free.encode() {
                info.store(PageInfo::Free.encode(), Ordering::Release);
            }
        }
    }
}
