//! `MemoryPool` and `MemoryAllocations`: Dragon's managed-memory pool API over alloc-shm.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloc_shm::{AllocId, AllocOptions, LocalPool, Pool, PoolError, PoolOptions, Space};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::alloc::MemoryAlloc;
use crate::errors::{alloc_type_arg, exported, raise, size_arg, timeout_arg, IntoPy};

/// A pool of shared memory that any process can attach. Create one with
/// `MemoryPool(size, fname)`; attach one with `MemoryPool.attach(serialized)` or
/// `MemoryPool.attach_by_name(fname)`. As a context manager, the handle that created the pool
/// destroys it on exit and an attached handle detaches.
#[pyclass(frozen, subclass, module = "shmpool")]
pub struct MemoryPool {
    /// This handle's view of the pool, with a block cache for the fast path (`None` once
    /// detached). The GIL serialises Python threads anyway, so the lock is uncontended.
    handle: Mutex<Option<LocalPool>>,
    creator: bool,
    name: String,
    /// Live buffer views of allocations made through this handle.
    pub(crate) exports: AtomicUsize,
    /// The pool's descriptor once `serialize` made it (kept, as Dragon keeps it, so that
    /// `serialize` still answers after `detach(serialize=True)`).
    serialized: Mutex<Option<Vec<u8>>>,
    /// Dragon's semantics for this handle and the allocations made through it (the
    /// `shmpool.dragon` classes; see the `dragon` module).
    pub(crate) dragon: bool,
}

impl MemoryPool {
    pub(crate) fn wrap(pool: Pool, creator: bool) -> MemoryPool {
        MemoryPool::wrap_with(pool, creator, false)
    }

    /// [`MemoryPool::wrap`], with Dragon's semantics or not.
    pub(crate) fn wrap_with(pool: Pool, creator: bool, dragon: bool) -> MemoryPool {
        MemoryPool {
            dragon,
            name: pool.name().to_owned(),
            handle: Mutex::new(Some(pool.local())),
            creator,
            exports: AtomicUsize::new(0),
            serialized: Mutex::new(None),
        }
    }

    /// The pool's name.
    pub(crate) fn pool_name(&self) -> &str {
        &self.name
    }

    fn detached_error(&self, py: Python<'_>) -> PyErr {
        raise(py, "PoolDetachedError", format!("pool {:?}: this handle was detached", self.name))
    }

    /// Runs `f` on this handle's cached view, or fails with `PoolDetachedError`.
    pub(crate) fn with_local<R>(&self, py: Python<'_>, f: impl FnOnce(&mut LocalPool) -> R) -> PyResult<R> {
        let mut handle = self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match handle.as_mut() {
            Some(local) => Ok(f(local)),
            None => Err(self.detached_error(py)),
        }
    }

    /// Frees `id` through this handle's cache; `None` if the handle was detached.
    pub(crate) fn free_cached(&self, id: AllocId) -> Option<Result<(), PoolError>> {
        let mut handle = self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        handle.as_mut().map(|local| local.free(id))
    }

    /// A handle on the live allocation `id`.
    fn handle_of(slf: &Bound<'_, Self>, id: u128) -> PyResult<MemoryAlloc> {
        let py = slf.py();
        let pool = slf.get().pool(py)?;
        let allocation = pool.lookup(AllocId::from_u128(id)).py_err(py)?;
        Ok(MemoryAlloc::new(slf.clone().unbind(), pool, allocation))
    }

    /// Refuses an allocation of another pool (a foreign free).
    fn ensure_own(&self, py: Python<'_>, alloc: &Bound<'_, MemoryAlloc>) -> PyResult<()> {
        if alloc.get().pool_handle() != &self.pool(py)? {
            return Err(raise(
                py,
                "InvalidAllocationError",
                format!("the allocation belongs to another pool than {:?}", self.name),
            ));
        }
        Ok(())
    }

    /// Allocates `size` bytes aligned to `align` (a power of two up to the page size) through
    /// this handle's cache.
    pub(crate) fn alloc_aligned(
        slf: &Bound<'_, Self>,
        size: u64,
        align: u64,
        alloc_type: u8,
    ) -> PyResult<MemoryAlloc> {
        let py = slf.py();
        let (pool, allocation) = slf
            .get()
            .with_local(py, |local| {
                let options = AllocOptions { align, alloc_type, ..local.pool().options() };
                local.alloc_with(size, options).map(|allocation| (local.pool().clone(), allocation))
            })?
            .map_err(|error| crate::dragon::alloc_error(py, slf.get().dragon, error))?;
        crate::trace::allocated(py, &pool, &allocation);
        Ok(MemoryAlloc::new(slf.clone().unbind(), pool, allocation))
    }

    /// The pool, or `PoolDetachedError` after `detach()`/`destroy()`.
    pub(crate) fn pool(&self, py: Python<'_>) -> PyResult<Pool> {
        self.with_local(py, |local| local.pool().clone())
    }
}

/// A descriptor number given from Python, borrowed for the length of one call.
fn borrow_fd(fd: i32) -> PyResult<std::os::fd::BorrowedFd<'static>> {
    if fd < 0 {
        return Err(pyo3::exceptions::PyValueError::new_err("not a file descriptor"));
    }
    // SAFETY: only used within the call that got `fd` from its caller, who keeps it open for
    // that long (the `'static` never leaves the call); a closed number fails in the system
    // call, it is never dereferenced.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// The descriptor of a socket object (anything with `fileno()`) or a plain number.
fn socket_fd(sock: &Bound<'_, PyAny>) -> PyResult<i32> {
    match sock.extract::<i32>() {
        Ok(fd) => Ok(fd),
        Err(_) => sock.call_method0("fileno")?.extract(),
    }
}

fn positive(name: &str, value: Option<i128>) -> PyResult<()> {
    match value {
        Some(v) if v <= 0 => Err(pyo3::exceptions::PyValueError::new_err(format!("{name} must be positive"))),
        _ => Ok(()),
    }
}

#[pymethods]
impl MemoryPool {
    /// Creates pool `fname` of `size` bytes (rounded up to pages), file mode `mode`. `uid` is,
    /// as in Dragon, the number the pool is known by (`muid`, 0 to 2**64 - 1; the pool's nonce
    /// by default), not a user id. The pool lives in `dir` (default /dev/shm) and must fit in
    /// the free space of its filesystem
    /// (`PoolCreateError` naming the way out otherwise); `reserve=True` takes that space up front
    /// so that no write into the pool can ever fault for want of it; `overcommit=True` skips
    /// the check, for sparse pools larger than what they will use.
    /// `memfd=True` puts the pool in an anonymous memfd instead (see `create_memfd`);
    /// `huge_pages=True` makes it of huge pages (a memfd, or a `dir` on hugetlbfs).
    /// `mattr` (Dragon's pool attributes, a fourth positional argument), `min_block_size`,
    /// `max_allocations` and `pre_alloc_blocks` (a list of block counts) are accepted for Dragon
    /// compatibility: blocks come in fixed size classes, made as needed, and the number of
    /// allocations is bounded only by space.
    #[new]
    #[pyo3(signature = (size, fname, uid=None, mattr=None, *, min_block_size=None, max_allocations=None, pre_alloc_blocks=None, mode=0o600, reserve=false, overcommit=false, dir=None, memfd=false, huge_pages=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        size: i128,
        fname: &str,
        uid: Option<u64>,
        mattr: Option<Bound<'_, PyAny>>,
        min_block_size: Option<i128>,
        max_allocations: Option<i128>,
        pre_alloc_blocks: Option<Vec<i128>>,
        mode: i128,
        reserve: bool,
        overcommit: bool,
        dir: Option<std::path::PathBuf>,
        memfd: bool,
        huge_pages: bool,
    ) -> PyResult<MemoryPool> {
        let size = size_arg(py, size)?;
        let _ = mattr; // Dragon's pool attributes: nothing here depends on them
        let space = match (reserve, overcommit) {
            (true, true) => {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "reserve and overcommit exclude each other",
                ))
            }
            (true, false) => Space::Reserve,
            (false, true) => Space::Overcommit,
            (false, false) => Space::Check,
        };
        let mode = u32::try_from(mode).ok().filter(|&mode| mode <= 0o7777).ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "mode must be a file mode, 0 to 0o7777, got {mode}"
            ))
        })?;
        positive("min_block_size", min_block_size)?;
        positive("max_allocations", max_allocations)?;
        if pre_alloc_blocks.unwrap_or_default().iter().any(|&count| count < 0) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "pre_alloc_blocks must be block counts (>= 0)",
            ));
        }
        let mut options = PoolOptions { mode, muid: uid, space, huge_pages, ..PoolOptions::default() };
        let pool = match (memfd, dir) {
            (true, Some(_)) => {
                return Err(pyo3::exceptions::PyValueError::new_err("a memfd pool lives in no directory"))
            }
            (true, None) => py.detach(|| Pool::create_memfd_with(fname, size, &options)),
            (false, dir) => {
                if let Some(dir) = dir {
                    options.dir = dir;
                }
                py.detach(|| Pool::create_with(fname, size, &options))
            }
        }
        .py_err(py)?;
        Ok(MemoryPool::wrap(pool, true))
    }

    /// The smallest pool size whose data area holds one allocation of `data_bytes` (a pool
    /// keeps about 1.6% of its size for metadata).
    #[staticmethod]
    fn size_for_data(py: Python<'_>, data_bytes: i128) -> PyResult<u64> {
        let data = size_arg(py, data_bytes)?;
        Pool::size_for_data(data).py_err(py)
    }

    /// Creates a pool that holds `data_bytes` in one allocation: `MemoryPool(size_for_data(
    /// data_bytes), fname, ...)`, the other arguments as `MemoryPool`'s.
    #[staticmethod]
    #[pyo3(signature = (data_bytes, fname, uid=None, **kwargs))]
    fn for_data<'py>(
        py: Python<'py>,
        data_bytes: i128,
        fname: &str,
        uid: Option<u64>,
        kwargs: Option<&Bound<'py, pyo3::types::PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let size = MemoryPool::size_for_data(py, data_bytes)?;
        py.get_type::<MemoryPool>().call((size, fname, uid), kwargs)
    }

    /// Creates a pool in an anonymous memfd: `MemoryPool(size, fname, uid, memfd=True,
    /// ...)`. It is sealed (no process can shrink or grow it), travels to other processes as a
    /// file descriptor (pickled through `multiprocessing`, `send`/`receive` over a Unix socket,
    /// or `fileno()`), and the kernel frees it when the last process holding it closes it or
    /// dies. Its allocations' descriptors resolve only in processes that have the pool.
    #[staticmethod]
    #[pyo3(signature = (size, fname, uid=None, **kwargs))]
    fn create_memfd<'py>(
        py: Python<'py>,
        size: i128,
        fname: &str,
        uid: Option<u64>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = match kwargs {
            Some(kwargs) => kwargs.copy()?,
            None => PyDict::new(py),
        };
        kwargs.set_item("memfd", true)?;
        py.get_type::<MemoryPool>().call((size, fname, uid), Some(&kwargs))
    }

    /// Attaches the pool whose file descriptor `fd` is (a memfd pool's, or a named pool's file),
    /// as another process handed it over; `fd` stays the caller's (it is duplicated).
    #[staticmethod]
    fn from_fd(py: Python<'_>, fd: i32) -> PyResult<MemoryPool> {
        let owned = borrow_fd(fd)?.try_clone_to_owned().map_err(PyErr::from)?;
        let pool = py.detach(|| Pool::from_fd(owned)).py_err(py)?;
        Ok(MemoryPool::wrap(pool, false))
    }

    /// Rebuilds a pickled memfd pool from the descriptor `multiprocessing` passed (a
    /// `reduction.DupFd`) and the pool's `serialize()`d bytes.
    #[staticmethod]
    fn _from_dupfd(py: Python<'_>, dupfd: &Bound<'_, PyAny>, serialized: &[u8]) -> PyResult<MemoryPool> {
        let fd: i32 = dupfd.call_method0("detach")?.extract()?;
        if fd < 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("not a file descriptor"));
        }
        // SAFETY: `detach` hands us a new descriptor of our own (multiprocessing's contract),
        // closed by nobody else.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let pool = py.detach(|| Pool::attach_fd(owned, serialized)).py_err(py)?;
        Ok(MemoryPool::wrap(pool, false))
    }

    /// The pool's file descriptor (this handle's: do not close it), e.g. for
    /// `socket.send_fds`.
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        use std::os::fd::{AsFd, AsRawFd};
        Ok(self.pool(py)?.as_fd().as_raw_fd())
    }

    /// Whether the pool lives in a memfd.
    #[getter]
    fn memfd(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.pool(py)?.is_memfd())
    }

    /// Sends the pool over the connected Unix socket `sock` (a `socket.socket` or its
    /// `fileno()`): its descriptor, with its file descriptor alongside (SCM_RIGHTS).
    fn send(&self, py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
        let pool = self.pool(py)?;
        let fd = socket_fd(sock)?;
        pool.send(borrow_fd(fd)?).py_err(py)
    }

    /// Receives a pool `send` sent over the Unix socket `sock` (waits as the socket does).
    #[staticmethod]
    fn receive(py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<MemoryPool> {
        let fd = socket_fd(sock)?;
        let socket = borrow_fd(fd)?;
        let pool = py.detach(|| Pool::receive(socket)).py_err(py)?;
        Ok(MemoryPool::wrap(pool, false))
    }

    /// Attaches the pool a `serialize()`d descriptor names.
    #[staticmethod]
    pub(crate) fn attach(py: Python<'_>, serialized: &[u8]) -> PyResult<MemoryPool> {
        let pool = Pool::attach(serialized).or_else(|error| match error {
            PoolError::InvalidDescriptor(_) => {
                Err(raise(py, "InvalidPoolDescriptorError", error.to_string()))
            }
            PoolError::Destroyed { .. } => Err(raise(py, "PoolDestroyedAttachError", error.to_string())),
            other => Err(other).py_err(py),
        })?;
        Ok(MemoryPool::wrap(pool, false))
    }

    /// The `(muid, fname)` of the pool a serialized descriptor names (Dragon's name for it; it
    /// attaches the pool for a moment).
    #[staticmethod]
    fn serialized_uid_fname(py: Python<'_>, serialized: &[u8]) -> PyResult<(u64, String)> {
        let pool = MemoryPool::attach(py, serialized)?;
        let found = (pool.muid(py)?, pool.name.clone());
        pool.detach(py, false)?;
        Ok(found)
    }

    /// Whether the pool is on this node: always (Dragon's pools may be remote).
    #[getter]
    fn is_local(&self) -> bool {
        true
    }

    /// Attaches pool `fname` in `dir` (default /dev/shm). Its file must belong to this user, or to user
    /// `owner_uid` if given (root included); `any_owner=True` attaches it whoever owns it (the
    /// file's permissions still apply).
    #[staticmethod]
    #[pyo3(signature = (fname, *, owner_uid=None, any_owner=false, dir=None))]
    fn attach_by_name(
        py: Python<'_>,
        fname: &str,
        owner_uid: Option<u32>,
        any_owner: bool,
        dir: Option<std::path::PathBuf>,
    ) -> PyResult<MemoryPool> {
        let mut options = PoolOptions { uid: owner_uid, any_owner, ..PoolOptions::default() };
        if let Some(dir) = dir {
            options.dir = dir;
        }
        let pool = Pool::attach_by_name_with(fname, &options).py_err(py)?;
        Ok(MemoryPool::wrap(pool, false))
    }

    /// The pool's descriptor (bytes, at most 128), for `MemoryPool.attach` in any process.
    fn serialize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let mut kept = self.serialized.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.is_none() {
            *kept = Some(self.pool(py)?.descriptor().py_err(py)?);
        }
        Ok(PyBytes::new(py, kept.as_deref().unwrap_or_default()))
    }

    /// Lets go of this handle (the pool stays). Refused while buffer views are alive.
    /// `serialize=True` keeps the pool's descriptor first, so that `serialize()` still answers
    /// (Dragon's option); otherwise a detached handle forgets it.
    #[pyo3(signature = (serialize=false))]
    fn detach(&self, py: Python<'_>, serialize: bool) -> PyResult<()> {
        // ORDERING: SeqCst, the order of the view counters everywhere (see MemoryAlloc::free).
        let views = self.exports.load(Ordering::SeqCst);
        // Dragon lets a handle go under live views: they keep the mapping (and their
        // allocation handles) alive, so nothing dangles.
        if views > 0 && !self.dragon {
            return Err(exported("detach the pool", views));
        }
        if serialize {
            self.serialize(py)?;
        } else {
            self.serialized.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        }
        self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        Ok(())
    }

    /// Destroys the pool in every process and removes its name. Other handles get
    /// `PoolDestroyedError` on their next call.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        let pool = self.pool(py)?;
        py.detach(|| pool.destroy()).py_err(py)?;
        self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        if self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none() {
            return Ok(false);
        }
        if self.creator {
            self.destroy(py)?;
        } else {
            self.detach(py, false)?;
        }
        Ok(false)
    }

    /// Pickles as the pool's descriptor; a memfd pool's file descriptor goes along through
    /// `multiprocessing` (inherited, passed at spawn, or sent over its resource sharer).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let pool = slf.get().pool(py)?;
        let serialized = slf.get().serialize(py)?;
        // The handle's own class: a Dragon pool unpickles as one.
        let class = slf.get_type();
        if !pool.is_memfd() {
            return Ok((class.getattr("attach")?, PyTuple::new(py, [serialized.into_any()])?));
        }
        let mut fd = slf.get().fileno(py)?;
        // A process being spawned must list each descriptor it inherits once, and each handle
        // unpickled there takes its descriptor for its own: a second handle of the pool going
        // to the same child passes a duplicate, closed once the child's `Popen` is done with.
        // (`_fds`: the descriptors a spawn or forkserver `Popen` passes, since Python 3.4.)
        let popen = py.import("multiprocessing.context")?.call_method0("get_spawning_popen")?;
        let listed = |popen: &Bound<'_, PyAny>| -> PyResult<bool> {
            match popen.getattr("_fds") {
                Ok(fds) => fds.contains(fd),
                Err(_) => Ok(true),
            }
        };
        if !popen.is_none() && listed(&popen)? {
            let os = py.import("os")?;
            fd = os.call_method1("dup", (fd,))?.extract()?;
            let finalize = py.import("multiprocessing.util")?.getattr("Finalize")?;
            finalize.call1((popen, os.getattr("close")?, (fd,)))?;
        }
        let dupfd = py.import("multiprocessing.reduction")?.getattr("DupFd")?.call1((fd,))?;
        Ok((class.getattr("_from_dupfd")?, PyTuple::new(py, [dupfd, serialized.into_any()])?))
    }

    /// Allocates `size` bytes (0 gives a distinct valid allocation).
    #[pyo3(signature = (size, alloc_type=0))]
    fn alloc(slf: &Bound<'_, Self>, size: i128, alloc_type: i128) -> PyResult<Py<PyAny>> {
        let size = size_arg(slf.py(), size)?;
        let alloc_type = alloc_type_arg(alloc_type)?;
        MemoryPool::alloc_aligned(slf, size, 16, alloc_type)?.into_object(slf.py())
    }

    /// Allocates, waiting (without the GIL) for a free in any process while the pool is
    /// full. `timeout` is in seconds: None (or infinity) waits forever, 0 tries once.
    /// Ctrl-C interrupts the wait.
    #[pyo3(signature = (size, timeout=None, alloc_type=0))]
    fn alloc_blocking(
        slf: &Bound<'_, Self>,
        size: i128,
        timeout: Option<f64>,
        alloc_type: i128,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        // Dragon's zero timeout is one try that fails as a full pool does, not as a timeout.
        if slf.get().dragon && timeout == Some(0.0) {
            return MemoryPool::alloc(slf, size, alloc_type);
        }
        let size = size_arg(py, size)?;
        let alloc_type = alloc_type_arg(alloc_type)?;
        let timeout = timeout_arg(timeout)?;
        let pool = slf.get().pool(py)?;
        let options = AllocOptions { alloc_type, ..pool.options() };
        // A timeout beyond what the clock can count waits forever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        const SLICE: Duration = Duration::from_millis(50);
        loop {
            let slice = match deadline {
                None => SLICE,
                Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(SLICE),
            };
            match py.detach(|| pool.alloc_blocking_with(size, options, Some(slice))) {
                Ok(allocation) => {
                    crate::trace::allocated(py, &pool, &allocation);
                    return MemoryAlloc::new(slf.clone().unbind(), pool, allocation).into_object(py);
                }
                Err(PoolError::Timeout { .. }) if deadline.is_none_or(|d| Instant::now() < d) => {
                    py.check_signals()?;
                }
                Err(error) => return Err(crate::dragon::alloc_error(py, slf.get().dragon, error)),
            }
        }
    }

    /// Frees `alloc` (as `alloc.free()`); an allocation of another pool is refused.
    fn free(&self, alloc: &Bound<'_, MemoryAlloc>) -> PyResult<()> {
        let py = alloc.py();
        self.ensure_own(py, alloc)?;
        alloc.get().free(py)
    }

    /// Resizes `alloc` to `size` bytes: in place when it fits, else moved (the old handle
    /// then refers to freed memory). On failure the original is untouched.
    fn realloc(slf: &Bound<'_, Self>, alloc: &Bound<'_, MemoryAlloc>, size: i128) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let size = size_arg(py, size)?;
        slf.get().ensure_own(py, alloc)?;
        alloc.get().realloc(py, slf.clone().unbind(), size)?.into_object(py)
    }

    /// A snapshot of the live allocations, optionally of one type.
    #[pyo3(signature = (alloc_type=None))]
    fn get_allocations(&self, py: Python<'_>, alloc_type: Option<i128>) -> PyResult<MemoryAllocations> {
        let alloc_type = alloc_type.map(alloc_type_arg).transpose()?;
        let pool = self.pool(py)?;
        if pool.is_destroyed() {
            return Err(PoolError::Destroyed { name: self.name.clone() }).py_err(py);
        }
        let entries = pool
            .iter()
            .filter(|a| alloc_type.is_none_or(|t| a.alloc_type == t))
            .map(|a| (a.alloc_type, a.id().to_u128()))
            .collect();
        Ok(MemoryAllocations { entries })
    }

    /// `allocation_exists(id)` or Dragon's `allocation_exists(alloc_type, id)`.
    #[pyo3(signature = (*args))]
    fn allocation_exists(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let pool = self.pool(py)?;
        let (alloc_type, id) = type_and_id(args)?;
        Ok(pool.lookup(AllocId::from_u128(id)).is_ok_and(|a| alloc_type.is_none_or(|t| a.alloc_type == t)))
    }

    /// The live allocation with this id (InvalidAllocationError if there is none).
    fn alloc_from_id(slf: &Bound<'_, Self>, id: u128) -> PyResult<Py<PyAny>> {
        MemoryPool::handle_of(slf, id)?.into_object(slf.py())
    }

    /// Dragon's `get_alloc_by_id(alloc_type, id)`.
    fn get_alloc_by_id(slf: &Bound<'_, Self>, alloc_type: i128, id: u128) -> PyResult<Py<PyAny>> {
        let alloc_type = alloc_type_arg(alloc_type)?;
        let alloc = MemoryPool::handle_of(slf, id)?;
        if alloc.alloc_type() != alloc_type {
            return Err(raise(
                slf.py(),
                "InvalidAllocationError",
                format!("allocation {id} is not of type {alloc_type}"),
            ));
        }
        alloc.into_object(slf.py())
    }

    /// Total bytes of the pool.
    #[getter]
    fn size(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.pool(py)?.size())
    }

    /// Bytes not used by allocations.
    #[getter]
    fn free_space(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.pool(py)?.stats().py_err(py)?.free_bytes)
    }

    /// Percentage of the data area in use.
    #[getter]
    fn utilization(&self, py: Python<'_>) -> PyResult<f64> {
        let stats = self.pool(py)?.stats().py_err(py)?;
        Ok(100.0 * stats.data_bytes.saturating_sub(stats.free_bytes) as f64 / stats.data_bytes as f64)
    }

    /// Live allocations.
    #[getter]
    fn current_allocations(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.pool(py)?.stats().py_err(py)?.live_allocations)
    }

    /// The most allocations the pool could hold (all of the smallest size).
    #[getter]
    fn max_allocations(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.pool(py)?.data_bytes() / 16)
    }

    /// Free blocks per size class, `{block_size: count}`, plus the largest free run of pages
    /// under the key 0.
    #[getter]
    fn free_blocks(&self, py: Python<'_>) -> PyResult<BTreeMap<u64, u64>> {
        let stats = self.pool(py)?.stats().py_err(py)?;
        let mut blocks: BTreeMap<u64, u64> = stats
            .classes
            .iter()
            .zip(alloc_shm::CLASS_SIZES.iter())
            .filter(|(c, _)| c.blocks > 0)
            .map(|(c, &size)| (size as u64, c.blocks - c.live))
            .collect();
        blocks.insert(0, stats.largest_free_run);
        Ok(blocks)
    }

    /// The user id of the pool's creator.
    #[getter]
    fn owner_uid(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.pool(py)?.info().creator_uid)
    }

    /// The number the pool is known by: the `uid` it was created with (the pool's nonce if
    /// none), as Dragon's `muid`.
    #[getter]
    fn muid(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.pool(py)?.muid())
    }

    /// The same as `muid` (Dragon's name for it at creation).
    #[getter]
    fn uid(&self, py: Python<'_>) -> PyResult<u64> {
        self.muid(py)
    }

    /// Callers blocked in `alloc_blocking` right now, in all processes.
    #[getter]
    fn waiters(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.pool(py)?.waiters())
    }

    /// The pool's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Gives back everything processes that no longer exist held or left half done (their
    /// allocations, cached blocks, half-done operations, waiter slots), online; returns the
    /// allocations it freed as `[(id, owner_pid, size), ...]`.
    fn reclaim_dead(&self, py: Python<'_>) -> PyResult<Vec<(u128, u32, u64)>> {
        let pool = self.pool(py)?;
        let report = py.detach(|| pool.reclaim_dead()).py_err(py)?;
        Ok(report.freed.into_iter().map(|(id, pid, size)| (id.to_u128(), pid, size)).collect())
    }

    /// Repairs damaged metadata (an fsck of the pool: see `shmpool repair`). Only while nothing
    /// else uses the pool: no other process (refused with `PoolError` naming them, unless
    /// `force=True`) and no other thread of this one (the caller's business; a thread blocked in
    /// `alloc_blocking` is seen and refused too). Dead processes are reclaimed first. Returns what
    /// it put right, as a dict of counts (empty for a pool that needed nothing).
    #[pyo3(signature = (*, force=false))]
    fn repair<'py>(&self, py: Python<'py>, force: bool) -> PyResult<Bound<'py, PyDict>> {
        let pool = self.pool(py)?;
        let mut busy = pool.other_users_described();
        if pool.waiters() > 0 {
            busy.push(format!("{} waiting in alloc_blocking", pool.waiters()));
        }
        if !busy.is_empty() && !force {
            let message = format!(
                "pool {:?}: {} may be working on it; stop them first (or pass force=True)",
                self.name,
                busy.join(", ")
            );
            return Err(raise(py, "PoolError", message));
        }
        py.detach(|| pool.reclaim_dead()).py_err(py)?;
        let repaired = py.detach(|| pool.repair()).py_err(py)?;
        let dict = PyDict::new(py);
        let counts = [
            ("participants", repaired.participants),
            ("orphan_pages", repaired.orphan_pages),
            ("unfinished", repaired.unfinished),
            ("orphan_blocks", repaired.orphan_blocks),
            ("waiter_slots", repaired.waiter_slots),
            ("damaged_runs", repaired.damaged_runs),
        ];
        for (what, count) in counts.into_iter().filter(|&(_, count)| count > 0) {
            dict.set_item(what, count)?;
        }
        Ok(dict)
    }

    /// Verifies every invariant of the pool's heap; returns usage figures as a dict.
    fn check<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let pool = self.pool(py)?;
        let stats = py.detach(|| pool.check()).py_err(py)?;
        let dict = PyDict::new(py);
        dict.set_item("data_bytes", stats.data_bytes)?;
        dict.set_item("free_bytes", stats.free_bytes)?;
        dict.set_item("live_allocations", stats.live_allocations)?;
        dict.set_item("live_bytes", stats.live_bytes)?;
        Ok(dict)
    }

    /// A `shmpool.SharedArray` (a numpy.ndarray) of `shape` and `dtype` over a new allocation
    /// of this pool, C or Fortran `order`, its data aligned to 64 bytes and not initialised.
    /// It pickles as a few hundred bytes naming the memory, never the data. The allocation
    /// (`array.allocation`) is freed explicitly once no array over it is alive, or with an
    /// arena (`pool.arena().ndarray(...)`). Needs numpy; an object dtype is a `TypeError`.
    #[pyo3(signature = (shape, dtype=None, order="C"))]
    fn ndarray<'py>(
        slf: &Bound<'py, Self>,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::arrays::new_array(slf, shape, dtype, order)
    }

    /// A `shmpool.SharedArray` holding a copy of `array` (any array-like, any dtype without
    /// Python objects, structured ones included), in this pool: see `ndarray`. The copy is
    /// contiguous: in Fortran order if `order` is "F", or "K" and `array` is Fortran-ordered
    /// and not C-ordered; else in C order.
    #[pyo3(signature = (array, order="K"))]
    fn share<'py>(
        slf: &Bound<'py, Self>,
        array: &Bound<'py, PyAny>,
        order: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("shmpool._array")?.getattr("share")?.call1((slf.getattr("ndarray")?, array, order))
    }

    /// An arena: allocations made through it are all freed when it exits or is collected.
    fn arena<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("shmpool")?.getattr("Arena")?.call1((slf,))
    }

    fn __repr__(&self) -> String {
        let open = self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some();
        let state = match (open, self.creator) {
            (false, _) => "detached",
            (true, true) => "created here",
            (true, false) => "attached",
        };
        format!("<shmpool.MemoryPool {:?} ({state})>", self.name)
    }
}

/// `(id)` or `(alloc_type, id)`.
fn type_and_id(args: &Bound<'_, PyTuple>) -> PyResult<(Option<u8>, u128)> {
    match args.len() {
        1 => Ok((None, args.get_item(0)?.extract()?)),
        2 => Ok((Some(args.get_item(0)?.extract()?), args.get_item(1)?.extract()?)),
        n => Err(PyTypeError::new_err(format!("expected (id) or (alloc_type, id), got {n} arguments"))),
    }
}

/// A snapshot of a pool's live allocations: their types and ids.
#[pyclass(frozen, module = "shmpool")]
pub struct MemoryAllocations {
    entries: Vec<(u8, u128)>,
}

#[pymethods]
impl MemoryAllocations {
    fn __len__(&self) -> usize {
        self.entries.len()
    }

    /// The ids, in pool order.
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let ids: Vec<u128> = self.entries.iter().map(|&(_, id)| id).collect();
        ids.into_pyobject(py)?.try_iter().map(Bound::into_any)
    }

    fn __getitem__(&self, index: isize) -> PyResult<u128> {
        Ok(self.entry(index)?.1)
    }

    fn __repr__(&self) -> String {
        format!("<shmpool.MemoryAllocations of {} allocations>", self.entries.len())
    }

    /// Number of allocations.
    #[getter]
    fn num_allocs(&self) -> usize {
        self.entries.len()
    }

    /// The type of allocation `index`, an `AllocType` member.
    fn alloc_type(&self, py: Python<'_>, index: isize) -> PyResult<Py<PyAny>> {
        crate::errors::alloc_type_member(py, self.entry(index)?.0)
    }

    /// The id of allocation `index`.
    fn alloc_id(&self, index: isize) -> PyResult<u128> {
        Ok(self.entry(index)?.1)
    }
}

impl MemoryAllocations {
    fn entry(&self, index: isize) -> PyResult<(u8, u128)> {
        let len = self.entries.len() as isize;
        let at = if index < 0 { index + len } else { index };
        if !(0..len).contains(&at) {
            return Err(pyo3::exceptions::PyIndexError::new_err("allocation index out of range"));
        }
        Ok(self.entries[at as usize])
    }
}
