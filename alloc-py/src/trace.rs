//! Optional `tracemalloc` accounting: while switched on (`shmpool.trace_allocations(True)`),
//! allocations made through this process are reported to tracemalloc under their own domain
//! (`shmpool.TRACEMALLOC_DOMAIN`), and their frees through this process are reported too, so
//! `tracemalloc` snapshots show shared-memory use next to the process's own.

use std::os::raw::{c_int, c_uint};
use std::sync::atomic::{AtomicBool, Ordering};

use alloc_shm::{Allocation, Pool};
use pyo3::prelude::*;

/// The tracemalloc domain of pool allocations ("shmp").
pub const DOMAIN: c_uint = 0x7368_6d70;

static ENABLED: AtomicBool = AtomicBool::new(false);

extern "C" {
    // CPython's tracemalloc C API (Include/cpython/tracemalloc.h); not wrapped by pyo3-ffi.
    fn PyTraceMalloc_Track(domain: c_uint, ptr: usize, size: usize) -> c_int;
    fn PyTraceMalloc_Untrack(domain: c_uint, ptr: usize) -> c_int;
}

/// Switches the accounting on or off.
#[pyfunction]
pub fn trace_allocations(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

fn address(pool: &Pool, allocation: &Allocation) -> Option<usize> {
    pool.bytes_ptr(allocation.id()).ok().map(|(ptr, _)| ptr as usize)
}

/// Reports a new allocation (no-op unless enabled, or when tracemalloc is not tracing).
pub fn allocated(_py: Python<'_>, pool: &Pool, allocation: &Allocation) {
    if ENABLED.load(Ordering::Relaxed) {
        if let Some(ptr) = address(pool, allocation) {
            // SAFETY: called with the GIL held (the `_py` token); the function only records
            // the pair (address, size) and returns -2 when tracemalloc is not tracing.
            let _ = unsafe { PyTraceMalloc_Track(DOMAIN, ptr, allocation.size.max(1) as usize) };
        }
    }
}

/// Reports a free of an allocation about to be freed.
pub fn freeing(_py: Python<'_>, pool: &Pool, allocation: &Allocation) {
    if ENABLED.load(Ordering::Relaxed) {
        if let Some(ptr) = address(pool, allocation) {
            // SAFETY: as in `allocated`; untracking an address never tracked is a no-op.
            let _ = unsafe { PyTraceMalloc_Untrack(DOMAIN, ptr) };
        }
    }
}
