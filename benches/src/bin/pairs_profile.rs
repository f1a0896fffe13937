//! A fixed workload for instruction-level profiling (`valgrind --tool=callgrind`): alloc+free
//! pairs of 64 bytes (or a third argument's size) against a working set, through a cache (or,
//! with a second argument `uncached`, straight on the shared heap). It prints nothing;
//! `scripts/bench --profile` runs it under callgrind and reports instructions per pair.

use benches::{pairs_with_working_set, SharedMemory, Shm};

fn main() {
    let mut args = std::env::args().skip(1);
    let pairs: u64 = args.next().and_then(|arg| arg.parse().ok()).unwrap_or(1_000_000);
    let memory = SharedMemory::new(1 << 30);
    let heap = memory.create_heap();
    let mut subject = match args.next().as_deref() {
        Some("uncached") => Shm::uncached(heap),
        _ => Shm::cached(heap),
    };
    let size = args.next().and_then(|arg| arg.parse().ok()).unwrap_or(64);
    pairs_with_working_set(&mut subject, &[size], pairs);
}
