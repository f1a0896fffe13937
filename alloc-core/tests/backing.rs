//! A region whose host backs memory as pages are first claimed (a pool file that may run out of
//! space). The region here is a guarded mapping: every host page is inaccessible until the heap
//! asks the host to back it, so any read or write of a byte the heap never had backed is a
//! fault, reported with its offset (the test process exits with code 86). What holds: the heap
//! touches only what it had backed, and pages that cannot be backed never hide the free pages
//! that are.
//!
//! Only the header and tables are open from the start (what the host backs when it creates an
//! overcommitted pool). One guarded region at a time: the fault handler reports against it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use alloc_core::bitmap::PageBits;
use alloc_core::layout::{header, page, Geometry, PageInfo, CLASS_SIZES, DEFAULT_PAGE_SHIFT, SPAN_PAGES};
use alloc_core::{AllocId, AllocOptions, Allocation, Backing, Error, Heap, Platform, Region};
use common::Participant;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const HOST_PAGE: u64 = 4096;
/// Data pages are backed in chunks of this many bytes (the heap's `BACKING_CHUNK`).
const CHUNK: u64 = 4 * MIB;

static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
/// What the running test is at, printed with a fault.
static CASE: AtomicU64 = AtomicU64::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

/// Writes `value` in hex to stderr (async-signal-safe).
fn write_hex(value: u64) {
    let mut out = *b"0x0000000000000000";
    for (i, byte) in out[2..].iter_mut().enumerate() {
        *byte = b"0123456789abcdef"[(value >> (60 - 4 * i) & 15) as usize];
    }
    write_err(&out);
}

fn write_err(bytes: &[u8]) {
    // SAFETY: writes a valid buffer to stderr; async-signal-safe.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

extern "C" fn on_fault(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let (base, len) = (BASE.load(Ordering::Relaxed), LEN.load(Ordering::Relaxed));
    if (base..base + len).contains(&address) {
        write_err(b"\nthe heap touched a byte it never had backed, at region offset ");
        write_hex((address - base) as u64);
    } else {
        write_err(b"\nfault outside the guarded region at ");
        write_hex(address as u64);
    }
    write_err(b" (case ");
    write_hex(CASE.load(Ordering::Relaxed));
    write_err(b")\n");
    // SAFETY: async-signal-safe exit.
    unsafe { libc::_exit(86) };
}

/// A guarded region and the host that backs it: data only below `data_limit`, nothing once
/// `full`.
struct Guarded {
    base: *mut u8,
    len: u64,
    data_limit: u64,
    full: AtomicBool,
    backed: Mutex<Vec<(u64, u64)>>,
    _serial: MutexGuard<'static, ()>,
}

impl Guarded {
    /// `len` bytes with the header and tables of a pool of `page_shift` open.
    fn new(len: u64, page_shift: u32, data_limit: u64) -> Box<Guarded> {
        let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: installs a plain SA_SIGINFO handler for SIGSEGV and SIGBUS.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
        // SAFETY: a fresh private anonymous mapping, inaccessible until backed.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        BASE.store(base as usize, Ordering::Relaxed);
        LEN.store(len as usize, Ordering::Relaxed);
        CASE.store(0, Ordering::Relaxed);
        let guarded = Box::new(Guarded {
            base: base.cast(),
            len,
            data_limit,
            full: AtomicBool::new(false),
            backed: Mutex::new(Vec::new()),
            _serial: serial,
        });
        let tables = Geometry::compute(len, page_shift).expect("fits").bitmap_word as u64 * 8;
        guarded.open(0, tables);
        guarded
    }

    /// Makes `offset..offset + len` accessible, host page by host page.
    fn open(&self, offset: u64, len: u64) {
        let start = offset / HOST_PAGE * HOST_PAGE;
        let end = (offset + len).next_multiple_of(HOST_PAGE);
        // SAFETY: inside our mapping.
        let done = unsafe {
            libc::mprotect(
                self.base.add(start as usize).cast(),
                (end - start) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(done, 0);
        self.backed.lock().expect("not poisoned").push((start, end));
    }

    fn back(context: usize, offset: u64, len: u64) -> bool {
        // SAFETY: `context` is the address of the boxed `Guarded`, which outlives the heap.
        let guarded = unsafe { &*(context as *const Guarded) };
        if guarded.full.load(Ordering::Relaxed) || offset + len > guarded.data_limit {
            return false;
        }
        guarded.open(offset, len);
        true
    }

    /// Whether byte `offset` is in a host page that was backed.
    fn covers(&self, offset: u64) -> bool {
        self.backed.lock().expect("not poisoned").iter().any(|&(start, end)| (start..end).contains(&offset))
    }

    fn region(&self) -> Region<'_> {
        // SAFETY: the mapping lives as long as `self` and is reached only through the region.
        unsafe { Region::from_raw(self.base, self.len as usize) }.expect("aligned")
    }

    fn create(&self, page_shift: u32) -> Heap<'_> {
        let platform = Platform {
            heavy_fence: None,
            backing: Some(Backing { context: self as *const Guarded as usize, back: Guarded::back }),
            prefault: None,
        };
        Heap::create(self.region(), page_shift, platform).expect("created")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: our mapping, no longer used.
        unsafe { libc::munmap(self.base.cast(), self.len as usize) };
    }
}

/// Review of issue 8 (seen failing before the fix: class-list words were written where no
/// backing had put memory; and once a chunk could not be backed, a search that had started at
/// its hint gave up, ignoring a free run below). The pages that could be backed stay usable
/// after a chunk could not be.
#[test]
fn a_failed_backing_hides_no_free_run() {
    // Data backed for 12 MiB (three chunks).
    let geo = Geometry::compute(64 * MIB, DEFAULT_PAGE_SHIFT).expect("fits");
    let guarded = Guarded::new(64 * MIB, DEFAULT_PAGE_SHIFT, geo.page_offset(3 << 10));
    let heap = guarded.create(DEFAULT_PAGE_SHIFT);
    let mut p = Participant::new(&heap, 1);
    let options = AllocOptions::default();
    let mut runs = Vec::new();
    while let Ok(run) = p.alloc(MIB, options) {
        runs.push(run.id());
    }
    assert_eq!(runs.len(), 12, "every backed page is used, no other");
    // Free two runs in the middle: a run and blocks of every class fit there, though the
    // search starts past them and the chunk above cannot be backed.
    let _ = p.free(runs.remove(4)).expect("live");
    let _ = p.free(runs.remove(4)).expect("live");
    runs.push(p.alloc(MIB, options).expect("the hole below is found").id());
    let mut small = 0;
    for shift in 4..=11 {
        while p.alloc(1 << shift, options).is_ok() {
            small += 1;
        }
    }
    assert!(small > (MIB / 2048) as usize, "{small} blocks in the second hole");
    assert!(matches!(p.alloc(MIB, options), Err(Error::OutOfMemory { .. })));
    p.check().expect("consistent");
}

/// Review 9 of issue 8 (seen failing before the fix: a fresh pool's first small allocation
/// searched its class list, whose words no backing had covered yet: on a full tmpfs, SIGBUS).
#[test]
fn a_first_small_allocation_reads_no_unbacked_class_list_word() {
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let mut p = Participant::new(&heap, 1);
    p.alloc(64, AllocOptions::default()).expect("room");
    p.check().expect("consistent");
}

/// Review 9 of issue 8 (seen failing before the fix: when the pool's first chunk could not be
/// backed, the allocation went on to retire an empty span and searched the empty set, whose
/// words were never backed). It fails as a full pool.
#[test]
fn a_pool_whose_first_chunk_cannot_be_backed_is_full() {
    let guarded = Guarded::new(64 * MIB, 12, 0);
    let heap = guarded.create(12);
    let mut p = Participant::new(&heap, 1);
    assert!(matches!(p.alloc(MIB, AllocOptions::default()), Err(Error::OutOfMemory { .. })));
    assert!(matches!(p.alloc(64, AllocOptions::default()), Err(Error::OutOfMemory { .. })));
}

/// Review 9 of issue 8 (seen failing before the fix: a class-list search that unlisted the last
/// backed span went on from the slot after it and read that slot's leaf word, in a host page
/// no backing had touched). In an 8 GiB pool a class list spans several host pages; the pool
/// grows chunk by chunk until, for some class, the word after the backed slots lies in a fresh
/// host page; then the filesystem fills up and that class is allocated until the pool is full.
#[test]
fn a_class_list_search_past_the_last_backed_slot_reads_no_unbacked_word() {
    let guarded = Guarded::new(8 * GIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let mut runs = Vec::new();
    let class = loop {
        runs.push(p.alloc(CHUNK, AllocOptions::default()).expect("room").id());
        // A 4 MiB chunk of 4 KiB pages is 64 slots: one leaf word.
        let next_leaf_word = runs.len() as u64;
        let fresh = (0..CLASS_SIZES.len())
            .find(|&class| !guarded.covers((geo.class_list_word(class) as u64 + next_leaf_word) * 8));
        if let Some(class) = fresh {
            break class;
        }
        assert!(runs.len() < 400, "no class list reaches a fresh host page");
    };
    CASE.store((class as u64) << 32 | runs.len() as u64, Ordering::Relaxed);
    for id in runs {
        let _ = p.free(id).expect("live");
    }
    guarded.full.store(true, Ordering::Relaxed);
    let mut blocks = 0u64;
    loop {
        match p.alloc(CLASS_SIZES[class] as u64, AllocOptions::default()) {
            Ok(_) => blocks += 1,
            Err(Error::OutOfMemory { .. }) => break,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(blocks > 0);
    p.check().expect("consistent");
}

/// Review 9 of issue 8 (seen failing before the fix: retiring spans went on from the slot after
/// the last one retired and read the empty set's leaf word above the backed slots). The pool
/// is grown until that word lies in a fresh host page, the filesystem fills up, every backed
/// slot holds an entirely free span, and span-sized runs are taken until the pool is full:
/// each retires the next span, in slot order.
#[test]
fn an_empty_set_search_past_the_last_backed_slot_reads_no_unbacked_word() {
    let shift = 12;
    // The smallest pool in which the empty set's word after the backed slots of some number of
    // chunks lies in a host page nothing backed, found by growing pools chunk by chunk.
    let (bytes, chunks) = (2..64u64)
        .find_map(|gib| {
            let guarded = Guarded::new(gib * GIB, shift, u64::MAX);
            let heap = guarded.create(shift);
            let empty_word = heap.geometry().empty_word as u64;
            let mut p = Participant::new(&heap, 1);
            (1..64u64).find_map(|chunks| {
                let _ = p.alloc(CHUNK, AllocOptions::default()).expect("room");
                (!guarded.covers((empty_word + chunks) * 8)).then_some((gib * GIB, chunks))
            })
        })
        .expect("a pool size with such a boundary");
    CASE.store(bytes << 8 | chunks, Ordering::Relaxed);
    let guarded = Guarded::new(bytes, shift, u64::MAX);
    let heap = guarded.create(shift);
    let mut p = Participant::new(&heap, 1);
    let run = p.alloc(chunks * CHUNK - HOST_PAGE, AllocOptions::default()).expect("room");
    let _ = p.free(run.id()).expect("live");
    guarded.full.store(true, Ordering::Relaxed);
    let mut blocks = Vec::new();
    while let Ok(block) = p.alloc(64, AllocOptions::default()) {
        blocks.push(block.id());
    }
    for id in blocks {
        let _ = p.free(id).expect("live");
    }
    let slots = chunks * CHUNK / HOST_PAGE / SPAN_PAGES;
    let span = SPAN_PAGES << shift;
    for _ in 0..slots {
        p.alloc(span, AllocOptions::default()).expect("a retired span");
    }
    assert!(matches!(p.alloc(span, AllocOptions::default()), Err(Error::OutOfMemory { .. })));
    p.check().expect("consistent");
}

/// Review 9 of issue 8 (seen failing before the fix: an id whose slot lies in pages never
/// claimed, such as a stale id of another pool or a made-up number, was looked up by reading
/// its page's metadata, never backed). Such an id is invalid, whatever it is asked.
#[test]
fn an_id_in_never_claimed_pages_is_invalid_without_reading_their_metadata() {
    let guarded = Guarded::new(256 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let kept = p.alloc(HOST_PAGE, AllocOptions::default()).expect("room");
    guarded.full.store(true, Ordering::Relaxed);
    let far = AllocId::new(((geo.num_pages - 1) << 12) / 16, 1);
    let invalid = |result: Result<(), Error>| matches!(result, Err(Error::InvalidId { .. }));
    assert!(!p.contains(far));
    assert!(invalid(p.lookup(far).map(drop)));
    assert!(invalid(p.free(far).map(drop)));
    assert!(invalid(p.realloc(far, 64).map(drop)));
    let owner = p.owner();
    assert!(invalid(p.set_owner(far, owner)));
    assert!(p.contains(kept.id()));
    p.check().expect("consistent");
}

/// Writes `value` into word `index` of the region: test-only damage while nothing else runs.
fn damage(heap: &Heap<'_>, index: usize, value: u64) {
    // SAFETY: an in-bounds, backed word; nothing else runs.
    unsafe { heap.region().base().cast::<u64>().add(index).write_volatile(value) };
}

fn disjoint(a: &Allocation, b: &Allocation) -> bool {
    a.offset + a.capacity <= b.offset || b.offset + b.capacity <= a.offset
}

/// Review 9 of issue 8 (seen failing before the fix: repair trusted a live run's page count up
/// to the end of the pool, so a damaged count raised the high-water mark past the backed pages
/// and every walk after the repair read metadata never backed); review 10 (seen failing at
/// 8038d63, whose fix gave the live run back to the pool while its owner held it). The run's
/// extent is what its bits hold; it stays its owner's.
#[test]
fn repair_keeps_a_live_run_whose_count_reaches_past_the_backed_pages() {
    let guarded = Guarded::new(256 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let run = p.alloc(HOST_PAGE, AllocOptions::default()).expect("room");
    let head = (run.offset - geo.data_offset) >> 12;
    damage(
        &heap,
        geo.page_word(head, page::INFO),
        PageInfo::LargeHead { pages: geo.num_pages - head, spare: 0 }.encode(),
    );
    assert!(p.check().is_err(), "the damage is seen");
    let repaired = heap.repair(&mut p.session).expect("repairable");
    assert_eq!(repaired.damaged_runs, 1, "{repaired:?}");
    p.check().expect("consistent after repair");
    assert_eq!(p.lookup(run.id()), Ok(run), "kept as it was");
    let other = p.alloc(HOST_PAGE, AllocOptions::default()).expect("room");
    assert!(disjoint(&run, &other), "the live run was handed out again at {:#x}", other.offset);
}

/// Review 10 of issue 8 (seen failing at 8038d63: repair gave back a live run whose count
/// reached into the next run). It keeps both runs, the first with the pages its bits hold.
#[test]
fn repair_keeps_a_live_run_whose_count_reaches_into_the_next_run() {
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let run = p.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
    let next = p.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
    common::fill(&heap, &run, 7);
    let head = (run.offset - geo.data_offset) >> 12;
    damage(&heap, geo.page_word(head, page::INFO), PageInfo::LargeHead { pages: 3, spare: 0 }.encode());
    let repaired = heap.repair(&mut p.session).expect("repairable");
    assert_eq!(repaired.damaged_runs, 1, "{repaired:?}");
    p.check().expect("consistent after repair");
    assert_eq!(p.lookup(run.id()), Ok(run));
    assert_eq!(p.lookup(next.id()), Ok(next));
    let other = p.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
    assert!(disjoint(&run, &other) && disjoint(&next, &other));
    assert!(common::holds(&heap, &run, 7));
}

/// Review 10 of issue 8 (seen failing at 8038d63: repair gave back a live run that had lost the
/// bit of one of its pages). The page is claimed again.
#[test]
fn repair_keeps_a_live_run_that_lost_the_bit_of_one_page() {
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let run = p.alloc(4 * HOST_PAGE, AllocOptions::default()).expect("room");
    let lost = ((run.offset - geo.data_offset) >> 12) + 2;
    clear_page_bits(&heap, lost, 1);
    assert!(p.check().is_err(), "the damage is seen");
    let repaired = heap.repair(&mut p.session).expect("repairable");
    p.check().expect("consistent after repair");
    assert_eq!(p.lookup(run.id()), Ok(run), "{repaired:?}");
    let other = p.alloc(HOST_PAGE, AllocOptions::default()).expect("room");
    assert!(disjoint(&run, &other));
}

/// Review 10 of issue 8 (seen failing at 8038d63: a high-water mark damaged to above the backed
/// pages made check read bitmap words never backed, and repair left it so). The mark is read as
/// no higher than the backed pages, and repair raises it again from nothing.
#[test]
fn a_mark_damaged_above_the_backed_pages_is_an_error_not_a_fault() {
    let guarded = Guarded::new(256 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let kept = p.alloc(64, AllocOptions::default()).expect("room");
    damage(&heap, header::PAGE_HWM, geo.num_pages);
    let _ = p.check();
    let _ = heap.repair(&mut p.session).expect("repairable");
    p.check().expect("consistent after repair");
    assert!(p.contains(kept.id()));
}

/// Review 10 of issue 8 (seen failing at 8038d63: a mark damaged to below live runs, by more
/// than one bitmap word, passed check while the runs' ids were refused as invalid). Their ids
/// stay valid, check sees the damage, and repair puts the mark right.
#[test]
fn a_mark_damaged_to_below_live_runs_is_seen_and_hides_no_allocation() {
    let guarded = Guarded::new(256 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let mut p = Participant::new(&heap, 1);
    let _small = p.alloc(64, AllocOptions::default()).expect("room"); // a span: pages 0..16
    let gap = p.alloc(48 * HOST_PAGE, AllocOptions::default()).expect("room"); // 16..64
    let far = p.alloc(16 * HOST_PAGE, AllocOptions::default()).expect("room"); // 64..80
    let _ = p.free(gap.id()).expect("live");
    damage(&heap, header::PAGE_HWM, 20);
    assert_eq!(p.lookup(far.id()), Ok(far));
    assert!(p.check().is_err(), "the damage is seen");
    let _ = heap.repair(&mut p.session).expect("repairable");
    p.check().expect("consistent after repair");
    let _ = p.free(far.id()).expect("still live");
}

// ----- repair of damaged runs (review 11 of issue 8) -------------------------------------------

fn read(heap: &Heap<'_>, index: usize) -> u64 {
    // SAFETY: an in-bounds, backed word; nothing else runs.
    unsafe { heap.region().base().cast::<u64>().add(index).read_volatile() }
}

fn head_of(heap: &Heap<'_>, a: &Allocation) -> u64 {
    (a.offset - heap.geometry().data_offset) >> heap.geometry().page_shift
}

/// Clears bits `mask` (of the two bits of `page`: 1 claimed, 2 head) in the page bitmap.
fn clear_page_bits(heap: &Heap<'_>, page: u64, mask: u64) {
    let word = heap.geometry().bitmap_word + (page / 32) as usize;
    let bits = PageBits::page_mask(page, mask & 1 != 0, mask & 2 != 0);
    damage(heap, word, read(heap, word) & !bits);
}

/// The index of participant `p`'s record.
fn index_of(p: &Participant<'_, '_>) -> u64 {
    p.session.index()
}

/// Repair, check, and `run` still live as it was, its pages given to nobody else.
fn repaired_keeps(heap: &Heap<'_>, p: &mut Participant<'_, '_>, run: &Allocation) {
    let repaired = heap.repair(&mut p.session).expect("repairable");
    p.check().unwrap_or_else(|error| panic!("check rejects the repaired pool: {error:?} ({repaired:?})"));
    let other = p.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
    assert!(
        disjoint(run, &other),
        "pages of the live run handed out again at {:#x} ({repaired:?})",
        other.offset
    );
    assert_eq!(p.lookup(run.id()), Ok(*run), "{repaired:?}");
}

/// Review 11 of issue 8, seen failing at 60f790b: a live run's count damaged lower than the pages
/// its bits hold (cut to the count, the rest released while its owner held them), or to 0 (given
/// back as garbage). The bits say where a run ends: claimed pages after a head are its own.
#[test]
fn repair_keeps_every_page_of_a_live_run_whose_count_was_damaged_lower() {
    for count in [2, 0] {
        let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
        let heap = guarded.create(12);
        let geo = *heap.geometry();
        let mut p = Participant::new(&heap, 1);
        let run = p.alloc(4 * HOST_PAGE, AllocOptions::default()).expect("room");
        common::fill(&heap, &run, 5);
        damage(
            &heap,
            geo.page_word(head_of(&heap, &run), page::INFO),
            PageInfo::LargeHead { pages: count, spare: 0 }.encode(),
        );
        repaired_keeps(&heap, &mut p, &run);
        assert!(common::holds(&heap, &run, 5));
    }
}

/// Review 11 of issue 8, seen failing at 60f790b: a live run whose head bit was lost was
/// released page by page as orphans while its info and state stayed: two owners, and check
/// passed. Its info and live state say it is a run: the head bit is set again.
#[test]
fn repair_keeps_a_live_run_that_lost_its_head_bit() {
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let mut p = Participant::new(&heap, 1);
    let run = p.alloc(4 * HOST_PAGE, AllocOptions::default()).expect("room");
    clear_page_bits(&heap, head_of(&heap, &run), 2);
    assert!(p.check().is_err(), "the damage is seen");
    repaired_keeps(&heap, &mut p, &run);
}

/// Review 11 of issue 8, seen failing at 60f790b: repair re-set lost bits of runs but not of
/// spans, and check rejected the repaired pool.
#[test]
fn repair_reclaims_a_span_member_page_whose_bit_was_lost() {
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let mut p = Participant::new(&heap, 1);
    let small = p.alloc(64, AllocOptions::default()).expect("room");
    clear_page_bits(&heap, head_of(&heap, &small) + 5, 1);
    assert!(p.check().is_err(), "the damage is seen");
    let repaired = heap.repair(&mut p.session).expect("repairable");
    p.check().unwrap_or_else(|error| panic!("check rejects the repaired pool: {error:?} ({repaired:?})"));
    assert_eq!(p.lookup(small.id()), Ok(small));
}

/// Review 11 of issue 8, seen failing at 60f790b: a participant's PENDING word damaged to a page
/// never backed made repair (and reclaim_dead) read that page's info: a fault.
#[test]
fn a_pending_word_damaged_to_a_page_never_backed_is_not_followed() {
    let guarded = Guarded::new(256 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let kept = p.alloc(64, AllocOptions::default()).expect("room");
    let q = Participant::new(&heap, 2);
    let pending = geo.participant_field(index_of(&q), alloc_core::layout::participant::PENDING);
    damage(&heap, pending, geo.num_pages);
    let _ = heap.repair(&mut p.session).expect("repairable");
    p.check().expect("consistent after repair");
    assert!(p.contains(kept.id()));
}

/// Review 11 of issue 8, seen failing at 60f790b: BACKED_PAGES damaged to below live runs made
/// their ids invalid while check passed, and repair left it so. A mark above the backed pages is
/// damage; repair backs pages up to the mark again.
#[test]
fn a_backed_count_damaged_below_live_runs_is_seen_and_repaired() {
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let mut p = Participant::new(&heap, 1);
    let _first = p.alloc(CHUNK, AllocOptions::default()).expect("room"); // pages 0..1024
    let far = p.alloc(HOST_PAGE, AllocOptions::default()).expect("room"); // page 1024: chunk 2
    assert_eq!(head_of(&heap, &far), 1024);
    damage(&heap, header::BACKED_PAGES, 1024);
    assert!(p.check().is_err(), "the damage is seen");
    let _ = heap.repair(&mut p.session).expect("repairable");
    p.check().expect("consistent after repair");
    assert_eq!(p.lookup(far.id()), Ok(far), "the live run is hidden after repair");
}

/// Review 11 of issue 8: a live run's count damaged higher, over free backed pages. Repair cannot
/// tell it from a run whose last pages lost their bits, and keeps the pages the count names
/// rather than risk handing out pages the owner still uses (decision: a wrong capacity is
/// better than two owners). The run stays where it was, at least as large; nothing overlaps it.
#[test]
fn repair_keeps_the_pages_a_count_damaged_higher_names_over_free_pages() {
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let run = p.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
    damage(
        &heap,
        geo.page_word(head_of(&heap, &run), page::INFO),
        PageInfo::LargeHead { pages: 900, spare: 0 }.encode(),
    );
    let repaired = heap.repair(&mut p.session).expect("repairable");
    p.check().expect("consistent after repair");
    let kept = p.lookup(run.id()).expect("kept");
    assert!(kept.offset == run.offset && kept.capacity >= run.capacity, "{kept:?} {repaired:?}");
    let other = p.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
    assert!(disjoint(&kept, &other));
}

/// Review 11 of issue 8, seen failing at 60f790b: a live run whose slack was damaged above its
/// capacity was kept as it was, and check rejected the repaired pool.
#[test]
fn repair_fits_the_slack_of_a_live_run_to_its_pages() {
    use alloc_core::layout::BlockState;
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let geo = *heap.geometry();
    let mut p = Participant::new(&heap, 1);
    let run = p.alloc(HOST_PAGE, AllocOptions::default()).expect("room");
    let word = geo.page_word(head_of(&heap, &run), page::STATE);
    let state = BlockState::decode(read(&heap, word)).expect("decodes");
    damage(&heap, word, BlockState { aux: 5000, ..state }.encode());
    assert!(p.check().is_err(), "the damage is seen");
    let repaired = heap.repair(&mut p.session).expect("repairable");
    p.check().unwrap_or_else(|error| panic!("check rejects the repaired pool: {error:?} ({repaired:?})"));
    assert!(p.contains(run.id()));
}

/// A participant stopped while releasing run A (state Releasing, PENDING naming A), and A's count
/// damaged to reach over the next live run B, or past the backed pages. Review 11 of issue 8,
/// seen failing at 60f790b: resolving the stopped release trusted the count, released B's pages
/// (a new run got them) or cleared bitmap words never backed (a fault). Only what the releaser's
/// bits hold is released.
#[test]
fn a_stopped_release_with_a_damaged_count_releases_only_its_own_pages() {
    use alloc_core::layout::{participant, BlockState};
    for reach_past_the_backed_pages in [false, true] {
        let guarded = Guarded::new(256 * MIB, 12, u64::MAX);
        let heap = guarded.create(12);
        let geo = *heap.geometry();
        let mut p = Participant::new(&heap, 1);
        let mut q = Participant::new(&heap, 2);
        let a = q.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
        let b = p.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
        let head = head_of(&heap, &a);
        assert_eq!(head_of(&heap, &b), head + 2);
        let state_word = geo.page_word(head, page::STATE);
        let tag = BlockState::decode(read(&heap, state_word)).expect("decodes").tag;
        damage(&heap, state_word, BlockState::releasing(index_of(&q), tag).encode());
        damage(&heap, geo.participant_field(index_of(&q), participant::PENDING), head + 1);
        let count = if reach_past_the_backed_pages { geo.num_pages - head } else { 4 };
        damage(
            &heap,
            geo.page_word(head, page::INFO),
            PageInfo::LargeHead { pages: count, spare: 0 }.encode(),
        );
        let repaired = heap.repair(&mut p.session).expect("repairable");
        p.check().unwrap_or_else(|error| panic!("check rejects the repaired pool: {error:?} ({repaired:?})"));
        assert_eq!(p.lookup(b.id()), Ok(b));
        for _ in 0..3 {
            let other = p.alloc(2 * HOST_PAGE, AllocOptions::default()).expect("room");
            assert!(disjoint(&b, &other), "B's pages handed out again at {:#x} ({repaired:?})", other.offset);
        }
    }
}

/// Review 11 of issue 8 (a probe, passing at 60f790b): a participant stopped at each step of a
/// claim, release or carve in a freshly backed chunk, with the mark intact or damaged to 0;
/// repair, then check, the live run kept, and no new run on its pages.
#[test]
fn repair_after_a_participant_stopped_mid_claim_or_release_keeps_every_live_run() {
    let steps = [
        "claim/marked",
        "claim/claimed",
        "large/initialised",
        "large/published",
        "free/large-releasing",
        "release/epoch",
        "release/info-marked",
        "release/marked",
        "release/cleared",
        "release/unmarked",
        "carve/initialised",
        "carve/published",
        "carve/members",
    ];
    for (n, step) in steps.into_iter().enumerate() {
        for damaged_mark in [false, true] {
            let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
            CASE.store(n as u64 * 2 + damaged_mark as u64, Ordering::Relaxed);
            let heap = guarded.create(12);
            let mut p = Participant::new(&heap, 1);
            let mut q = Participant::new(&heap, 2);
            let first = p.alloc(CHUNK - 2 * HOST_PAGE, AllocOptions::default()).expect("room");
            let victim = q.alloc(3 * HOST_PAGE, AllocOptions::default()).expect("room");
            let reached = common::stopped_at(step, || {
                let _ = match step.split('/').next() {
                    Some("free" | "release") => q.free(victim.id()).map(drop),
                    Some("carve") => q.alloc(64, AllocOptions::default()).map(drop),
                    _ => q.alloc(5 * HOST_PAGE, AllocOptions::default()).map(drop),
                };
            });
            assert!(reached, "{step}");
            if damaged_mark {
                damage(&heap, header::PAGE_HWM, 0);
            }
            let repaired = heap.repair(&mut p.session).expect("repairable");
            p.check().unwrap_or_else(|error| panic!("{step} {damaged_mark}: {error:?} {repaired:?}"));
            assert_eq!(p.lookup(first.id()), Ok(first), "{step} {damaged_mark}");
            while let Ok(run) = p.alloc(64 * HOST_PAGE, AllocOptions::default()) {
                assert!(disjoint(&first, &run), "{step} {damaged_mark}");
            }
            p.check().unwrap_or_else(|error| panic!("{step} {damaged_mark} after: {error:?}"));
        }
    }
}

/// Review 11 of issue 8 (a probe, passing at 60f790b): lost member bits on both sides of a
/// bitmap word boundary are claimed again.
#[test]
fn repair_reclaims_lost_bits_across_a_word_boundary() {
    let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
    let heap = guarded.create(12);
    let mut p = Participant::new(&heap, 1);
    let _pad = p.alloc(29 * HOST_PAGE, AllocOptions::default()).expect("room"); // pages 0..29
    let run = p.alloc(40 * HOST_PAGE, AllocOptions::default()).expect("room"); // pages 29..69
    assert_eq!(head_of(&heap, &run), 29);
    for page in [30, 31, 32, 33, 63, 64, 68] {
        clear_page_bits(&heap, page, 1);
    }
    repaired_keeps(&heap, &mut p, &run);
}

/// Review 11 of issue 8, seen failing at 60f790b: an interior page of a live run with info left
/// on it (a stale transient marker), alone or with its bit lost: repair never cleared interior
/// info, and check rejected the repaired pool.
#[test]
fn repair_clears_the_info_of_a_live_runs_interior_pages() {
    for lose_bit in [false, true] {
        let guarded = Guarded::new(64 * MIB, 12, u64::MAX);
        let heap = guarded.create(12);
        let geo = *heap.geometry();
        let mut p = Participant::new(&heap, 1);
        let run = p.alloc(4 * HOST_PAGE, AllocOptions::default()).expect("room");
        let interior = head_of(&heap, &run) + 2;
        damage(&heap, geo.page_word(interior, page::INFO), PageInfo::Transient { participant: 9 }.encode());
        if lose_bit {
            clear_page_bits(&heap, interior, 1);
        }
        assert!(p.check().is_err(), "the damage is seen");
        repaired_keeps(&heap, &mut p, &run);
    }
}

/// From the review of 26d327c (seen failing there: 40 MiB backed, heads 0, 1024, 2048, ...):
/// each cache that claimed a run took a block of its own, and a block is backed whole, so many
/// threads each claiming a small run backed a chunk each. Caches that claim a few runs take no
/// blocks.
#[test]
fn caches_claiming_one_small_run_each_back_no_more_than_the_runs_need() {
    let guarded = Guarded::new(4 * GIB, DEFAULT_PAGE_SHIFT, u64::MAX);
    let heap = guarded.create(DEFAULT_PAGE_SHIFT);
    let p = Participant::new(&heap, 1);
    let mut caches: Vec<_> = (0..64).map(|_| p.cache()).collect();
    for cache in caches.iter_mut() {
        heap.alloc_with(cache, 64 << 10, AllocOptions::default()).expect("room");
    }
    let backed_mib = read(&heap, header::BACKED_PAGES) * 4096 / MIB;
    assert!(backed_mib <= 8, "backed {backed_mib} MiB for 4 MiB of runs");
}

/// From the review of 5ef09e2: past the threshold, each cache that claims often takes a block
/// of its own, backed whole, but only as far as a claim looks on for one (`BLOCK_HOPS` fits):
/// however many caches, the blocks backed beyond what first fit would back stay bounded.
#[test]
fn caches_claiming_often_back_a_bounded_number_of_blocks() {
    let guarded = Guarded::new(4 * GIB, DEFAULT_PAGE_SHIFT, u64::MAX);
    let heap = guarded.create(DEFAULT_PAGE_SHIFT);
    let p = Participant::new(&heap, 1);
    let mut caches: Vec<_> = (0..64).map(|_| p.cache()).collect();
    for cache in caches.iter_mut() {
        for _ in 0..=alloc_core::OWN_BLOCKS_AFTER {
            heap.alloc_with(cache, 4 << 10, AllocOptions::default()).expect("room");
        }
    }
    // 64 * 17 runs of one page: 4.25 MiB by first fit; nine more blocks of 4 MiB at most.
    let backed_mib = read(&heap, header::BACKED_PAGES) * 4096 / MIB;
    assert!(backed_mib <= 48, "backed {backed_mib} MiB for 4.25 MiB of runs");
}
