"""Real code using shmpool, checked with ``mypy --strict`` by scripts/test (not run): the stubs
must type it, numpy's buffer arguments included (MemoryAlloc declares the buffer protocol)."""

import numpy
import numpy.typing

import shmpool


def fill(pool: shmpool.MemoryPool, value: float) -> shmpool.MemoryAlloc:
    a = pool.alloc(8 * 100, shmpool.AllocType.DATA)
    array: numpy.typing.NDArray[numpy.float64] = numpy.frombuffer(a, dtype=numpy.float64)
    array[:] = value
    view = memoryview(a)
    view.release()
    first: int = a[0]
    a[0:4] = bytes([first]) * 4
    kind: shmpool.AllocType = a.alloc_type
    assert kind == shmpool.AllocType.DATA
    return a


def main() -> None:
    with shmpool.MemoryPool(2**20, "typed") as pool:
        with fill(pool, 1.0) as a:
            owner: int | None = a.owner
            print(owner, pool.get_allocations().alloc_type(0), shmpool.__version__)
        print(pool.repair())


def shared_arrays(pool: shmpool.MemoryPool) -> float:
    array: shmpool.SharedArray = pool.ndarray((10, 3), numpy.float32, order="F")
    array[:] = 1.0
    copy = pool.share(numpy.arange(5))
    allocation: shmpool.MemoryAlloc = array.allocation
    memory: shmpool.ArrayMemory = shmpool.ArrayMemory(allocation)
    shared: bool = copy.shared
    with pool.arena() as arena:
        scratch = arena.ndarray(4)
        total = float(scratch.sum()) + float(array.sum()) + len(memory) * shared
        del scratch
    return total
