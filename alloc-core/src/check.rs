//! One walk over the heap, used three ways: `stats` (tolerant, for a heap in use), `check`
//! (strict, for a quiescent heap: every invariant below must hold) and `inspect` (tolerant, and
//! read-only: no participant, no write to the region, so it works on a read-only mapping). All
//! visit only claimed pages (the page bitmap says where they are), and read the bitmap and the
//! class lists only below the page high-water mark (`header::PAGE_HWM`), so that a sparse
//! pool's untouched metadata is never read (on tmpfs, reading it would allocate it). Claimed
//! bits above the mark can only come from damage; `repair` walks the whole bitmap. `stats` and `check` hold a
//! hazard on each span they read; `inspect` cannot publish one, so it reads a span's info and
//! its head page's epoch before reading the span's in-band words, and again after reading each
//! allocation's words, as a seqlock reader: an allocation is reported only if neither changed.
//! A span is only retired when it is entirely free, so a walk that finds it changing stops
//! there and counts the blocks it did not read as free.
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
//!    or process record is left from a dead process; no waiter slot is taken; no budget
//!    charge is pending.
//! 6. A budget never charges more than its live allocations' charges, in bytes or count (a
//!    crash, or a charge given back ahead of its free, may leave it lower, never higher).

use crate::bitmap::PAGES_PER_WORD;
use crate::crash::step;
use crate::error::Error;
use crate::heap::{Allocation, ClassStats, Heap, Owner, Stats};
use crate::layout::{
    gen, header, large_capacity, page, participant, status, Anchor, BlockState, Extra, Kind, PageInfo,
    RecordState, CLASS_SIZES, NUM_CLASSES, SPAN_PAGES, WAITER_SLOTS,
};
use crate::participant::Session;
use crate::primitive::{fence, Ordering};

/// Times a walk looks again at a large run whose words changed while it read them, before it
/// leaves the run out.
const LOOKS_AGAIN: u32 = 4;

/// How a walk keeps a span's in-band words (`S`/`X`) meaningful while it reads them.
enum Guard<'s> {
    /// A hazard of this participant on the span: it cannot be retired under the walk.
    Hazard(&'s mut Session),
    /// No participant: the span's info and epoch, read before and after, must not change.
    Seal,
}

/// What one span adds to the figures.
#[derive(Default)]
struct SpanFigures {
    blocks: u64,
    live: u64,
    live_bytes: u64,
    cached: u64,
}

fn corrupt(what: &'static str, page: u64) -> Error {
    Error::Corrupt { what, page }
}

impl Heap<'_> {
    /// Usage figures from one walk of the claimed pages.
    pub fn stats(&self, session: &mut Session) -> Result<Stats, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        self.survey(Guard::Hazard(session), false, &mut |_| {})
    }

    /// [`Heap::stats`] and [`Heap::for_each_allocation`] in one walk, for a tool that must not
    /// change the pool it looks at: needs no participant and never writes to the region (so it
    /// works on a read-only mapping). Consistent per allocation, as `for_each_allocation`.
    pub fn inspect(&self, mut visit: impl FnMut(Allocation)) -> Result<Stats, Error> {
        self.ensure_ready()?;
        self.survey(Guard::Seal, false, &mut visit)
    }

    /// Walks the whole heap and verifies every invariant; meaningful on a quiescent heap (no
    /// call in progress in any process). Returns the same figures as [`Heap::stats`].
    pub fn check(&self, session: &mut Session) -> Result<Stats, Error> {
        self.check_session(session)?;
        self.ensure_ready()?;
        let mut charged = 0;
        let stats = self.survey(Guard::Hazard(session), true, &mut |allocation| {
            charged += self.charged_bytes_of(allocation.size)
        })?;
        self.check_records()?;
        self.check_budget(charged, stats.live_allocations)?;
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
        self.survey(Guard::Hazard(session), false, &mut visit).map(|_| ())
    }

    /// Fails if a page is claimed at or above the high-water mark (`hwm`, read before) as it is
    /// now: a mark damaged to below a claimed page would hide that page from every walk and
    /// search. Where the host backs pages as they are claimed, every backed page is looked at;
    /// elsewhere (where reading untouched metadata would allocate it) only the bitmap word
    /// holding the mark.
    fn ensure_nothing_claimed_above(&self, hwm: u64) -> Result<(), Error> {
        if self.has_backing() && self.raw_page_hwm() > self.backed_pages() {
            // Every page is backed before a claim raises the mark past it: one of the two
            // words is damaged (and a damaged backed count hides pages from every walk).
            return Err(corrupt("high-water mark above the backed pages", self.backed_pages()));
        }
        let limit = match self.has_backing() {
            true => self.backed_pages(),
            false => ((hwm / PAGES_PER_WORD + 1) * PAGES_PER_WORD).min(self.geometry().num_pages),
        };
        let claimed = self.bits_below(limit).next_claimed(hwm);
        match claimed < limit && claimed >= self.page_hwm() {
            true => Err(corrupt("claimed page above the high-water mark", claimed)),
            false => Ok(()),
        }
    }

    fn survey(
        &self,
        mut guard: Guard<'_>,
        strict: bool,
        visit: &mut dyn FnMut(Allocation),
    ) -> Result<Stats, Error> {
        let geo = *self.geometry();
        let bits = self.used_bits();
        let mut stats = Stats {
            data_bytes: geo.data_bytes(),
            largest_free_run: bits.largest_free_run(geo.num_pages - bits.pages()) << geo.page_shift,
            classes: [ClassStats::default(); NUM_CLASSES],
            ..Stats::default()
        };
        // Free: the pages the walk did not find claimed, and the free blocks of the spans it
        // read. Both come from the walk itself, so a span carved meanwhile is never counted as
        // unclaimed pages and as free blocks too.
        let mut free_bytes = 0;
        let ensure = |ok: bool, what: &'static str, page: u64| {
            if ok || !strict {
                Ok(())
            } else {
                Err(corrupt(what, page))
            }
        };
        if strict {
            self.ensure_nothing_claimed_above(bits.pages())?;
        }
        // The run looked at again, and how often (see the large runs below).
        let mut looked_again = (u64::MAX, 0);
        let mut here = bits.next_claimed(0);
        while here < bits.pages() {
            if !bits.is_head(here) {
                ensure(false, "claimed page belongs to no span or run", here)?;
                stats.claimed_pages += 1;
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
                    let figures = match &mut guard {
                        Guard::Hazard(session) => {
                            self.publish_hazard(session, here);
                            let outcome = self.survey_span(here, class, strict, &|| true, visit);
                            self.clear_hazard(session);
                            outcome?
                        }
                        Guard::Seal => {
                            // ORDERING: the epoch first, both Acquire: the info read after it is
                            // never older, so a seal never pairs a span's info with the epoch
                            // of after its retirement (the review's loom model found that mix
                            // with the opposite order).
                            let seal = || {
                                (
                                    self.page_word(here, page::EPOCH).load(Ordering::Acquire),
                                    self.page_word(here, page::INFO).load(Ordering::Acquire),
                                )
                            };
                            let sealed = seal();
                            let unchanged = || {
                                // ORDERING: Acquire fence: the words read before are read
                                // before the seal (a retirement raises the epoch first).
                                fence(Ordering::Acquire);
                                seal() == sealed
                            };
                            if sealed.1 == (PageInfo::SpanHead { class, retiring: 0 }).encode() {
                                self.survey_span(here, class, false, &unchanged, visit)?
                            } else {
                                SpanFigures::default()
                            }
                        }
                    };
                    if figures.blocks > 0 {
                        let class_stats = &mut stats.classes[class];
                        class_stats.spans += 1;
                        class_stats.blocks += figures.blocks;
                        class_stats.live += figures.live;
                        stats.cached_blocks += figures.cached;
                        stats.live_allocations += figures.live;
                        stats.live_bytes = stats.live_bytes.saturating_add(figures.live_bytes);
                        free_bytes += (figures.blocks - figures.live) * CLASS_SIZES[class] as u64;
                    }
                    stats.claimed_pages += SPAN_PAGES;
                    here = bits.next_claimed(here + SPAN_PAGES);
                }
                Ok(info @ PageInfo::LargeHead { pages, spare })
                    if pages >= 1 && pages <= bits.pages() - here =>
                {
                    ensure(spare < pages, "large run's spare pages are all its pages", here)?;
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
                    let capacity = large_capacity(pages, spare) << geo.page_shift;
                    let state_word = self.page_word(here, page::STATE);
                    let word = state_word.load(Ordering::Acquire);
                    let extra = Extra::decode(self.page_word(here, page::GEN).load(Ordering::Relaxed) as u32);
                    // The info read before the state word may be of an allocation before it (a
                    // cache that takes a run back rewrites its spare while it holds it, then its
                    // extra word and state word): with the state word and the info unchanged
                    // after, the three are one allocation's (its state word's tag is new). Else
                    // the run is looked at again, a few times (each change is a hand-out here),
                    // then left out of the walk.
                    // ORDERING: Acquire fence: the words read before are read before the look again.
                    fence(Ordering::Acquire);
                    if state_word.load(Ordering::Relaxed) != word || self.info(here) != Ok(info) {
                        looked_again = match looked_again {
                            (page, looks) if page == here => (page, looks + 1),
                            _ => (here, 1),
                        };
                        if looked_again.1 <= LOOKS_AGAIN {
                            continue;
                        }
                        stats.claimed_pages += pages;
                        here = bits.next_claimed(here + pages);
                        continue;
                    }
                    let state = BlockState::decode(word);
                    match state {
                        Some(state) if state.kind == Kind::Live && state.aux <= capacity => {
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
                        Some(state) if state.kind == Kind::Cached => {
                            stats.cached_blocks += 1;
                            free_bytes += pages << geo.page_shift;
                        }
                        _ => ensure(false, "large run recorded but neither live nor cached", here)?,
                    }
                    stats.claimed_pages += pages;
                    here = bits.next_claimed(here + pages);
                }
                Ok(PageInfo::Transient { .. }) => {
                    ensure(false, "a claim or release of pages is in progress", here)?;
                    stats.claimed_pages += 1;
                    here = bits.next_claimed(here + 1);
                }
                _ => {
                    ensure(false, "claimed page belongs to no span or run", here)?;
                    stats.claimed_pages += 1;
                    here = bits.next_claimed(here + 1);
                }
            }
        }
        stats.free_bytes = free_bytes + ((geo.num_pages - stats.claimed_pages) << geo.page_shift);
        if strict {
            let used_slots = bits.pages().div_ceil(SPAN_PAGES);
            for class in 0..NUM_CLASSES {
                if !self.class_list(class).summaries_cover_leaves(used_slots) {
                    return Err(corrupt("a class list hides a span", 0));
                }
            }
            if !self.empty_set().summaries_cover_leaves(used_slots) {
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
        unchanged: &dyn Fn() -> bool,
        visit: &mut dyn FnMut(Allocation),
    ) -> Result<SpanFigures, Error> {
        let ensure =
            |ok: bool, what: &'static str| if ok || !strict { Ok(()) } else { Err(corrupt(what, head)) };
        // Re-check under the hazard: the span may have been retired since the bits were read.
        if !matches!(self.info(head), Ok(PageInfo::SpanHead { class: found, retiring: 0 }) if found == class)
        {
            return ensure(false, "span changed during a strict check").map(|_| SpanFigures::default());
        }
        step!("survey/span-checked");
        let span = self.span(head, class);
        let blocks = span.blocks();
        let anchor = span.anchor();
        ensure(anchor.count <= blocks, "span free count exceeds its blocks")?;
        if strict {
            verify_free_list(&span, anchor, head)?;
        }
        let class_size = CLASS_SIZES[class] as u64;
        let base = self.geometry().page_offset(head);
        let (mut live, mut cached, mut live_bytes) = (0, 0, 0u64);
        for index in 0..blocks {
            // ORDERING: Acquire pairs with the Release store that made the block what it is, so
            // its extra word is the one of the state seen.
            let word = span.state(index).load(Ordering::Acquire);
            match BlockState::decode(word) {
                Some(state) if state.kind == Kind::Live => {
                    let extra = Extra::decode(span.extra(index).load(Ordering::Relaxed));
                    step!("survey/block-read");
                    // ORDERING: Acquire fence orders the extra-word read before the re-read:
                    // an unchanged state word (its tag moves with every allocation) says both
                    // words are of one allocation. One that changed meanwhile is left out.
                    fence(Ordering::Acquire);
                    if span.state(index).load(Ordering::Relaxed) != word {
                        continue;
                    }
                    if !unchanged() {
                        // Retired since (so it was entirely free then): the rest counts as free.
                        break;
                    }
                    live += 1;
                    let size = class_size.saturating_sub(state.aux);
                    live_bytes += size;
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
        if !unchanged() {
            // Read after a retirement: what looked cached may have been anyone's bytes.
            cached = 0;
        }
        let slot = head / SPAN_PAGES;
        ensure(
            anchor.count == 0 || self.class_list(class).is_set(slot),
            "span with free blocks missing from its class list",
        )?;
        ensure(
            anchor.count < blocks || self.empty_set().is_set(slot),
            "entirely free span missing from the empty set",
        )?;
        Ok(SpanFigures { blocks, live, live_bytes, cached })
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
                (participant::BUDGET_PENDING, "a participant has a budget charge in progress"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::testing::{self, identity, Memory};
    use crate::heap::AllocOptions;

    /// An inspector (no participant, so no hazard) that has sealed a span is overtaken: the
    /// span is retired and its pages become a large run whose owner fills them with bytes that
    /// read as live state words. Seen failing without the seal check (the inspector reported
    /// every block of the old span as a live allocation).
    #[test]
    fn an_inspector_never_reports_user_bytes_of_a_span_retired_under_it() {
        let hook = testing::install();
        let memory = Memory::new();
        let heap = memory.create();
        let ptr = memory.base();
        let process = heap.register_process(identity(2)).expect("room");
        let mut session = heap.register_participant(process).expect("room");
        let small = heap.alloc(&mut session, 64, AllocOptions::default()).expect("room");
        let _ = heap.free(&mut session, small.id()).expect("live");
        let (reported, stats) = std::thread::scope(|scope| {
            let inspector = scope.spawn(|| {
                testing::pause_at("survey/span-checked");
                let mut reported = Vec::new();
                let stats = heap.inspect(|allocation| reported.push(allocation)).expect("ready");
                (reported, stats)
            });
            testing::wait_until_paused();
            let data = heap.geometry().data_bytes();
            let large = heap.alloc(&mut session, data, AllocOptions::default()).expect("the span retires");
            assert!(large.offset <= small.offset && small.offset < large.offset + large.size, "same pages");
            let fake = BlockState::live(process.0 as u64, 0, 1).encode();
            let first = (large.offset / 8) as usize;
            // SAFETY: the large run is ours; its bytes lie inside the vector.
            unsafe {
                for word in 0..(large.size / 8) as usize {
                    ptr.cast::<u64>().add(first + word).write_volatile(fake);
                }
            }
            testing::resume();
            inspector.join().expect("no panic")
        });
        drop(hook);
        let small_ones = reported.iter().filter(|allocation| allocation.capacity < 4096).count();
        assert_eq!(small_ones, 0, "the inspector reported user bytes as allocations: {stats:?}");
        assert!(stats.live_allocations <= 1, "{stats:?}");
    }

    mod gate {
        use std::cell::Cell;
        use std::sync::atomic::{AtomicU32, Ordering};
        pub static STAGE: AtomicU32 = AtomicU32::new(0);
        thread_local! { pub static INSPECTOR: Cell<bool> = const { Cell::new(false) }; }
        /// Pauses the inspector thread at span-checked (stage 1, until 2) and at block-read
        /// (stage 3, until 4), once each.
        pub fn hook(name: &'static str) {
            if !INSPECTOR.with(|i| i.get()) {
                return;
            }
            let (reached, go) = match name {
                "survey/span-checked" => (1, 2),
                "survey/block-read" => (3, 4),
                _ => return,
            };
            if STAGE.load(Ordering::SeqCst) != reached - 1 {
                return;
            }
            STAGE.store(reached, Ordering::SeqCst);
            while STAGE.load(Ordering::SeqCst) < go {
                std::thread::yield_now();
            }
        }
        pub fn wait_for(stage: u32) {
            while STAGE.load(Ordering::SeqCst) < stage {
                std::thread::yield_now();
            }
        }
        pub fn go(stage: u32) {
            STAGE.store(stage, Ordering::SeqCst);
        }
    }

    /// Adversarial review (seen failing before the head-epoch bump in `retire`): ABA on the
    /// seal. A span whose blocks were never handed out (its carver died after popping, a
    /// reclaimer healed it) was retired without raising its head page's epoch;
    /// a large run whose head is *below* the span head covers the span's state words (raising
    /// only its own head's epoch); the run is freed and the slot carved again with the same
    /// class: INFO and EPOCH of the span head are bit for bit what the inspector sealed, so the
    /// user bytes it read while the run was live pass the re-check.
    #[test]
    fn a_seal_never_matches_a_span_carved_after_the_retirement_of_one_that_issued_nothing() {
        let hook = testing::install();
        let memory = Memory::new();
        let view = || memory.open();
        let heap = memory.create();
        let ptr = memory.base();
        let process = heap.register_process(identity(2)).expect("room");
        let mut session = heap.register_participant(process).expect("room");
        // A large run at page 0, so that the next span goes to slot 1 (head page 16).
        let keeper = heap.alloc(&mut session, 8192, AllocOptions::default()).expect("room");
        assert_eq!(keeper.offset, heap.geometry().data_offset);
        // Process D carves a span of the 64-byte class at slot 1 and dies right after its pop,
        // before handing the block out: no block of the span ever gets a new generation.
        let dead = heap.register_process(identity(3)).expect("room");
        let mut dead_session = heap.register_participant(dead).expect("room");
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            testing::stop_at("pop/popped");
            heap.alloc(&mut dead_session, 64, AllocOptions::default())
        }));
        assert!(stopped.is_err(), "D stopped after its pop");
        let head = SPAN_PAGES;
        let class = crate::layout::class_for(64).expect("small");
        assert_eq!(heap.info(head), Ok(PageInfo::SpanHead { class, retiring: 0 }));
        heap.reclaim_dead(&mut session, |record| record.identity.pid == 3, |_, _, _| {}).expect("ok");
        let span = heap.span(head, class);
        assert_eq!(span.anchor().count, span.blocks(), "healed: entirely free");
        let _ = heap.free(&mut session, keeper.id()).expect("live");

        crate::crash::set_hook(gate::hook);
        let fake_owner = 99u64;
        let (reported, stats) = std::thread::scope(|scope| {
            let inspector = scope.spawn(|| {
                gate::INSPECTOR.with(|i| i.set(true));
                let mut reported = Vec::new();
                let stats = heap.inspect(|allocation| reported.push(allocation)).expect("ready");
                (reported, stats)
            });
            gate::wait_for(1);
            // The inspector has sealed the span at page 16. It is retired (nobody ever allocated
            // from it: max_gen is its base, the epochs stay) for a run of the whole data area,
            // whose head is page 0.
            let data = heap.geometry().data_bytes();
            let big = heap.alloc(&mut session, data, AllocOptions::default()).expect("the span retires");
            assert_eq!(big.offset, heap.geometry().data_offset, "the run's head is page 0, not 16");
            let fake = BlockState::live(fake_owner, 0, 777).encode();
            let first = (big.offset / 8) as usize;
            // SAFETY: the run is ours; its bytes lie inside the vector.
            unsafe {
                for word in 0..(big.size / 8) as usize {
                    ptr.cast::<u64>().add(first + word).write_volatile(fake);
                }
            }
            gate::go(2);
            // The inspector reads block 0's words: the run's bytes.
            gate::wait_for(3);
            let _ = heap.free(&mut session, big.id()).expect("live");
            // Another process (its own hints) puts a run at page 0 and carves a 64-byte span,
            // which lands at slot 1 again.
            let other = view();
            let p = other.register_process(identity(4)).expect("room");
            let mut s = other.register_participant(p).expect("room");
            let _keeper2 = other.alloc(&mut s, 8192, AllocOptions::default()).expect("room");
            let small = other.alloc(&mut s, 64, AllocOptions::default()).expect("room");
            // (Before the fix the head's epoch was also what the inspector sealed.)
            let same_info = other.info(head) == Ok(PageInfo::SpanHead { class, retiring: 0 });
            let _ = small;
            gate::go(4);
            let outcome = inspector.join().expect("no panic");
            assert!(same_info, "the span was carved again at the same head, of the same class");
            outcome
        });
        drop(hook);
        let forged: Vec<_> = reported.iter().filter(|a| a.owner == Owner(fake_owner as u16)).collect();
        assert!(forged.is_empty(), "the inspector reported user bytes as allocations: {forged:?} {stats:?}");
    }

    /// Adversarial review: the figures are not bounded by the data area. The claimed-page count is a
    /// snapshot taken before the walk; a span carved after it has its pages counted free once
    /// as unclaimed pages and again, block by block, when the walk reaches it. `shmpool ls`
    /// then computes `data_bytes - free_bytes` (overflow: a panic in debug, a wrapped figure
    /// in release).
    #[test]
    fn free_bytes_never_exceed_the_data_area_when_spans_are_carved_during_the_walk() {
        let hook = testing::install();
        let memory = Memory::new();
        let heap = memory.create();
        let process = heap.register_process(identity(2)).expect("room");
        let mut session = heap.register_participant(process).expect("room");
        let first = heap.alloc(&mut session, 64, AllocOptions::default()).expect("room");
        let stats = std::thread::scope(|scope| {
            let inspector = scope.spawn(|| {
                testing::pause_at("survey/span-checked");
                heap.inspect(|_| {}).expect("ready")
            });
            testing::wait_until_paused();
            // Two more spans (other classes), carved after the inspector counted claimed pages.
            let _a = heap.alloc(&mut session, 128, AllocOptions::default()).expect("room");
            let _b = heap.alloc(&mut session, 256, AllocOptions::default()).expect("room");
            testing::resume();
            inspector.join().expect("no panic")
        });
        drop(hook);
        let _ = first;
        assert!(
            stats.free_bytes <= stats.data_bytes,
            "free {} > data {}: {stats:?}",
            stats.free_bytes,
            stats.data_bytes
        );
    }

    /// Adversarial review: garbage in the page bitmap's padding bits (past the last page) makes the
    /// claimed count exceed the pages: `num_pages - claimed_pages` overflows (a panic in debug).
    #[test]
    fn a_bitmap_with_padding_bits_set_does_not_panic_the_inspector() {
        let memory = Memory::new();
        let heap = memory.create();
        let geo = *heap.geometry();
        assert!(!geo.num_pages.is_multiple_of(32), "padding bits exist: {} pages", geo.num_pages);
        for word in 0..geo.bitmap_words {
            heap.region().word(geo.bitmap_word + word).store(u64::MAX, Ordering::Relaxed);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| heap.inspect(|_| {})));
        assert!(outcome.is_ok(), "the inspector panicked on garbage bitmap bits");
    }
}
