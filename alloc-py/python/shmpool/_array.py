"""Shared numpy arrays: ``SharedArray``, an ``ndarray`` over one pool allocation that pickles as
a few hundred bytes naming the memory, never the data.

Imported on first use of ``shmpool.SharedArray``, ``pool.ndarray`` or ``pool.share``: numpy is a
dependency of this module only, so ``import shmpool`` works without numpy.

What an array is over decides what it is, not its Python type. An array is *shared* when its
base chain leads to an ``ArrayMemory`` (the memory of an allocation) and its elements lie in it:
``pool.ndarray``/``pool.share`` results, their views (slices, transposes, reshapes, negative
strides), and arrays unpickled from them. Those pickle as (allocation descriptor, shape, dtype,
strides, offset of the first element) and unpickle in any process as an array over the same
memory. Everything else pickles by value, as a plain ``ndarray``:
- ufunc results in new memory (``a + 1``, ``a.sum(axis=0)``, ``a == b``) are plain ndarrays
  (``__array_wrap__``);
- what other numpy operations make in new memory (``a.copy()``, ``a.astype(...)``, fancy
  indexing, ``numpy.concatenate``) keeps the ``SharedArray`` type, as numpy makes subclasses,
  but is not shared: ``shared`` is False, ``allocation`` raises ``ValueError``, and it pickles
  by value (nothing about it pretends to be in the pool).
"""

from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

import numpy

from ._shmpool import ArrayMemory, MemoryAlloc, _placement

if TYPE_CHECKING:
    _NDArray = numpy.ndarray[Any, numpy.dtype[Any]]
else:
    _NDArray = numpy.ndarray

__all__ = ["SharedArray", "share"]


class SharedArray(_NDArray):
    """A ``numpy.ndarray`` over one allocation of a shared-memory pool (``allocation``).

    Make one with ``pool.ndarray(shape, dtype, order)`` (like ``numpy.empty``, its data aligned
    to 64 bytes) or ``pool.share(array)`` (a copy of an existing array), or ``arena.ndarray``.
    Pickling it, or a view of it, sends the allocation's descriptor, shape, dtype, strides and
    offset (a few hundred bytes whatever the size); unpickling in another process
    (``multiprocessing`` with spawn, fork or forkserver, its queues and pools,
    ``concurrent.futures.ProcessPoolExecutor``) gives an array over the same memory: writes on
    either side are seen by the other. The receiving process adopts the allocation, as it
    adopts an unpickled ``MemoryAlloc``: a worker's result survives the worker.

    The allocation cannot be freed while any array over it lives in this process: its base,
    an ``ArrayMemory``, holds a counted view, so ``array.allocation.free()`` raises
    ``BufferError`` until the array and all its views are gone. It is not freed when they
    are collected either (another process may be using it): free it then, or make it in an
    arena (``pool.arena()``), or let ``reclaim_dead`` free it with its owner's death.

    Results of numpy operations in new memory are not shared: see the ``shared`` property.
    """

    # No instance dict: attributes would not travel with the pickle anyway, and without one an
    # array holds no reference that could close a cycle, so pool.ndarray may take the arrays it
    # makes off the cyclic collector's lists (see alloc-py/src/arrays.rs).
    __slots__ = ()

    @property
    def shared(self) -> bool:
        """Whether this array lies in a pool allocation (and so pickles as a reference to it).
        False for what numpy made in private memory from a SharedArray (``copy()``,
        ``astype``, fancy indexing...), which pickles by value."""
        return _placement(self) is not None

    @property
    def allocation(self) -> MemoryAlloc:
        """The allocation this array lies in (``ValueError`` for an array numpy made in private
        memory: see ``shared``). Free it once no array over it is alive."""
        placed = _placement(self)
        if placed is None:
            raise ValueError(
                "this SharedArray lies in private memory (numpy made it, e.g. by copy() or astype): "
                "it has no allocation; pool.share(it) puts a copy in a pool"
            )
        return placed[0].allocation

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # A ufunc's result: new memory is a plain ndarray (it must not pass for shared); an
        # `out=` array is given back as it is.
        if return_scalar:
            return array[()]
        return array

    def __reduce_ex__(self, protocol: Any) -> Any:
        placed = _placement(self)
        if placed is None:
            return self.view(numpy.ndarray).__reduce_ex__(protocol)
        memory, offset = placed
        return _rebuild, (
            memory.allocation.serialize(),
            self.shape,
            _dtype_key(self.dtype),
            self.strides,
            offset,
        )

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(2)


def _dtype_key(dtype: "numpy.dtype[Any]") -> Any:
    """The dtype as pickled: its short string when that names it exactly (the common case,
    a few bytes), else the dtype itself (structured dtypes, metadata)."""
    if dtype.fields is None and dtype.subdtype is None and dtype.metadata is None:
        return dtype.str
    return dtype


def _rebuild(descriptor: bytes, shape: Tuple[int, ...], dtype: Any, strides: Tuple[int, ...], offset: int) -> SharedArray:
    """Unpickles a SharedArray: attaches (and adopts) the allocation, lays the array over it.
    numpy checks that shape, strides and offset stay within the allocation's bytes."""
    memory: Any = ArrayMemory(MemoryAlloc.attach(descriptor))  # a buffer (typed so before 3.12 too)
    array: SharedArray = numpy.ndarray.__new__(
        SharedArray, shape, numpy.dtype(dtype), buffer=memory, offset=offset, strides=strides
    )
    return array


def share(make: Callable[..., SharedArray], array: Any, order: str = "K") -> SharedArray:
    """A SharedArray made by `make(shape, dtype, order)` (``pool.ndarray`` or an arena's)
    holding a copy of `array`: see ``MemoryPool.share``."""
    source = numpy.asanyarray(array)
    if order == "K":
        flags = source.flags
        order = "F" if flags.f_contiguous and not flags.c_contiguous else "C"
    elif order not in ("C", "F"):
        raise ValueError(f"order must be 'K', 'C' or 'F', got {order!r}")
    shared = make(source.shape, source.dtype, order)
    try:
        numpy.copyto(shared, source, casting="no")
    except BaseException:
        allocation = shared.allocation
        del shared
        allocation.free()
        raise
    return shared
