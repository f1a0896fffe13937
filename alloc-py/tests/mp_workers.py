"""Functions run in child processes by test_processes.py (importable under spawn)."""

import os
import time

import shmpool


def fill_pickled(allocation, value):
    """Receives an allocation by pickle, fills it with ``value``."""
    view = memoryview(allocation)
    view[:] = bytes([value]) * len(view)
    del view


def fill_from_descriptor(descriptor, value):
    """Receives an allocation's descriptor bytes, attaches, fills it with ``value``."""
    allocation = shmpool.MemoryAlloc.attach(descriptor)
    view = memoryview(allocation)
    view[:] = bytes([value]) * len(view)
    del view


def free_from_descriptor(descriptor, delay):
    """Frees the allocation a descriptor names, after ``delay`` seconds."""
    time.sleep(delay)
    shmpool.MemoryAlloc.attach(descriptor).free()


def allocate_and_hang(pool_descriptor, count, ready):
    """Allocates ``count`` blocks (owned by this process), reports, then waits to be killed."""
    pool = shmpool.MemoryPool.attach(pool_descriptor)
    held = [pool.alloc(1000) for _ in range(count)]
    ready.put((os.getpid(), [a.id for a in held]))
    time.sleep(60)


def churn(pool_descriptor, seed, ready):
    """Allocates, fills, checks and frees allocations of mixed sizes until killed."""
    import random

    pool = shmpool.MemoryPool.attach(pool_descriptor)
    rng = random.Random(seed)
    live = []
    ready.put(os.getpid())
    while True:
        try:
            a = pool.alloc(rng.choice([16, 48, 100, 700, 2000, 5000, 40_000, 300_000]))
            memoryview(a)[:1] = b"x"
            live.append(a)
        except shmpool.PoolFullError:
            pass
        if len(live) > 40 or (live and rng.random() < 0.4):
            live.pop(rng.randrange(len(live))).free()


def fill_in_memfd_pool(pool, allocation, value, done):
    """Receives a memfd pool and one of its allocations by pickle (the pool first), fills the
    allocation with ``value`` and reports the pool's name and whether it is a memfd."""
    view = memoryview(allocation)
    view[:] = bytes([value]) * len(view)
    del view
    done.put((pool.name, pool.memfd))


def fill_through_either(pool, again, allocation, value, done):
    """As ``fill_in_memfd_pool``, given two handles of one pool: one mapping here too."""
    assert pool.fileno() == again.fileno()
    fill_in_memfd_pool(again, allocation, value, done)


def serve_from_queue(inbox, outbox):
    """Gets a memfd pool, then allocation after allocation, through ``inbox`` (a queue, so the
    pool's descriptor travels over multiprocessing's resource sharer); sums each allocation's
    bytes and frees it; ``None`` ends."""
    pool = inbox.get()
    while (allocation := inbox.get()) is not None:
        outbox.put(sum(memoryview(allocation)))
        allocation.free()
    outbox.put(("done", pool.memfd))


def dragon_producer(pool_ser, count, out):
    """A Dragon-style producer: attaches the pool by its serialized descriptor, allocates
    ``count`` channel buffers, fills each with its index and sends their serialized descriptors
    (written as Dragon code would be, through ``shmpool.dragon`` only)."""
    from shmpool import dragon

    mpool = dragon.MemoryPool.attach(pool_ser)
    for index in range(count):
        mem = mpool.alloc(4096, dragon.AllocType.CHANNEL_BUFFER)
        mem.get_memview()[:4] = index.to_bytes(4, "little")
        out.put(mem.serialize())
    mpool.detach()


def make_result(pool, value):
    """A multiprocessing.Pool task: allocates a result in the shared pool and returns it (by
    pickle) from a worker that goes on living or exits normally afterwards."""
    result = pool.alloc(4096)
    result.get_memview()[:] = bytes([value]) * 4096
    return result


def give_to_pool_and_exit(pool, queue):
    """Allocates two buffers, gives one to the pool, reports both ids, and dies without
    any clean-up (as a crash would)."""
    kept = pool.alloc(256)
    kept.give_to_pool()
    lost = pool.alloc(256)
    queue.put((kept.id, lost.id))
    queue.close()
    queue.join_thread()
    os._exit(0)


def attach_and_wait(pool, ready, done):
    """Attaches the pool (it arrives by pickle), says so, and waits."""
    pool.alloc(16)
    ready.set()
    done.wait(60)


def dragon_alloc_blocking_and_report(pool_ser, size, out):
    """Attaches a Dragon pool, waits (up to 30 s) for an allocation of ``size`` bytes, fills it
    with 0xFF, and reports ``("ok", offset)`` (or ``("failed", error)``) before freeing it."""
    from shmpool import dragon

    mpool = dragon.MemoryPool.attach(pool_ser)
    try:
        mem = mpool.alloc_blocking(size, timeout=30)
    except Exception as error:  # reported to the test, which fails with it
        out.put(("failed", repr(error)))
        return
    mem.get_memview()[:] = b"\xff" * size
    out.put(("ok", mem.offset))
    mem.free()
    mpool.detach()
