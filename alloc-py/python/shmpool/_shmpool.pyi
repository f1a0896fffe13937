"""Type stubs for the compiled part of shmpool (see the docstrings at runtime for details)."""

import os
import socket
from typing import Any, Iterator, Literal, Optional, Sequence, SupportsIndex, Union, final

from numpy.typing import ArrayLike, DTypeLike

from typing_extensions import disjoint_base

from . import AllocType, Arena
from ._array import SharedArray

_Buffer = Union[bytes, bytearray, memoryview]

__all__ = [
    "ArrayMemory",
    "DragonMemoryAlloc",
    "DragonMemoryPool",
    "MemoryAlloc",
    "MemoryAllocations",
    "MemoryPool",
    "run_tool",
    "trace_allocations",
    "TRACEMALLOC_DOMAIN",
    "__version__",
    "_placement",
]

TRACEMALLOC_DOMAIN: int
"""The tracemalloc domain of pool allocations."""
__version__: str
"""The package's version."""

def run_tool(argv: list[str], this_command: list[str]) -> int:
    """Run the shmpool tool with command line `argv` (see `python -m shmpool`)."""

def trace_allocations(enabled: bool) -> None:
    """Report allocations (and frees) made through this process to tracemalloc."""

@disjoint_base
class MemoryPool:
    """A pool of shared memory that any process can attach."""

    def __new__(
        cls,
        size: int,
        fname: str,
        uid: Optional[int] = None,
        mattr: Any = None,
        *,
        min_block_size: Optional[int] = None,
        max_allocations: Optional[int] = None,
        pre_alloc_blocks: Optional[list[int]] = None,
        mode: int = 0o600,
        reserve: bool = False,
        overcommit: bool = False,
        dir: str | os.PathLike[str] | None = None,
        memfd: bool = False,
        huge_pages: bool = False,
    ) -> MemoryPool: ...
    @staticmethod
    def create_memfd(size: int, fname: str, uid: Optional[int] = None, **kwargs: Any) -> MemoryPool:
        """A new pool in a sealed anonymous memfd (other arguments as `MemoryPool`): passed to
        other processes as a file descriptor, freed by the kernel with its last holder."""
    @staticmethod
    def from_fd(fd: int) -> MemoryPool:
        """Attach the pool whose file descriptor `fd` is (duplicated: `fd` stays the caller's)."""
    @staticmethod
    def receive(sock: socket.socket | int) -> MemoryPool:
        """Receive a pool `send` sent over a Unix socket."""
    def send(self, sock: socket.socket | int) -> None:
        """Send the pool over a connected Unix socket (its descriptor and file descriptor)."""
    def fileno(self) -> int:
        """The pool's file descriptor (this handle's: do not close it)."""
    @property
    def memfd(self) -> bool:
        """Whether the pool lives in a memfd."""
    @staticmethod
    def size_for_data(data_bytes: int) -> int:
        """The smallest pool size whose data area holds one allocation of `data_bytes`."""
    @staticmethod
    def for_data(data_bytes: int, fname: str, uid: Optional[int] = None, **kwargs: Any) -> MemoryPool:
        """A new pool that holds `data_bytes` in one allocation (other arguments as `MemoryPool`)."""
    @staticmethod
    def attach(serialized: _Buffer) -> MemoryPool:
        """Attach the pool a serialize()d descriptor names (InvalidPoolDescriptorError, a
        PoolAttachError, for bytes that are not one)."""
    @staticmethod
    def serialized_uid_fname(serialized: _Buffer) -> tuple[int, str]:
        """The (muid, fname) of the pool a serialize()d descriptor names."""
    @property
    def is_local(self) -> bool:
        """Whether the pool is on this node: always (Dragon compatibility)."""
    @staticmethod
    def attach_by_name(
        fname: str,
        *,
        owner_uid: int | None = None,
        any_owner: bool = False,
        dir: str | os.PathLike[str] | None = None,
    ) -> MemoryPool:
        """Attach pool `fname` in /dev/shm: this user's (or user `owner_uid`'s, root included); any owner
        only with `any_owner=True`."""
    def serialize(self) -> bytes:
        """The pool's descriptor (at most 128 bytes), kept by the handle once made."""
    def detach(self, serialize: bool = False) -> None:
        """Let go of this handle; refused while buffer views are alive. `serialize=True` keeps
        the descriptor so that `serialize()` still answers."""
    def destroy(self) -> None:
        """Destroy the pool in every process and remove its name."""
    def __enter__(self) -> MemoryPool: ...
    def __exit__(self, *exc: Any) -> bool: ...
    def alloc(self, size: int, alloc_type: int = 0) -> MemoryAlloc:
        """Allocate `size` bytes."""
    def alloc_blocking(self, size: int, timeout: Optional[float] = None, alloc_type: int = 0) -> MemoryAlloc:
        """Allocate, waiting (GIL released, Ctrl-C honoured) while the pool is full."""
    def free(self, alloc: MemoryAlloc) -> None:
        """Free `alloc`."""
    def realloc(self, alloc: MemoryAlloc, size: int) -> MemoryAlloc:
        """Resize `alloc`; on failure the original is untouched."""
    def get_allocations(self, alloc_type: Optional[int] = None) -> MemoryAllocations:
        """A snapshot of the live allocations."""
    def allocation_exists(self, *args: int) -> bool:
        """allocation_exists(id) or allocation_exists(alloc_type, id)."""
    def alloc_from_id(self, id: int) -> MemoryAlloc:
        """The live allocation with this id."""
    def get_alloc_by_id(self, alloc_type: int, id: int) -> MemoryAlloc:
        """Dragon's lookup by type and id."""
    @property
    def size(self) -> int:
        """Total bytes of the pool."""
    @property
    def free_space(self) -> int:
        """Bytes not used by allocations."""
    @property
    def utilization(self) -> float:
        """Percentage of the data area in use."""
    @property
    def current_allocations(self) -> int:
        """Live allocations."""
    @property
    def max_allocations(self) -> int:
        """The most allocations the pool could hold."""
    @property
    def free_blocks(self) -> dict[int, int]:
        """Free blocks per size class (key 0: the largest free run of pages, in bytes)."""
    @property
    def owner_uid(self) -> int:
        """The user id of the pool's creator."""
    @property
    def uid(self) -> int:
        """The same as `muid`."""
    @property
    def muid(self) -> int:
        """The number the pool is known by: the `uid` given at creation (else its nonce)."""
    @property
    def name(self) -> str:
        """The pool's name."""
    @property
    def waiters(self) -> int:
        """Callers blocked in `alloc_blocking` right now, in all processes."""
    def reclaim_dead(self) -> list[tuple[int, int, int]]:
        """Free the allocations of dead processes; [(id, owner_pid, size)]."""
    def repair(self, *, force: bool = False) -> dict[str, int]:
        """Mend damaged metadata while no other process uses the pool (PoolError naming them
        otherwise, unless force=True); returns what it put right."""
    def check(self) -> dict[str, int]:
        """Verify every invariant; usage figures."""
    def arena(self) -> Arena:
        """An arena whose allocations are freed together."""
    def ndarray(
        self,
        shape: SupportsIndex | Sequence[SupportsIndex],
        dtype: DTypeLike | None = None,
        order: Literal["C", "F", "c", "f"] = "C",
    ) -> SharedArray:
        """A SharedArray (numpy.ndarray) over a new allocation, 64-byte aligned, not initialised;
        it pickles as a few hundred bytes naming the memory. Needs numpy."""
    def share(self, array: ArrayLike, order: Literal["K", "C", "F"] = "K") -> SharedArray:
        """A SharedArray holding a contiguous copy of `array`, in this pool."""

@disjoint_base
class MemoryAlloc:
    """One allocation; supports the buffer protocol (zero-copy, writable). free() raises
    BufferError while views are alive; numpy.ndarray(shape, buffer=a) is not counted as one
    (numpy releases the buffer at once): use pool.ndarray / pool.share (SharedArray) for arrays."""

    @property
    def size(self) -> int:
        """Bytes (of this window, after clone)."""
    @property
    def id(self) -> int:
        """The allocation's id."""
    @property
    def alloc_type(self) -> AllocType:
        """The allocation's type."""
    @property
    def offset(self) -> int:
        """Byte offset in the pool."""
    @property
    def pool(self) -> MemoryPool:
        """The allocation's pool."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...
    def serialize(self) -> bytes:
        """The allocation's descriptor (at most 128 bytes)."""
    @staticmethod
    def attach(serialized: _Buffer) -> MemoryAlloc:
        """The allocation a descriptor names (attaching its pool on demand)."""
    def detach(self) -> None:
        """Let go of this handle without freeing; refused while views are alive."""
    @property
    def owner(self) -> Optional[int]:
        """The pid of the owning process (None: the pool owns it)."""
    def set_owner(self, pid: int) -> None:
        """Hand the allocation to attached process `pid` (freed when it dies)."""
    def give_to_pool(self) -> None:
        """Give the allocation to the pool: no process's death frees it."""
    def __getitem__(self, key: int | slice, /) -> Any:
        """Byte `key` (an int), or a copy of the bytes of slice `key`."""
    def __setitem__(self, key: int | slice, value: Any, /) -> None:
        """Store a byte, or bytes of the slice's length."""
    def __enter__(self) -> MemoryAlloc: ...
    def __exit__(self, *exc: Any) -> bool:
        """Frees the allocation (unless freed or detached inside the block)."""
    def free(self) -> None:
        """Free the allocation; BufferError while views are alive."""
    def get_memview(self) -> memoryview:
        """A writable memoryview of the bytes."""
    def clone(self, offset: int = 0, length: Optional[int] = None) -> MemoryAlloc:
        """A handle on part of the allocation (no copy)."""
    def copy(self, pool: Optional[MemoryPool] = None, timeout: Optional[float] = None) -> MemoryAlloc:
        """A new allocation holding a copy of the bytes."""
    def clear(self, start: int = 0, stop: Optional[int] = None) -> None:
        """Zero bytes start..stop."""

@final
class ArrayMemory:
    """The memory of an allocation under numpy arrays (a SharedArray's base): it holds a
    counted view of the allocation while it lives, and exports the bytes (buffer protocol)."""

    def __new__(cls, allocation: MemoryAlloc) -> ArrayMemory: ...
    @property
    def allocation(self) -> MemoryAlloc:
        """The allocation (handle) this memory belongs to."""
    @property
    def address(self) -> int:
        """The address of the first byte in this process."""
    @property
    def start(self) -> int:
        """Where the memory starts within its allocation (0 but for a `clone` window)."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...

def _placement(array: Any) -> Optional[tuple[ArrayMemory, int]]:
    """(memory, offset of the first element in its allocation) of an array lying in one."""

@final
class MemoryAllocations:
    """A snapshot of a pool's live allocations."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[int]: ...
    def __getitem__(self, index: int, /) -> int: ...
    @property
    def num_allocs(self) -> int:
        """Number of allocations."""
    def alloc_type(self, index: int) -> AllocType:
        """The type of allocation `index`."""
    def alloc_id(self, index: int) -> int:
        """The id of allocation `index`."""

@final
class DragonMemoryPool(MemoryPool):
    """`shmpool.dragon.MemoryPool`: a pool with Dragon's semantics, whose `size` is a budget of
    usable bytes (allocations counted rounded up to powers of two)."""

    def __new__(
        cls,
        size: int,
        fname: str,
        uid: Optional[int] = None,
        mattr: Any = None,
        *,
        min_block_size: Optional[int] = None,
        max_allocations: Optional[int] = None,
        pre_alloc_blocks: Optional[list[int]] = None,
        mode: int = 0o600,
    ) -> DragonMemoryPool: ...
    @staticmethod
    def attach(serialized: _Buffer) -> DragonMemoryPool:
        """Attach the pool a `serialize()`d descriptor names, with Dragon's semantics."""

@final
class DragonMemoryAlloc(MemoryAlloc):
    """`shmpool.dragon.MemoryAlloc`: `==` compares size and contents, `is_the_same_as()`
    identity; a free under live views is put off until the last is released."""

    @staticmethod
    def attach(serialized: _Buffer) -> DragonMemoryAlloc:
        """The allocation a descriptor names, with Dragon's semantics (TypeError for anything
        but a descriptor)."""
    def is_the_same_as(self, other: MemoryAlloc) -> bool:
        """Whether `other` is a handle on the same bytes of the same allocation."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
