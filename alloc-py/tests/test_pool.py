"""MemoryPool: creation, attaching, descriptors, properties, destroy, and bad input."""

import math
import os
import pickle
import signal
import threading
import time

import pytest

import shmpool
from conftest import fill, in_room_of
from shmpool import AllocType


def test_create_attach_and_serialize_share_one_pool(pool, pool_name):
    assert pool.name == pool_name
    assert pool.size >= 16 * 2**20
    by_name = shmpool.MemoryPool.attach_by_name(pool_name)
    by_descriptor = shmpool.MemoryPool.attach(pool.serialize())
    a = pool.alloc(100)
    assert by_name.allocation_exists(a.id) and by_descriptor.allocation_exists(a.id)
    assert len(pool.serialize()) <= 128
    by_name.detach()
    with pytest.raises(shmpool.PoolDetachedError):
        by_name.alloc(10)
    a.free()


def test_context_manager_destroys_what_it_created_and_detaches_what_it_attached(pool_name):
    with shmpool.MemoryPool(4 * 2**20, pool_name) as created:
        with shmpool.MemoryPool.attach_by_name(pool_name) as attached:
            attached.alloc(10)
        with pytest.raises(shmpool.PoolDetachedError):
            attached.current_allocations
        assert created.current_allocations == 1
    assert not os.path.exists(f"/dev/shm/shmpool-{pool_name}")
    with pytest.raises(shmpool.PoolNotFoundError) as caught:
        shmpool.MemoryPool.attach_by_name(pool_name)
    assert isinstance(caught.value, FileNotFoundError)


def test_pools_pickle_to_their_descriptor(pool):
    again = pickle.loads(pickle.dumps(pool))
    a = again.alloc(10)
    assert pool.allocation_exists(a.id)
    a.free()


def test_properties_follow_usage(pool):
    assert pool.current_allocations == 0
    before = pool.free_space
    blocks = [pool.alloc(4096) for _ in range(10)]
    assert pool.current_allocations == 10
    assert pool.free_space <= before - 10 * 4096
    assert 0 < pool.utilization < 100
    assert pool.max_allocations > 100_000
    assert isinstance(pool.free_blocks, dict)
    assert pool.owner_uid == os.geteuid()
    assert pool.uid == pool.muid and isinstance(pool.muid, int)
    for a in blocks:
        a.free()
    assert pool.check()["live_allocations"] == 0


def test_manifest_lists_allocations_by_type(pool):
    data = pool.alloc(10)
    channel = pool.alloc(10, AllocType.CHANNEL)
    everything = pool.get_allocations()
    assert len(everything) == everything.num_allocs == 2
    assert set(everything) == {data.id, channel.id}
    channels = pool.get_allocations(AllocType.CHANNEL)
    assert channels.num_allocs == 1
    assert channels.alloc_id(0) == channel.id and channels.alloc_type(0) == AllocType.CHANNEL
    assert pool.allocation_exists(AllocType.CHANNEL, channel.id)
    assert not pool.allocation_exists(AllocType.DATA, channel.id)
    assert pool.alloc_from_id(channel.id) == channel
    assert pool.get_alloc_by_id(AllocType.CHANNEL, channel.id) == channel
    with pytest.raises(shmpool.InvalidAllocationError):
        pool.get_alloc_by_id(AllocType.DATA, channel.id)
    with pytest.raises(IndexError):
        channels.alloc_id(5)


@pytest.mark.parametrize("name", ["", "a/b", "..", "../etc", ".hidden", "nul\0x", "x" * 201])
def test_bad_names_raise_invalid_name(name):
    with pytest.raises(shmpool.InvalidNameError) as caught:
        shmpool.MemoryPool(4 * 2**20, name)
    assert isinstance(caught.value, ValueError)


def test_a_taken_name_is_file_exists(pool, pool_name):
    with pytest.raises(shmpool.PoolExistsError) as caught:
        shmpool.MemoryPool(4 * 2**20, pool_name)
    assert isinstance(caught.value, FileExistsError) and isinstance(caught.value, shmpool.PoolCreateError)


@pytest.mark.parametrize("size", [-1, 0, 100])
def test_impossible_pool_sizes(pool_name, size):
    with pytest.raises((ValueError, shmpool.PoolCreateError)):
        shmpool.MemoryPool(size, pool_name)


@pytest.mark.parametrize("bad", [None, "64", 1.5, [64]])
def test_bad_argument_types_raise_type_error(pool, bad):
    with pytest.raises(TypeError):
        pool.alloc(bad)


@pytest.mark.parametrize("size", [-1, -(2**70)])
def test_negative_sizes_raise_value_error(pool, size):
    with pytest.raises(ValueError):
        pool.alloc(size)


@pytest.mark.parametrize("size", [2**40, 2**64, 2**100])
def test_sizes_that_never_fit_raise_pool_full(pool, size):
    with pytest.raises(shmpool.PoolFullError) as caught:
        pool.alloc(size)
    assert isinstance(caught.value, MemoryError)
    assert pool.current_allocations == 0


@pytest.mark.parametrize("timeout", [-1.0, math.nan])
def test_bad_timeouts_raise_value_error(pool, timeout):
    with pytest.raises(ValueError):
        pool.alloc_blocking(64, timeout=timeout)


@pytest.mark.parametrize("timeout", [1e19, 1e300, math.inf])
def test_huge_timeouts_wait_as_long_as_it_takes(pool, timeout):
    # 1e19 s fitted a Duration but overflowed the clock: a panic (seen failing at 141d99e).
    got = pool.alloc_blocking(64, timeout=timeout)
    got.free()
    held = fill(pool)
    victim = held.pop()
    threading.Timer(0.05, victim.free).start()
    got = pool.alloc_blocking(2**20, timeout=timeout)
    assert in_room_of(got, victim)


def test_alloc_blocking_times_out_on_time_and_tries_once_with_zero(pool):
    held = fill(pool)
    with pytest.raises(shmpool.PoolTimeoutError) as caught:
        pool.alloc_blocking(2**20, timeout=0)
    assert isinstance(caught.value, TimeoutError)
    started = time.monotonic()
    with pytest.raises(shmpool.PoolTimeoutError):
        pool.alloc_blocking(2**20, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 3


def test_alloc_blocking_releases_the_gil_and_is_woken_by_a_free(pool):
    held = fill(pool)
    victim = held.pop()
    ticks = []

    def free_later():
        for _ in range(5):
            ticks.append(time.monotonic())  # runs only if the waiter released the GIL
            time.sleep(0.02)
        victim.free()

    freer = threading.Thread(target=free_later)
    freer.start()
    got = pool.alloc_blocking(2**20, timeout=20)
    freer.join()
    assert len(ticks) == 5
    assert in_room_of(got, victim)


def test_ctrl_c_interrupts_alloc_blocking(pool):
    held = fill(pool)
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool.alloc_blocking(2**20)  # forever, but for Ctrl-C
    assert time.monotonic() - started < 5
    timer.join()


def test_destroyed_pools_fail_cleanly_everywhere(pool_name):
    pool = shmpool.MemoryPool(4 * 2**20, pool_name)
    other = shmpool.MemoryPool.attach_by_name(pool_name)
    a = pool.alloc(10)
    descriptor = a.serialize()
    pool.destroy()
    with pytest.raises(shmpool.PoolDestroyedError):
        other.alloc(10)
    with pytest.raises(shmpool.PoolDestroyedError):
        other.current_allocations
    with pytest.raises(shmpool.PoolDestroyedError):
        a.free()
    with pytest.raises(shmpool.PoolDestroyedError):
        shmpool.MemoryAlloc.attach(descriptor)


@pytest.mark.parametrize("junk", [b"", b"\x00" * 40, os.urandom(64), b"SHMD" + b"\x01" * 60])
def test_junk_descriptors_raise_invalid_descriptor(junk):
    with pytest.raises(shmpool.InvalidDescriptorError) as caught:
        shmpool.MemoryPool.attach(junk)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(shmpool.InvalidDescriptorError):
        shmpool.MemoryAlloc.attach(junk)


def test_tampered_allocation_descriptors_are_refused(pool):
    a = pool.alloc(10)
    good = bytearray(a.serialize())
    good[30] ^= 0xFF  # inside the id
    with pytest.raises(shmpool.InvalidDescriptorError):
        shmpool.MemoryAlloc.attach(bytes(good))
    assert pool.allocation_exists(a.id)


def test_arena_frees_everything_it_handed_out(pool):
    with pool.arena() as arena:
        for size in (1, 100, 10_000):
            arena.alloc(size)
        assert len(arena) == 3
        assert pool.current_allocations == 3
    assert pool.current_allocations == 0


def test_reclaim_dead_reports_nothing_when_everyone_lives(pool):
    pool.alloc(10)
    assert pool.reclaim_dead() == []


def test_dragon_names_work_as_a_drop_in(pool_name):
    from shmpool import dragon

    with dragon.MemoryPool(4 * 2**20, pool_name) as mpool:
        mem = mpool.alloc(512, dragon.AllocType.DATA)
        view = mem.get_memview()
        view[:5] = b"hello"
        assert mpool.allocation_exists(dragon.AllocType.DATA, mem.id)
        got = mpool.get_alloc_by_id(dragon.AllocType.DATA, mem.id)
        assert bytes(got.get_memview()[:5]) == b"hello"
        del view
        with pytest.raises(dragon.DragonPoolAllocationNotAvailable):
            mpool.alloc(2**40)
        with pytest.raises(dragon.DragonPoolError):
            mpool.alloc(2**40)
        mem.free()
    with pytest.raises(dragon.DragonPoolAttachFail):
        dragon.MemoryPool.attach_by_name(pool_name)
    with pytest.raises(dragon.DragonPoolCreateFail):
        dragon.MemoryPool(4 * 2**20, "bad/name")
