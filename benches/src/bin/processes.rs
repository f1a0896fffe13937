//! Multi-process benchmarks of alloc-shm pools, with real processes (the `shmpool-child`
//! helper, built by `cargo build --release -p alloc-shm`):
//! - alloc+free throughput of 1, 2 and 4 processes on one pool (4 is more than this machine's
//!   cores), each with its own cache and a working set of 1024 live 64 B blocks;
//! - cross-process wake-up latency of `alloc_blocking` after a free (median and p99);
//! - time and resident memory to create 1 GiB and 1 TiB pools.
//!
//! Run with `scripts/bench` (or `cargo run --release -p benches --bin processes`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloc_shm::descriptor::to_hex;
use alloc_shm::Pool;

fn child_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let child = exe.with_file_name("shmpool-child");
    assert!(child.exists(), "build the helper first: cargo build --release -p alloc-shm --bins");
    child
}

fn bench_pool(label: &str, size: u64) -> Pool {
    Pool::create(&format!("bench-{label}-{}", std::process::id()), size).expect("create bench pool")
}

/// Reads `child`'s stderr up to and including a line starting with `@@ {word}`.
fn await_line(stderr: &mut BufReader<std::process::ChildStderr>, word: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).expect("child stderr") > 0, "child exited before `{word}`");
        if let Some(rest) = line.trim().strip_prefix(&format!("@@ {word}")) {
            return rest.trim().to_owned();
        }
    }
}

/// Aggregate ns per pair with `processes` processes doing `pairs` pairs each.
fn throughput(processes: usize, pairs: u64) -> f64 {
    let pool = bench_pool("pairs", 256 << 20);
    let descriptor = to_hex(&pool.descriptor().expect("fits"));
    let mut children: Vec<(Child, BufReader<_>)> = (0..processes)
        .map(|_| {
            let mut child = Command::new(child_exe())
                .args(["pairs", &descriptor, &pairs.to_string()])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
            await_line(&mut stderr, "ready");
            (child, stderr)
        })
        .collect();
    for (child, _) in &mut children {
        child.stdin.as_mut().expect("piped").write_all(&[1]).expect("start");
    }
    let slowest = children
        .iter_mut()
        .map(|(child, stderr)| {
            let nanos: f64 = await_line(stderr, "nanos").parse().expect("nanos");
            child.wait().expect("exit");
            nanos
        })
        .fold(0.0, f64::max);
    let check = pool.check().expect("consistent after the run");
    assert_eq!(check.live_allocations, 0);
    pool.destroy().expect("destroy");
    slowest / (processes as f64 * pairs as f64)
}

fn monotonic_nanos() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Median and p99 microseconds from a free in this process to the blocked allocator in another
/// process returning.
fn wake_latency(rounds: usize) -> (f64, f64) {
    let pool = bench_pool("wake", 4 << 20);
    let mut held = Vec::new();
    while let Ok(a) = pool.alloc(4096) {
        held.push(a);
    }
    let mut child = Command::new(child_exe())
        .args(["pingpong", &to_hex(&pool.descriptor().expect("fits")), &rounds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut from_child = child.stdout.take().expect("piped");
    let mut to_child = child.stdin.take().expect("piped");
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let watchdog = Instant::now();
        while pool.waiters() == 0 {
            assert!(watchdog.elapsed() < Duration::from_secs(10), "the child never blocked");
            std::thread::yield_now();
        }
        // Let the waiter reach the futex itself, not just announce itself.
        std::thread::sleep(Duration::from_micros(200));
        let victim = held.pop().expect("pool was full");
        let freed_at = monotonic_nanos();
        pool.free(victim.id()).expect("live");
        let mut woke = [0u8; 8];
        from_child.read_exact(&mut woke).expect("child reports");
        latencies.push((u64::from_le_bytes(woke).saturating_sub(freed_at)) as f64 / 1000.0);
        // The child frees its block; take it back so the pool is full again.
        let again = loop {
            if let Ok(a) = pool.alloc(4096) {
                break a;
            }
            std::thread::yield_now();
        };
        held.push(again);
        to_child.write_all(&[1]).expect("go");
    }
    child.wait().expect("exit");
    pool.destroy().expect("destroy");
    latencies.sort_by(f64::total_cmp);
    (latencies[rounds / 2], latencies[rounds * 99 / 100])
}

/// Builds the Boost.Interprocess shim (only if the headers are installed) and runs it.
fn boost_pairs(pairs: u64) -> Option<f64> {
    let binary = benches::build_boost("boost_pairs")?;
    let output = Command::new(&binary).arg(pairs.to_string()).output().ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Milliseconds to create a pool of `size`, and KiB made resident by it (process RSS growth
/// plus the pool file's allocated blocks).
fn create_cost(size: u64) -> (f64, u64) {
    let before = resident_kib();
    let started = Instant::now();
    let pool = bench_pool("create", size);
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    use std::os::unix::fs::MetadataExt;
    let file_kib = std::fs::metadata(pool.path()).expect("file").blocks() / 2;
    let resident = resident_kib().saturating_sub(before) + file_kib;
    pool.destroy().expect("destroy");
    (millis, resident)
}

fn main() {
    let pairs = 2_000_000;
    println!("### Processes on one pool: cached 64 B alloc+free pairs, working set 1024 each\n");
    println!("| processes | aggregate ns per pair | throughput vs 1 process | target |");
    println!("|---|---|---|---|");
    let best = |processes| (0..3).map(|_| throughput(processes, pairs)).fold(f64::MAX, f64::min);
    let one = best(1);
    let two = best(2);
    let four = best(4);
    println!("| 1 | {one:.1} | 1.00× | |");
    println!("| 2 | {two:.1} | {:.2}× | ≥ 1.5× |", one / two);
    println!(
        "| 4 (> 2 cores) | {four:.1} | {:.2}× ({:.2}× of 2 processes) | ≥ 0.8× of 2 |",
        one / four,
        two / four
    );

    match boost_pairs(2_000_000) {
        Some(ns) => println!(
            "\nPeer, same run: Boost.Interprocess `managed_shared_memory` allocate/deallocate, one \
             process, same workload: {ns:.1} ns per pair ({:.1}× shmpool's one-process figure).",
            ns / one
        ),
        None => println!("\nPeer: Boost.Interprocess not measured (no Boost headers or no g++)."),
    }

    let (median, p99) = wake_latency(300);
    println!("\n### Cross-process wake-up of alloc_blocking after a free (300 rounds)\n");
    println!("| median | p99 | target |\n|---|---|---|\n| {median:.1} µs | {p99:.1} µs | median ≤ 30 µs |");

    println!("\n### Creating a pool\n");
    println!("| size | time | resident memory | target |\n|---|---|---|---|");
    for (label, size, target) in [("1 GiB", 1u64 << 30, ""), ("1 TiB", 1 << 40, "≤ 5 ms, ≤ 1 MiB")] {
        let (millis, kib) = create_cost(size);
        println!("| {label} | {millis:.2} ms | {kib} KiB | {target} |");
    }
}
