//! The free-run index alone (`alloc_core::runs`), on a plain page bitmap in process memory:
//! what a search, a claim's refresh and a release's refresh cost with hot caches, without the
//! rest of an allocation. The sizes are the arrays workload's (log-uniform, 1 to 1024 pages):
//! runs are claimed up to 60% of the pages, then each replacement releases a random live run and
//! claims a new one at the lowest fit.
//!
//! `cargo run --release -p benches --bin run_index [-- --pages N --replacements N]`. Under
//! `valgrind --tool=callgrind`, `callgrind_annotate --inclusive=yes` gives the instructions of
//! `RunIndex::find_run`, `refresh_claimed` and `refresh` per call (repeatable, unlike times).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloc_core::bitmap::{PageBits, PAGES_PER_WORD};
use alloc_core::layout::RunShape;
use alloc_core::runs::RunIndex;
use benches::{arg, splitmix64};

/// Runs of at least this many pages are also reported apart (what the arrays workload's p99
/// allocations are).
const LARGE: u64 = 512;

/// Time spent in each step, and how many times it ran.
#[derive(Default)]
struct Steps {
    find: Duration,
    claim_bits: Duration,
    claim_refresh: Duration,
    release_bits: Duration,
    release_refresh: Duration,
    claims: u32,
    releases: u32,
}

impl Steps {
    fn print(&self, what: &str) {
        let per = |total: Duration, count: u32| total.as_nanos() as u64 / u64::from(count.max(1));
        println!(
            "| {what} | {} | {} | {} | {} | {} | {} |",
            self.claims,
            per(self.find, self.claims),
            per(self.claim_bits, self.claims),
            per(self.claim_refresh, self.claims),
            per(self.release_bits, self.releases),
            per(self.release_refresh, self.releases),
        );
    }
}

fn main() {
    let pages = arg("--pages", 512 * 1024);
    let replacements = arg("--replacements", 400_000);
    let shape = RunShape::new(pages);
    let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let bits = zeros(pages.div_ceil(PAGES_PER_WORD) as usize);
    let nodes = zeros(shape.total_words());
    let mark = AtomicU64::new(0);
    let index = RunIndex::new(&nodes, &bits, &shape, pages, &mark, None);
    let map = PageBits::new(&bits, pages);
    let mut state = 42u64;
    let mut next = move || splitmix64(&mut state);
    let mut size = move || 1024f64.powf((next() >> 11) as f64 / (1u64 << 53) as f64) as u64;
    let claim = |len: u64, live: &mut Vec<(u64, u64)>, all: &mut Steps, large: &mut Steps| {
        let started = Instant::now();
        let at = index.find_run(len, 0).expect("room: the runs hold 60% of the pages");
        let found = Instant::now();
        mark.fetch_max(at + len, Ordering::Release);
        map.try_claim(at, at + len).expect("the run found is free (one thread)");
        let claimed = Instant::now();
        index.refresh_claimed(at, at + len);
        let refreshed = Instant::now();
        for steps in [Some(all), (len >= LARGE).then_some(large)].into_iter().flatten() {
            steps.find += found - started;
            steps.claim_bits += claimed - found;
            steps.claim_refresh += refreshed - claimed;
            steps.claims += 1;
        }
        live.push((at, len));
    };
    let (mut live, mut total) = (Vec::new(), 0);
    while total < pages * 6 / 10 {
        let len = size();
        total += len;
        claim(len, &mut live, &mut Steps::default(), &mut Steps::default());
    }
    let (mut all, mut large) = (Steps::default(), Steps::default());
    let mut pick = 7u64;
    for _ in 0..replacements {
        pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let (at, len) = live.swap_remove((pick >> 33) as usize % live.len());
        let started = Instant::now();
        map.release(at, len);
        let released = Instant::now();
        index.refresh(at, at + len);
        let refreshed = Instant::now();
        for steps in [Some(&mut all), (len >= LARGE).then_some(&mut large)].into_iter().flatten() {
            steps.release_bits += released - started;
            steps.release_refresh += refreshed - released;
            steps.releases += 1;
        }
        claim(size(), &mut live, &mut all, &mut large);
    }
    assert!(index.is_exact(), "every summary is what the bitmap says");
    println!("== the run index alone: {pages} pages, {replacements} replacements, ns per step");
    println!(
        "| runs | claims | search | claim's bits | claim's refresh | release's bits | release's refresh |"
    );
    println!("|---|---|---|---|---|---|---|");
    all.print("all");
    large.print(&format!("{LARGE} pages or more"));
}
