//! Real processes on one pool: descriptors through pipes, the demo, cross-process wake-ups and
//! timeouts, processes killed with SIGKILL at random moments, and the `shmpool` tool.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloc_shm::descriptor::to_hex;
use alloc_shm::{verify, Pool, PoolError};
use common::{unique_name, TestPool};

const CHILD: &str = env!("CARGO_BIN_EXE_shmpool-child");
const TOOL: &str = env!("CARGO_BIN_EXE_shmpool");
const MIB: u64 = 1 << 20;

fn pool_arg(pool: &Pool) -> String {
    to_hex(&pool.descriptor().expect("descriptor fits"))
}

/// The child's `@@` report lines (after it exited).
fn reports(child: Child) -> Vec<String> {
    let output = child.wait_with_output().expect("child ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed: {stderr}");
    stderr.lines().filter_map(|line| line.strip_prefix("@@ ")).map(str::to_owned).collect()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(CHILD).args(args).stderr(Stdio::piped()).spawn().expect("spawn child")
}

#[test]
fn descriptors_sent_through_a_pipe_are_verified_and_freed_by_another_process() {
    let pool = TestPool::new("pipe", 64 * MIB);
    let (reader, writer) = std::io::pipe().expect("pipe");
    let descriptor = pool_arg(&pool);
    let sender = Command::new(CHILD)
        .args(["send", &descriptor, "3000"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sender");
    let receiver =
        Command::new(CHILD).arg("receive").stdin(reader).stderr(Stdio::piped()).spawn().expect("spawn");
    reports(sender);
    assert_eq!(reports(receiver), vec!["verified 3000 failed 0".to_owned()]);
    let stats = pool.check().expect("consistent");
    assert_eq!(stats.live_allocations, 0);
}

#[test]
fn the_demo_passes_with_three_processes() {
    let output = Command::new(TOOL)
        .args(["demo", "--workers", "3", "--messages", "3000", "--pool-mib", "32"])
        .output()
        .expect("demo ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("demo: PASS"), "{stdout}");
}

fn fill_with_64k(pool: &Pool) -> Vec<alloc_shm::Allocation> {
    let mut held = Vec::new();
    while let Ok(a) = pool.alloc(64 * 1024) {
        held.push(a);
    }
    held
}

#[test]
fn a_blocked_allocation_in_one_process_is_woken_by_a_free_in_another() {
    let pool = TestPool::new("wake", 4 * MIB);
    let mut held = fill_with_64k(&pool);
    let waiter = spawn(&["wait", &pool_arg(&pool), "65536", "20000"]);
    let watchdog = Instant::now();
    while pool.waiters() == 0 {
        assert!(watchdog.elapsed() < Duration::from_secs(20), "the child never blocked");
        std::thread::sleep(Duration::from_millis(2));
    }
    let victim = held.pop().expect("the pool held something");
    pool.free(victim.id()).expect("live");
    let report = reports(waiter);
    let fields: Vec<&str> = report[0].split_whitespace().collect();
    assert_eq!(fields[0], "ok", "{report:?}");
    // In the room the free made; not always at its first page: a try that meets the end of the
    // free may find that page still marked by the freer, and claims never wait for another.
    let offset = fields[1].parse::<u64>().expect("offset");
    assert!(
        (victim.offset..victim.offset + victim.size).contains(&offset),
        "woken for the block we freed: {report:?}"
    );
    assert_eq!(pool.waiters(), 0);
    pool.check().expect("consistent");
}

#[test]
fn a_blocked_allocation_with_nothing_freed_times_out_on_time() {
    let pool = TestPool::new("timeout", 4 * MIB);
    let _held = fill_with_64k(&pool);
    let report = reports(spawn(&["wait", &pool_arg(&pool), "65536", "300"]));
    let fields: Vec<&str> = report[0].split_whitespace().collect();
    assert_eq!(fields[0], "timeout", "{report:?}");
    let micros: u64 = fields[1].parse().expect("micros");
    assert!((300_000..3_000_000).contains(&micros), "waited {micros} µs for a 300 ms timeout");
    assert_eq!(pool.waiters(), 0);
}

/// A churning child process, started and running.
fn churner(pool: &Pool, seed: u64) -> Child {
    let mut child = spawn(&["churn", &pool_arg(pool), &seed.to_string()]);
    common::wait_ready(&mut child);
    child
}

#[test]
fn processes_killed_at_random_moments_never_stop_the_others() {
    let pool = TestPool::new("chaos", 32 * MIB);
    let mut children: Vec<Child> = (0..3).map(|seed| churner(&pool, seed + 1)).collect();
    let stop = AtomicBool::new(false);
    let parent_ops = AtomicU64::new(0);
    let mut kills = 0;
    std::thread::scope(|scope| {
        // The parent keeps allocating, verifying and freeing throughout, and reclaims online.
        let survivor = scope.spawn(|| -> Result<(), PoolError> {
            let mut live = Vec::new();
            let mut rng = 0x5EED_u64;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                match pool.alloc(16 << (rng % 9)) {
                    Ok(a) => {
                        verify::fill(&pool, &a)?;
                        live.push(a);
                    }
                    Err(PoolError::Full { .. }) => {}
                    Err(other) => return Err(other),
                }
                if live.len() > 32 {
                    let a = live.swap_remove((rng >> 20) as usize % live.len());
                    assert!(verify::holds(&pool, &a)?, "the parent's bytes changed");
                    pool.free(a.id())?;
                }
                if rng.is_multiple_of(500) {
                    pool.reclaim_dead()?;
                }
                parent_ops.fetch_add(1, Ordering::Relaxed);
            }
            for a in live {
                assert!(verify::holds(&pool, &a)?);
                pool.free(a.id())?;
            }
            Ok(())
        });
        let mut rng = 0x000C_4A05_u64;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(Duration::from_millis(5 + rng % 50));
            let victim = (rng >> 8) as usize % children.len();
            let ops_before = parent_ops.load(Ordering::Relaxed);
            children[victim].kill().expect("SIGKILL");
            children[victim].wait().expect("reaped");
            kills += 1;
            children[victim] = churner(&pool, rng);
            // Everyone else is still running.
            for (index, child) in children.iter_mut().enumerate() {
                assert!(child.try_wait().expect("status").is_none(), "churner {index} stopped");
            }
            let watchdog = Instant::now();
            while parent_ops.load(Ordering::Relaxed) == ops_before {
                assert!(watchdog.elapsed() < Duration::from_secs(10), "the parent stalled after a kill");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        stop.store(true, Ordering::Relaxed);
        survivor.join().expect("no panic").expect("the parent never failed");
    });
    for mut child in children {
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    assert!(kills >= 10, "only {kills} kills");
    // Online reclaim alone (no repair) gives everything back.
    let reclaimed = pool.reclaim_dead().expect("consistent");
    assert!(!reclaimed.freed.is_empty(), "dead churners held allocations");
    assert_eq!(reclaimed.reclaimed.deferred, 0, "nothing is left for later on a quiet pool");
    let stats = pool.check().expect("clean after reclaim, without repair");
    assert_eq!((stats.live_allocations, stats.cached_blocks), (0, 0));
    assert!(pool.alloc(pool.data_bytes()).is_ok(), "every byte came back");
}

fn tool(args: &[&str]) -> (bool, String) {
    let output = Command::new(TOOL).args(args).output().expect("tool ran");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn the_tool_lists_inspects_checks_reclaims_and_removes_pools() {
    let pool = TestPool::new("tool", 8 * MIB);
    // A child allocates 1000 bytes it owns, and exits without freeing them.
    let owned = reports(spawn(&["own", &pool_arg(&pool), "1", "1000"]));
    assert_eq!(owned, ["owned"]);
    let a = pool.iter().next().expect("the child's allocation");
    let (ok, listing) = tool(&["ls"]);
    assert!(ok && listing.contains(pool.name()), "{listing}");
    let (ok, info) = tool(&["info", pool.name()]);
    assert!(ok && info.contains("live allocations 1"), "{info}");
    let (ok, checked) = tool(&["check", pool.name()]);
    assert!(ok && checked.contains(": ok"), "{checked}");
    let (ok, reclaimed) = tool(&["reclaim", pool.name()]);
    assert!(ok && reclaimed.contains("freed 1 allocations (1000 bytes)"), "{reclaimed}");
    assert!(!pool.contains(a.id()));
    // Offline repair is refused while another attached process (this one) is alive...
    let (ok, refused) = tool(&["repair", pool.name()]);
    assert!(!ok && refused.contains("are attached"), "{refused}");
    // ...unless forced (this process is idle): a sound pool then needs nothing and checks ok.
    let (ok, repaired) = tool(&["repair", "--force", pool.name()]);
    assert!(ok && repaired.contains("Repaired { participants: 0") && repaired.contains(": ok"), "{repaired}");
    let (ok, _) = tool(&["rm", pool.name()]);
    assert!(ok && !pool.path().exists() && pool.is_destroyed());
    let (ok, _) = tool(&["check", "no/such"]);
    assert!(!ok, "bad names fail");
}

#[test]
fn gc_removes_pools_abandoned_by_dead_processes_only() {
    let abandoned = unique_name("abandoned");
    reports(spawn(&["create", &abandoned, "4"]));
    let path = alloc_shm::name::path_in("/dev/shm".as_ref(), &abandoned);
    assert!(path.exists(), "the child's pool outlives it");
    let in_use = TestPool::new("in-use", 4 * MIB);
    let (ok, output) = tool(&["gc"]);
    assert!(ok, "{output}");
    assert!(!path.exists(), "the abandoned pool was collected: {output}");
    assert!(in_use.path().exists(), "a pool with a live process is kept");
}

#[test]
fn a_child_attaching_garbage_descriptors_gets_errors_not_crashes() {
    for bad in ["", "zz", "53484d44", &"ab".repeat(64)] {
        let child = Command::new(CHILD)
            .args(["wait", bad, "64", "10"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let output = child.wait_with_output().expect("ran");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("@@ error "), "{stderr}");
        assert!(output.status.code().is_some(), "exited, not killed by a signal");
    }
}
