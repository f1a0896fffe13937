"""Pools in anonymous memfds (issue 8): sealed, passed as file descriptors (pickling through
multiprocessing, Unix sockets), gone when the last holder lets go; and huge pages."""

import errno
import multiprocessing
import os
import socket
import subprocess
import sys

import pytest

import mp_workers
import shmpool

MIB = 2**20


def holders(name):
    """Processes that map or hold open memfd pool ``name``, from all of /proc."""
    memfd = f"/memfd:shmpool-{name} "
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as maps:
                if memfd in maps.read():
                    found.append((int(pid), "maps it"))
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if (os.readlink(f"/proc/{pid}/fd/{fd}") + " ").startswith(memfd):
                    found.append((int(pid), "holds it open"))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_memfd_pool_reaches_children_by_pickling(pool_name, method):
    context = multiprocessing.get_context(method)
    done = context.Queue()
    with shmpool.MemoryPool.create_memfd(4 * MIB, pool_name) as pool:
        assert pool.memfd and not os.path.exists(f"/dev/shm/shmpool-{pool_name}")
        a = pool.alloc(3000)
        child = context.Process(target=mp_workers.fill_in_memfd_pool, args=(pool, a, 9, done))
        child.start()
        assert done.get(timeout=60) == (pool_name, True)
        child.join(60)
        assert child.exitcode == 0
        assert bytes(memoryview(a)) == bytes([9]) * 3000
        a.free()
        pool.check()
    del a  # (an allocation handle keeps its pool mapped)
    assert holders(pool_name) == []


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_two_handles_of_one_memfd_pool_reach_a_child_together(pool_name, method):
    # Review of issue 8 (seen failing before the fix: spawn raised "ValueError: bad value(s) in
    # fds_to_keep", the pool's descriptor being listed once per handle). The second handle
    # passes a duplicate, held until the Process is closed.
    context = multiprocessing.get_context(method)
    done = context.Queue()
    with shmpool.MemoryPool.create_memfd(4 * MIB, pool_name) as pool:
        again = shmpool.MemoryPool.from_fd(pool.fileno())
        a = pool.alloc(3000)
        child = context.Process(target=mp_workers.fill_through_either, args=(pool, again, a, 5, done))
        child.start()
        assert done.get(timeout=60) == (pool_name, True)
        child.join(60)
        assert child.exitcode == 0
        assert bytes(memoryview(a)) == bytes([5]) * 3000
        a.free()
        pool.check()
        again.detach()
    del a
    child.close()
    assert holders(pool_name) == []


def test_a_memfd_pool_and_its_allocations_travel_through_a_queue(pool_name):
    context = multiprocessing.get_context("spawn")
    inbox, outbox = context.Queue(), context.Queue()
    child = context.Process(target=mp_workers.serve_from_queue, args=(inbox, outbox))
    child.start()
    with shmpool.MemoryPool.create_memfd(4 * MIB, pool_name) as pool:
        inbox.put(pool)
        for size in (10, 1000, 100_000):
            a = pool.alloc(size)
            memoryview(a)[:] = b"\x02" * size
            inbox.put(a)
            assert outbox.get(timeout=60) == 2 * size
        inbox.put(None)
        assert outbox.get(timeout=60) == ("done", True)
        child.join(60)
        assert child.exitcode == 0
        assert pool.check()["live_allocations"] == 0, "the child freed them"


RECEIVE = """
import socket, sys, shmpool
sock = socket.socket(fileno=int(sys.argv[1]))
pool = shmpool.MemoryPool.receive(sock)
a = shmpool.MemoryAlloc.attach(sock.recv(128))
print(pool.name, pool.memfd, bytes(memoryview(a)[:5]).decode())
a.free()
"""


def test_send_and_receive_over_a_unix_socket(pool_name):
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    with shmpool.MemoryPool.create_memfd(4 * MIB, pool_name) as pool:
        child = subprocess.Popen(
            [sys.executable, "-c", RECEIVE, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        theirs.close()
        a = pool.alloc(64)
        memoryview(a)[:5] = b"hello"
        pool.send(ours)
        ours.send(a.serialize())
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        assert out.decode().split() == [pool_name, "True", "hello"]
        assert pool.check()["live_allocations"] == 0
        again = shmpool.MemoryPool.from_fd(pool.fileno())
        assert again.memfd and again.name == pool_name
        again.detach()
    ours.close()
    del a
    assert holders(pool_name) == []


ATTACH_ALONE = """
import sys, shmpool
try:
    shmpool.MemoryAlloc.attach(bytes.fromhex(sys.argv[1]))
except shmpool.PoolAttachError as error:
    print(type(error).__name__, error)
"""


def test_an_allocation_of_a_memfd_pool_needs_the_pool_first(pool_name):
    with shmpool.MemoryPool.create_memfd(4 * MIB, pool_name) as pool:
        a = pool.alloc(64)
        out = subprocess.run(
            [sys.executable, "-c", ATTACH_ALONE, a.serialize().hex()], capture_output=True, check=True
        ).stdout.decode()
        assert out.startswith("PoolAttachError") and "has not received" in out, out
        a.free()


def test_a_memfd_pool_cannot_be_resized(pool_name):
    with shmpool.MemoryPool.create_memfd(4 * MIB, pool_name) as pool:
        for size in (0, 8 * MIB):
            with pytest.raises(PermissionError):
                os.ftruncate(pool.fileno(), size)
        assert os.fstat(pool.fileno()).st_size == pool.size
        pool.check()
    with pytest.raises(ValueError):
        shmpool.MemoryPool(4 * MIB, pool_name, memfd=True, dir="/tmp")


def free_huge_pages():
    base = "/sys/kernel/mm/hugepages/hugepages-2048kB/"
    try:
        with open(base + "free_hugepages") as free, open(base + "resv_hugepages") as reserved:
            return int(free.read()) - int(reserved.read())
    except OSError:
        return 0


def test_too_few_huge_pages_is_a_clear_error(pool_name):
    with open("/proc/sys/vm/nr_hugepages") as total:
        too_many = (int(total.read()) + 1) * 2 * MIB
    with pytest.raises(shmpool.PoolCreateError, match="nr_hugepages"):
        shmpool.MemoryPool.create_memfd(too_many, pool_name, huge_pages=True)
    assert holders(pool_name) == []


def test_a_memfd_pool_of_huge_pages(pool_name):
    if free_huge_pages() < 8:
        pytest.skip("fewer than 8 free huge pages (as root: sysctl vm.nr_hugepages=32)")
    with shmpool.MemoryPool.create_memfd(15 * MIB, pool_name, huge_pages=True) as pool:
        assert pool.size == 16 * MIB
        a = pool.alloc(3 * MIB)
        memoryview(a)[-1:] = b"z"
        with open("/proc/self/smaps") as smaps:
            text = smaps.read()
        entry = text[text.index(f"memfd:shmpool-{pool_name}") :]
        page = next(line for line in entry.splitlines() if line.startswith("KernelPageSize:"))
        assert page.split()[1] == "2048"
        a.free()
        pool.check()
