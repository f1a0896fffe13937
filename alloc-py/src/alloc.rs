//! `MemoryAlloc`: one allocation (or a window of one, after `clone`), exposing its bytes through
//! the buffer protocol without copying.
//!
//! Views are counted per allocation over every handle of it in this process (the `views`
//! module): while any `memoryview` of the memory is alive (numpy arrays from `frombuffer` hold
//! one; `numpy.ndarray(buffer=a)` does not, see `MemoryAlloc`'s docs), `free()` and
//! `realloc` through any handle, and `detach()` of the viewed handle or its pool handle, raise
//! `BufferError` instead of leaving a dangling view (a `SharedArray`'s `ArrayMemory` counts as
//! one for its whole life: see the `arrays` module). A view holds a reference to its
//! `MemoryAlloc`, which holds the pool mapping, so the memory stays mapped for as long as the
//! view lives, whatever happens to the handles.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use alloc_shm::{Allocation, Pool};
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{exported, raise, size_arg, timeout_arg, IntoPy};
use crate::pool::MemoryPool;
use crate::views;

/// One allocation in a pool. Supports the buffer protocol (`memoryview(a)`,
/// `numpy.frombuffer(a, ...)`): writable and zero-copy. While such a view is alive, `free()`
/// raises `BufferError`. numpy counts as a view only where it keeps one: `numpy.frombuffer(a)`
/// and `numpy.asarray(a)` do (a memoryview is the array's base), but
/// `numpy.ndarray(shape, dtype, buffer=a)` takes the buffer and releases it at once, so nothing
/// stops `a.free()` under that array. For arrays, `pool.ndarray`/`pool.share` (a
/// `shmpool.SharedArray`) are the safe way: counted for as long as any view of them lives.
#[pyclass(frozen, subclass, module = "shmpool")]
pub struct MemoryAlloc {
    pool_object: Py<MemoryPool>,
    pool: Pool,
    allocation: Allocation,
    /// The window of the allocation this object shows: `start..start + length`.
    start: u64,
    length: u64,
    /// The allocation in this process's count of views.
    key: views::Key,
    /// Freed or detached through this object: no further use.
    done: AtomicBool,
    /// Live views made through this object (every handle's are also counted under `key`).
    exports: AtomicUsize,
    /// Dragon's semantics (a `shmpool.dragon.MemoryAlloc`): see the `dragon` module.
    pub(crate) dragon: bool,
}

impl MemoryAlloc {
    pub(crate) fn new(pool_object: Py<MemoryPool>, pool: Pool, allocation: Allocation) -> MemoryAlloc {
        MemoryAlloc {
            dragon: pool_object.get().dragon,
            key: (pool.nonce(), allocation.id().to_u128()),
            pool_object,
            pool,
            allocation,
            start: 0,
            length: allocation.size,
            done: AtomicBool::new(false),
            exports: AtomicUsize::new(0),
        }
    }

    /// Forgets a view counted by [`MemoryAlloc::count_view`].
    pub(crate) fn uncount_view(&self) {
        // ORDERING: SeqCst, the handle counters' order everywhere (see `detach`).
        self.exports.fetch_sub(1, Ordering::SeqCst);
        self.pool_object.get().exports.fetch_sub(1, Ordering::SeqCst);
        views::uncount(self.key);
    }

    /// Counts a view of this handle's window for as long as the caller holds it (a buffer
    /// export, or an `ArrayMemory`): frees and resizes through any handle, and detaching this
    /// handle or its pool handle, are refused until [`MemoryAlloc::uncount_view`]. Returns the
    /// address of the window, which stays mapped while the caller keeps this handle.
    pub(crate) fn count_view(&self, py: Python<'_>) -> PyResult<*mut u8> {
        // Count the view before checking the allocation is live, so that a concurrent free
        // through any handle either sees it or is seen (see the `views` module).
        if views::count(self.key).is_err() {
            return Err(raise(
                py,
                "InvalidAllocationError",
                format!("allocation {} is being freed", self.allocation.id().to_u128()),
            ));
        }
        // ORDERING: SeqCst, the handle counters' order everywhere.
        self.exports.fetch_add(1, Ordering::SeqCst);
        self.pool_object.get().exports.fetch_add(1, Ordering::SeqCst);
        let checked = self.ensure_handle(py).and_then(|()| {
            let (base, len) = self.pool.bytes_ptr(self.allocation.id()).py_err(py)?;
            if (self.start + self.length) as usize > len {
                return Err(PyBufferError::new_err("window outside the allocation"));
            }
            // SAFETY: `start` lies inside the allocation (checked just above), so the sum
            // stays inside the mapping `bytes_ptr` answered for.
            Ok(unsafe { base.add(self.start as usize) })
        });
        if checked.is_err() {
            self.uncount_view();
        }
        checked
    }

    /// Refuses with `BufferError` while views made through this handle are alive (`what` names
    /// the refused action).
    fn no_views(&self, what: &str) -> PyResult<()> {
        // ORDERING: SeqCst, the handle counters' order everywhere.
        match self.exports.load(Ordering::SeqCst) {
            0 => Ok(()),
            views => Err(exported(what, views)),
        }
    }

    /// Where this handle's window starts in the allocation.
    pub(crate) fn window_start(&self) -> u64 {
        self.start
    }

    /// The length of this handle's window.
    pub(crate) fn window_length(&self) -> u64 {
        self.length
    }

    /// Names the allocation in messages and reprs.
    pub(crate) fn describe(&self) -> String {
        format!("allocation {} in {:?}", self.allocation.id().to_u128(), self.pool.name())
    }

    /// The pool this allocation belongs to.
    pub(crate) fn pool_handle(&self) -> &Pool {
        &self.pool
    }

    /// [`MemoryAlloc::attach`], with Dragon's semantics or not.
    pub(crate) fn attach_with(py: Python<'_>, serialized: &[u8], dragon: bool) -> PyResult<MemoryAlloc> {
        let (pool, mut allocation) = alloc_shm::Pool::attach_alloc(serialized).py_err(py)?;
        pool.adopt(allocation.id()).py_err(py)?;
        allocation.owner = pool.me().py_err(py)?;
        let pool_object = Py::new(py, MemoryPool::wrap_with(pool.clone(), false, dragon))?;
        Ok(MemoryAlloc::new(pool_object, pool, allocation))
    }

    /// Where this handle's bytes are: the pool's nonce, the id, and the window.
    pub(crate) fn identity(&self) -> (u64, u128, u64, u64) {
        (self.pool.nonce(), self.allocation.id().to_u128(), self.start, self.length)
    }

    /// A copy of the bytes this handle shows.
    pub(crate) fn read_bytes(&self, py: Python<'_>) -> PyResult<Vec<u8>> {
        self.ensure_live(py)?;
        let mut bytes = vec![0u8; self.length as usize];
        self.pool.read(self.allocation.id(), self.start, &mut bytes).py_err(py)?;
        Ok(bytes)
    }

    /// The Python object for this handle: a `shmpool.dragon.MemoryAlloc` under Dragon's
    /// semantics, else a `shmpool.MemoryAlloc`.
    pub(crate) fn into_object(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.dragon {
            let init = PyClassInitializer::from(self).add_subclass(crate::dragon::DragonAlloc);
            return Ok(Py::new(py, init)?.into_any());
        }
        Ok(Py::new(py, self)?.into_any())
    }

    pub(crate) fn alloc_type(&self) -> u8 {
        self.allocation.alloc_type
    }

    /// Fails once this handle was freed or detached.
    fn ensure_handle(&self, py: Python<'_>) -> PyResult<()> {
        // ORDERING: SeqCst, the handle flag's order everywhere (see `free`).
        if self.done.load(Ordering::SeqCst) {
            return Err(raise(
                py,
                "InvalidAllocationError",
                format!("allocation {} was freed or detached", self.allocation.id().to_u128()),
            ));
        }
        Ok(())
    }

    /// Fails unless this handle may be used and its allocation is live (the id names the
    /// place, so a live id is always at the offset this handle knows).
    fn ensure_live(&self, py: Python<'_>) -> PyResult<()> {
        self.ensure_handle(py)?;
        self.pool.lookup(self.allocation.id()).py_err(py).map(|_| ())
    }

    pub(crate) fn free(&self, py: Python<'_>) -> PyResult<()> {
        // ORDERING: SeqCst, the handle flag's order everywhere.
        if self.done.load(Ordering::SeqCst) {
            return Err(raise(
                py,
                "InvalidAllocationError",
                format!("allocation {} was already freed or detached", self.allocation.id().to_u128()),
            ));
        }
        // Dragon's semantics: a free under live views is put off until the last of them is
        // released (see the `views` module); the handle is done at once.
        if self.dragon {
            let give_back = || {
                let uncharged = self.pool.give_back_charge(self.allocation.id())?;
                Ok((self.pool.clone(), uncharged))
            };
            match views::defer_free(self.key, give_back) {
                views::Deferral::Deferred => {
                    // ORDERING: SeqCst, the handle flag's order everywhere.
                    self.done.store(true, Ordering::SeqCst);
                    crate::trace::freeing(py, &self.pool, &self.allocation);
                    return Ok(());
                }
                views::Deferral::AlreadyDeferred => {
                    return Err(raise(
                        py,
                        "InvalidAllocationError",
                        format!("allocation {} was already freed", self.allocation.id().to_u128()),
                    ));
                }
                views::Deferral::Failed(error) => return Err(crate::errors::to_py(py, error)),
                views::Deferral::NotViewed => {}
            }
        }
        // Refused while a view made through any handle of the allocation is alive; views of it
        // are refused while it is freed (see the `views` module).
        let freed = views::unless_viewed(self.key, true, || {
            // ORDERING: Release suffices: views of the allocation are kept out by the `views`
            // protocol; the flag only names the handle's state in later errors.
            self.done.store(true, Ordering::Release);
            crate::trace::freeing(py, &self.pool, &self.allocation);
            // Through the pool handle's cache while it is attached, else straight to the pool.
            // A free never waits, so the GIL is kept (releasing it costs more than the free).
            match self.pool_object.get().free_cached(self.allocation.id()) {
                Some(result) => result,
                None => self.pool.free(self.allocation.id()),
            }
        });
        match freed {
            Ok(result) => result.py_err(py),
            Err(views) => Err(exported("free the allocation", views)),
        }
    }

    pub(crate) fn realloc(
        &self,
        py: Python<'_>,
        pool_object: Py<MemoryPool>,
        size: u64,
    ) -> PyResult<MemoryAlloc> {
        self.ensure_live(py)?;
        // A resize may move the allocation (freeing the old place) or shrink it under a view:
        // refused while any handle's view is alive, like a free.
        let resized = views::unless_viewed(self.key, false, || {
            crate::trace::freeing(py, &self.pool, &self.allocation);
            self.pool.realloc(self.allocation.id(), size)
        })
        .map_err(|views| exported("resize the allocation", views))?;
        let resized = match resized {
            Ok(resized) => resized,
            Err(error) => {
                crate::trace::allocated(py, &self.pool, &self.allocation);
                return Err(crate::errors::to_py(py, error));
            }
        };
        crate::trace::allocated(py, &self.pool, &resized);
        if resized.id() != self.allocation.id() {
            // ORDERING: SeqCst, the handle flag's order everywhere (see `free`).
            self.done.store(true, Ordering::SeqCst);
        }
        Ok(MemoryAlloc::new(pool_object, self.pool.clone(), resized))
    }

    fn window(&self, start: u64, stop: Option<u64>) -> PyResult<(u64, u64)> {
        let stop = stop.unwrap_or(self.length);
        if start > stop || stop > self.length {
            return Err(PyValueError::new_err(format!(
                "range {start}..{stop} is outside 0..{}",
                self.length
            )));
        }
        Ok((start, stop))
    }
}

#[pymethods]
impl MemoryAlloc {
    /// Bytes of the allocation (of this window, after `clone`).
    #[getter]
    fn size(&self) -> u64 {
        self.length
    }

    fn __len__(&self) -> usize {
        self.length as usize
    }

    /// The allocation's id, unique over the pool's life (a 128-bit integer: the slot in the
    /// low 64 bits, the generation above).
    #[getter]
    fn id(&self) -> u128 {
        self.allocation.id().to_u128()
    }

    /// The allocation's type (see `shmpool.AllocType`).
    #[getter(alloc_type)]
    fn py_alloc_type(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        crate::errors::alloc_type_member(py, self.allocation.alloc_type)
    }

    /// Byte offset of (this window of) the allocation in its pool.
    #[getter]
    fn offset(&self) -> u64 {
        self.allocation.offset + self.start
    }

    /// The pool the allocation belongs to.
    #[getter]
    fn pool(&self, py: Python<'_>) -> Py<MemoryPool> {
        self.pool_object.clone_ref(py)
    }

    /// The allocation's descriptor (bytes, at most 128): `MemoryAlloc.attach` in any process.
    fn serialize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let descriptor = self.pool.alloc_descriptor(&self.allocation).py_err(py)?;
        Ok(PyBytes::new(py, &descriptor))
    }

    /// The pid of the process that owns the allocation now (`None`: the pool itself owns it, and
    /// no death frees it). See `set_owner` and `give_to_pool`.
    #[getter]
    fn owner(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        self.ensure_handle(py)?;
        let now = self.pool.lookup(self.allocation.id()).py_err(py)?;
        Ok(self.pool.pid_of(now.owner))
    }

    /// Hands the allocation to attached process `pid` (one atomic owner change): it is freed
    /// when that process dies. `ValueError` if no such process is attached.
    fn set_owner(&self, py: Python<'_>, pid: i64) -> PyResult<()> {
        self.ensure_handle(py)?;
        let pid = u32::try_from(pid)
            .map_err(|_| pyo3::exceptions::PyValueError::new_err(format!("pid {pid} is not a process id")))?;
        let owner = self.pool.owner_of(pid).py_err(py)?;
        self.pool.set_owner(self.allocation.id(), owner).py_err(py)
    }

    /// Gives the allocation to the pool: no process's death frees it (free it explicitly).
    fn give_to_pool(&self, py: Python<'_>) -> PyResult<()> {
        self.ensure_handle(py)?;
        self.pool.give_to_pool(self.allocation.id()).py_err(py)
    }

    /// The allocation a descriptor names, attaching its pool if this process has not yet. The
    /// receiver adopts it (one atomic owner change, which fails if it is no longer live): what
    /// was handed over survives its producer, and is reclaimed with the receiver if it dies.
    #[staticmethod]
    pub(crate) fn attach(py: Python<'_>, serialized: &[u8]) -> PyResult<MemoryAlloc> {
        MemoryAlloc::attach_with(py, serialized, false)
    }

    /// Lets go of this handle without freeing the allocation. Refused while views are alive
    /// (allowed in Dragon's semantics: the views stay valid, they hold the allocation).
    fn detach(&self) -> PyResult<()> {
        if !self.dragon {
            self.no_views("detach the allocation")?;
        }
        // ORDERING: SeqCst, the handle flag's order everywhere (see `free`).
        self.done.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Frees the allocation. Refused (BufferError) while views of it are alive.
    #[pyo3(name = "free")]
    fn py_free(&self, py: Python<'_>) -> PyResult<()> {
        self.free(py)
    }

    /// A writable memoryview of the bytes (no copy); it keeps the memory mapped.
    fn get_memview<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("builtins")?.getattr("memoryview")?.call1((slf,))
    }

    /// A handle on bytes `offset..offset + length` of this allocation (no copy; freeing it
    /// frees the whole allocation).
    #[pyo3(signature = (offset=0, length=None))]
    fn clone(&self, py: Python<'_>, offset: i128, length: Option<i128>) -> PyResult<Py<PyAny>> {
        self.ensure_live(py)?;
        let offset = size_arg(py, offset)?;
        let stop = match length {
            None => None,
            Some(length) => Some(
                offset
                    .checked_add(size_arg(py, length)?)
                    .ok_or_else(|| PyValueError::new_err("range overflows"))?,
            ),
        };
        let (start, stop) = self.window(offset, stop)?;
        MemoryAlloc {
            key: self.key,
            pool_object: self.pool_object.clone_ref(py),
            pool: self.pool.clone(),
            allocation: self.allocation,
            start: self.start + start,
            length: stop - start,
            done: AtomicBool::new(false),
            exports: AtomicUsize::new(0),
            dragon: self.dragon,
        }
        .into_object(py)
    }

    /// A new allocation holding a copy of these bytes, in `pool` (default: the same pool),
    /// waiting up to `timeout` seconds for room (default: not at all).
    #[pyo3(signature = (pool=None, timeout=None))]
    fn copy(
        &self,
        py: Python<'_>,
        pool: Option<Bound<'_, MemoryPool>>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        self.ensure_live(py)?;
        let target = match pool {
            Some(pool) => pool.unbind(),
            None => self.pool_object.clone_ref(py),
        };
        let target_pool = target.get().pool(py)?;
        let mut bytes = vec![0u8; self.length as usize];
        self.pool.read(self.allocation.id(), self.start, &mut bytes).py_err(py)?;
        let options =
            alloc_shm::AllocOptions { alloc_type: self.allocation.alloc_type, ..target_pool.options() };
        let copy = match timeout_arg(timeout)? {
            None if timeout.is_none() => target_pool.alloc_with(self.length, options),
            wait => py.detach(|| target_pool.alloc_blocking_with(self.length, options, wait)),
        }
        .py_err(py)?;
        target_pool.write(copy.id(), 0, &bytes).py_err(py)?;
        crate::trace::allocated(py, &target_pool, &copy);
        MemoryAlloc::new(target, target_pool, copy).into_object(py)
    }

    /// Sets bytes `start..stop` (default: all) to zero.
    #[pyo3(signature = (start=0, stop=None))]
    fn clear(&self, py: Python<'_>, start: i128, stop: Option<i128>) -> PyResult<()> {
        self.ensure_live(py)?;
        let start = size_arg(py, start)?;
        let stop = stop.map(|stop| size_arg(py, stop)).transpose()?;
        let (start, stop) = self.window(start, stop)?;
        let zeros = vec![0u8; (stop - start) as usize];
        self.pool.write(self.allocation.id(), self.start + start, &zeros).py_err(py)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<MemoryAlloc>().is_ok_and(|other| {
            let other = other.get();
            other.pool.nonce() == self.pool.nonce() && other.allocation.id() == self.allocation.id()
        })
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.pool.nonce().hash(&mut hasher);
        self.allocation.id().to_u128().hash(&mut hasher);
        hasher.finish()
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
        let py = slf.py();
        // The handle's own class: a Dragon allocation unpickles as one.
        let attach = slf.get_type().getattr("attach")?;
        Ok((attach, (slf.get().serialize(py)?,)))
    }

    /// `a[i]` is byte `i` (an int); `a[i:j]` (any slice) a copy of those bytes.
    fn __getitem__<'py>(slf: &Bound<'py, Self>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let view = MemoryAlloc::get_memview(slf)?;
        let item = view.get_item(key);
        let copied = match item {
            Ok(item) if item.hasattr("release")? => {
                let bytes = item.call_method0("tobytes");
                item.call_method0("release")?;
                bytes
            }
            other => other,
        };
        view.call_method0("release")?;
        copied
    }

    /// `a[i] = byte`; `a[i:j] = data` (a bytes-like object of the slice's length).
    fn __setitem__<'py>(
        slf: &Bound<'py, Self>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let view = MemoryAlloc::get_memview(slf)?;
        let stored = view.set_item(key, value);
        view.call_method0("release")?;
        stored
    }

    /// `with pool.alloc(n) as a:` frees the allocation on exit (unless it was freed or detached
    /// inside). Views made inside must be released by then (`BufferError` otherwise, and the
    /// allocation stays); an exception leaving the block is never replaced by that.
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*exc))]
    fn __exit__(&self, py: Python<'_>, exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        // ORDERING: SeqCst, the handle flag's order everywhere (see `free`).
        if self.done.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let leaving_with_an_exception = exc.get_item(0).is_ok_and(|kind| !kind.is_none());
        match self.free(py) {
            // Freed through another handle (a clone) inside the block: nothing left to do.
            Err(error)
                if error.is_instance_of::<pyo3::exceptions::PyValueError>(py)
                    && self.ensure_live(py).is_err() =>
            {
                Ok(false)
            }
            Err(_) if leaving_with_an_exception => Ok(false),
            other => other.map(|()| false),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<shmpool.MemoryAlloc id={} size={} type={} in {:?}>",
            self.allocation.id().to_u128(),
            self.length,
            self.allocation.alloc_type,
            self.pool.name()
        )
    }

    /// Exports the bytes as a writable, C-contiguous buffer of unsigned bytes.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let base = this.count_view(slf.py())?;
        // SAFETY: (1) `view` is the one CPython passed to this bf_getbuffer; (2) the `length`
        // bytes at `base` (the window) lie inside the live allocation (`count_view` checked
        // it), which stays mapped while the view holds `slf`; the bytes belong to the
        // allocation, writable by design. The view was counted; `__releasebuffer__` uncounts it.
        let filled = unsafe { fill_writable(view, slf.as_any(), base, this.length as usize, flags) };
        if filled.is_err() {
            this.uncount_view();
        }
        filled
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {
        self.uncount_view();
    }
}

/// Fills `view` as a writable, C-contiguous buffer of the `length` bytes at `address`,
/// exported by `owner` (the view holds a new reference to it).
///
/// # Safety
/// 1. `view` is the buffer struct CPython passed to `owner`'s bf_getbuffer;
/// 2. the `length` bytes at `address` stay mapped, and may be written, while `owner` lives.
pub(crate) unsafe fn fill_writable(
    view: *mut pyo3::ffi::Py_buffer,
    owner: &Bound<'_, PyAny>,
    address: *mut u8,
    length: usize,
    flags: c_int,
) -> PyResult<()> {
    // SAFETY: the caller's obligations 1 and 2; FillInfo takes its reference to `owner`, which
    // keeps the bytes valid for as long as the view lives.
    let filled = unsafe {
        pyo3::ffi::PyBuffer_FillInfo(view, owner.as_ptr(), address.cast(), length as isize, 0, flags)
    };
    if filled != 0 {
        return Err(PyErr::fetch(owner.py()));
    }
    Ok(())
}
