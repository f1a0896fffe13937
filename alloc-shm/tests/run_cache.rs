//! The run cache (issue 9) at the host layer: runs cached by one handle serve a blocked
//! allocation elsewhere, and a fork child never gets its parent's cached runs. From review 12 of
//! eb50b32: the two waiting tests were seen failing there (the fork one passed).

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use alloc_shm::{AllocId, Allocation};
use common::TestPool;

const MIB: u64 = 1 << 20;
const RUN: u64 = 64 << 10;

fn fill_with(pool: &alloc_shm::Pool, size: u64) -> Vec<Allocation> {
    let mut held = Vec::new();
    while let Ok(a) = pool.alloc(size) {
        held.push(a);
    }
    held
}

/// alloc-py's `MemoryPool.free` (and `MemoryAlloc.free`) go through the handle's `LocalPool`;
/// its `alloc_blocking` goes through `Pool::alloc_blocking_with`, which never flushes that
/// cache. Since eb50b32 a freed 64 KiB run stays in the cache, so a process that frees a
/// buffer and then waits for one of the same size waits for its own cache: with `timeout=None`,
/// forever (`free_space` meanwhile reports the run as free). Before eb50b32 the run went back
/// to the bitmap on free and the wait was served at once.
#[test]
fn a_run_freed_through_the_local_pool_serves_alloc_blocking_in_the_same_process() {
    let pool = TestPool::new("r12-own", 4 * MIB);
    let mut local = pool.local();
    let buffer = local.alloc(RUN).expect("space");
    let mut held = fill_with(&pool, RUN);
    held.extend(fill_with(&pool, 4096));
    local.free(buffer.id()).expect("live");
    let free = pool.stats().expect("stats").free_bytes;
    let started = Instant::now();
    let got = pool.alloc_blocking(RUN, Some(Duration::from_secs(2)));
    let plain = pool.alloc(RUN).map(|a| a.offset);
    assert!(
        got.is_ok(),
        "alloc_blocking({RUN}) after freeing a {RUN}-byte buffer: {got:?} after {:?}; the pool says \
         {free} bytes free; Pool::alloc says {plain:?} (the run sits in this process's LocalPool)",
        started.elapsed()
    );
    drop(held);
}

/// Dragon-style producer/consumer: the producer fills the pool with 64 KiB messages and blocks
/// in `alloc_blocking` for the next; the consumer frees what it received through its
/// `LocalPool` (its fast path) and then waits for the next message. The freed runs sit in the
/// consumer's cache (no waiter was registered when it freed them, so no wake and no bypass),
/// so the producer waits until its timeout, and with `None` both wait forever. Before eb50b32
/// the producer was served by the first free.
#[test]
fn a_producer_blocked_in_alloc_blocking_is_served_by_runs_its_idle_consumer_freed() {
    let pool = TestPool::new("r12-pc", 4 * MIB);
    let mut held = fill_with(&pool, RUN);
    held.extend(fill_with(&pool, 4096));
    let (to_consumer, inbox) = mpsc::channel::<Option<AllocId>>();
    let (ack, acks) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let pool = &pool;
        let consumer = scope.spawn(move || {
            let mut local = pool.local();
            while let Some(id) = inbox.recv().expect("producer alive") {
                local.free(id).expect("live");
                ack.send(()).expect("producer alive");
            }
        });
        // Two 64 KiB messages consumed and freed.
        for message in held.iter().filter(|a| a.size == RUN).take(2) {
            to_consumer.send(Some(message.id())).expect("consumer alive");
            acks.recv().expect("consumer alive");
        }
        let started = Instant::now();
        let next = pool.alloc_blocking(RUN, Some(Duration::from_secs(2)));
        to_consumer.send(None).expect("consumer alive");
        consumer.join().expect("consumer");
        assert!(
            next.is_ok(),
            "the producer's alloc_blocking({RUN}) with 2 x {RUN} freed by a live, idle consumer: \
             {next:?} after {:?} (timeout None would hang for good)",
            started.elapsed()
        );
    });
}

/// Fork: a child using an inherited `LocalPool` whose cache holds runs never gets them, and
/// dropping it in the child gives nothing of the parent's back (passes).
#[test]
fn a_forked_child_never_gets_its_parents_cached_runs() {
    let pool = TestPool::new("r12-fork", 8 * MIB);
    let mut local = pool.local();
    let runs: Vec<Allocation> = (0..4).map(|_| local.alloc(RUN).expect("space")).collect();
    for run in &runs {
        local.free(run.id()).expect("live");
    }
    let mut fds = [0i32; 2];
    // SAFETY: a plain pipe(2) into a two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child allocates through the inherited LocalPool, writes to the pipe, exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut offsets = [0u64; 4];
        for offset in offsets.iter_mut() {
            *offset = local.alloc(RUN).map(|a| a.offset).unwrap_or(0);
        }
        let _ = local.flush();
        drop(local);
        // SAFETY: writes 32 bytes to the pipe, then exits at once.
        unsafe {
            libc::write(fds[1], offsets.as_ptr().cast(), 32);
            libc::_exit(0);
        }
    }
    // SAFETY: our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let mut bytes = [0u8; 32];
    // SAFETY: reads into a 32-byte buffer, then closes the read end.
    let got = unsafe {
        let got = libc::read(fds[0], bytes.as_mut_ptr().cast(), 32);
        libc::close(fds[0]);
        got
    };
    assert_eq!(got, 32);
    let child: Vec<u64> = bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
    let cached: Vec<u64> = runs.iter().map(|a| a.offset).collect();
    assert!(
        child.iter().all(|o| *o != 0 && !cached.contains(o)),
        "child {child:?}, parent's cached {cached:?}"
    );
    // The parent still holds its four runs, and takes them back.
    let again: Vec<u64> = (0..4).map(|_| local.alloc(RUN).expect("space").offset).collect();
    for offset in &again {
        assert!(cached.contains(offset), "the parent's cached run went elsewhere: {again:?} vs {cached:?}");
    }
}
