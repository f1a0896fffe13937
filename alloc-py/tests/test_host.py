"""The host side never kills a process: pools are set against /dev/shm's free space."""

import os
import subprocess
import sys

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


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 32 MiB tmpfs (as Docker's default /dev/shm), mounted for one test."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(tmp_path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.decode().strip()}")
    yield tmp_path
    subprocess.run(["umount", str(tmp_path)], check=True)


FILL = """
import sys, shmpool
pool = shmpool.MemoryPool.attach_by_name(sys.argv[1], dir=sys.argv[2])
held = []
try:
    while True:
        a = pool.alloc(2**20)
        memoryview(a)[:] = b"z" * 2**20
        held.append(a)
except shmpool.PoolFullError:
    print(len(held))
"""


def test_a_full_filesystem_fails_allocations_instead_of_killing_the_writer(small_tmpfs, pool_name):
    """Seen failing before: a pool larger than its tmpfs was created, and the process writing
    into it died of SIGBUS."""
    with pytest.raises(shmpool.PoolCreateError, match="overcommit"):
        shmpool.MemoryPool(256 * 2**20, pool_name, dir=small_tmpfs)
    with shmpool.MemoryPool(256 * 2**20, pool_name, dir=small_tmpfs, overcommit=True) as pool:
        writer = subprocess.run(
            [sys.executable, "-c", FILL, pool_name, str(small_tmpfs)], capture_output=True, text=True
        )
        assert writer.returncode == 0, f"the writer died: {writer.returncode} {writer.stderr}"
        assert 16 <= int(writer.stdout) < 32
        assert pool.current_allocations == int(writer.stdout)
    assert not os.listdir(small_tmpfs)


@pytest.mark.parametrize("n", [1, 4097, 100_000_000])
def test_a_pool_made_for_its_data_holds_it_in_one_allocation(pool_name, n):
    """Seen failing before: MemoryPool(n + 2**20).alloc(n) failed for n = 100 MB."""
    with shmpool.MemoryPool.for_data(n, pool_name, overcommit=True) as pool:
        assert pool.size == shmpool.MemoryPool.size_for_data(n) >= n
        pool.alloc(n).free()
