"""Dragon's ``dragon.managed_memory`` names over shmpool, for a drop-in switch::

    from shmpool.dragon import MemoryPool, DragonPoolError, AllocType

The classes are shmpool's; the exception names are aliases of shmpool's exceptions, so code
catching Dragon's errors catches shmpool's.
"""

from . import (
    AllocType,
    MemoryAlloc,
    MemoryAllocations,
    MemoryPool,
    PoolAttachError,
    PoolCreateError,
    PoolError,
    PoolFullError,
    PoolTimeoutError,
)

DragonPoolError = PoolError
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
    "DragonPoolError",
    "DragonPoolTimeout",
    "MemoryAlloc",
    "MemoryAllocations",
    "MemoryPool",
]
