"""The exception hierarchy of shmpool. Every error is a PoolError; where a builtin exception
has the same meaning, the shmpool error is also that builtin (catch either)."""


class PoolError(Exception):
    """Base of every shmpool error."""


class PoolCreateError(PoolError):
    """A pool could not be created."""


class PoolExistsError(PoolCreateError, FileExistsError):
    """A pool with that name exists already."""


class PoolAttachError(PoolError):
    """A pool could not be attached (missing, not a pool, not ready, not yours)."""


class PoolNotFoundError(PoolAttachError, FileNotFoundError):
    """No pool with that name exists."""


class PoolPermissionError(PoolAttachError, PermissionError):
    """The pool belongs to another user or may not be opened."""


class InvalidNameError(PoolCreateError, PoolAttachError, ValueError):
    """The pool name breaks the rules: [A-Za-z0-9_.-]{1,200}, not starting with '.'.
    Both a create and an attach failure, whichever was attempted."""


class PoolFullError(PoolError, MemoryError):
    """No room for the request (now, or ever for this pool's size)."""


class PoolTimeoutError(PoolError, TimeoutError):
    """alloc_blocking's timeout passed before room became free."""


class PoolDestroyedError(PoolError):
    """The pool was destroyed (by this or another process)."""


class PoolDetachedError(PoolError):
    """This handle was detached from its pool."""


class InvalidDescriptorError(PoolError, ValueError):
    """Bytes that are not a (valid, current) pool or allocation descriptor."""


class InvalidPoolDescriptorError(InvalidDescriptorError, PoolAttachError):
    """Bytes given to ``MemoryPool.attach`` that are not a (valid, current) pool descriptor: an
    attach failure too."""


class PoolDestroyedAttachError(PoolDestroyedError, PoolAttachError):
    """``MemoryPool.attach`` of a destroyed pool's descriptor: an attach failure too."""


class InvalidAllocationError(PoolError, ValueError):
    """The allocation is not live in its pool: freed already, stale, or foreign."""


class PoolCorruptError(PoolError):
    """The pool's metadata is inconsistent."""
