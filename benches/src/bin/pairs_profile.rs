//! A fixed workload for instruction-level profiling (`valgrind --tool=callgrind`): 64-byte
//! alloc+free pairs against a working set, through a cache. It prints nothing;
//! `scripts/bench --profile` runs it under callgrind and reports instructions per pair.

use benches::{pairs_with_working_set, SharedMemory, Shm};

fn main() {
    let pairs: u64 = std::env::args().nth(1).and_then(|arg| arg.parse().ok()).unwrap_or(1_000_000);
    let memory = SharedMemory::new(1 << 30);
    let heap = memory.create_heap();
    let mut subject = Shm::cached(heap);
    pairs_with_working_set(&mut subject, &[64], pairs);
}
