"""MemoryAlloc: the buffer protocol done right, numpy, clone/copy/clear, identity, pickling."""

import gc
import pickle

import numpy
import pytest

import shmpool


def test_memoryviews_are_zero_copy_and_writable(pool):
    a = pool.alloc(64)
    view = memoryview(a)
    assert view.nbytes == 64 and not view.readonly
    view[:4] = b"abcd"
    other = a.get_memview()
    assert bytes(other[:4]) == b"abcd"  # same memory, not a copy
    again = pool.alloc_from_id(a.id)
    assert bytes(memoryview(again)[:4]) == b"abcd"


def test_zero_byte_allocations_are_distinct_and_viewable(pool):
    first, second = pool.alloc(0), pool.alloc(0)
    assert first != second and first.id != second.id
    assert memoryview(first).nbytes == 0


def test_numpy_round_trip_is_writable_and_shared(pool):
    a = pool.alloc(8 * 1000)
    array = numpy.frombuffer(a, dtype=numpy.float64)
    assert array.flags.writeable and array.size == 1000
    array[:] = numpy.arange(1000)
    seen = numpy.frombuffer(pool.alloc_from_id(a.id), dtype=numpy.float64)
    assert seen.sum() == sum(range(1000))


def test_free_and_detach_refuse_while_views_are_alive(pool):
    a = pool.alloc(64)
    view = memoryview(a)
    array = numpy.frombuffer(a, dtype=numpy.uint8)
    with pytest.raises(BufferError):
        a.free()
    with pytest.raises(BufferError):
        a.detach()
    with pytest.raises(BufferError):
        pool.detach()
    assert pool.allocation_exists(a.id), "a refused free changes nothing"
    del view, array
    gc.collect()
    a.free()
    assert not pool.allocation_exists(a.id)


def test_a_view_keeps_the_memory_mapped_after_every_handle_is_gone(pool_name):
    pool = shmpool.MemoryPool(4 * 2**20, pool_name)
    a = pool.alloc(16)
    view = memoryview(a)
    view[:] = b"x" * 16
    del a, pool  # the view holds the allocation, which holds the mapping
    gc.collect()
    assert bytes(view) == b"x" * 16
    view.release()


def test_double_free_and_use_after_free_raise_invalid_allocation(pool):
    a = pool.alloc(10)
    twin = pool.alloc_from_id(a.id)
    a.free()
    for action in (a.free, twin.free, lambda: memoryview(twin), lambda: a.clear()):
        with pytest.raises(shmpool.InvalidAllocationError) as caught:
            action()
        assert isinstance(caught.value, ValueError)
    with pytest.raises(shmpool.InvalidAllocationError):
        pool.alloc_from_id(a.id)


def test_clone_copy_and_clear(pool, pool_name):
    a = pool.alloc(100)
    memoryview(a)[:] = bytes(range(100))
    window = a.clone(10, 20)
    assert window.size == 20 and window.offset == a.offset + 10 and window.id == a.id
    assert bytes(memoryview(window)) == bytes(range(10, 30))
    with pytest.raises(ValueError):
        a.clone(90, 20)
    copy = a.copy()
    assert copy.id != a.id and bytes(memoryview(copy)) == bytes(range(100))
    a.clear(0, 50)
    assert bytes(memoryview(a)[:50]) == bytes(50) and bytes(memoryview(copy)[:50]) == bytes(range(50))
    with shmpool.MemoryPool(4 * 2**20, pool_name + "-other") as other:
        moved = a.copy(pool=other, timeout=1.0)
        assert moved.pool.name == other.name
        assert bytes(memoryview(moved)[50:]) == bytes(range(50, 100))
        del moved
        gc.collect()


def test_equality_and_hash_follow_pool_and_id(pool):
    a = pool.alloc(10)
    same = pool.alloc_from_id(a.id)
    other = pool.alloc(10)
    assert a == same and hash(a) == hash(same)
    assert a != other and a != "not an allocation"
    assert len({a, same, other}) == 2


def test_allocations_pickle_and_serialize_to_descriptors(pool):
    a = pool.alloc(32, shmpool.AllocType.CHANNEL_BUFFER)
    memoryview(a)[:5] = b"hello"
    for revived in (pickle.loads(pickle.dumps(a)), shmpool.MemoryAlloc.attach(a.serialize())):
        assert revived == a
        assert revived.alloc_type == shmpool.AllocType.CHANNEL_BUFFER
        assert bytes(memoryview(revived)[:5]) == b"hello"


def test_realloc_keeps_the_bytes(pool):
    a = pool.alloc(100)
    memoryview(a)[:] = b"z" * 100
    bigger = pool.realloc(a, 10_000)
    assert bigger.size == 10_000 and bytes(memoryview(bigger)[:100]) == b"z" * 100
    with pytest.raises(shmpool.PoolFullError):
        pool.realloc(bigger, 2**40)
    assert pool.allocation_exists(bigger.id), "a failed realloc keeps the original"


def test_tracemalloc_accounts_pool_allocations_when_enabled(pool):
    import tracemalloc

    def traced():
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(inclusive=True, domain=shmpool.TRACEMALLOC_DOMAIN)]
        )
        return sum(trace.size for trace in snapshot.traces)

    tracemalloc.start()
    try:
        untraced = pool.alloc(777)
        shmpool.trace_allocations(True)
        a = pool.alloc(12_345)
        b = pool.alloc(100)
        assert traced() == 12_445
        a.free()
        assert traced() == 100
        b.free()
        assert traced() == 0
        untraced.free()
    finally:
        shmpool.trace_allocations(False)
        tracemalloc.stop()


def test_freeing_through_another_pool_is_refused(pool, pool_name):
    a = pool.alloc(10)
    with shmpool.MemoryPool(4 * 2**20, pool_name + "-foreign") as other:
        with pytest.raises(shmpool.InvalidAllocationError):
            other.free(a)
        with pytest.raises(shmpool.InvalidAllocationError):
            other.realloc(a, 20)
    assert pool.allocation_exists(a.id)
    pool.free(a)
    assert not pool.allocation_exists(a.id)
