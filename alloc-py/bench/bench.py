"""Python-level benchmarks of shmpool, with the peers measured in the same run.

Run with `scripts/bench` or `.venv/bin/python alloc-py/bench/bench.py` (after
`scripts/python-env`). Prints a markdown table (medians of repeated timeit runs).
"""

import multiprocessing
import os
import statistics
import time
import timeit
from multiprocessing import shared_memory

import numpy

import shmpool


def per_call(statement, setup_globals, number, repeat=7):
    times = timeit.repeat(statement, globals=setup_globals, number=number, repeat=repeat)
    return statistics.median(times) / number * 1e9


def blocker(descriptor, rounds, connection):
    """Child: block on the full pool, report the monotonic time it woke, give the block back."""
    pool = shmpool.MemoryPool.attach(descriptor)
    for _ in range(rounds):
        connection.send("blocking")
        allocation = pool.alloc_blocking(2**20, timeout=10)
        connection.send(time.monotonic_ns())
        allocation.free()
        connection.recv()  # the parent took the block back


def wake_latency(pool, rounds=100):
    held = []
    while True:
        try:
            held.append(pool.alloc(2**20))
        except shmpool.PoolFullError:
            break
    parent, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(target=blocker, args=(pool.serialize(), rounds, child_end))
    child.start()
    latencies = []
    for _ in range(rounds):
        assert parent.recv() == "blocking"
        time.sleep(0.005)  # let the child reach the futex
        victim = held.pop()
        freed_at = time.monotonic_ns()
        victim.free()
        woke = parent.recv()
        latencies.append((woke - freed_at) / 1000)
        while True:
            try:
                held.append(pool.alloc(2**20))
                break
            except shmpool.PoolFullError:
                time.sleep(0.0001)
        parent.send(1)
    child.join(30)
    for allocation in held:
        allocation.free()
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[len(latencies) * 99 // 100]


def main():
    name = f"bench-py-{os.getpid()}"
    with shmpool.MemoryPool(256 * 2**20, name) as pool:
        pair = per_call("a = alloc(64); a.free()", {"alloc": pool.alloc}, 200_000)
        pair_pool_free = per_call("free(alloc(64))", {"alloc": pool.alloc, "free": pool.free}, 200_000)
        numpy_view = per_call(
            "a = alloc(4096); v = frombuffer(a, dtype=uint8); v[:] = 1; del v; a.free()",
            {"alloc": pool.alloc, "frombuffer": numpy.frombuffer, "uint8": numpy.uint8},
            50_000,
        )
        numpy_empty = per_call("v = empty(4096, dtype=uint8); v[:] = 1; del v", {"empty": numpy.empty, "uint8": numpy.uint8}, 50_000)
        shm = per_call(
            "s = SharedMemory(create=True, size=4096); s.close(); s.unlink()",
            {"SharedMemory": shared_memory.SharedMemory},
            2_000,
            repeat=5,
        )
    with shmpool.MemoryPool(8 * 2**20, name + "-wake") as pool:
        median, p99 = wake_latency(pool)
    print("| operation | time | note |")
    print("|---|---|---|")
    print(f"| `a = pool.alloc(64); a.free()` | {pair:.0f} ns | target ≤ 150 ns |")
    print(f"| `pool.free(pool.alloc(64))` | {pair_pool_free:.0f} ns | |")
    print(f"| alloc 4 KiB + `numpy.frombuffer` view + write + free | {numpy_view:.0f} ns | |")
    print(f"| peer: `numpy.empty(4096)` + write | {numpy_empty:.0f} ns | process-private memory |")
    print(f"| peer: `multiprocessing.shared_memory` create + close + unlink (4 KiB) | {shm / 1000:.1f} µs | one segment per object |")
    print(f"| cross-process wake-up of `alloc_blocking` after a free (median / p99) | {median:.0f} / {p99:.0f} µs | GIL released while waiting |")


if __name__ == "__main__":
    main()
