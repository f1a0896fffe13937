"""Dragon's ``dragon.managed_memory`` names over shmpool, for a drop-in switch::

    from shmpool.dragon import MemoryPool, DragonPoolError, AllocType

The classes are shmpool's; the exception names are aliases of shmpool's exceptions, so code
catching Dragon's errors catches shmpool's. Names that have nothing to do in shmpool are there
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
