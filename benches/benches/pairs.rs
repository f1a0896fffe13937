#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! alloc+free pairs: shmpool (alloc-core over shared memory) against glibc malloc and
//! rts-alloc, at 64 B, 1 KiB, 64 KiB and random sizes, with and without a live working set,
//! in one and two threads (each thread its own participant of its own process record, with its
//! own heap view, as processes would be).
//!
//! Two-thread figures are aggregate: wall time divided by the pairs of both threads together,
//! so a value half the one-thread figure means perfect scaling. Each pool is created once per
//! benchmark, so first-touch page faults fall in the warm-up, not in the measurement.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use benches::{
    log_uniform_sizes, pairs_with_working_set, pairs_without_working_set, Glibc, Rts, SharedMemory, Shm,
    Subject, RTS_MAX_SIZE,
};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};

const POOL_BYTES: usize = 1 << 30;

/// Runs `iters` pairs split over `subjects` (one thread each, started together); returns the
/// wall time from the common start to the last finish.
fn timed<S: Subject + Send>(subjects: &mut [S], iters: u64, sizes: &[u64], working_set: bool) -> Duration {
    let barrier = Barrier::new(subjects.len());
    let per_thread = iters.div_ceil(subjects.len() as u64);
    std::thread::scope(|scope| {
        let handles: Vec<_> = subjects
            .iter_mut()
            .map(|subject| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    if working_set {
                        pairs_with_working_set(subject, sizes, per_thread);
                    } else {
                        pairs_without_working_set(subject, sizes, per_thread);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> =
            handles.into_iter().map(|h| h.join().expect("bench thread")).collect();
        let start = spans.iter().map(|s| s.0).min().expect("threads");
        let end = spans.iter().map(|s| s.1).max().expect("threads");
        end - start
    })
}

fn bench_one<S: Subject + Send>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    case: &str,
    subjects: &mut [S],
    sizes: &[u64],
    working_set: bool,
) {
    group.bench_function(BenchmarkId::new(name, case), |b| {
        b.iter_custom(|iters| timed(subjects, iters, sizes, working_set))
    });
}

fn bench_pairs(c: &mut Criterion) {
    let cases = [
        ("64B", vec![64]),
        ("1KiB", vec![1024]),
        ("64KiB", vec![65536]),
        ("random16B-4KiB", log_uniform_sizes(4096, 16, 4096, 7)),
    ];
    for working_set in [true, false] {
        for threads in [1usize, 2] {
            let label = if working_set { "working-set" } else { "no-working-set" };
            let mut group = c.benchmark_group(format!("pairs/{label}/{threads}t"));
            group.throughput(Throughput::Elements(1));
            for (case, sizes) in &cases {
                let memory = SharedMemory::new(POOL_BYTES);
                let _ = memory.create_heap();
                let open = || memory.open_heap();
                let mut shm: Vec<Shm<'_>> = (0..threads).map(|_| Shm::cached(open())).collect();
                bench_one(&mut group, "shmpool", case, &mut shm, sizes, working_set);
                let mut shared: Vec<Shm<'_>> = (0..threads).map(|_| Shm::uncached(open())).collect();
                bench_one(&mut group, "shmpool-uncached", case, &mut shared, sizes, working_set);
                let mut glibc: Vec<Glibc> = (0..threads).map(|_| Glibc).collect();
                bench_one(&mut group, "glibc", case, &mut glibc, sizes, working_set);
                if sizes.iter().all(|&size| size <= RTS_MAX_SIZE) {
                    let first = Rts::create(POOL_BYTES, threads as u32);
                    let mut rts: Vec<Rts> = (1..threads).map(|_| first.join()).collect();
                    rts.push(first);
                    bench_one(&mut group, "rts-alloc", case, &mut rts, sizes, working_set);
                }
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_pairs
}
criterion_main!(benches);
