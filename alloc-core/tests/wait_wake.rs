//! A blocked allocator whose registration a free takes down (with the wake-up that goes with
//! it) before the allocator reads the wake word must not then wait for a wake-up nobody sends:
//! at 5dc2850 it read the wake word after registering, counted that wake-up as seen, found no
//! room for its size on its try, and waited on with its bit gone, so the free that made its room
//! later woke nobody. Its own test binary: it installs its own crash-point hook.

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alloc_core::primitive::AtomicU64;
use alloc_core::{AllocOptions, WaitHost, Waited};
use common::{Participant, TestMemory};

thread_local! {
    static IS_WAITER: Cell<bool> = const { Cell::new(false) };
}
static PAUSED: AtomicBool = AtomicBool::new(false);
static GO: AtomicBool = AtomicBool::new(false);
static WAITING: AtomicBool = AtomicBool::new(false);

/// The waiter pauses once, right after it first set its waiter bit, until let go.
fn hook(name: &'static str) {
    if name == "wait/registered" && IS_WAITER.with(Cell::get) && !PAUSED.swap(true, Ordering::SeqCst) {
        while !GO.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
    }
}

/// Waits as a futex would: returns at once if the word moved; otherwise says it waits, and
/// waits for the word to move for two seconds at most.
struct Host {
    timed_out: bool,
}

impl WaitHost for Host {
    fn wait(&mut self, word: &AtomicU64, seen: u64, registered: bool) -> Waited {
        assert!(registered, "a waiter slot was free");
        let moved = || word.load(Ordering::SeqCst) as u32 != seen as u32;
        if moved() {
            return Waited::Woken;
        }
        WAITING.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !moved() {
            if Instant::now() > deadline {
                self.timed_out = true;
                return Waited::TimedOut;
            }
            std::thread::yield_now();
        }
        Waited::Woken
    }
}

/// The pool is full: a small block S and a run R of the rest. The waiter W asks for R's size and
/// blocks. Right after W sets its bit, F frees S (room for small blocks, not for W): that free
/// takes W's bit down and bumps the wake word. Once W waits, F frees R: W must be woken.
#[test]
fn a_waiter_whose_registration_a_free_took_down_is_woken_by_the_next_free() {
    let memory = TestMemory::new(1 << 20);
    let heap = memory.create();
    let mut f = Participant::new(&heap, 1);
    let mut w = Participant::new(&heap, 2);
    let small = f.alloc(64, AllocOptions::default()).expect("room");
    let rest = f.stats().expect("stats").largest_free_run;
    let run = f.alloc(rest, AllocOptions::default()).expect("room for the rest");
    assert!(f.alloc(rest, AllocOptions::default()).is_err(), "the pool is full for the waiter's size");
    alloc_core::set_hook(hook);
    let (got, host) = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            IS_WAITER.with(|is| is.set(true));
            let mut host = Host { timed_out: false };
            let got = heap.alloc_blocking(&mut w.session, rest, AllocOptions::default(), &mut host);
            (got, host)
        });
        while !PAUSED.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let _ = f.free(small.id()).expect("live");
        GO.store(true, Ordering::SeqCst);
        while !WAITING.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let _ = f.free(run.id()).expect("live");
        waiter.join().expect("the waiter does not panic")
    });
    assert!(
        !host.timed_out,
        "the free that made the waiter's room woke nobody: the waiter would sleep for ever"
    );
    let got = got.expect("the waiter gets the freed run");
    let _ = w.free(got.id()).expect("live");
    f.check().expect("consistent");
}
