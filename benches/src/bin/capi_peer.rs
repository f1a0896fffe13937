//! The Rust peer of `alloc-capi/examples/bench_pairs.c`: the same 64-byte alloc+free pairs
//! through `alloc_shm::Pool` (what the C API calls), measured the same way.

use std::time::Instant;

fn main() -> Result<(), alloc_shm::PoolError> {
    let pool = alloc_shm::Pool::create(&format!("bench-rust-{}", std::process::id()), 64 << 20)?;
    let mut ring: Vec<alloc_shm::Allocation> = (0..1024).map(|_| pool.alloc(64)).collect::<Result<_, _>>()?;
    let mut rounds = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        for i in 0..1_000_000 {
            let slot = &mut ring[i & 1023];
            pool.free(slot.id())?;
            *slot = pool.alloc(64)?;
        }
        rounds.push(start.elapsed().as_nanos() as f64 / 1e6);
    }
    rounds.sort_by(f64::total_cmp);
    println!("rust:  64 B pair, working set 1024: {:.1} ns (median of 7 x 1M)", rounds[3]);
    pool.destroy()
}
