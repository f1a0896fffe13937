"""Dragon's ``dragon.managed_memory`` names over shmpool, for a drop-in switch::

    from shmpool.dragon import MemoryPool, DragonPoolError, AllocType

``MemoryPool`` and ``MemoryAlloc`` here are subclasses of shmpool's with Dragon's semantics
where the two differ (shmpool's own classes keep theirs):

- ``MemoryPool(size, fname, uid, mattr)``: ``size`` is usable bytes, counted as Dragon's buddy
  allocator counts them (each allocation its size rounded up to a power of two), shared by
  every process: one allocation of exactly ``size`` fits and nothing beside it (not even a
  0-byte one), two of 10000 bytes fill a 32 KiB pool, and any power-of-two allocations adding
  up to at most ``size`` fit, down to 1-byte ones. Two edges differ from Dragon's, on purpose:
  the limit is ``size`` itself, where Dragon's heap is ``size`` rounded up to a power of two
  (which would take up to twice the memory asked for), and there is no 32-byte smallest block
  (which would refuse small allocations adding up to no more than ``size``). ``pool.size`` is
  ``size``; pools of more than 128 bytes are made. ``max_allocations`` (up to 65535) bounds
  the live allocations.
- Negative sizes and uids raise ``OverflowError`` (shmpool: ``ValueError``); uids are 0 to
  2**64 - 1.
- ``MemoryAlloc``: ``==`` compares size and contents and ``hash`` follows (shmpool: identity);
  ``is_the_same_as()`` compares identity.
- ``free()`` while views are alive is put off until the last view is released, so the memory
  is never reused under a view (shmpool: ``BufferError``); its share of ``size`` is given back
  at once, so another process's ``alloc_blocking`` does not wait for views it cannot see (the
  pool has room beyond ``size`` for memory still under views). ``detach()`` under live views
  is allowed (the views keep the memory mapped).
- A full pool's error names ``DRAGON_DYNHEAP_REQUESTED_SIZE_NOT_AVAILABLE``;
  ``alloc_blocking(size, timeout=0)`` fails as a full pool, not as a timeout.

What of Dragon's own tests does not apply here: ``test_remote`` (the byte layout of Dragon's
serialized descriptors), ``test_serialized_info_no_attach`` (Dragon's shm file naming), tests
of ``dragon.dtypes`` (not managed memory), and ``MemoryPool.__new__`` without arguments.

The exception names are aliases of shmpool's exceptions, so code catching Dragon's errors
catches shmpool's. Names that have nothing to do in shmpool are there
for compatibility: ``MemoryPool(..., pre_alloc_blocks=...)`` and ``min_block_size`` (blocks are
made as needed), ``is_local`` (always true), ``DragonPoolDetachFail`` (any ``PoolError``).
"""

from . import (
    AllocType,
    MemoryAllocations,
    PoolAttachError,
    PoolCreateError,
    PoolError,
    PoolFullError,
    PoolTimeoutError,
)

from ._shmpool import DragonMemoryAlloc as MemoryAlloc
from ._shmpool import DragonMemoryPool as MemoryPool

DragonPoolError = PoolError
DragonPoolDetachFail = PoolError
DragonPoolCreateFail = PoolCreateError
DragonPoolAttachFail = PoolAttachError
DragonPoolAllocationNotAvailable = PoolFullError
DragonMemoryError = PoolError
DragonPoolTimeout = PoolTimeoutError

__all__ = [
    "AllocType",
    "DragonMemoryError",
    "DragonPoolAllocationNotAvailable",
    "DragonPoolAttachFail",
    "DragonPoolCreateFail",
    "DragonPoolDetachFail",
    "DragonPoolError",
    "DragonPoolTimeout",
    "MemoryAlloc",
    "MemoryAllocations",
    "MemoryPool",
]
