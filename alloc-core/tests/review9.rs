//! Adversarial review 9 (issue 8 follow-up): searches bounded by the high-water mark and a
//! participant stopped between marking its claim and raising the mark.

mod common;

use std::cell::Cell;
use std::sync::Once;

use alloc_core::{AllocOptions, Error};
use common::{Participant, TestMemory};

struct Stopped;

thread_local! {
    static STOP_AT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

fn hook(name: &'static str) {
    if STOP_AT.with(|s| s.get()) == Some(name) {
        STOP_AT.with(|s| s.set(None));
        std::panic::panic_any(Stopped);
    }
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        alloc_core::set_hook(hook);
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Stopped>().is_none() {
                default(info);
            }
        }));
    });
}

/// Runs `f`, stopping this thread for good at step `step` (unwinding leaves the region as a
/// participant killed there would).
fn stopped_at(step: &'static str, f: impl FnOnce()) {
    install();
    STOP_AT.with(|s| s.set(Some(step)));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    STOP_AT.with(|s| s.set(None));
    assert!(outcome.is_err(), "never reached {step}");
}

/// Finding 3 (spans). A participant stopped (or killed, until `reclaim_dead`) right after
/// marking the info of a free slot below the high-water mark ("claim/marked", before it raises
/// the mark and sets bits) leaves that slot's bits clear. `carve_span` offers the first slot
/// above the mark only when `find_slot` finds nothing below it; it finds the stopped claimer's
/// slot on every round (the hint wraps round to it), so every carve fails and small
/// allocations fail with OutOfMemory although nearly the whole pool is free. The design
/// promises that a stopped participant holds at most the run it was claiming.
#[test]
fn a_claimer_stopped_below_the_mark_does_not_keep_others_from_carving_above_it() {
    let memory = TestMemory::new(4 << 20);
    let heap = memory.create();
    let mut setup = Participant::new(&heap, 1);
    // The mark at page 1; slot 0 free again below it.
    let page = setup.alloc(4096, AllocOptions::default()).expect("room");
    let _ = setup.free(page.id()).expect("live");
    let mut doomed = Participant::new(&heap, 666);
    stopped_at("claim/marked", || {
        let _ = doomed.alloc(64, AllocOptions::default());
    });
    let mut other = Participant::new(&heap, 2);
    other.alloc(64, AllocOptions::default()).expect("the pool is all but empty");
}

/// Finding 3 (runs). Same for `alloc_large`: the only run below the mark that fits is the
/// stopped claimer's; `find_run` returns it on every round (its hint wraps round to it) and the
/// free tail past it is never offered.
#[test]
fn a_claimer_stopped_below_the_mark_does_not_keep_others_from_runs_above_it() {
    let memory = TestMemory::new(4 << 20);
    let heap = memory.create();
    let mut setup = Participant::new(&heap, 1);
    let size = 8 * 4096;
    let run = setup.alloc(size, AllocOptions::default()).expect("room");
    let _ = setup.free(run.id()).expect("live");
    let mut doomed = Participant::new(&heap, 666);
    stopped_at("claim/marked", || {
        let _ = doomed.alloc(size, AllocOptions::default());
    });
    let mut other = Participant::new(&heap, 2);
    match other.alloc(size, AllocOptions::default()) {
        Ok(_) => {}
        Err(Error::OutOfMemory { .. }) => panic!("OutOfMemory with the pool all but empty"),
        Err(e) => panic!("{e:?}"),
    }
}
