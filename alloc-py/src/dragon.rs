//! Dragon's semantics, for `shmpool.dragon`: subclasses of `MemoryPool` and `MemoryAlloc` whose
//! behaviour is what code written for `dragon.managed_memory` expects, where it differs from
//! shmpool's own (which keeps its documented semantics):
//!
//! - `MemoryPool(size, ...)` is a pool with a budget of `size` bytes counted as Dragon's buddy
//!   allocator counts them (each allocation its size rounded up to a power of two): one
//!   allocation of exactly `size` fits, and nothing beside it, and any power-of-two allocations
//!   adding up to at most `size` fit (see `alloc_core::budget`, also for where Dragon's own
//!   counting differs); `pool.size` is that `size`. Pools of more than 128 bytes are made, as
//!   Dragon makes them (its five smallest blocks).
//! - Sizes and uids are unsigned 64-bit values: a negative one raises `OverflowError`.
//! - A full pool's error names Dragon's code (`DRAGON_DYNHEAP_REQUESTED_SIZE_NOT_AVAILABLE`);
//!   `alloc_blocking(size, timeout=0)` is one try that fails as a full pool.
//! - An allocation's `==` compares size and contents, `hash` follows (never negative), and
//!   `is_the_same_as()` compares identity.
//! - `free()` under live buffer views is put off until the last view is released (the memory is
//!   never reused under a view), its budget charge given back at once (see `views`); `detach()`
//!   of an allocation or a pool is allowed under live views (they keep the memory mapped).
//!
//! Allocations made through a Dragon pool, or attached through the Dragon class, are Dragon
//! allocations; the flag lives in the base classes (`dragon`), these classes add the methods.

use alloc_shm::{Budget, Pool, PoolError, PoolOptions};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::alloc::MemoryAlloc;
use crate::errors::{raise, to_py, IntoPy};
use crate::pool::MemoryPool;

/// Dragon's smallest pool: more than this many bytes (five of its 32-byte blocks in a heap of a
/// power of two).
const SMALLEST_POOL: u64 = 128;

/// The error for a failed allocation: under Dragon's semantics a full pool names Dragon's code.
pub(crate) fn alloc_error(py: Python<'_>, dragon: bool, error: PoolError) -> PyErr {
    if dragon && matches!(error, PoolError::Full { .. } | PoolError::TooLarge { .. }) {
        return raise(py, "PoolFullError", format!("DRAGON_DYNHEAP_REQUESTED_SIZE_NOT_AVAILABLE: {error}"));
    }
    to_py(py, error)
}

/// A Dragon managed-memory pool (`dragon.managed_memory.MemoryPool`) over a shmpool pool:
/// `MemoryPool(size, fname, uid, mattr=None)`. One allocation of exactly `size` bytes fits,
/// and nothing beside it, as in Dragon (allocations are counted rounded up to powers of two,
/// so any of them adding up to at most `size` fit); `size` must be more than 128. Negative
/// sizes and uids raise `OverflowError`. `mattr`, `min_block_size` and `pre_alloc_blocks` are accepted and unused;
/// `max_allocations` (up to 65535; larger is no limit) bounds the live allocations.
#[pyclass(extends = MemoryPool, frozen, module = "shmpool.dragon", name = "MemoryPool")]
pub struct DragonPool;

#[pymethods]
impl DragonPool {
    #[new]
    #[pyo3(signature = (size, fname, uid=None, mattr=None, *, min_block_size=None, max_allocations=None, pre_alloc_blocks=None, mode=0o600))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        size: u64,
        fname: &str,
        uid: Option<u64>,
        mattr: Option<Bound<'_, PyAny>>,
        min_block_size: Option<u64>,
        max_allocations: Option<u64>,
        pre_alloc_blocks: Option<Vec<u64>>,
        mode: u32,
    ) -> PyResult<PyClassInitializer<DragonPool>> {
        let _ = (mattr, min_block_size, pre_alloc_blocks); // accepted for Dragon, unused
        if size <= SMALLEST_POOL {
            return Err(raise(
                py,
                "PoolCreateError",
                format!("pool {fname:?}: a Dragon pool needs more than {SMALLEST_POOL} bytes, got {size}"),
            ));
        }
        if size > alloc_shm::budget::MAX_LIMIT {
            return Err(raise(py, "PoolCreateError", format!("pool {fname:?}: {size} bytes is too large")));
        }
        let max_allocations =
            max_allocations.filter(|&count| count <= alloc_shm::budget::MAX_COUNT_LIMIT).unwrap_or(0);
        let budget = Budget { limit: size, max_allocations };
        let options = PoolOptions { mode, muid: uid, budget: Some(budget), ..PoolOptions::default() };
        let file_size = Pool::size_for_budget(size).py_err(py)?;
        let pool = py.detach(|| Pool::create_with(fname, file_size, &options)).py_err(py)?;
        Ok(PyClassInitializer::from(MemoryPool::wrap_with(pool, true, true)).add_subclass(DragonPool))
    }

    /// Attaches the pool a `serialize()`d descriptor names, with Dragon's semantics.
    #[staticmethod]
    fn attach(py: Python<'_>, serialized: &[u8]) -> PyResult<Py<DragonPool>> {
        let mut handle = MemoryPool::attach(py, serialized)?;
        handle.dragon = true;
        Py::new(py, PyClassInitializer::from(handle).add_subclass(DragonPool))
    }

    /// The usable size the pool was created with (what one allocation can take); for a pool
    /// made without a budget, its total size.
    #[getter]
    fn size(slf: &Bound<'_, Self>) -> PyResult<u64> {
        let pool = slf.as_super().get().pool(slf.py())?;
        Ok(pool.budget().map_or(pool.size(), |budget| budget.limit))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        format!("<shmpool.dragon.MemoryPool {:?}>", slf.as_super().get().pool_name())
    }
}

/// A Dragon allocation (`dragon.managed_memory.MemoryAlloc`): `==` compares size and contents
/// (`hash` follows), `is_the_same_as()` compares identity, and `free()` under live views is put
/// off until the last of them is released.
#[pyclass(extends = MemoryAlloc, frozen, module = "shmpool.dragon", name = "MemoryAlloc")]
pub struct DragonAlloc;

#[pymethods]
impl DragonAlloc {
    /// The allocation a descriptor names, with Dragon's semantics (see `shmpool.MemoryAlloc.attach`).
    #[staticmethod]
    fn attach(py: Python<'_>, serialized: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        // Dragon takes only a serialized descriptor: anything else is a TypeError, bytes that
        // are no descriptor included.
        let bytes = serialized.cast::<PyBytes>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err("MemoryAlloc.attach takes a serialized descriptor (bytes)")
        })?;
        match MemoryAlloc::attach_with(py, bytes.as_bytes(), true) {
            Err(error)
                if error.is_instance(py, &py.import("shmpool")?.getattr("InvalidDescriptorError")?) =>
            {
                let wrong =
                    pyo3::exceptions::PyTypeError::new_err(format!("not a serialized descriptor: {error}"));
                wrong.set_cause(py, Some(error));
                Err(wrong)
            }
            other => other?.into_object(py),
        }
    }

    /// Whether `other` is a handle on the same bytes of the same allocation (identity, where
    /// `==` compares contents).
    fn is_the_same_as(slf: &Bound<'_, Self>, other: &Bound<'_, MemoryAlloc>) -> bool {
        slf.as_super().get().identity() == other.get().identity()
    }

    /// Same size and same contents.
    fn __eq__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<MemoryAlloc>() else {
            return Ok(false);
        };
        let py = slf.py();
        let this = slf.as_super().get();
        let other = other.get();
        if this.identity() == other.identity() {
            return Ok(true);
        }
        Ok(this.identity().3 == other.identity().3 && this.read_bytes(py)? == other.read_bytes(py)?)
    }

    /// A hash of the size and contents (consistent with `==`), never negative.
    fn __hash__(slf: &Bound<'_, Self>) -> PyResult<u64> {
        use std::hash::{Hash, Hasher};
        let this = slf.as_super().get();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        this.identity().3.hash(&mut hasher);
        this.read_bytes(slf.py())?.hash(&mut hasher);
        Ok(hasher.finish() >> 1)
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let attach = slf.get_type().getattr("attach")?;
        let serialized = slf.as_any().call_method0("serialize")?;
        Ok((attach, PyTuple::new(py, [serialized])?))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        let (_, id, _, length) = slf.as_super().get().identity();
        format!("<shmpool.dragon.MemoryAlloc id={id} size={length}>")
    }
}
