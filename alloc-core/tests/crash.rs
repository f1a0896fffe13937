//! Crash-point tests: for every operation and every named step it reaches, a participant (of the
//! "doomed" process) is stopped exactly there, for good. Then, while it is stopped:
//! - another participant allocates everything it can: it must get all but at most one span plus
//!   the allocation the stopped one was making (bounded interference; the doomed process's cache
//!   is the same in the baseline, measured on an identical heap where the operation never ran);
//! - it frees it all again and keeps going.
//!
//! Then the doomed process is declared dead and `reclaim_dead` runs online, while a third
//! participant churns allocations in another thread; afterwards `check()` passes and one
//! allocation of the whole data area succeeds: nothing was lost, no repair was needed.
//!
//! A step is reached by calling the hook installed with `alloc_core::set_hook`; the hook panics
//! with [`Stopped`] on the chosen step of the chosen thread. The core has no destructors that
//! touch shared memory, so unwinding leaves the region exactly as a participant stopped at that
//! instruction would.

mod common;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use alloc_core::{AllocId, AllocOptions, Allocation, Cache, Error, Heap, Owner, Session, WaitHost, Waited};
use common::{identity, TestMemory};

const HEAP_BYTES: usize = 1 << 20;
const DOOMED: u32 = 666;
const BYSTANDER: u32 = 2;
const OTHER_DEAD: u32 = 3;
const THIRD_DEAD: u32 = 4;
/// The size of the doomed process's large run (small enough for its cache).
const LARGE: u64 = 2 * 4096 + 100;
/// Nine pages, which a cache rounds up to a run of ten.
const ROUNDED: u64 = 9 * 4096;

/// The panic payload of a participant stopped at a step.
struct Stopped(&'static str);

enum Plan {
    Off,
    Record(Vec<&'static str>),
    StopAt { target: usize, seen: usize },
    StopAtName(&'static str),
}

thread_local! {
    static PLAN: RefCell<Plan> = const { RefCell::new(Plan::Off) };
}

fn hook(name: &'static str) {
    let stop = PLAN.with(|plan| match &mut *plan.borrow_mut() {
        Plan::Off => false,
        Plan::Record(steps) => {
            steps.push(name);
            false
        }
        Plan::StopAt { target, seen } => {
            *seen += 1;
            *seen - 1 == *target
        }
        Plan::StopAtName(wanted) => *wanted == name,
    });
    if stop {
        PLAN.with(|plan| *plan.borrow_mut() = Plan::Off);
        std::panic::panic_any(Stopped(name));
    }
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        alloc_core::set_hook(hook);
        // Stopped participants are expected: keep their panics quiet.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Stopped>().is_none() {
                default(info);
            }
        }));
    });
}

/// A participant of some process: its session or cache over its own view of the heap.
struct Member<'a> {
    heap: Heap<'a>,
    session: Session,
    cache: Cache,
}

impl<'a> Member<'a> {
    fn new(memory: &'a TestMemory, pid: u32) -> Member<'a> {
        let heap = memory.open();
        let owner = heap.register_process(identity(pid)).expect("room");
        let session = heap.register_participant(owner).expect("room");
        let cache = Cache::new(heap.register_participant(owner).expect("room"));
        Member { heap, session, cache }
    }

    fn alloc(&mut self, size: u64) -> Result<Allocation, Error> {
        self.heap.alloc(&mut self.session, size, AllocOptions::default())
    }

    fn free(&mut self, id: AllocId) {
        let _ = self.heap.free(&mut self.session, id).expect("live");
    }
}

/// The operations a participant can be stopped in.
#[derive(Clone, Copy, Debug)]
enum Op {
    AllocSmall,
    AllocSmallCarving,
    AllocLarge,
    FreeSmall,
    FreeSmallEmptyingItsSpan,
    FreeLarge,
    CachedAllocRefilling,
    CachedFree,
    CachedFreeSpilling,
    CachedFreeLarge,
    CachedFreeLargeEvicting,
    CachedAllocLarge,
    CachedAllocRounding,
    CachedAllocRoundedLarge,
    AllocTakingCachedRuns,
    Flush,
    SetOwnerToAnotherProcess,
    ReallocInPlace,
    ReallocLargeInPlace,
    ReallocMoving,
    AllocRetiringSpans,
    ReclaimOfAnotherDeadProcess,
    AllocBlocking,
}

const OPS: [Op; 23] = [
    Op::AllocSmall,
    Op::AllocSmallCarving,
    Op::AllocLarge,
    Op::FreeSmall,
    Op::FreeSmallEmptyingItsSpan,
    Op::FreeLarge,
    Op::CachedAllocRefilling,
    Op::CachedFree,
    Op::CachedFreeSpilling,
    Op::CachedFreeLarge,
    Op::CachedFreeLargeEvicting,
    Op::CachedAllocLarge,
    Op::CachedAllocRounding,
    Op::CachedAllocRoundedLarge,
    Op::AllocTakingCachedRuns,
    Op::Flush,
    Op::SetOwnerToAnotherProcess,
    Op::ReallocInPlace,
    Op::ReallocLargeInPlace,
    Op::ReallocMoving,
    Op::AllocRetiringSpans,
    Op::ReclaimOfAnotherDeadProcess,
    Op::AllocBlocking,
];

/// What the doomed participant holds before its operation.
struct Prepared {
    small: Allocation,
    lonely: Allocation,
    large: Allocation,
    cached_live: Vec<Allocation>,
}

/// Gives up at once: the blocking operation registers, tries once more, and stops waiting.
struct Impatient;

impl WaitHost for Impatient {
    fn wait(&mut self, _word: &std::sync::atomic::AtomicU64, _seen: u64, _registered: bool) -> Waited {
        Waited::TimedOut
    }
}

/// Builds the common state: a bystander's allocations, the doomed process's own allocations and
/// cached blocks, and (for some operations) more set-up.
fn prepare<'a>(
    memory: &'a TestMemory,
    op: Op,
    doomed: &mut Member<'a>,
    bystander: &mut Member<'a>,
) -> Prepared {
    for size in [64, 64, 100, 3000, 20_000] {
        bystander.alloc(size).expect("space");
    }
    let small = doomed.alloc(64).expect("space");
    let lonely = doomed.alloc(512).expect("space"); // the only block of its class
    let large = doomed.alloc(LARGE).expect("space");
    let cached_live: Vec<Allocation> = (0..8)
        .map(|_| doomed.heap.alloc_with(&mut doomed.cache, 48, AllocOptions::default()).expect("space"))
        .collect();
    match op {
        Op::CachedFreeSpilling => {
            // Fill the 48-byte class cache to the brim (blocks of the span it caches).
            for _ in 0..1000 {
                if doomed.cache.held() == alloc_core::CACHE_BLOCKS {
                    break;
                }
                let a = doomed.alloc(48).expect("space");
                let _ = doomed.heap.free_with(&mut doomed.cache, a.id()).expect("live");
            }
            assert_eq!(doomed.cache.held(), alloc_core::CACHE_BLOCKS, "the cache is full");
        }
        Op::CachedFreeLargeEvicting => {
            // A full run size, of runs above the one the operation frees: that one is cached in
            // place of the highest, which goes back.
            let runs: Vec<Allocation> =
                (0..alloc_core::CACHE_RUNS_PER_SIZE).map(|_| doomed.alloc(LARGE).expect("space")).collect();
            for run in runs {
                assert!(run.offset > large.offset, "cached runs above the one freed");
                let _ = doomed.heap.free_with(&mut doomed.cache, run.id()).expect("live");
            }
        }
        Op::AllocTakingCachedRuns => {
            // A full heap but for two runs in the bystander's cache.
            let runs: Vec<Allocation> = (0..2)
                .map(|_| {
                    bystander
                        .heap
                        .alloc_with(&mut bystander.cache, LARGE, AllocOptions::default())
                        .expect("space")
                })
                .collect();
            let _ = doomed.heap.flush(&mut doomed.cache);
            while doomed.alloc(4096).is_ok() {}
            while doomed.alloc(16).is_ok() {}
            for run in runs {
                let _ = bystander.heap.free_with(&mut bystander.cache, run.id()).expect("live");
            }
        }
        Op::CachedAllocLarge | Op::Flush => {
            // A cached run, which the operation takes back or gives back.
            let run = doomed.alloc(LARGE).expect("space");
            let _ = doomed.heap.free_with(&mut doomed.cache, run.id()).expect("live");
        }
        Op::CachedAllocRoundedLarge => {
            // A cached run of 10 pages that served 9 (one spare), which the operation takes back
            // for a request of all 10.
            let run = doomed.heap.alloc_with(&mut doomed.cache, ROUNDED, AllocOptions::default());
            let _ = doomed.heap.free_with(&mut doomed.cache, run.expect("space").id()).expect("live");
        }
        Op::AllocRetiringSpans => {
            // Every free page used by tiny blocks, then freed: spans to retire on demand.
            let mut tiny = Vec::new();
            while let Ok(a) = bystander.alloc(16) {
                tiny.push(a);
            }
            for a in tiny {
                bystander.free(a.id());
            }
        }
        Op::AllocBlocking => {
            // A full heap (the doomed process's cache flushed first, so nothing is left).
            let _ = doomed.heap.flush(&mut doomed.cache);
            while doomed.alloc(4096).is_ok() {}
            while bystander.alloc(16).is_ok() {}
        }
        Op::ReclaimOfAnotherDeadProcess => {
            // Another process that dies holding allocations, cached blocks, and (stopped in
            // the middle of a refill) blocks in transit; and a third that dies half way through
            // freeing a large run.
            let mut dead = Member::new(memory, OTHER_DEAD);
            for size in [32, 2000, 9000] {
                dead.alloc(size).expect("space");
            }
            let a = dead.heap.alloc_with(&mut dead.cache, 80, AllocOptions::default()).expect("space");
            let _ = dead.heap.free_with(&mut dead.cache, a.id()).expect("live");
            stop_at("pop/popped", || {
                dead.heap.alloc_with(&mut dead.cache, 96, AllocOptions::default()).map(|_| ())
            });
            let mut third = Member::new(memory, THIRD_DEAD);
            let large = third.alloc(5 * 4096).expect("space");
            stop_at("release/marked", || third.heap.free(&mut third.session, large.id()).map(|_| ()));
        }
        _ => {}
    }
    Prepared { small, lonely, large, cached_live }
}

/// Runs `body` until it reaches step `name`, where it stops for good.
fn stop_at(name: &'static str, body: impl FnOnce() -> Result<(), Error>) {
    PLAN.with(|plan| *plan.borrow_mut() = Plan::StopAtName(name));
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    PLAN.with(|plan| *plan.borrow_mut() = Plan::Off);
    assert!(stopped.is_err(), "never reached {name}");
}

/// Runs `op` as the doomed participant.
fn run_op(op: Op, doomed: &mut Member<'_>, prepared: &Prepared, bystander_owner: Owner) {
    let heap = &doomed.heap;
    let session = &mut doomed.session;
    let cache = &mut doomed.cache;
    let plain = AllocOptions::default();
    let _ = match op {
        Op::AllocSmall => heap.alloc(session, 64, plain).map(|_| ()),
        Op::AllocSmallCarving => heap.alloc(session, 1024, plain).map(|_| ()),
        Op::AllocLarge => heap.alloc(session, 3 * 4096 + 5, plain).map(|_| ()),
        Op::FreeSmall => heap.free(session, prepared.small.id()).map(|_| ()),
        Op::FreeSmallEmptyingItsSpan => heap.free(session, prepared.lonely.id()).map(|_| ()),
        Op::FreeLarge => heap.free(session, prepared.large.id()).map(|_| ()),
        Op::CachedAllocRefilling => heap.alloc_with(cache, 160, plain).map(|_| ()),
        Op::CachedFree => heap.free_with(cache, prepared.cached_live[0].id()).map(|_| ()),
        Op::CachedFreeSpilling => heap.free_with(cache, prepared.cached_live[1].id()).map(|_| ()),
        Op::CachedFreeLarge | Op::CachedFreeLargeEvicting => {
            heap.free_with(cache, prepared.large.id()).map(|_| ())
        }
        Op::CachedAllocLarge => heap.alloc_with(cache, LARGE, plain).map(|_| ()),
        Op::CachedAllocRounding => heap.alloc_with(cache, ROUNDED, plain).map(|_| ()),
        Op::CachedAllocRoundedLarge => heap.alloc_with(cache, ROUNDED + 4096, plain).map(|_| ()),
        Op::AllocTakingCachedRuns => heap.alloc(session, LARGE, plain).map(|_| ()),
        Op::Flush => {
            let _ = heap.free_with(cache, prepared.cached_live[2].id());
            heap.flush(cache).map(|_| ())
        }
        Op::SetOwnerToAnotherProcess => heap.set_owner(session, prepared.small.id(), bystander_owner),
        Op::ReallocInPlace => heap.realloc(session, prepared.small.id(), 20).map(|_| ()),
        Op::ReallocLargeInPlace => heap.realloc(session, prepared.large.id(), 2 * 4096 + 4000).map(|_| ()),
        Op::ReallocMoving => heap.realloc(session, prepared.small.id(), 5000).map(|_| ()),
        Op::AllocRetiringSpans => heap.alloc(session, 40 * 4096, plain).map(|_| ()),
        Op::ReclaimOfAnotherDeadProcess => heap
            .reclaim_dead(
                session,
                |record| [OTHER_DEAD, THIRD_DEAD].contains(&record.identity.pid),
                |_, _, _| {},
            )
            .map(|_| ()),
        Op::AllocBlocking => heap.alloc_blocking(session, 4096, plain, &mut Impatient).map(|_| ()),
    };
}

/// Allocates everything it can, largest sizes first (so that free pages go to large runs and
/// free blocks to their classes), and frees it all again. Returns the capacity it got.
fn allocatable(member: &mut Member<'_>) -> u64 {
    let sizes = [256 << 10, 64 << 10, 16 << 10, 4096, 2048, 1024, 512, 256, 160, 128, 96, 80, 64, 48, 32, 16];
    let mut got = Vec::new();
    for size in sizes {
        while let Ok(a) = member.alloc(size) {
            got.push(a);
        }
    }
    let total = got.iter().map(|a| a.capacity).sum();
    for a in got {
        member.free(a.id());
    }
    total
}

/// Runs `op` in the doomed participant's world, stopping it at step `stop` (or never), and
/// returns the steps it went through.
fn world(op: Op, stop: Option<usize>) -> Vec<&'static str> {
    install_hook();
    let memory = TestMemory::new(HEAP_BYTES);
    let _ = memory.create();
    let mut bystander = Member::new(&memory, BYSTANDER);
    let mut doomed = Member::new(&memory, DOOMED);
    let prepared = prepare(&memory, op, &mut doomed, &mut bystander);
    let span_bytes = doomed.heap.geometry().span_bytes();
    let page = doomed.heap.geometry().page_bytes();

    // The baseline: the same heap, where the operation never ran.
    let baseline = {
        let twin = TestMemory::new(HEAP_BYTES);
        let _ = twin.create();
        let mut twin_bystander = Member::new(&twin, BYSTANDER);
        let mut twin_doomed = Member::new(&twin, DOOMED);
        let _ = prepare(&twin, op, &mut twin_doomed, &mut twin_bystander);
        allocatable(&mut Member::new(&twin, 5))
    };

    let bystander_owner = bystander.session.owner();
    PLAN.with(|plan| {
        *plan.borrow_mut() = match stop {
            None => Plan::Record(Vec::new()),
            Some(target) => Plan::StopAt { target, seen: 0 },
        }
    });
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_op(op, &mut doomed, &prepared, bystander_owner)
    }));
    let steps = PLAN.with(|plan| match std::mem::replace(&mut *plan.borrow_mut(), Plan::Off) {
        Plan::Record(steps) => steps,
        _ => Vec::new(),
    });
    match (stop, &outcome) {
        (Some(target), Ok(())) => panic!("{op:?} never reached step #{target}"),
        (None, Err(_)) => panic!("{op:?} panicked without being stopped"),
        (_, Err(payload)) if payload.downcast_ref::<Stopped>().is_none() => {
            std::panic::resume_unwind(outcome.expect_err("an error"))
        }
        _ => {}
    }
    let at = match &outcome {
        Err(payload) => payload.downcast_ref::<Stopped>().map_or("?", |stopped| stopped.0),
        Ok(()) => "(completed)",
    };
    // Its cache and session now belong to a participant that never comes back (they are
    // dropped with `doomed` at the end, which touches no shared memory).

    // Bounded interference: others get all but one span and the allocation being made.
    let during = allocatable(&mut Member::new(&memory, 5));
    let making = match op {
        Op::AllocLarge => 4 * page,
        Op::AllocRetiringSpans => 40 * page,
        Op::ReallocMoving => 2 * page,
        Op::FreeLarge | Op::ReallocLargeInPlace | Op::AllocTakingCachedRuns => 3 * page,
        _ => 0,
    };
    let allowance = span_bytes + making + 2 * page;
    assert!(
        during + allowance >= baseline,
        "{op:?} stopped at {at}: others could allocate only {during} bytes of {baseline} (allowance {allowance})"
    );

    // The doomed process is declared dead; reclaim runs online while someone else churns.
    let stop_churn = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut churner = Member::new(&memory, 7);
            let mut held = Vec::new();
            let mut round = 0u64;
            while !stop_churn.load(Ordering::Relaxed) {
                round += 1;
                let size = [16, 64, 700, 5000][round as usize % 4];
                if let Ok(a) = churner.heap.alloc_with(&mut churner.cache, size, AllocOptions::default()) {
                    held.push(a);
                }
                if held.len() > 8 {
                    let a = held.remove(0);
                    let _ = churner.heap.free_with(&mut churner.cache, a.id()).expect("live");
                }
            }
            for a in held {
                let _ = churner.heap.free_with(&mut churner.cache, a.id()).expect("live");
            }
            let _ = churner.heap.flush(&mut churner.cache).expect("same heap");
        });
        let mut reclaimer = Member::new(&memory, 1);
        let dead = [DOOMED, OTHER_DEAD, THIRD_DEAD];
        for _ in 0..100 {
            let reclaimed = reclaimer
                .heap
                .reclaim_dead(
                    &mut reclaimer.session,
                    |record| dead.contains(&record.identity.pid),
                    |_, _, _| {},
                )
                .unwrap_or_else(|error| panic!("{op:?} stopped at {at}: reclaim failed: {error}"));
            if reclaimed.deferred == 0 {
                break;
            }
            std::thread::yield_now();
        }
        stop_churn.store(true, Ordering::Relaxed);
    });

    // Everything is back: the heap checks, and the whole data area is one allocation.
    let mut tester = Member::new(&memory, 1);
    let mut leftovers = Vec::new();
    let _ = tester.heap.for_each_allocation(&mut tester.session, |a| leftovers.push(a));
    for a in &leftovers {
        let owner = tester.heap.process_record(a.owner).map(|r| r.identity.pid);
        assert_eq!(owner, Some(BYSTANDER), "{op:?} stopped at {at}: allocation {a:?} survived reclaim");
        tester.free(a.id());
    }
    tester
        .heap
        .check(&mut tester.session)
        .unwrap_or_else(|error| panic!("{op:?} stopped at {at}: check failed after reclaim: {error}"));
    assert!(tester.heap.run_index_is_exact(), "{op:?} stopped at {at}: reclaim left run summaries stale");
    let whole = tester.heap.geometry().data_bytes();
    let all = tester
        .alloc(whole)
        .unwrap_or_else(|error| panic!("{op:?} stopped at {at}: the whole data area: {error}"));
    tester.free(all.id());
    tester.heap.check(&mut tester.session).expect("consistent");
    steps
}

#[test]
fn every_operation_stopped_at_every_step_costs_others_at_most_a_span_and_reclaim_gives_all_back() {
    let mut cases = 0;
    for op in OPS {
        let steps = world(op, None);
        assert!(!steps.is_empty(), "{op:?} reaches no named step");
        if std::env::var_os("CRASH_STEPS").is_some() {
            eprintln!("{op:?}: {steps:?}");
        }
        for target in 0..steps.len() {
            world(op, Some(target));
            cases += 1;
        }
    }
    assert!(cases > 100, "only {cases} crash points enumerated");
}
