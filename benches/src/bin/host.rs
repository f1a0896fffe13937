//! Costs the host side adds: statistics on a huge sparse pool (time, and memory made resident),
//! and creating a pool with each space policy, against creating a bare POSIX shared-memory file
//! of the same size (what `multiprocessing.shared_memory` does).
//!
//! `cargo run --release -p benches --bin host`

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use alloc_shm::{Pool, PoolOptions, Space};

const MIB: u64 = 1 << 20;

fn resident(pool: &Pool) -> u64 {
    std::fs::metadata(pool.path()).map_or(0, |meta| meta.blocks() * 512)
}

/// The median of `runs` timings of `body`.
fn median(runs: usize, mut body: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            body();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() -> Result<(), alloc_shm::PoolError> {
    let pid = std::process::id();
    let overcommit = PoolOptions { space: Space::Overcommit, ..PoolOptions::default() };
    let started = Instant::now();
    let pool = Pool::create_with(&format!("bench-host-{pid}"), 1 << 40, &overcommit)?;
    let created = started.elapsed();
    println!("create a 1 TiB pool (overcommit): {created:?}, {} KiB resident", resident(&pool) >> 10);
    let before = resident(&pool);
    let fresh = median(21, || drop(pool.stats()));
    let fresh_grown = resident(&pool) - before;
    let held: Vec<_> = (0..1000).map(|i| pool.alloc(if i % 10 == 0 { 64 * 1024 } else { 256 })).collect();
    let before = resident(&pool);
    let used = median(21, || drop(pool.stats()));
    let used_grown = resident(&pool) - before;
    println!("stats on a 1 TiB pool: fresh {fresh:?}, with 1000 allocations {used:?}");
    println!("  resident growth from 21 stats: fresh +{fresh_grown} bytes, used +{used_grown} bytes");
    drop(held);
    pool.destroy()?;

    let size = 256 * MIB;
    let peer = median(9, || {
        let path = format!("/dev/shm/bench-host-peer-{pid}");
        let file = std::fs::File::create_new(&path).expect("peer file");
        file.set_len(size).expect("sized");
        drop(file);
        std::fs::remove_file(&path).expect("removed");
    });
    println!("create 256 MiB: bare shm file (peer) {peer:?}");
    for (label, space) in
        [("check", Space::Check), ("reserve", Space::Reserve), ("overcommit", Space::Overcommit)]
    {
        let options = PoolOptions { space, ..PoolOptions::default() };
        let mut n = 0;
        let time = median(9, || {
            n += 1;
            let pool = Pool::create_with(&format!("bench-host-{pid}-{n}"), size, &options).expect("created");
            pool.destroy().expect("destroyed");
        });
        println!("  {label:<10} {time:?} ({:.1}x the peer)", time.as_secs_f64() / peer.as_secs_f64());
    }

    let peer = median(9, || {
        let fd = rustix::fs::memfd_create("bench-host-peer", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&fd, size).expect("sized");
    });
    let memfd = median(9, || drop(Pool::create_memfd("bench-host-memfd", size).expect("created")));
    println!(
        "create 256 MiB in a memfd: bare memfd (peer) {peer:?}, pool (check, sealed) {memfd:?} ({:.1}x)",
        memfd.as_secs_f64() / peer.as_secs_f64()
    );
    Ok(())
}
