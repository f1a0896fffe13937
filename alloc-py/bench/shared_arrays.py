"""Shared numpy arrays against their peers, all measured in the same run (issue 10):

1. A 100 MB float32 array to 4 workers and back: split in quarters, each worker (a warm
   ProcessPoolExecutor of 4, spawn) doubles its quarter in place or in its copy and returns
   it, and the parent ends with the doubled array. The whole task's time (median of 5) and the
   bytes pickled for it (arguments and results), for
   - shmpool.SharedArray: the quarters (views) pickled, the workers write the parent's memory;
   - multiprocessing.shared_memory + numpy: the segment's name, shape, dtype and bounds sent,
     each worker attaches the segment and lays an ndarray over it;
   - plain pickling: the quarters pickled (protocol 5), the results copied back in.
2. Creating an array: pool.ndarray((1000,), float) against numpy.empty((1000,), float), as
   creations alone (arrays kept, freed outside the timing) and as create + free cycles.
3. Pickled size of a SharedArray and of views of it, by array size.

Run with `.venv/bin/python alloc-py/bench/shared_arrays.py` (after `scripts/python-env`);
prints markdown tables.
"""

import concurrent.futures
import multiprocessing
import os
import pickle
import statistics
import time
import timeit
from multiprocessing import shared_memory

import numpy

import shmpool

ELEMENTS = 25_000_000  # 100 MB of float32
WORKERS = 4
ROUNDS = 5


def quarters(length, parts=WORKERS):
    step = length // parts
    return [(i * step, length if i == parts - 1 else (i + 1) * step) for i in range(parts)]


# Worker side (importable under spawn).


def warm_up(pool):
    """Imports numpy and attaches the pool in a worker, so that no round pays for it."""
    return os.getpid(), pool.name


def double_shared(view):
    view *= 2
    return view


def double_segment(name, shape, dtype, start, stop):
    # Attaching registers the segment with the resource tracker again: harmless here, since
    # spawned workers share the parent's tracker, which unlinks it only if the parent does not.
    segment = shared_memory.SharedMemory(name=name)
    array = numpy.ndarray(shape, dtype, buffer=segment.buf)
    array[start:stop] *= 2
    del array
    segment.close()
    return start, stop


def double_copy(quarter):
    quarter *= 2
    return quarter


# Parent side.


def timed(task, rounds=ROUNDS):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        task()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def handoff(pool, executor):
    bounds = quarters(ELEMENTS)
    source = numpy.random.default_rng(1).random(ELEMENTS, dtype=numpy.float32)
    rows = []

    shared = pool.share(source)

    def shared_task():
        views = list(executor.map(double_shared, [shared[a:b] for a, b in bounds]))
        assert all(numpy.shares_memory(view, shared) for view in views)

    shared_task()  # warm: every worker attaches the pool once
    shared[...] = source
    seconds = timed(shared_task)
    assert numpy.array_equal(shared, source * 2**ROUNDS)
    sent = sum(len(pickle.dumps(shared[a:b], protocol=5)) for a, b in bounds)
    back = sent  # the workers return the views they got
    rows.append(("shmpool.SharedArray", seconds, sent + back))
    allocation = shared.allocation
    del shared
    allocation.free()

    segment = shared_memory.SharedMemory(create=True, size=source.nbytes)
    try:
        array = numpy.ndarray(source.shape, source.dtype, buffer=segment.buf)
        array[...] = source
        arguments = [(segment.name, array.shape, array.dtype.str, a, b) for a, b in bounds]

        def segment_task():
            list(executor.map(double_segment, *zip(*arguments)))

        seconds = timed(segment_task)
        assert numpy.array_equal(array, source * 2**ROUNDS)
        sent = sum(len(pickle.dumps(argument, protocol=5)) for argument in arguments)
        back = sum(len(pickle.dumps((a, b), protocol=5)) for a, b in bounds)
        rows.append(("multiprocessing.shared_memory + numpy", seconds, sent + back))
        del array
    finally:
        segment.close()
        segment.unlink()

    plain = source.copy()

    def pickle_task():
        for (a, b), result in zip(bounds, executor.map(double_copy, [plain[a:b] for a, b in bounds])):
            plain[a:b] = result

    seconds = timed(pickle_task)
    assert numpy.array_equal(plain, source * 2**ROUNDS)
    sent = sum(len(pickle.dumps(plain[a:b], protocol=5)) for a, b in bounds)
    rows.append(("plain pickling (numpy arrays)", seconds, 2 * sent))
    return rows


def creation(pool):
    shape = (1000,)
    batch = 1000
    make_shared, make_empty = pool.ndarray, numpy.empty

    def batches(make, keep):
        best = float("inf")
        for _ in range(30):
            start = time.perf_counter()
            arrays = [make(shape, float) for _ in range(batch)]
            best = min(best, (time.perf_counter() - start) / batch)
            keep(arrays)
        return best * 1e9

    def free_all(arrays):
        allocations = [array.allocation for array in arrays]
        arrays.clear()
        for allocation in allocations:
            allocation.free()

    created_shared = batches(make_shared, free_all)
    created_empty = batches(make_empty, list.clear)
    cycle = "a = make(shape, float); m = a.allocation; del a; m.free()"
    number = 20_000
    cycle_shared = min(timeit.repeat(cycle, globals={"make": make_shared, "shape": shape}, number=number, repeat=7))
    cycle_empty = min(
        timeit.repeat("a = make(shape, float); del a", globals={"make": make_empty, "shape": shape}, number=number, repeat=7)
    )
    return created_shared, created_empty, cycle_shared / number * 1e9, cycle_empty / number * 1e9


def pickled_sizes(pool):
    rows = []
    for elements in (1000, 1_000_000, ELEMENTS):
        array = pool.ndarray(elements, numpy.float32)
        grid = array.reshape(-1, 1000)
        sizes = {
            "array": len(pickle.dumps(array, protocol=5)),
            "slice": len(pickle.dumps(array[10:-10:3], protocol=5)),
            "transposed 2-D view": len(pickle.dumps(grid.T[::-1], protocol=5)),
        }
        rows.append((array.nbytes, sizes))
        allocation = array.allocation
        del array, grid
        allocation.free()
    return rows


def main():
    name = f"bench-arrays-{os.getpid()}"
    pool = shmpool.MemoryPool.for_data(2 * ELEMENTS * 4 + 64 * 2**20, name)
    try:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=context) as executor:
            list(executor.map(warm_up, [pool] * WORKERS))
            rows = handoff(pool, executor)
        created_shared, created_empty, cycle_shared, cycle_empty = creation(pool)
        sizes = pickled_sizes(pool)
        assert pool.reclaim_dead() == [] and pool.check()["live_allocations"] == 0
    finally:
        pool.destroy()

    base = rows[0][1]
    print(f"### A 100 MB float32 array to {WORKERS} workers and back (median of {ROUNDS})\n")
    print("| how | time | time / SharedArray's | bytes pickled |")
    print("|---|---|---|---|")
    for how, seconds, pickled in rows:
        print(f"| {how} | {seconds * 1e3:.1f} ms | {seconds / base:.2f}× | {pickled:,} |")
    print("\n### Creating a (1000,) float64 array\n")
    print("| operation | pool.ndarray | numpy.empty | ratio |")
    print("|---|---|---|---|")
    print(f"| create (best of 30 batches of 1000) | {created_shared:.0f} ns | {created_empty:.0f} ns | {created_shared / created_empty:.2f}× |")
    print(f"| create + free (best of 7 × 20000) | {cycle_shared:.0f} ns | {cycle_empty:.0f} ns | {cycle_shared / cycle_empty:.2f}× |")
    print("\n### Pickled size (protocol 5)\n")
    print("| array | " + " | ".join(sizes[0][1]) + " |")
    print("|---" * (1 + len(sizes[0][1])) + "|")
    for nbytes, by_kind in sizes:
        print(f"| {nbytes:,} bytes | " + " | ".join(f"{size} B" for size in by_kind.values()) + " |")


if __name__ == "__main__":
    main()
