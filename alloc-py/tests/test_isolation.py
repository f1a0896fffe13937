"""Isolation: no path of pure Python reaches freed memory.

Every handle of one allocation in this process shares one count of live buffer views, however
the handle was made (clone, alloc_from_id, get_alloc_by_id, pickling, MemoryAlloc.attach, a
realloc result, an arena): a free or a moving realloc through any of them is refused with
BufferError while a view made through any of them is alive, and the memory is not reused."""

import gc
import os
import pickle

import numpy
import pytest

import shmpool

# Ways to make a second handle on the allocation `a` of `pool`.
TWINS = {
    "clone": lambda pool, a: a.clone(),
    "clone-window": lambda pool, a: a.clone(8, 16),
    "alloc_from_id": lambda pool, a: pool.alloc_from_id(a.id),
    "get_alloc_by_id": lambda pool, a: pool.get_alloc_by_id(a.alloc_type, a.id),
    "pickle": lambda pool, a: pickle.loads(pickle.dumps(a)),
    "attach": lambda pool, a: shmpool.MemoryAlloc.attach(a.serialize()),
    "attached-pool": lambda pool, a: shmpool.MemoryPool.attach(pool.serialize()).alloc_from_id(a.id),
}

# Ways to take a buffer view of a handle.
VIEWS = {
    "memoryview": memoryview,
    "get_memview": lambda h: h.get_memview(),
    "numpy": lambda h: numpy.frombuffer(h, dtype=numpy.uint8),
}


def assert_not_reused(pool, a, reference):
    """`a` is still live and holds `reference`; new allocations land elsewhere."""
    assert pool.allocation_exists(a.id)
    assert bytes(memoryview(a)) == reference
    fresh = [pool.alloc(a.size) for _ in range(200)]
    assert all(f.offset != a.offset for f in fresh)
    for f in fresh:
        f.free()


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
@pytest.mark.parametrize("twin", TWINS.values(), ids=TWINS.keys())
def test_a_view_through_any_handle_blocks_a_free_through_any_other(pool, twin, view):
    a = pool.alloc(64)
    memoryview(a)[:] = bytes(range(64))
    other = twin(pool, a)
    held = view(other)
    for handle in (a, other):
        with pytest.raises(BufferError):
            handle.free()
        with pytest.raises(BufferError):
            pool.free(handle) if handle.pool == pool else handle.free()
    assert_not_reused(pool, a, bytes(range(64)))
    del held
    gc.collect()
    other.free()
    assert not pool.allocation_exists(a.id)
    with pytest.raises(shmpool.InvalidAllocationError):
        memoryview(a)


@pytest.mark.parametrize("twin", TWINS.values(), ids=TWINS.keys())
def test_a_view_of_the_original_blocks_a_free_through_a_twin(pool, twin):
    a = pool.alloc(64)
    memoryview(a)[:] = b"k" * 64
    other = twin(pool, a)
    held = memoryview(a)
    with pytest.raises(BufferError):
        other.free()
    assert_not_reused(pool, a, b"k" * 64)
    held.release()
    other.free()
    assert not pool.allocation_exists(a.id)


def test_a_moving_realloc_through_a_clone_is_refused_while_the_original_is_viewed(pool):
    a = pool.alloc(64)
    memoryview(a)[:] = b"r" * 64
    held = memoryview(a)
    with pytest.raises(BufferError):
        pool.realloc(a.clone(), 64 * 1024)
    with pytest.raises(BufferError):
        pool.realloc(pool.alloc_from_id(a.id), 64 * 1024)
    assert_not_reused(pool, a, b"r" * 64)
    held.release()
    moved = pool.realloc(a.clone(), 64 * 1024)
    assert bytes(memoryview(moved)[:64]) == b"r" * 64
    moved.free()


def test_arena_free_all_keeps_an_allocation_viewed_through_a_clone(pool):
    arena = pool.arena()
    a = arena.alloc(64)
    memoryview(a)[:] = b"z" * 64
    held = memoryview(a.clone())
    with pytest.raises(BufferError):
        arena.free_all()
    assert_not_reused(pool, a, b"z" * 64)
    held.release()
    arena.free_all()
    assert not pool.allocation_exists(a.id)


@pytest.mark.parametrize("size", [64, 256 * 1024], ids=["small", "large"])
def test_a_stale_view_never_sees_the_next_allocation(pool, size):
    """The reported sequence: view a clone, free the original, allocate again."""
    a = pool.alloc(size)
    mv = memoryview(a.clone())
    with pytest.raises(BufferError):
        a.free()
    b = pool.alloc(size)
    assert b.offset != a.offset
    mv[:8] = b"stale!!!"
    assert bytes(memoryview(b)[:8]) != b"stale!!!"
    pool.check()
    mv.release()
    a.free()
    b.free()
    pool.check()


def test_views_of_many_handles_are_counted_together(pool):
    a = pool.alloc(64)
    handles = [a.clone(), pool.alloc_from_id(a.id), pickle.loads(pickle.dumps(a))]
    views = [memoryview(h) for h in handles]
    for v in views[:-1]:
        v.release()
    with pytest.raises(BufferError):
        a.free()
    views[-1].release()
    handles[1].free()
    for h in [a] + handles:
        with pytest.raises(shmpool.InvalidAllocationError):
            h.free()


def test_attaching_another_users_pool_needs_asking_for_it(pool):
    """Root too is held to the owner check (seen failing before: root attached anything, and
    Python had no way to ask for another owner's pool)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the pool file to another uid")
    path = f"/dev/shm/shmpool-{pool.name}"
    os.chown(path, 4242, 4242)
    try:
        with pytest.raises(shmpool.PoolPermissionError):
            shmpool.MemoryPool.attach_by_name(pool.name)
        with pytest.raises(shmpool.PoolPermissionError):
            shmpool.MemoryPool.attach_by_name(pool.name, owner_uid=1234)
        assert shmpool.MemoryPool.attach_by_name(pool.name, owner_uid=4242).name == pool.name
        assert shmpool.MemoryPool.attach_by_name(pool.name, any_owner=True).name == pool.name
    finally:
        os.chown(path, 0, 0)


def test_the_uid_given_at_creation_is_the_pools_identifier(pool_name):
    """Dragon's `uid` argument is the pool's unique identifier (its `muid`), any value up to
    2**64 - 1. Seen failing before: it was silently dropped, and `uid` read back the owner's
    user id instead."""
    for uid in (2**63 + 1234, 7, 2**64 - 1):
        pool = shmpool.MemoryPool(1 << 20, f"{pool_name}-{uid % 1000}", uid)
        try:
            assert pool.uid == pool.muid == uid
            assert shmpool.MemoryPool.attach(pool.serialize()).muid == uid
            assert pool.owner_uid == os.geteuid()
        finally:
            pool.destroy()
    with pytest.raises(OverflowError):
        shmpool.MemoryPool(1 << 20, pool_name, -1)
    with pytest.raises(OverflowError):
        shmpool.MemoryPool(1 << 20, pool_name, 2**64)
