//! The Python package `shmpool`, compiled part: `MemoryPool`, `MemoryAlloc` and
//! `MemoryAllocations` over alloc-shm, and `ArrayMemory`, the memory under shared numpy arrays.
//! Thin on purpose: argument conversion, the buffer protocol, pickling and exceptions; every
//! allocator decision is alloc-shm's. The pure-Python parts (exceptions, `AllocType`, `Arena`,
//! `SharedArray`, `shmpool.dragon`) live in `python/shmpool/`.

mod alloc;
mod arrays;
mod dragon;
mod errors;
mod pool;
mod trace;
mod views;

use pyo3::prelude::*;

/// Runs the `shmpool` tool (the same as the Rust binary's) with command line `argv` (the
/// program's name first), in a process that is the tool; `this_command` starts the tool again
/// (for the demo's workers). Returns the exit status. Used by `python -m shmpool` and the
/// `shmpool` command the package installs.
#[pyfunction]
fn run_tool(py: Python<'_>, argv: Vec<std::ffi::OsString>, this_command: Vec<std::ffi::OsString>) -> u8 {
    py.detach(|| alloc_shm::cli::main(argv, this_command))
}

/// The extension module `shmpool._shmpool`. It does not need the GIL: the classes are frozen
/// and keep their mutable state in atomics or a mutex, so free-threaded CPython may run it
/// without re-enabling the GIL.
#[pymodule(gil_used = false)]
mod _shmpool {
    use pyo3::prelude::*;

    #[pymodule_export]
    use super::alloc::MemoryAlloc;
    #[pymodule_export]
    use super::arrays::{_placement, ArrayMemory};
    #[pymodule_export]
    use super::pool::{MemoryAllocations, MemoryPool};
    #[pymodule_export]
    use super::run_tool;
    #[pymodule_export]
    use super::trace::trace_allocations;
    /// The `shmpool.dragon` classes, under names that do not hide shmpool's own (their Python
    /// names are `shmpool.dragon.MemoryPool` and `shmpool.dragon.MemoryAlloc`).
    #[pymodule_init]
    fn init(module: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = module.py();
        module.add("DragonMemoryPool", py.get_type::<super::dragon::DragonPool>())?;
        module.add("DragonMemoryAlloc", py.get_type::<super::dragon::DragonAlloc>())
    }

    #[pymodule_export]
    const TRACEMALLOC_DOMAIN: u32 = super::trace::DOMAIN;
    /// The package's version (the workspace's).
    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
