"""A program written for Dragon's ``dragon.managed_memory`` runs through ``shmpool.dragon``
unchanged: pools known by a 64-bit uid, serialized descriptors between processes, allocation
types as ``AllocType`` members, Dragon's exception names, and the names Dragon users meet that
have nothing to do here (accepted, documented as compatibility)."""

import multiprocessing
import os

import pytest

from shmpool import dragon
from mp_workers import dragon_producer


def test_a_dragon_style_program_runs_end_to_end(pool_name):
    uid = 2**40 + 17
    mpool = dragon.MemoryPool(8 * 2**20, pool_name, uid, pre_alloc_blocks=[4, 2])
    try:
        assert mpool.muid == uid and mpool.is_local
        pool_ser = mpool.serialize()
        assert dragon.MemoryPool.serialized_uid_fname(pool_ser) == (uid, pool_name)
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        producer = context.Process(target=dragon_producer, args=(pool_ser, 5, out))
        producer.start()
        received = [dragon.MemoryAlloc.attach(out.get(timeout=60)) for _ in range(5)]
        producer.join(60)
        assert producer.exitcode == 0
        for index, mem in enumerate(received):
            assert bytes(mem.get_memview()[:4]) == index.to_bytes(4, "little")
        allocations = mpool.get_allocations()
        assert allocations.num_allocs == 5
        for index in range(allocations.num_allocs):
            assert allocations.alloc_type(index) is dragon.AllocType.CHANNEL_BUFFER
            assert mpool.allocation_exists(dragon.AllocType.CHANNEL_BUFFER, allocations.alloc_id(index))
        for mem in received:
            mpool.free(mem)
        assert mpool.get_allocations().num_allocs == 0
    finally:
        mpool.destroy()


def test_user_allocation_types_are_alloc_type_members_too(pool):
    user = pool.alloc(64, 200)
    known = pool.alloc(64, dragon.AllocType.BOOTSTRAP)
    types = [pool.get_allocations().alloc_type(i) for i in range(2)]
    assert sorted(types) == [dragon.AllocType.BOOTSTRAP, 200]
    assert all(isinstance(t, dragon.AllocType) for t in types)
    assert dragon.AllocType(200) is dragon.AllocType(200) and dragon.AllocType(200).name == "USER_200"
    assert user.alloc_type == 200 and known.alloc_type is dragon.AllocType.BOOTSTRAP
    with pytest.raises(ValueError):
        dragon.AllocType(256)


def test_attaching_garbage_raises_what_dragon_code_catches():
    for garbage in [b"garbage", bytes(64), b""]:
        with pytest.raises(dragon.DragonPoolAttachFail):
            dragon.MemoryPool.attach(garbage)
        with pytest.raises(ValueError):
            dragon.MemoryPool.attach(garbage)


def test_detach_with_serialize_keeps_the_descriptor(pool_name):
    with dragon.MemoryPool(4 * 2**20, pool_name, 9) as mpool:
        handle = dragon.MemoryPool.attach(mpool.serialize())
        handle.detach(serialize=True)
        again = dragon.MemoryPool.attach(handle.serialize())
        assert again.muid == 9
        again.detach(serialize=False)
        with pytest.raises(dragon.DragonPoolError):
            again.serialize()
        with pytest.raises(dragon.DragonPoolError):
            again.alloc(8)


def test_pre_alloc_blocks_must_be_sizes(pool_name):
    for bad in [[-1], ["4"], 3]:
        with pytest.raises((TypeError, ValueError)):
            dragon.MemoryPool(4 * 2**20, pool_name, pre_alloc_blocks=bad)
    assert not os.path.exists(f"/dev/shm/shmpool-{pool_name}")


def test_dragon_pool_attributes_are_accepted_as_the_fourth_argument(pool_name):
    # Issue 12: Dragon code passes the pool attributes positionally (the seed's `mattr=None`).
    with dragon.MemoryPool(4 * 2**20, pool_name, 77, object()) as mpool:
        assert mpool.muid == 77


def test_attaching_a_destroyed_pool_raises_what_dragon_code_catches(pool_name):
    # Issue 12: Dragon expects DragonPoolAttachFail; it is a PoolDestroyedError too.
    import shmpool

    mpool = dragon.MemoryPool(4 * 2**20, pool_name, 78)
    descriptor = mpool.serialize()
    mpool.destroy()
    with pytest.raises(dragon.DragonPoolAttachFail):
        dragon.MemoryPool.attach(descriptor)
    with pytest.raises(shmpool.PoolDestroyedError):
        dragon.MemoryPool.attach(descriptor)
