//! Fill efficiency: allocate until the first failure, then report live bytes (the sizes asked
//! for) over the pool's total bytes, metadata included; straight from the heap and through a
//! participant's cache (which rounds runs up to its run sizes). Run with
//! `cargo run --release -p benches --bin fill`.

use alloc_core::{AllocOptions, Cache};
use benches::{log_uniform_sizes, register, SharedMemory};

const POOL_BYTES: usize = 256 << 20;

fn fill(sizes: &[u64], cached: bool) -> (u64, u64) {
    let memory = SharedMemory::new(POOL_BYTES);
    let heap = memory.create_heap();
    let mut cache = Cache::new(register(&heap));
    let (mut live, mut count) = (0u64, 0u64);
    for &size in sizes.iter().cycle() {
        let got = match cached {
            true => heap.alloc_with(&mut cache, size, AllocOptions::default()),
            false => heap.alloc(cache.session(), size, AllocOptions::default()),
        };
        match got {
            Ok(_) => {
                live += size;
                count += 1;
            }
            Err(_) => break,
        }
    }
    heap.check(cache.session()).expect("consistent after filling");
    (live, count)
}

fn main() {
    let patterns: [(&str, Vec<u64>, f64); 3] = [
        ("64 B blocks", vec![64], 80.0),
        ("4 KiB blocks", vec![4096], 97.0),
        ("log-uniform 16 B - 64 KiB", log_uniform_sizes(1 << 16, 16, 65536, 11), 85.0),
    ];
    println!("pool: {} MiB (metadata included in the denominator)", POOL_BYTES >> 20);
    println!(
        "{:<28} {:>12} {:>10} {:>12} {:>8}",
        "pattern", "allocations", "fill %", "cached fill", "target"
    );
    let mut all_met = true;
    for (name, sizes, target) in patterns {
        let (live, count) = fill(&sizes, false);
        let (cached_live, _) = fill(&sizes, true);
        let percent = |live: u64| live as f64 * 100.0 / POOL_BYTES as f64;
        all_met &= percent(live) >= target && percent(cached_live) >= target;
        println!(
            "{name:<28} {count:>12} {:>9.1}% {:>11.1}% {:>7}%",
            percent(live),
            percent(cached_live),
            target
        );
    }
    println!("{}", if all_met { "all fill targets met" } else { "SOME FILL TARGETS MISSED" });
}
