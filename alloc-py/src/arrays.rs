//! Shared numpy arrays, the compiled half: `ArrayMemory`, the base object of every
//! `shmpool.SharedArray`, and `pool.ndarray`'s fast path. The class itself, its pickling and
//! what numpy operations on it give are in `python/shmpool/_array.py`.
//!
//! An array over an allocation must keep the allocation from being freed for as long as the
//! array, or any view numpy derives from it, is alive. numpy cannot do that by itself: over a
//! buffer-protocol object it takes the buffer and releases it at once, keeping only a reference
//! to the object. So the base of a `SharedArray` is an `ArrayMemory`: it counts a view of the
//! allocation (as a `memoryview` does: see the `views` module) from its creation to its
//! collection, and offers no way to end that early. numpy views keep their base alive, so
//! while any array over the memory exists, `free()` through any handle raises `BufferError`.
//!
//! numpy stays optional: nothing here touches it before `shmpool._array` (which imports numpy)
//! was imported, and the numpy crate loads numpy's C API on first use.

use std::os::raw::c_int;
use std::ptr;

use alloc_shm::{alloc_type, CLASS_SIZES};
use numpy::npyffi::{self, NPY_ARRAY_F_CONTIGUOUS, NPY_ARRAY_WRITEABLE, PY_ARRAY_API};
use numpy::{PyArrayDescr, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyString, PyTuple, PyType};

use crate::alloc::{fill_writable, MemoryAlloc};
use crate::pool::MemoryPool;

/// The alignment of a `SharedArray`'s data: a cache line, and enough for any SIMD load.
pub(crate) const ARRAY_ALIGN: u64 = 64;
/// The alignment every allocation has.
const GRANULE: u64 = 16;
/// The largest request a size class serves; larger ones are runs of whole pages.
const MAX_CLASS_SIZE: u64 = CLASS_SIZES[CLASS_SIZES.len() - 1] as u64;

/// The memory of an allocation (of a handle's window of it) under numpy arrays: their base
/// object. It holds a counted view of the allocation for as long as it lives, so the
/// allocation cannot be freed (`BufferError`) while any array over it does. It also exports
/// the bytes through the buffer protocol (writable, zero-copy).
#[pyclass(frozen, module = "shmpool")]
pub struct ArrayMemory {
    allocation: Py<MemoryAlloc>,
    /// The address of the window's first byte, in this process.
    address: usize,
    /// The window's length in bytes.
    length: usize,
    /// Where the window starts in the allocation.
    start: u64,
}

impl ArrayMemory {
    /// Counts a view of `allocation`, kept until this object is collected.
    fn over(allocation: &Bound<'_, MemoryAlloc>) -> PyResult<ArrayMemory> {
        let handle = allocation.get();
        let address = handle.count_view(allocation.py())? as usize;
        Ok(ArrayMemory {
            allocation: allocation.clone().unbind(),
            address,
            length: handle.window_length() as usize,
            start: handle.window_start(),
        })
    }
}

impl Drop for ArrayMemory {
    fn drop(&mut self) {
        self.allocation.get().uncount_view();
    }
}

#[pymethods]
impl ArrayMemory {
    /// The memory of `allocation` (of its window, after `clone`), held until this object is
    /// collected.
    #[new]
    fn new(allocation: &Bound<'_, MemoryAlloc>) -> PyResult<ArrayMemory> {
        ArrayMemory::over(allocation)
    }

    /// The allocation (handle) this memory belongs to.
    #[getter]
    fn allocation(&self, py: Python<'_>) -> Py<MemoryAlloc> {
        self.allocation.clone_ref(py)
    }

    /// The address of the first byte in this process (to place arrays within the memory).
    #[getter]
    fn address(&self) -> usize {
        self.address
    }

    /// Where the memory starts within its allocation, in bytes (0 but for a `clone` window).
    #[getter]
    fn start(&self) -> u64 {
        self.start
    }

    fn __len__(&self) -> usize {
        self.length
    }

    fn __repr__(&self) -> String {
        format!("<shmpool.ArrayMemory of {} bytes of {}>", self.length, self.allocation.get().describe())
    }

    /// Exports the bytes as a writable, C-contiguous buffer of unsigned bytes.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        // SAFETY: (1) `view` is the one CPython passed to this bf_getbuffer; (2) the `length`
        // bytes at `address` are the window of a live allocation, held by the view this object
        // counted, and mapped while this object holds its `MemoryAlloc`, so while `slf` lives;
        // the bytes belong to the allocation, writable by design.
        unsafe { fill_writable(view, slf.as_any(), this.address as *mut u8, this.length, flags) }
    }
}

/// `shmpool._array.SharedArray`, imported (with numpy) on first use.
fn shared_array_class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    CLASS.import(py, "shmpool._array", "SharedArray")
}

/// The dtype asked for (`None`: float64, as numpy's); one holding object pointers (or
/// numpy's variable-width strings, which point into private memory) is refused.
fn dtype_arg<'py>(py: Python<'py>, dtype: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyArrayDescr>> {
    let descr = match dtype {
        Some(dtype) if !dtype.is_none() => PyArrayDescr::new(py, dtype)?,
        _ => numpy::dtype::<f64>(py),
    };
    if descr.has_object() {
        return Err(PyTypeError::new_err(format!(
            "dtype {} holds pointers to Python objects or private memory: such an array cannot \
             be shared between processes",
            descr.str()?
        )));
    }
    Ok(descr)
}

/// A shape: an int or a sequence of ints, none negative.
fn shape_arg(shape: &Bound<'_, PyAny>) -> PyResult<Vec<isize>> {
    let not_a_shape =
        || PyTypeError::new_err(format!("shape must be an int or a sequence of ints, got {shape}"));
    // An int too large for an address is a size no pool can hold.
    let dim = |dim: &Bound<'_, PyAny>| match dim.extract::<isize>() {
        Ok(dim) => Ok(dim),
        Err(_) if dim.is_instance_of::<PyInt>() => {
            Err(PyValueError::new_err(format!("array is too big: dimension {dim}")))
        }
        Err(_) => Err(not_a_shape()),
    };
    // Tuples first: the usual shape, and a failed extraction (an exception made) costs more
    // than all the rest of creating an array.
    let dims = if let Ok(tuple) = shape.cast::<PyTuple>() {
        tuple.iter().map(|entry| dim(&entry)).collect::<PyResult<Vec<isize>>>()?
    } else if let Ok(single) = shape.extract::<isize>() {
        vec![single]
    } else if shape.is_instance_of::<PyInt>() {
        vec![dim(shape)?]
    } else if shape.is_instance_of::<PyString>() {
        return Err(not_a_shape());
    } else {
        let dims = shape.try_iter().map_err(|_| not_a_shape())?;
        dims.map(|entry| dim(&entry?)).collect::<PyResult<Vec<isize>>>()?
    };
    if dims.iter().any(|&dim| dim < 0) {
        return Err(PyValueError::new_err(format!("negative dimensions are not allowed: {dims:?}")));
    }
    Ok(dims)
}

/// Whether `order` asks for Fortran order ("F") rather than C order ("C").
fn fortran_arg(order: &str) -> PyResult<bool> {
    match order {
        "C" | "c" => Ok(false),
        "F" | "f" => Ok(true),
        other => Err(PyValueError::new_err(format!("order must be 'C' or 'F', got {other:?}"))),
    }
}

/// `pool.ndarray(shape, dtype, order)`: a `SharedArray` over a new allocation of `pool`, its
/// data aligned to [`ARRAY_ALIGN`] bytes.
pub(crate) fn new_array<'py>(
    pool: &Bound<'py, MemoryPool>,
    shape: &Bound<'py, PyAny>,
    dtype: Option<&Bound<'py, PyAny>>,
    order: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let py = pool.py();
    let class = shared_array_class(py)?;
    let fortran = fortran_arg(order)?;
    let descr = dtype_arg(py, dtype)?;
    let mut dims = shape_arg(shape)?;
    let too_big = || PyValueError::new_err(format!("array is too big: shape {dims:?}", dims = &dims));
    let nbytes = dims
        .iter()
        .try_fold(descr.itemsize() as u64, |bytes, &dim| bytes.checked_mul(dim as u64))
        .filter(|&bytes| bytes <= isize::MAX as u64)
        .ok_or_else(too_big)?;
    // Blocks of size classes are 16-byte aligned: a small array takes 48 bytes more and starts
    // at the first 64-byte boundary in its block (an aligned small request would take a page).
    // Larger requests are runs of pages, aligned anyway.
    let (size, align) = match nbytes + ARRAY_ALIGN - GRANULE {
        padded if padded <= MAX_CLASS_SIZE => (padded, GRANULE),
        _ => (nbytes, ARRAY_ALIGN),
    };
    let allocation = Bound::new(py, MemoryPool::alloc_aligned(pool, size, align, alloc_type::DATA)?)?;
    let array = match array_over(&allocation, class, descr, &mut dims, fortran) {
        Ok(array) => array,
        Err(error) => {
            // Nothing over the allocation is left (the array and its memory are gone): give it
            // back.
            let _ = allocation.get().free(py);
            return Err(error);
        }
    };
    untrack(array.as_any());
    untrack(allocation.as_any());
    Ok(array)
}

/// Spares the cyclic garbage collector an object that can never be part of a reference cycle:
/// a `SharedArray` just made (no instance dict: its only references are its type, dtype and
/// base), its `ArrayMemory` and `MemoryAlloc` (references only down to the pool, which holds
/// none). Arrays are made by the thousand; otherwise each makes the collector run sooner and
/// visit it on every pass, which costs as much as the rest of making it. (CPython itself
/// untracks tuples and dicts that cannot be in a cycle.)
fn untrack(object: &Bound<'_, PyAny>) {
    // SAFETY: `object` is alive and of a type that supports the collector (pyo3 classes and
    // Python-defined subclasses do), so it carries the collector's header; untracking it only
    // takes it off the collector's lists, and its deallocation's own untrack is harmless.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(object.as_ptr().cast()) }
}

/// A C- or Fortran-ordered array of `class` over the first 64-byte boundary of `allocation`,
/// whose `dims` and `descr` take at most the allocation's bytes from there.
fn array_over<'py>(
    allocation: &Bound<'py, MemoryAlloc>,
    class: &Bound<'py, PyType>,
    descr: Bound<'py, PyArrayDescr>,
    dims: &mut [isize],
    fortran: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = allocation.py();
    let memory = ArrayMemory::over(allocation)?;
    let lead = memory.address.next_multiple_of(ARRAY_ALIGN as usize) - memory.address;
    let data = (memory.address + lead) as *mut std::ffi::c_void;
    let memory = Bound::new(py, memory)?;
    untrack(memory.as_any());
    let flags = NPY_ARRAY_WRITEABLE | if fortran { NPY_ARRAY_F_CONTIGUOUS } else { 0 };
    // SAFETY: (1) `class` is `SharedArray`, a subclass of numpy.ndarray; (2) `descr` is a valid
    // dtype, whose reference the call steals (`into_dtype_ptr` gives it a new one); (3) `dims`
    // holds `dims.len()` non-negative extents whose product times the itemsize is the number of
    // bytes the caller allocated after the lead, so the array stays inside the allocation;
    // (4) `data` stays valid while `memory` lives (it counts a view of the allocation and holds
    // its mapping), which the array holds as its base from the next call on.
    let array = unsafe {
        PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            class.as_type_ptr(),
            descr.into_dtype_ptr(),
            dims.len() as c_int,
            dims.as_mut_ptr(),
            ptr::null_mut(),
            data,
            flags,
            ptr::null_mut(),
        )
    };
    // SAFETY: a new reference, or null with an exception set.
    let array = unsafe { Bound::from_owned_ptr_or_err(py, array) }?;
    // SAFETY: `array` is the ndarray just made, with no base yet; the call steals the reference
    // to `memory` (also on failure, when numpy drops it).
    let based = unsafe { PY_ARRAY_API.PyArray_SetBaseObject(py, array.as_ptr().cast(), memory.into_ptr()) };
    if based < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(array)
}

/// Where `array` lies: the `ArrayMemory` at the end of its chain of bases and the offset of its
/// first element within that memory's allocation, if every element lies in that memory; `None`
/// for an array over anything else (numpy's own memory, another buffer). The test of
/// `SharedArray.shared`, `.allocation` and its pickling.
#[pyfunction]
pub(crate) fn _placement<'py>(
    array: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, ArrayMemory>, i128)>> {
    let py = array.py();
    let Ok(array) = array.cast::<PyUntypedArray>() else {
        return Ok(None);
    };
    // The chain is short: numpy links a view to the first array that owns its data or whose
    // base is of another type (a SharedArray's root array, whose base is the memory).
    let mut link = array.as_array_ptr();
    let memory = loop {
        // SAFETY: `link` is `array` or a base of it, an ndarray kept alive by the chain from
        // `array`, which the caller holds; the thread is attached (`py`).
        let base = unsafe { (*npyffi::_PyArray_GET_ITEM_DATA(link)).base };
        if base.is_null() {
            return Ok(None);
        }
        // SAFETY: a base is a live object (the array holds a reference to it).
        let base = unsafe { Bound::from_borrowed_ptr(py, base) };
        if let Ok(memory) = base.cast::<ArrayMemory>() {
            break memory.clone();
        }
        match base.cast::<PyUntypedArray>() {
            Ok(next) => link = next.as_array_ptr(),
            Err(_) => return Ok(None),
        }
    };
    // SAFETY: as above, for `array` itself.
    let data = unsafe { (*npyffi::_PyArray_GET_ITEM_DATA(array.as_array_ptr())).data } as i128;
    let first = data - memory.get().address as i128;
    let (mut low, mut high) = (first, first + array.dtype().itemsize() as i128);
    for (&extent, &stride) in array.shape().iter().zip(array.strides()) {
        if extent == 0 {
            (low, high) = (first, first);
            break;
        }
        let reach = (extent as i128 - 1) * stride as i128;
        if reach < 0 {
            low += reach;
        } else {
            high += reach;
        }
    }
    if low < 0 || high > memory.get().length as i128 {
        return Ok(None);
    }
    let offset = first + memory.get().start as i128;
    Ok(Some((memory, offset)))
}
