//! Helper processes for alloc-shm's multi-process tests and benchmarks. Each role attaches the
//! pool named by a hex pool descriptor (or, given `unix:PATH`, receives it from the Unix socket
//! listening at PATH: how memfd pools travel) and reports on stderr in lines starting with `@@`.
//!
//! - `churn POOL SEED [MAX_SHIFT]`: allocate, fill, verify and free forever (until killed),
//!   half of the time through a cache, sizes from 16 B << 0..MAX_SHIFT (default 10: from 8 KiB)
//!   to twice that less a byte (so that caches round runs up to their run sizes);
//!   reports `@@ ready` once it holds its process record.
//! - `wait POOL SIZE TIMEOUT_MS`: one `alloc_blocking`; reports `@@ ok OFFSET MICROS` or
//!   `@@ timeout MICROS`.
//! - `send POOL COUNT`: allocate COUNT allocations, fill them, give them to the pool and write
//!   their descriptors to stdout, then exit.
//! - `receive [POOL]`: read allocation descriptors from stdin, verify and free each; reports
//!   `@@ verified N failed M`. With POOL, attach it first (a memfd pool, given as `unix:PATH`).
//! - `pingpong POOL ROUNDS`: the far side of the wake-latency benchmark: blocks in
//!   `alloc_blocking` on a full pool, writes the monotonic time it woke (8 bytes) to stdout,
//!   frees, and waits for a byte on stdin before blocking again.
//! - `pairs POOL PAIRS`: builds a working set of 1024 blocks, reports `@@ ready`, waits for a
//!   byte on stdin, runs PAIRS cached 64 B alloc+free pairs, reports `@@ nanos N`.
//! - `create NAME MIB`: create a pool and exit without destroying it (an abandoned pool).
//! - `fill POOL [HOG]`: allocate 1 MiB blocks and write them until the pool is full; report
//!   `@@ filled N`. With HOG, write that file until its filesystem is full (as another process
//!   taking the last of it would). Then free two of the blocks and fill that hole with blocks
//!   of every size class and runs of 64 KiB and 64 MiB, writing each, until each size is
//!   refused; report `@@ refilled M`.
//! - `own POOL COUNT SIZE`: allocate COUNT allocations of SIZE bytes (owned by this process),
//!   report `@@ owned`, and exit without freeing them.
//! - `fork-hold NAME SECS`: attach pool NAME by name, allocate and free once, fork, report
//!   `@@ forked PID` and exit; the fork child never calls into the pool, sleeps SECS and exits.

use std::io::{BufReader, BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use alloc_shm::descriptor::{from_hex, read_frame, write_end, write_frame};
use alloc_shm::{verify, Pool, PoolError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["churn", pool, seed] => attach(pool).and_then(|pool| churn(&pool, parse(seed)?, 10)),
        ["churn", pool, seed, shift] => {
            attach(pool).and_then(|pool| churn(&pool, parse(seed)?, parse(shift)?))
        }
        ["wait", pool, size, timeout_ms] => {
            attach(pool).and_then(|pool| wait(&pool, parse(size)?, parse(timeout_ms)?))
        }
        ["send", pool, count] => attach(pool).and_then(|pool| send(&pool, parse(count)?)),
        ["receive"] => receive(),
        // A memfd pool first (its descriptors resolve only once this process has it).
        ["receive", pool] => attach(pool).and_then(|_pool| receive()),
        ["create", name, mib] => parse(mib).and_then(|mib| Pool::create(name, mib << 20)).map(|_| ()),
        ["fill", pool] => attach(pool).and_then(|pool| fill(&pool, None)),
        ["fill", pool, hog] => attach(pool).and_then(|pool| fill(&pool, Some(hog))),
        ["own", pool, count, size] => attach(pool).and_then(|pool| own(&pool, parse(count)?, parse(size)?)),
        ["pairs", pool, count] => attach(pool).and_then(|pool| run_pairs(&pool, parse(count)?)),
        ["pingpong", pool, rounds] => attach(pool).and_then(|pool| pingpong(&pool, parse(rounds)?)),
        ["fork-hold", name, secs] => {
            Pool::attach_by_name(name).and_then(|pool| fork_hold(&pool, parse(secs)?))
        }
        _ => Err(PoolError::InvalidArgument("usage: shmpool-child churn|wait|send|receive|pingpong ...")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("@@ error {error}");
            ExitCode::FAILURE
        }
    }
}

fn fork_hold(pool: &Pool, secs: u64) -> Result<(), PoolError> {
    let used = pool.alloc(64)?;
    pool.free(used.id())?;
    // SAFETY: this process is single-threaded here; the child only sleeps and exits.
    match unsafe { libc::fork() } {
        -1 => Err(PoolError::InvalidArgument("fork failed")),
        0 => {
            // Let go of the pipes the test reads to the end.
            for fd in 0..3 {
                // SAFETY: closing our own standard descriptors; nothing uses them after this.
                unsafe { libc::close(fd) };
            }
            std::thread::sleep(Duration::from_secs(secs));
            // SAFETY: leaves without running the parent's exit handlers twice.
            unsafe { libc::_exit(0) }
        }
        child => {
            eprintln!("@@ forked {child}");
            Ok(())
        }
    }
}

fn parse(text: &str) -> Result<u64, PoolError> {
    text.parse().map_err(|_| PoolError::InvalidArgument("not a number"))
}

/// The `fill` role (see the module docs); exits without freeing what it allocated.
fn fill(pool: &Pool, hog: Option<&str>) -> Result<(), PoolError> {
    let mut blocks = fill_with(pool, 1 << 20)?;
    eprintln!("@@ filled {}", blocks.len());
    if let Some(hog) = hog {
        let mut file =
            std::fs::File::create(hog).map_err(|_| PoolError::InvalidArgument("cannot create the hog"))?;
        while file.write_all(&[1; 4096]).is_ok() {}
    }
    for block in blocks.drain(..blocks.len().min(2)) {
        pool.free(block)?;
    }
    let mut refilled = 0;
    for shift in (4..=11).chain([16, 26]) {
        refilled += fill_with(pool, 1 << shift)?.len();
    }
    eprintln!("@@ refilled {refilled}");
    Ok(())
}

/// Allocates blocks of `size` bytes and writes every byte of each until the pool refuses one.
fn fill_with(pool: &Pool, size: u64) -> Result<Vec<alloc_shm::AllocId>, PoolError> {
    let mut blocks = Vec::new();
    loop {
        match pool.alloc(size) {
            Ok(allocation) => {
                pool.write(allocation.id(), 0, &vec![0x5a; size as usize])?;
                blocks.push(allocation.id());
            }
            Err(PoolError::Full { .. } | PoolError::TooLarge { .. }) => return Ok(blocks),
            Err(other) => return Err(other),
        }
    }
}

fn attach(pool: &str) -> Result<Pool, PoolError> {
    if let Some(path) = pool.strip_prefix("unix:") {
        let socket = std::os::unix::net::UnixStream::connect(path)
            .map_err(|source| PoolError::Io { operation: "connecting to the test's socket", source })?;
        return Pool::receive(&socket);
    }
    Pool::attach(&from_hex(pool).ok_or(PoolError::InvalidDescriptor("not hex"))?)
}

fn churn(pool: &Pool, seed: u64, max_shift: u64) -> Result<(), PoolError> {
    let mut local = pool.local();
    let mut live = Vec::new();
    let mut rng = seed | 1;
    // Ready means recorded: a test that looks at the process table right after must find us.
    pool.me()?;
    eprintln!("@@ ready");
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let base = 16 << (rng % max_shift.clamp(1, 40));
        let size = base + (rng >> 24) % base;
        let cached = rng & 1 == 0;
        let allocation = if cached { local.alloc(size) } else { pool.alloc(size) };
        match allocation {
            Ok(allocation) => {
                verify::fill(pool, &allocation)?;
                live.push(allocation);
            }
            Err(PoolError::Full { .. }) => {}
            Err(other) => return Err(other),
        }
        if live.len() > 64 || (rng >> 8).is_multiple_of(3) {
            if let Some(victim) =
                (!live.is_empty()).then(|| live.swap_remove((rng >> 16) as usize % live.len()))
            {
                if !verify::holds(pool, &victim)? {
                    return Err(PoolError::InvalidArgument("an allocation's bytes changed under its owner"));
                }
                if cached {
                    local.free(victim.id())?
                } else {
                    pool.free(victim.id())?
                }
            }
        }
    }
}

fn own(pool: &Pool, count: u64, size: u64) -> Result<(), PoolError> {
    for _ in 0..count {
        pool.alloc(size)?;
    }
    eprintln!("@@ owned");
    Ok(())
}

fn wait(pool: &Pool, size: u64, timeout_ms: u64) -> Result<(), PoolError> {
    let started = Instant::now();
    match pool.alloc_blocking(size, Some(Duration::from_millis(timeout_ms))) {
        Ok(allocation) => {
            eprintln!("@@ ok {} {}", allocation.offset, started.elapsed().as_micros());
            pool.free(allocation.id())
        }
        Err(PoolError::Timeout { .. }) => {
            eprintln!("@@ timeout {}", started.elapsed().as_micros());
            Ok(())
        }
        Err(other) => Err(other),
    }
}

fn send(pool: &Pool, count: u64) -> Result<(), PoolError> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let io = |source| PoolError::Io { operation: "writing descriptors", source };
    for i in 0..count {
        let allocation = pool.alloc(64 + i % 5000)?;
        verify::fill(pool, &allocation)?;
        // Hand it over before sending: the sender may be gone by the time it is read.
        pool.give_to_pool(allocation.id())?;
        write_frame(&mut out, &pool.alloc_descriptor(&allocation)?).map_err(io)?;
    }
    write_end(&mut out).map_err(io)
}

fn receive() -> Result<(), PoolError> {
    let mut input = BufReader::new(std::io::stdin().lock());
    let (mut verified, mut failed) = (0, 0);
    while let Some(descriptor) =
        read_frame(&mut input).map_err(|source| PoolError::Io { operation: "reading descriptors", source })?
    {
        let (pool, allocation) = Pool::attach_alloc(&descriptor)?;
        if verify::holds(&pool, &allocation)? {
            verified += 1;
        } else {
            failed += 1;
        }
        pool.free(allocation.id())?;
    }
    eprintln!("@@ verified {verified} failed {failed}");
    Ok(())
}

/// Nanoseconds on the system-wide monotonic clock (comparable across processes).
fn monotonic_nanos() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Blocks on a full pool `rounds` times; reports when each wait ended (see the module docs).
fn pingpong(pool: &Pool, rounds: u64) -> Result<(), PoolError> {
    let mut out = std::io::stdout().lock();
    let mut input = std::io::stdin().lock();
    let io = |source| PoolError::Io { operation: "talking to the benchmark", source };
    for _ in 0..rounds {
        let allocation = pool.alloc_blocking(4096, Some(Duration::from_secs(10)))?;
        let woke = monotonic_nanos();
        out.write_all(&woke.to_le_bytes()).and_then(|()| out.flush()).map_err(io)?;
        pool.free(allocation.id())?;
        let mut go = [0u8; 1];
        std::io::Read::read_exact(&mut input, &mut go).map_err(io)?;
    }
    Ok(())
}

fn run_pairs(pool: &Pool, pairs: u64) -> Result<(), PoolError> {
    let mut local = pool.local();
    let mut ring = Vec::with_capacity(1024);
    for _ in 0..1024 {
        ring.push(local.alloc(64)?.id());
    }
    eprintln!("@@ ready");
    let mut go = [0u8; 1];
    std::io::Read::read_exact(&mut std::io::stdin(), &mut go)
        .map_err(|source| PoolError::Io { operation: "waiting for the start", source })?;
    let started = Instant::now();
    for i in 0..pairs as usize {
        let slot = i % ring.len();
        local.free(ring[slot])?;
        ring[slot] = local.alloc(64)?.id();
    }
    let nanos = started.elapsed().as_nanos();
    for id in ring {
        local.free(id)?;
    }
    eprintln!("@@ nanos {nanos}");
    Ok(())
}
