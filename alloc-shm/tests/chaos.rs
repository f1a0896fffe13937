//! Chaos with real processes: churning children (allocate, fill, verify, free; sizes 16 B to
//! 512 KiB, half through a cache) are SIGKILLed at random moments, over and over, while one
//! child is frozen with SIGSTOP for seconds and this process keeps allocating and reclaiming
//! online. Nobody may hang or see another's bytes change; at the end, online `reclaim_dead`
//! alone (no repair) must leave a pool that passes `check()` and serves its whole data area.
//!
//! `CHAOS_KILLS` sets the number of kills (default 200; `scripts/chaos` runs 2000 and prints
//! the figures).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloc_shm::descriptor::to_hex;
use alloc_shm::{verify, Pool, PoolError};
use common::TestPool;

const CHILD: &str = env!("CARGO_BIN_EXE_shmpool-child");
const CHURNERS: usize = 3;

fn churner(pool: &Pool, seed: u64) -> Child {
    let descriptor = to_hex(&pool.descriptor().expect("descriptor fits"));
    // Sizes from 16 B << 0..15 to twice that: up to 512 KiB.
    let mut child = Command::new(CHILD)
        .args(["churn", &descriptor, &seed.to_string(), "15"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn churner");
    common::wait_ready(&mut child);
    child
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

#[test]
fn hundreds_of_kills_and_a_frozen_process_never_hang_the_others_and_reclaim_gives_everything_back() {
    let kills_wanted: u64 = std::env::var("CHAOS_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let pool = TestPool::new("chaos", 64 << 20);
    let mut children: Vec<Child> = (0..CHURNERS as u64).map(|seed| churner(&pool, seed + 1)).collect();
    let mut frozen = churner(&pool, 99);
    let stop = AtomicBool::new(false);
    let parent_ops = AtomicU64::new(0);
    let parent_failures = AtomicU64::new(0);
    let started = Instant::now();
    let mut kills = 0u64;
    let mut longest_stall = Duration::ZERO;
    std::thread::scope(|scope| {
        // This process allocates, verifies and frees throughout, and reclaims online.
        let survivor = scope.spawn(|| -> Result<u64, PoolError> {
            let mut live = Vec::new();
            let mut local = pool.local();
            let mut rng = 0x5EED_u64;
            let mut reclaims = 0;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let size = 16 << (rng % 15);
                let cached = rng & 2 == 0;
                match if cached { local.alloc(size) } else { pool.alloc(size) } {
                    Ok(a) => {
                        verify::fill(&pool, &a)?;
                        live.push(a);
                    }
                    Err(PoolError::Full { .. }) => {
                        parent_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(other) => return Err(other),
                }
                if live.len() > 24 {
                    let a = live.swap_remove((rng >> 20) as usize % live.len());
                    assert!(verify::holds(&pool, &a)?, "this process's bytes changed");
                    if cached {
                        local.free(a.id())?
                    } else {
                        pool.free(a.id())?
                    }
                }
                if rng.is_multiple_of(300) {
                    pool.reclaim_dead()?;
                    reclaims += 1;
                }
                parent_ops.fetch_add(1, Ordering::Relaxed);
            }
            for a in live {
                assert!(verify::holds(&pool, &a)?);
                pool.free(a.id())?;
            }
            Ok(reclaims)
        });
        let mut rng = 0x000C_4A05_u64;
        // Freeze one churner for two seconds in the middle of the run (kills go on meanwhile).
        let freeze_at = kills_wanted / 3;
        let mut frozen_since = None;
        let mut frozen_for = Duration::ZERO;
        while kills < kills_wanted || frozen_since.is_some() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(Duration::from_micros(200 + rng % 15_000));
            if kills == freeze_at && frozen_since.is_none() {
                signal(&frozen, libc::SIGSTOP);
                frozen_since = Some(Instant::now());
            }
            if let Some(since) =
                frozen_since.filter(|since: &Instant| since.elapsed() > Duration::from_secs(2))
            {
                signal(&frozen, libc::SIGCONT);
                frozen_for = since.elapsed();
                frozen_since = None;
            }
            let victim = (rng >> 8) as usize % children.len();
            let ops_before = parent_ops.load(Ordering::Relaxed);
            children[victim].kill().expect("SIGKILL");
            children[victim].wait().expect("reaped");
            kills += 1;
            children[victim] = churner(&pool, rng);
            // Nobody waits for the dead or the frozen: this process makes progress at once.
            let watchdog = Instant::now();
            while parent_ops.load(Ordering::Relaxed) == ops_before {
                assert!(
                    watchdog.elapsed() < Duration::from_secs(10),
                    "this process stalled after kill {kills}"
                );
                std::thread::sleep(Duration::from_micros(100));
            }
            longest_stall = longest_stall.max(watchdog.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        let reclaims = survivor.join().expect("no panic").expect("this process never failed");
        eprintln!(
            "chaos: {kills} kills in {:.1} s, a churner frozen (SIGSTOP) for {frozen_for:.1?}, {} operations here \
             ({} refused: pool full), {reclaims} online reclaims, longest wait for progress after a kill {:?}",
            started.elapsed().as_secs_f64(),
            parent_ops.load(Ordering::Relaxed),
            parent_failures.load(Ordering::Relaxed),
            longest_stall
        );
    });
    for child in children.iter_mut().chain([&mut frozen]) {
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let report = pool.reclaim_dead().expect("reclaimable");
    assert_eq!(report.reclaimed.deferred, 0, "nothing is left for later on a quiet pool");
    let stats = pool.check().expect("clean after online reclaim, without repair");
    assert_eq!((stats.live_allocations, stats.cached_blocks), (0, 0));
    let whole = pool.alloc(pool.data_bytes()).expect("the whole data area came back");
    pool.free(whole.id()).expect("live");
    eprintln!(
        "chaos: after reclaim: check passes, the whole data area ({} bytes) is one allocation",
        pool.data_bytes()
    );
}
