//! The arrays workload (issue 9): what shmpool's users mostly share. A pool of 2 GiB; live data
//! held at 60% of it in allocations of log-uniform sizes between 4 KiB and 4 MiB; then 200,000
//! replacements of a random live allocation by a new one, every page of each new allocation
//! written. The same deterministic sequence runs against shmpool (cached and uncached), glibc
//! malloc and Boost.Interprocess `managed_shared_memory` (benches/cpp/boost_arrays.cpp, built
//! when the Boost headers are installed, which reads the sequence from a file this writes).
//!
//! Prints per alloc and per free the median, p99, p99.9 and max, the refusals, and the largest
//! allocation that succeeds with the working set live; then the multi-process variant: 1, 2 and
//! 4 processes running their share of the workload on one pool, aggregate replacements per
//! second.
//!
//! `cargo run --release -p benches --bin arrays [-- --replacements N] [--pool-gib G]
//! [--sparse-gib G] [--spread 1] [--drain 0]`; with `--spread 1`, each shmpool row is followed by
//! its alloc and free times at every 5th percentile (where the cached and uncached operations
//! split); with `--drain 0`, the clock starts while the last allocation's writes are still in
//! flight (see `touch`).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use alloc_shm::{AllocId, LocalPool, Pool, PoolError, PoolOptions, Space};
use benches::{arg, splitmix64};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

/// The workload: the sizes that build the working set, then (slot, new size) replacements.
struct Sequence {
    initial: Vec<u64>,
    replacements: Vec<(u64, u64)>,
}

impl Sequence {
    fn new(seed: u64, live_bytes: u64, replacements: usize) -> Sequence {
        let mut state = seed;
        let mut next = move || splitmix64(&mut state);
        let size = move |r: u64| {
            let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
            ((4.0 * KIB as f64) * 1024f64.powf(unit)) as u64
        };
        let mut initial = Vec::new();
        let mut total = 0;
        while total < live_bytes {
            let s = size(next());
            total += s;
            initial.push(s);
        }
        let slots = initial.len() as u64;
        let replacements = (0..replacements).map(|_| (next() % slots, size(next()))).collect();
        Sequence { initial, replacements }
    }

    fn write_to(&self, path: &std::path::Path) {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("sequence file"));
        let mut put = |value: u64| out.write_all(&value.to_le_bytes()).expect("written");
        put(self.initial.len() as u64);
        self.initial.iter().for_each(|&s| put(s));
        put(self.replacements.len() as u64);
        for &(slot, s) in &self.replacements {
            put(slot);
            put(s);
        }
    }
}

/// An allocator under test.
trait Arrays {
    type Block: Copy;
    fn alloc(&mut self, size: u64) -> Option<Self::Block>;
    fn free(&mut self, block: Self::Block);
    /// Writes one byte in every page of `block` (of `size` bytes).
    fn touch(&mut self, block: Self::Block, size: u64);
    /// Bytes free, where the allocator says.
    fn free_bytes(&self) -> Option<u64> {
        None
    }
}

struct Glibc;

impl Arrays for Glibc {
    type Block = *mut u8;
    fn alloc(&mut self, size: u64) -> Option<*mut u8> {
        // SAFETY: plain malloc; freed by `free`.
        let p = unsafe { libc::malloc(size as usize) }.cast::<u8>();
        (!p.is_null()).then_some(p)
    }
    fn free(&mut self, block: *mut u8) {
        // SAFETY: from `alloc`, freed once.
        unsafe { libc::free(block.cast()) }
    }
    fn touch(&mut self, block: *mut u8, size: u64) {
        for at in (0..size).step_by(PAGE as usize) {
            // SAFETY: inside the block of `size` bytes.
            unsafe { block.add(at as usize).write_volatile(1) };
        }
    }
}

/// shmpool through a cache (`LocalPool`) or straight (`Pool`).
struct Shmpool {
    pool: Pool,
    local: Option<LocalPool>,
    base: *mut u8,
}

impl Shmpool {
    fn new(pool: Pool, cached: bool) -> Shmpool {
        let probe = pool.alloc(64).expect("room");
        let base = pool.bytes_ptr(probe.id()).expect("live").0.wrapping_sub(probe.offset as usize);
        pool.free(probe.id()).expect("live");
        let local = cached.then(|| pool.local());
        Shmpool { pool, local, base }
    }
}

impl Arrays for Shmpool {
    type Block = (AllocId, u64);
    fn alloc(&mut self, size: u64) -> Option<(AllocId, u64)> {
        let got = match &mut self.local {
            Some(local) => local.alloc(size),
            None => self.pool.alloc(size),
        };
        match got {
            Ok(a) => Some((a.id(), a.offset)),
            Err(PoolError::Full { .. } | PoolError::TooLarge { .. }) => None,
            Err(other) => panic!("{other}"),
        }
    }
    fn free(&mut self, (id, _): (AllocId, u64)) {
        match &mut self.local {
            Some(local) => local.free(id),
            None => self.pool.free(id),
        }
        .expect("live");
    }
    fn free_bytes(&self) -> Option<u64> {
        self.pool.stats().ok().map(|stats| stats.free_bytes)
    }
    fn touch(&mut self, (_, offset): (AllocId, u64), size: u64) {
        for at in (0..size).step_by(PAGE as usize) {
            // SAFETY: inside the live allocation at `offset` of `size` bytes, in the mapping.
            unsafe { self.base.add((offset + at) as usize).write_volatile(1) };
        }
    }
}

/// What one run measured.
#[derive(Default)]
struct Figures {
    allocs: Vec<u32>,
    frees: Vec<u32>,
    refused: u64,
    largest: Option<u64>,
    free_when_probed: Option<u64>,
    wall: Duration,
}

/// Writes `block` as the workload does; unless `--drain 0`, then waits until those writes are
/// done (a full fence, for every allocator alike, outside the clock): otherwise the next
/// operation timed starts with the store buffer full of them (a miss for every page), its
/// own stores and any locked instruction (a free's compare-exchange, Boost's mutex) wait for
/// them, and the clock charges part of the workload's writes to the allocator (BENCHMARKS.md
/// gives both figures).
fn touch<A: Arrays>(subject: &mut A, block: A::Block, size: u64) {
    static DRAIN: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| arg("--drain", 1) != 0);
    subject.touch(block, size);
    if *DRAIN {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

fn nanos(since: Instant) -> u32 {
    since.elapsed().as_nanos().min(u32::MAX as u128) as u32
}

/// Runs `sequence` on `subject`; with `probe_largest`, finds the largest allocation that
/// succeeds with the working set live (bisection in pages).
fn run<A: Arrays>(subject: &mut A, sequence: &Sequence, probe_largest: Option<u64>) -> Figures {
    let mut figures = Figures::default();
    let mut live: Vec<Option<(A::Block, u64)>> = sequence
        .initial
        .iter()
        .map(|&size| {
            let block = subject.alloc(size);
            if let Some(block) = block {
                touch(subject, block, size);
            }
            block.map(|block| (block, size))
        })
        .collect();
    let started = Instant::now();
    for &(slot, size) in &sequence.replacements {
        if let Some((block, _)) = live[slot as usize].take() {
            let at = Instant::now();
            subject.free(block);
            figures.frees.push(nanos(at));
        }
        let at = Instant::now();
        let block = subject.alloc(size);
        figures.allocs.push(nanos(at));
        match block {
            Some(block) => {
                touch(subject, block, size);
                live[slot as usize] = Some((block, size));
            }
            None => figures.refused += 1,
        }
    }
    figures.wall = started.elapsed();
    if let Some(limit) = probe_largest {
        figures.free_when_probed = subject.free_bytes();
        let (mut low, mut high) = (0, limit / PAGE + 1);
        while low + 1 < high {
            let middle = (low + high) / 2;
            match subject.alloc(middle * PAGE) {
                Some(block) => {
                    subject.free(block);
                    low = middle;
                }
                None => high = middle,
            }
        }
        figures.largest = Some(low * PAGE);
    }
    for (block, _) in live.into_iter().flatten() {
        subject.free(block);
    }
    figures
}

fn percentile(sorted: &[u32], p: f64) -> String {
    let value = sorted[((sorted.len() - 1) as f64 * p) as usize];
    match value {
        v if v >= 10_000 => format!("{:.1} µs", v as f64 / 1000.0),
        v => format!("{v} ns"),
    }
}

fn row(label: &str, figures: &mut Figures) {
    figures.allocs.sort_unstable();
    figures.frees.sort_unstable();
    let summary = |v: &[u32]| {
        format!(
            "{} / {} / {} / {}",
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(v, 0.999),
            percentile(v, 1.0)
        )
    };
    if label.starts_with("shmpool") && arg("--spread", 0) == 1 {
        let spread =
            |v: &[u32]| (1..20).map(|i| v[v.len() * i / 20].to_string()).collect::<Vec<_>>().join(" ");
        println!("{label} alloc ns at 5%, 10% ... 95%: {}", spread(&figures.allocs));
        println!("{label} free ns at 5%, 10% ... 95%: {}", spread(&figures.frees));
    }
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / MIB as f64);
    let largest = match (figures.largest, figures.free_when_probed) {
        (Some(largest), Some(free)) => format!("{} of {} free", mib(largest), mib(free)),
        (Some(largest), None) => mib(largest),
        _ => "–".to_owned(),
    };
    println!(
        "| {label} | {} | {} | {} | {largest} |",
        summary(&figures.allocs),
        summary(&figures.frees),
        figures.refused
    );
}

/// Builds the Boost.Interprocess shim (only where the headers are installed) and runs it on
/// the sequence in `path`; it prints a table row's figures as whitespace-separated numbers.
fn boost(path: &std::path::Path, pool_bytes: u64) -> Option<String> {
    let binary = benches::build_boost("boost_arrays")?;
    let output = Command::new(&binary)
        .arg(path)
        .arg(pool_bytes.to_string())
        .arg(arg("--drain", 1).to_string())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// One process of the multi-process variant: attaches the pool, runs its share, prints the
/// replacements per second it made.
fn worker(descriptor: &str, seed: u64, live_bytes: u64, replacements: usize) {
    let pool = Pool::attach(&alloc_shm::descriptor::from_hex(descriptor).expect("hex")).expect("attached");
    let sequence = Sequence::new(seed, live_bytes, replacements);
    let mut subject = Shmpool::new(pool, true);
    let figures = run(&mut subject, &sequence, None);
    println!("{} {}", figures.wall.as_nanos(), figures.refused);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        let number = |i: usize| args[i].parse::<u64>().expect("a number");
        return worker(&args[2], number(3), number(4), number(5) as usize);
    }
    let replacements = arg("--replacements", 200_000) as usize;
    let pool_bytes = arg("--pool-gib", 2) * GIB;
    let live_bytes = 2 * GIB * 6 / 10;
    let sequence = Sequence::new(42, live_bytes, replacements);
    println!(
        "== arrays: {} GiB pool, {} initial allocations ({:.0} MiB live), {replacements} replacements",
        pool_bytes / GIB,
        sequence.initial.len(),
        sequence.initial.iter().sum::<u64>() as f64 / MIB as f64
    );
    println!("| allocator | alloc median / p99 / p99.9 / max | free median / p99 / p99.9 / max | refused | largest with the working set live |");
    println!("|---|---|---|---|---|");
    let pid = std::process::id();
    let options = PoolOptions { space: Space::Overcommit, ..PoolOptions::default() };
    // The shmpool rows: in a pool of `bytes`, cached and not, probing the largest allocation
    // when `probe` (in a sparse pool that would back most of it: only the search costs matter).
    let shmpool_rows = |bytes: u64, probe: bool| {
        for cached in [true, false] {
            let pool = Pool::create_with(&format!("bench-arrays-{pid}"), bytes, &options).expect("pool");
            let mut subject = Shmpool::new(pool.clone(), cached);
            let mut figures = run(&mut subject, &sequence, probe.then(|| pool.data_bytes()));
            row(if cached { "shmpool `local()`" } else { "shmpool `Pool`" }, &mut figures);
            drop(subject);
            pool.destroy().expect("destroyed");
        }
    };
    shmpool_rows(pool_bytes, true);
    row("glibc malloc", &mut run(&mut Glibc, &sequence, None));
    let path = std::env::temp_dir().join(format!("shmpool-arrays-{pid}.seq"));
    sequence.write_to(&path);
    match boost(&path, pool_bytes) {
        Some(line) => println!("{line}"),
        None => println!("| Boost.Interprocess | (headers not installed) | | | |"),
    }
    let _ = std::fs::remove_file(&path);

    let sparse = arg("--sparse-gib", 64) * GIB;
    if sparse > 0 {
        println!();
        println!(
            "== the same sequence in a sparse {} GiB pool (searches over a fragmented page map)",
            sparse / GIB
        );
        println!(
            "| allocator | alloc median / p99 / p99.9 / max | free median / p99 / p99.9 / max | refused | |"
        );
        println!("|---|---|---|---|---|");
        shmpool_rows(sparse, false);
    }

    println!();
    println!(
        "== arrays on one pool from 1, 2 and 4 processes (each its share of the live data and replacements)"
    );
    println!("| processes | replacements/s (aggregate) | vs 1 process | refused |");
    println!("|---|---|---|---|");
    let mut one = 0.0;
    for processes in [1u64, 2, 4] {
        let pool = Pool::create_with(&format!("bench-arrays-mp-{pid}"), pool_bytes, &options).expect("pool");
        let descriptor = alloc_shm::descriptor::to_hex(&pool.descriptor().expect("fits"));
        let share = replacements as u64 / processes;
        let children: Vec<_> = (0..processes)
            .map(|i| {
                Command::new(std::env::current_exe().expect("self"))
                    .args(["worker", &descriptor, &(100 + i).to_string()])
                    .arg((live_bytes / processes).to_string())
                    .arg(share.to_string())
                    .args(["--drain", &arg("--drain", 1).to_string()])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("worker")
            })
            .collect();
        let (mut slowest, mut refused) = (0u128, 0u64);
        for child in children {
            let output = child.wait_with_output().expect("worker ran");
            let said = String::from_utf8_lossy(&output.stdout);
            let mut parts = said.split_whitespace().map(|v| v.parse::<u128>().expect("numbers"));
            slowest = slowest.max(parts.next().expect("wall"));
            refused += parts.next().expect("refused") as u64;
        }
        pool.destroy().expect("destroyed");
        let rate = (share * processes) as f64 / (slowest as f64 / 1e9);
        if processes == 1 {
            one = rate;
        }
        println!("| {processes} | {rate:.0} | {:.2}× | {refused} |", rate / one);
    }
}
