"""shmpool: lock-free shared-memory pools.

Allocate in one process, hand the allocation to another (by pickling it, or by its
`serialize()`d bytes), and both see the same bytes without a copy::

    import shmpool
    with shmpool.MemoryPool(64 * 2**20, "demo") as pool:
        array = pool.ndarray((1000, 8), dtype="float32")   # a shmpool.SharedArray (numpy)
        array[:] = 1.0
        # pickle.dumps(array) (a few hundred bytes) travels to another process, which sees
        # and writes the same memory; so do pickle.dumps(a) / a.serialize() of pool.alloc(n)

The API follows Dragon's ``dragon.managed_memory``; ``shmpool.dragon`` offers Dragon's names.
numpy is optional: only ``SharedArray`` (``pool.ndarray``, ``pool.share``) needs it.
"""

import operator
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Sequence

from ._exceptions import (
    InvalidAllocationError,
    InvalidDescriptorError,
    InvalidNameError,
    InvalidPoolDescriptorError,
    PoolAttachError,
    PoolCorruptError,
    PoolCreateError,
    PoolDestroyedAttachError,
    PoolDestroyedError,
    PoolDetachedError,
    PoolError,
    PoolExistsError,
    PoolFullError,
    PoolNotFoundError,
    PoolPermissionError,
    PoolTimeoutError,
)
from ._shmpool import (
    TRACEMALLOC_DOMAIN,
    ArrayMemory,
    MemoryAlloc,
    MemoryAllocations,
    MemoryPool,
    __version__,
    trace_allocations,
)

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

    from ._array import SharedArray as SharedArray


def __getattr__(name: str) -> Any:
    # SharedArray imports numpy: only when asked for, so that shmpool works without numpy.
    if name == "SharedArray":
        from ._array import SharedArray

        return SharedArray
    raise AttributeError(f"module 'shmpool' has no attribute {name!r}")


class AllocType(IntEnum):
    """Allocation types with a meaning fixed by Dragon; values 4-255 are free for users.
    ``AllocType(200)`` gives one too: an ``AllocType`` named ``USER_200``, equal to 200 (not
    listed among the members, nor reachable as ``AllocType.USER_200``)."""

    DATA = 0
    CHANNEL = 1
    CHANNEL_BUFFER = 2
    BOOTSTRAP = 3

    @classmethod
    def _missing_(cls, value):
        try:
            value = operator.index(value)
        except TypeError:
            return None
        if not 0 <= value <= 255:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"USER_{value}"
        member._value_ = value
        return cls._value2member_map_.setdefault(value, member)


class Arena:
    """Allocations that are all freed together when the arena exits or is collected
    (cymem's ``Pool``, over shared memory). Make one with ``pool.arena()``."""

    def __init__(self, pool):
        self._pool = pool
        self._allocations = []

    def alloc(self, size, alloc_type=AllocType.DATA):
        """Allocate ``size`` bytes that live as long as the arena."""
        allocation = self._pool.alloc(size, int(alloc_type))
        self._allocations.append(allocation)
        return allocation

    def ndarray(self, shape: "int | Sequence[int]", dtype: "DTypeLike | None" = None, order: str = "C") -> "SharedArray":
        """A ``shmpool.SharedArray`` (see ``MemoryPool.ndarray``) freed with the arena: delete
        it, and every view of it, before the arena ends (``BufferError`` otherwise)."""
        array = self._pool.ndarray(shape, dtype, order)
        self._allocations.append(array.allocation)
        return array

    def share(self, array: "ArrayLike", order: str = "K") -> "SharedArray":
        """A ``shmpool.SharedArray`` holding a copy of ``array`` (see ``MemoryPool.share``),
        freed with the arena."""
        from ._array import share

        return share(self.ndarray, array, order)

    def __len__(self):
        return len(self._allocations)

    def __repr__(self):
        return f"<shmpool.Arena of {self._pool.name!r}: {len(self._allocations)} allocations>"

    def free_all(self):
        """Free everything the arena handed out (already freed ones are skipped). Raises
        ``BufferError`` for allocations whose memoryviews are still alive, after freeing the rest."""
        busy = []
        while self._allocations:
            allocation = self._allocations.pop()
            try:
                allocation.free()
            except BufferError:
                busy.append(allocation)
            except (InvalidAllocationError, PoolDestroyedError, PoolDetachedError):
                pass
        if busy:
            self._allocations = busy
            raise BufferError(f"{len(busy)} arena allocation(s) still have live memoryviews")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free_all()
        return False

    def __del__(self):
        try:
            self.free_all()
        except Exception:
            pass


__all__ = [
    "AllocType",
    "Arena",
    "ArrayMemory",
    "InvalidAllocationError",
    "InvalidDescriptorError",
    "InvalidNameError",
    "InvalidPoolDescriptorError",
    "MemoryAlloc",
    "MemoryAllocations",
    "MemoryPool",
    "PoolAttachError",
    "PoolCorruptError",
    "PoolCreateError",
    "PoolDestroyedAttachError",
    "PoolDestroyedError",
    "PoolDetachedError",
    "PoolError",
    "PoolExistsError",
    "PoolFullError",
    "PoolNotFoundError",
    "PoolPermissionError",
    "PoolTimeoutError",
    "TRACEMALLOC_DOMAIN",
    "__version__",
    "trace_allocations",
]
