"""A program written for Dragon's ``dragon.managed_memory`` runs through ``shmpool.dragon``
unchanged: pools known by a 64-bit uid, serialized descriptors between processes, allocation
types as ``AllocType`` members, Dragon's exception names, and the names Dragon users meet that
have nothing to do here (accepted, documented as compatibility)."""

import multiprocessing
import os

import pytest

from shmpool import dragon
from mp_workers import dragon_alloc_blocking_and_report, dragon_producer


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
        # Dragon converts them as unsigned: a negative count overflows.
        with pytest.raises((TypeError, OverflowError)):
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


@pytest.fixture
def dragon_pool(pool_name):
    """A Dragon pool of Dragon's smallest test size (32 KiB), destroyed afterwards."""
    created = dragon.MemoryPool(32768, pool_name, 5, None)
    yield created
    try:
        created.destroy()
    except dragon.DragonPoolError:
        pass


def test_a_dragon_pool_as_small_as_dragons_is_made_and_reports_its_size(dragon_pool, pool_name):
    assert dragon_pool.size == 32768
    with pytest.raises(dragon.DragonPoolCreateFail):
        dragon.MemoryPool(128, pool_name + "-tiny", 1, None)


def test_a_dragon_pool_holds_its_whole_size_once_and_nothing_beside_it(dragon_pool):
    whole = dragon_pool.alloc(32768)
    with pytest.raises(TimeoutError):
        dragon_pool.alloc_blocking(32768, timeout=0.2)
    with pytest.raises(dragon.DragonPoolAllocationNotAvailable, match="DRAGON_DYNHEAP_REQUESTED_SIZE_NOT_AVAILABLE"):
        dragon_pool.alloc(1)
    with pytest.raises(dragon.DragonPoolError):
        dragon_pool.alloc_blocking(1, timeout=0)
    whole.free()
    # Counted as a buddy allocator counts: 10000 bytes take 16 KiB, so two fill the pool.
    first, second = dragon_pool.alloc(10000), dragon_pool.alloc(10000)
    with pytest.raises(dragon.DragonPoolAllocationNotAvailable):
        dragon_pool.alloc(5000)
    first.free()
    second.free()
    assert dragon_pool.alloc(32768).size == 32768


def test_a_dragon_pool_budget_is_shared_by_attached_handles(dragon_pool):
    other = dragon.MemoryPool.attach(dragon_pool.serialize())
    held = dragon_pool.alloc(20000)
    with pytest.raises(TimeoutError):
        other.alloc_blocking(20000, timeout=0.1)
    held.free()
    other.alloc(20000).free()
    other.detach()


def test_max_allocations_bounds_the_live_allocations(pool_name):
    mpool = dragon.MemoryPool(2**20, pool_name, 2, max_allocations=3)
    try:
        held = [mpool.alloc(60) for _ in range(3)]
        with pytest.raises(dragon.DragonPoolError):
            mpool.alloc(60)
        held.pop().free()
        held.append(mpool.alloc(60))
    finally:
        mpool.destroy()


def test_uids_take_any_unsigned_64_bit_value_and_negatives_overflow(pool_name):
    for uid in [0, 2**63 + 1234, 2**64 - 1]:
        mpool = dragon.MemoryPool(32768, pool_name, uid, None)
        assert mpool.muid == uid
        mpool.destroy()
    with pytest.raises(OverflowError):
        dragon.MemoryPool(32768, pool_name, -1, None)
    with pytest.raises(OverflowError):
        dragon.MemoryPool(-12, pool_name, 1, None)
    import shmpool

    with pytest.raises(ValueError):
        shmpool.MemoryPool(-12, pool_name)


def test_dragon_allocations_compare_by_contents_and_hash_alike(dragon_pool):
    first, second, longer = dragon_pool.alloc(5), dragon_pool.alloc(5), dragon_pool.alloc(15)
    first[0:5] = b"hello"
    second[0:5] = b"hello"
    longer[0:5] = b"hello"
    assert first == second and hash(first) == hash(second) and hash(first) >= 0
    assert first != longer
    assert not first.is_the_same_as(second)
    assert first.is_the_same_as(dragon_pool.alloc_from_id(first.id))
    second[0:1] = b"j"
    assert first != second
    assert isinstance(first, dragon.MemoryAlloc)


def test_shmpool_allocations_keep_identity_equality(pool):
    first, second = pool.alloc(5), pool.alloc(5)
    first[0:5] = second[0:5] = b"hello"
    assert first != second
    assert first == pool.alloc_from_id(first.id)


def test_a_free_under_a_live_view_waits_for_the_view(dragon_pool):
    mem = dragon_pool.alloc(4096)
    view = mem.get_memview()
    offset = mem.offset
    mem.free()
    view[0:4] = b"live"  # the memory is still the allocation's
    again = dragon_pool.alloc(4096)
    assert again.offset != offset
    assert dragon_pool.get_allocations().num_allocs == 2
    with pytest.raises(dragon.DragonMemoryError):
        mem.get_memview()
    with pytest.raises(dragon.DragonMemoryError):
        mem.free()
    view.release()
    assert dragon_pool.get_allocations().num_allocs == 1
    again.free()
    assert dragon_pool.get_allocations().num_allocs == 0


def power_of_two_parts(size):
    """The powers of two that add up to ``size`` (its set bits), largest first."""
    return [1 << bit for bit in reversed(range(size.bit_length())) if size >> bit & 1]


def test_any_power_of_two_allocations_adding_up_to_the_size_fit(pool_name):
    # A size that is no power of two, filled exactly, down to 1-byte allocations.
    size = 32768 + 8192 + 512 + 7
    mpool = dragon.MemoryPool(size, pool_name, 3, None)
    try:
        for sizes in [power_of_two_parts(size), power_of_two_parts(size - 8) + [1] * 8]:
            held = [mpool.alloc(part) for part in sizes]
            assert sum(mem.size for mem in held) == size
            with pytest.raises(dragon.DragonPoolAllocationNotAvailable):
                mpool.alloc(1)
            with pytest.raises(dragon.DragonPoolAllocationNotAvailable):
                mpool.alloc(0)
            for mem in held:
                mem.free()
        assert mpool.alloc(size).size == size
    finally:
        mpool.destroy()


def test_a_free_under_a_live_view_gives_its_budget_to_another_process_at_once(dragon_pool):
    mem = dragon_pool.alloc(32768)
    view = mem.get_memview()
    view[:] = b"\x5a" * 32768
    offset = mem.offset
    mem.free()  # put off until the view goes, but its budget is free now
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(
        target=dragon_alloc_blocking_and_report, args=(dragon_pool.serialize(), 32768, out)
    )
    child.start()
    outcome, detail = out.get(timeout=60)
    child.join(60)
    assert (outcome, child.exitcode) == ("ok", 0), detail
    # The memory under the view was not handed out meanwhile.
    assert detail != offset
    assert bytes(view) == b"\x5a" * 32768
    # The put-off free gives nothing back a second time: with half the budget held, the whole
    # of it stays out of reach once the view is released.
    half = dragon_pool.alloc(16384)
    view.release()
    assert dragon_pool.get_allocations().num_allocs == 1
    with pytest.raises(dragon.DragonPoolAllocationNotAvailable):
        dragon_pool.alloc(32768)
    half.free()
    dragon_pool.alloc(32768).free()


def test_a_put_off_free_after_detach_or_destroy_raises_nothing(dragon_pool, pool_name):
    handle = dragon.MemoryPool.attach(dragon_pool.serialize())
    mem = handle.alloc(64)
    view = mem.get_memview()
    mem.free()
    handle.detach()  # allowed under a live view in Dragon's semantics
    view.release()  # the put-off free happens through the pool itself
    assert dragon_pool.get_allocations().num_allocs == 0
    mem = dragon_pool.alloc(64)
    view = mem.get_memview()
    mem.free()
    dragon_pool.destroy()
    view.release()  # the pool is gone: the free fails quietly
    assert not os.path.exists(f"/dev/shm/shmpool-{pool_name}")


def test_attaching_a_destroyed_dragon_pool_is_an_attach_failure(pool_name):
    mpool = dragon.MemoryPool(32768, pool_name, 1, None)
    descriptor = mpool.serialize()
    mpool.destroy()
    with pytest.raises(dragon.DragonPoolAttachFail):
        dragon.MemoryPool.attach(descriptor)
