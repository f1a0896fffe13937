//! The Rust peer of `alloc-capi/examples/bench_pairs.c`: the same 64-byte alloc+free pairs
//! through `alloc_shm::Pool` (what the C API calls) and through `Pool::local()` (what the C
//! API's `shmpool_local_*` call), measured the same way.

use std::time::Instant;

use alloc_shm::{Allocation, PoolError};

/// Median ns per pair over 7 rounds of 1M pairs on the ring.
fn pairs(ring: &mut [Allocation], mut pair: impl FnMut(&mut Allocation) -> Result<(), PoolError>) -> f64 {
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for i in 0..1_000_000 {
                pair(&mut ring[i & 1023]).expect("a pair");
            }
            start.elapsed().as_nanos() as f64 / 1e6
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

fn main() -> Result<(), PoolError> {
    let pool = alloc_shm::Pool::create(&format!("bench-rust-{}", std::process::id()), 64 << 20)?;
    let mut ring: Vec<Allocation> = (0..1024).map(|_| pool.alloc(64)).collect::<Result<_, _>>()?;
    let uncached = pairs(&mut ring, |slot| {
        pool.free(slot.id())?;
        *slot = pool.alloc(64)?;
        Ok(())
    });
    let mut local = pool.local();
    let cached = pairs(&mut ring, |slot| {
        local.free(slot.id())?;
        *slot = local.alloc(64)?;
        Ok(())
    });
    drop(local);
    println!(
        "rust:  64 B pair, working set 1024: {uncached:.1} ns, cached {cached:.1} ns (median of 7 x 1M)"
    );
    pool.destroy()
}
