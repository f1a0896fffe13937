"""The host side never kills a process: pools are set against /dev/shm's free space."""

import os

import pytest

import shmpool


def shm_free():
    stat = os.statvfs("/dev/shm")
    return stat.f_bavail * stat.f_frsize


def test_a_pool_larger_than_the_free_space_is_refused_with_the_way_out(pool_name):
    """Seen failing before: such a pool was created, and a process writing into it died of
    SIGBUS once the space ran out."""
    too_big = shm_free() + 2**30
    with pytest.raises(shmpool.PoolCreateError) as caught:
        shmpool.MemoryPool(too_big, pool_name)
    said = str(caught.value)
    assert "/dev/shm" in said and "overcommit" in said and "--shm-size" in said
    assert not os.path.exists(f"/dev/shm/shmpool-{pool_name}")
    with shmpool.MemoryPool(too_big, pool_name, overcommit=True) as sparse:
        a = sparse.alloc(2**20)
        memoryview(a)[:4] = b"used"
        assert sparse.free_space > shm_free()
        a.free()


def test_reserve_allocates_the_whole_file(pool_name):
    with shmpool.MemoryPool(8 * 2**20, pool_name, reserve=True) as pool:
        blocks = os.stat(f"/dev/shm/shmpool-{pool_name}").st_blocks * 512
        assert blocks >= 8 * 2**20
        pool.alloc(2**20).free()
    with pytest.raises(ValueError):
        shmpool.MemoryPool(8 * 2**20, pool_name, reserve=True, overcommit=True)
