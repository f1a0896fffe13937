//! The Python package `shmpool`, compiled part: `MemoryPool`, `MemoryAlloc` and
//! `MemoryAllocations` over alloc-shm. Thin on purpose: argument conversion, the buffer
//! protocol, pickling and exceptions; every allocator decision is alloc-shm's. The pure-Python
//! parts (exceptions, `AllocType`, `Arena`, `shmpool.dragon`) live in `python/shmpool/`.

mod alloc;
mod errors;
mod pool;
mod trace;
mod views;

use pyo3::prelude::*;

/// The extension module `shmpool._shmpool`. It does not need the GIL: the classes are frozen
/// and keep their mutable state in atomics or a mutex, so free-threaded CPython may run it
/// without re-enabling the GIL.
#[pymodule(gil_used = false)]
mod _shmpool {
    #[pymodule_export]
    use super::alloc::MemoryAlloc;
    #[pymodule_export]
    use super::pool::{MemoryAllocations, MemoryPool};
    #[pymodule_export]
    use super::trace::trace_allocations;
    #[pymodule_export]
    const TRACEMALLOC_DOMAIN: u32 = super::trace::DOMAIN;
    /// The package's version (the workspace's).
    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
