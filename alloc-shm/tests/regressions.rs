//! Regression tests for the defects found in heap v1, with real processes and threads. Each was
//! written against v1 first and seen failing there (branch `regress-evidence`, commit 9b91063;
//! the messages below are what it printed); they pass on v2. Everything that could hang runs
//! under a watchdog, so a hang shows as a failure.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloc_shm::descriptor::to_hex;
use alloc_shm::{Allocation, LocalPool, Pool, PoolError};
use common::TestPool;

const CHILD: &str = env!("CARGO_BIN_EXE_shmpool-child");
const TOOL: &str = env!("CARGO_BIN_EXE_shmpool");
const MIB: u64 = 1 << 20;

fn pool_arg(pool: &Pool) -> String {
    to_hex(&pool.descriptor().expect("descriptor fits"))
}

fn spawn(args: &[&str]) -> Child {
    Command::new(CHILD).args(args).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn child")
}

/// A `churn` child (allocate, fill, verify, free forever, half through a cache), running.
fn churner(pool: &Pool, seed: u64) -> Child {
    let mut child = spawn(&["churn", &pool_arg(pool), &seed.to_string()]);
    common::wait_ready(&mut child);
    child
}

fn fill_with_64k(pool: &Pool) -> Vec<Allocation> {
    let mut held = Vec::new();
    while let Ok(a) = pool.alloc(64 * 1024) {
        held.push(a);
    }
    held
}

/// Waits (at most 20 s) until someone is blocked in `alloc_blocking`.
fn until_someone_waits(pool: &Pool) {
    let watchdog = Instant::now();
    while pool.waiters() == 0 {
        assert!(watchdog.elapsed() < Duration::from_secs(20), "the waiter never blocked");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `pairs` cached 64-byte alloc+free pairs through `local`, with a panic caught and reported
/// as its message.
fn cached_pairs(local: &mut LocalPool, pairs: usize) -> Result<Result<(), PoolError>, String> {
    catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..pairs {
            let a = local.alloc(64)?;
            local.free(a.id())?;
        }
        Ok(())
    }))
    .map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned())
    })
}

// ----- defect 1: fork duplicates the cache ----------------------------------------------------

/// SPEC: "After fork() the child is a new participant with empty caches." A `LocalPool` holds
/// free blocks in process-local memory; `fork()` copies that memory, so parent and child both
/// believe they own the same cached blocks. We warm the parent's cache (one allocation takes a
/// batch of 32 blocks), fork, let the child take 8 blocks through the inherited `LocalPool` and
/// report their offsets through a pipe, then take 8 in the parent. The child exits without
/// freeing, so its 8 allocations stay live.
#[test]
fn a_forked_child_never_gets_the_same_blocks_as_its_parent_from_an_inherited_local_pool() {
    let pool = TestPool::new("fork-cache", 4 * MIB);
    let mut local = pool.local();
    let warm = local.alloc(64).expect("space");
    let mut fds = [0i32; 2];
    // SAFETY: a plain pipe(2) into a two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only allocates through the inherited cache (no malloc, no locks),
    // writes to the pipe and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut offsets = [0u64; 8];
        for offset in offsets.iter_mut() {
            *offset = local.alloc(64).map(|a| a.offset).unwrap_or(0);
        }
        // SAFETY: writes the 64 bytes of `offsets` (atomic: below PIPE_BUF), then exits at once.
        unsafe {
            libc::write(fds[1], offsets.as_ptr().cast(), 64);
            libc::_exit(0);
        }
    }
    // SAFETY: closes our copy of the write end, so a child that died without writing gives EOF.
    unsafe { libc::close(fds[1]) };
    // Watchdog: the child must be done within 10 s.
    let watchdog = Instant::now();
    let mut status = 0;
    // SAFETY: waits for our own child without blocking.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        if watchdog.elapsed() > Duration::from_secs(10) {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the forked child hung");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut bytes = [0u8; 64];
    // SAFETY: reads into a 64-byte buffer from our pipe's read end, then closes it.
    let got = unsafe {
        let got = libc::read(fds[0], bytes.as_mut_ptr().cast(), 64);
        libc::close(fds[0]);
        got
    };
    assert_eq!(got, 64, "the child reported its 8 offsets");
    let child: Vec<u64> = bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
    assert!(child.iter().all(|&offset| offset != 0), "the child allocated 8 blocks: {child:?}");

    let parent: Vec<Allocation> = (0..8).map(|_| local.alloc(64).expect("space")).collect();
    let parent_offsets: Vec<u64> = parent.iter().map(|a| a.offset).collect();
    let shared: Vec<u64> = parent_offsets.iter().copied().filter(|o| child.contains(o)).collect();
    let live = pool.stats().expect("ready").live_allocations;
    let check = pool.check().map(|stats| stats.live_allocations);
    assert!(
        shared.is_empty(),
        "parent and child were handed the same blocks {shared:?} (parent {parent_offsets:?}, \
         child {child:?}); the pool counts {live} live allocations where 1 + 8 + 8 = 17 exist, \
         and check() says {check:?}"
    );
    for a in parent.iter().chain([&warm]) {
        local.free(a.id()).expect("live");
    }
}

// ----- defect 2: a waiter makes cached allocation panic -----------------------------------

/// SPEC: a stalled or waiting participant never stops the others. While a thread is blocked in
/// `alloc_blocking` (waiting for 128 KiB on a pool with one 64 KiB hole), the status word
/// carries a waiter count, so every cached allocation takes the slow path, which refills 32
/// blocks per call without looking at how full the cache is (frees go to the shared heap while
/// someone waits). Three cached pairs are enough: the third refill writes entry 64 of a
/// 64-entry class cache and panics, orphaning the rest of its batch.
#[test]
fn cached_allocation_keeps_working_while_another_thread_waits_in_alloc_blocking() {
    let pool = TestPool::new("waiter-cache", 4 * MIB);
    let mut held = fill_with_64k(&pool);
    let hole = held.pop().expect("the pool held something");
    pool.free(hole.id()).expect("live");
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.alloc_blocking(128 * 1024, Some(Duration::from_secs(30))));
        until_someone_waits(&pool);

        let mut local = pool.local();
        let outcome = cached_pairs(&mut local, 3);

        // Let the waiter through (it gets its 128 KiB from the freed runs), then look at the heap.
        for a in held.drain(..) {
            pool.free(a.id()).expect("live");
        }
        let got = waiter.join().expect("waiter thread").expect("the waiter was served");
        pool.free(got.id()).expect("live");
        drop(local);
        let check = pool.check().map(|stats| stats.live_allocations);
        assert!(
            matches!(outcome, Ok(Ok(()))),
            "3 cached alloc/free pairs while a thread waits in alloc_blocking: {outcome:?} \
             (Err = panicked); afterwards, with nobody waiting and the cache flushed, \
             check() = {check:?}"
        );
    });
}

// ----- defect 3: a killed waiter degrades every process for good --------------------------

/// SPEC: `reclaim_dead()` gives back everything a dead participant held or left half done;
/// the waiter registration is part of a participant's record. A child process blocks in
/// `alloc_blocking` on a full pool and is killed with SIGKILL; `reclaim_dead()` runs; the
/// waiter count must be 0 again (else every free makes a futex system call and cached
/// allocation takes the slow path, which panics as in defect 2).
#[test]
fn reclaim_dead_forgets_a_waiter_killed_in_alloc_blocking() {
    let pool = TestPool::new("dead-waiter", 4 * MIB);
    let mut held = fill_with_64k(&pool);
    let mut waiter = spawn(&["wait", &pool_arg(&pool), "65536", "60000"]);
    let blocked = catch_unwind(AssertUnwindSafe(|| until_someone_waits(&pool)));
    waiter.kill().expect("SIGKILL");
    waiter.wait().expect("reaped");
    assert!(blocked.is_ok(), "the child never blocked");

    let reclaimed = pool.reclaim_dead().expect("ran");
    for a in held.drain(..) {
        pool.free(a.id()).expect("live");
    }
    let waiters = pool.waiters();
    let mut local = pool.local();
    let outcome = cached_pairs(&mut local, 3);
    drop(local);
    let check = pool.check().map(|stats| stats.live_allocations);
    assert!(
        waiters == 0 && matches!(outcome, Ok(Ok(()))),
        "after the waiting child was SIGKILLed and reclaim_dead() ran ({reclaimed:?}), the pool \
         still counts {waiters} waiter(s); 3 cached pairs: {outcome:?} (Err = panicked); \
         check() = {check:?}"
    );
}

// ----- defect 8: SIGKILL mid-operation needs offline repair --------------------------------

/// SPEC: `reclaim_dead`, online while others work, gives back everything a dead participant
/// held or left half done; offline `repair` is only an fsck for corrupted pools. Two churning
/// children (allocate, fill, verify, free; half through a cache) are SIGKILLed at random
/// moments, round after round. After each round nobody is running: `reclaim_dead()` alone
/// must leave a pool that passes `check()`. Bounded: at most 300 rounds or 40 s.
/// When it fails, the test also shows that the offline fix is refused: `shmpool repair` will
/// not run while any other attached process is alive, even an idle one (this test process).
#[test]
fn reclaim_dead_alone_restores_a_consistent_pool_after_processes_are_killed_mid_operation() {
    let pool = TestPool::new("kill-mid-op", 16 * MIB);
    let started = Instant::now();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut kills = 0;
    let mut failure = None;
    for _ in 0..100 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut children = [churner(&pool, rng), churner(&pool, rng.rotate_left(32))];
        std::thread::sleep(Duration::from_micros(rng % 20_000));
        for child in children.iter_mut() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            kills += 1;
        }
        // Nobody is inside an operation now: the dead are dead, we are idle.
        let reclaimed = pool.reclaim_dead().expect("reclaim_dead ran");
        if let Err(error) = pool.check() {
            failure = Some((reclaimed, error));
            break;
        }
    }
    let Some((reclaimed, error)) = failure else {
        assert!(kills >= 100, "only {kills} kills");
        pool.alloc(pool.data_bytes()).expect("the whole data area came back");
        return; // every round was put right by reclaim_dead alone
    };
    // The remedy the code offers is offline repair: refused while any other attached process
    // is alive, here this idle test process.
    let refused = Command::new(TOOL).args(["repair", pool.name()]).output().expect("tool ran");
    panic!(
        "after {kills} SIGKILLs in {:?}, reclaim_dead() (last: {} allocations, {} cached blocks) \
         left the pool failing check(): {error}; `shmpool repair` (this idle test process still \
         attached) says: {}",
        started.elapsed(),
        reclaimed.freed.len(),
        reclaimed.cached_blocks(),
        String::from_utf8_lossy(&refused.stdout).trim()
    );
}

// ----- defect 9: ids repeat ---------------------------------------------------------------

/// SPEC: an id is unique over the pool's life: at least 2^56 reuses of one slot before an id
/// can repeat, for every pool size. In a 1 TiB pool (a sparse file: creating it touches only
/// the header) a v1 id kept 28 generation bits, and the LIFO cache makes a hot loop of cached
/// alloc/free pairs reuse one slot. Here nothing is simulated: 2^28 real pairs, then the stale
/// id of the first allocation is looked up. Slow (about 8 s), hence ignored by plain `cargo
/// test`; scripts/test runs it. alloc-core's
/// `regressions` test shows generations crossing every boundary in milliseconds.
#[test]
#[ignore = "2^28 alloc/free pairs: seconds in release"]
fn two_pow_28_cached_pairs_in_a_1_tib_pool_never_repeat_an_id() {
    let options = alloc_shm::PoolOptions { space: alloc_shm::Space::Overcommit, ..Default::default() };
    let pool = TestPool::with_options("ids-1tib", 1 << 40, &options);
    let mut local = pool.local();
    let first = local.alloc(64).expect("space");
    let stale = first.id();
    local.free(stale).expect("live");
    let started = Instant::now();
    let mut repeated = None;
    for pair in 1..=(1u64 << 28) {
        let a = local.alloc(64).expect("space");
        if a.id() == stale {
            repeated = Some((pair, a));
            break;
        }
        local.free(a.id()).expect("live");
    }
    let found = pool.lookup(stale);
    assert!(
        repeated.is_none() && found.is_err(),
        "after {:?} cached pairs ({:?}) the pool handed out the first allocation's id {:#x} \
         again; lookup(stale) = {found:?}",
        repeated.map(|(pair, _)| pair),
        started.elapsed(),
        stale.to_u128()
    );
}

/// Found by the adversarial review of heap v2 (seen failing at 141d99e with "overflow when
/// adding duration to instant"): a timeout too large to add to the clock panicked instead of
/// waiting for as long as it takes. A huge timeout now means "no deadline".
#[test]
fn alloc_blocking_with_a_huge_timeout_waits_instead_of_panicking() {
    let pool = TestPool::new("hugetimeout", 4 * MIB);
    for timeout in [Duration::MAX, Duration::from_secs(10_000_000_000_000_000_000)] {
        let outcome = catch_unwind(AssertUnwindSafe(|| pool.alloc_blocking(64, Some(timeout))));
        let allocation = outcome.expect("no panic").expect("room right away");
        pool.free(allocation.id()).expect("live");
    }
}
