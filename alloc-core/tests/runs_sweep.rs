//! An allocation whose claims keep being lost while free runs come and go behind it looks through
//! the bitmap from the start again after every lost claim before it refuses (it looked once at
//! c75320f, and refused with a free run behind it). Its own test binary: it installs its own
//! crash-point hook.

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloc_core::{AllocOptions, Allocation, Error};
use common::{Participant, TestMemory};

const PAGE: u64 = 4096;

thread_local! {
    static IS_T: Cell<bool> = const { Cell::new(false) };
}
static PAUSES: AtomicUsize = AtomicUsize::new(0);
static GO: AtomicUsize = AtomicUsize::new(0);

/// T pauses each time it has marked the head of a run it claims, until let go.
fn hook(name: &'static str) {
    if name == "claim/marked" && IS_T.with(Cell::get) {
        let k = PAUSES.fetch_add(1, Ordering::SeqCst) + 1;
        while GO.load(Ordering::SeqCst) < k {
            std::thread::yield_now();
        }
    }
}

fn pages(p: &mut Participant<'_, '_>, count: u64) -> Result<Allocation, Error> {
    p.alloc(count * PAGE, AllocOptions::default())
}

fn page_of(p: &Participant<'_, '_>, a: &Allocation) -> u64 {
    (a.offset - p.heap.geometry().data_offset) / PAGE
}

fn wait_paused(k: usize) {
    while PAUSES.load(Ordering::SeqCst) < k {
        std::thread::yield_now();
    }
}

/// Free runs A = 100..104 and B = 204..210 in a full pool; T wants 4 pages. Z takes or gives
/// back page 101 (1 page), Y takes or gives back 205..210 (5 pages: they do not fit in A), each a
/// complete allocation, and each gives its pages back before the other takes: at every instant
/// A or B is free and held by nobody else. Yet T refuses:
/// 1. T marks A; Z takes 101; T loses A at 101 and goes for B.
/// 2. T marks B; Z frees 101, Y takes 205..210; T loses B at 205, finds nothing past 206, sweeps
///    the bitmap from 0 (once) and goes for A.
/// 3. T marks A; Y frees 205..210, Z takes 101; T loses A and goes for B.
/// 4. T marks B; Z frees 101, Y takes 205..210; T loses B, finds nothing past 206: swept
///    already, it refuses. A is free.
#[test]
fn claims_lost_after_a_look_from_the_start_do_not_end_in_a_refusal() {
    // Three index levels, as a 2 GiB pool has.
    let memory = TestMemory::new(512 << 20);
    let heap = memory.create();
    let n = heap.geometry().num_pages;
    assert_eq!(heap.geometry().runs.levels, 3);
    let mut p = Participant::new(&heap, 1);
    let _f0 = pages(&mut p, 100).expect("room");
    let a = pages(&mut p, 4).expect("room");
    let _f1 = pages(&mut p, 100).expect("room");
    let b = pages(&mut p, 6).expect("room");
    let _f2 = pages(&mut p, n - 210).expect("room");
    assert_eq!((page_of(&p, &a), page_of(&p, &b)), (100, 204));
    let _ = p.free(a.id()).expect("live");
    let _ = p.free(b.id()).expect("live");
    let mut z = Participant::new(&heap, 2);
    let mut y = Participant::new(&heap, 3);
    let mut t = Participant::new(&heap, 4);
    alloc_core::set_hook(hook);
    let got = std::thread::scope(|scope| {
        let tt = scope.spawn(move || {
            IS_T.with(|is| is.set(true));
            pages(&mut t, 4)
        });
        wait_paused(1);
        let z1 = pages(&mut z, 1).expect("room");
        assert_eq!(page_of(&z, &z1), 101);
        GO.store(1, Ordering::SeqCst);
        wait_paused(2);
        let _ = z.free(z1.id()).expect("live");
        let y1 = pages(&mut y, 5).expect("room");
        assert_eq!(page_of(&y, &y1), 205);
        GO.store(2, Ordering::SeqCst);
        wait_paused(3);
        let _ = y.free(y1.id()).expect("live");
        let z2 = pages(&mut z, 1).expect("room");
        assert_eq!(page_of(&z, &z2), 101);
        GO.store(3, Ordering::SeqCst);
        wait_paused(4);
        let _ = z.free(z2.id()).expect("live");
        let y2 = pages(&mut y, 5).expect("room");
        assert_eq!(page_of(&y, &y2), 205);
        // From here on T goes its way unhindered.
        GO.store(usize::MAX, Ordering::SeqCst);
        tt.join().expect("no panic")
    });
    alloc_core::clear_hook();
    let free_a = p.stats().expect("stats").largest_free_run;
    assert!(got.is_ok(), "T refused with A = 100..104 free ({free_a} bytes free in one run): {got:?}");
}
