"""Fork, waiting and crashes, with real processes: a forked child never reuses its parent's
cached blocks; cached allocation keeps working while another process waits in alloc_blocking;
a worker killed at a random moment of its allocation churn is reclaimed online, leaving a pool
that checks clean and serves its whole free space again.

The first two were seen failing before heap v2 (see the regression evidence branch): the child
was handed its parent's cached blocks, and the cached path panicked (PanicException) while
anyone waited."""

import multiprocessing
import os
import random
import signal
import struct
import threading
import time

import mp_workers
import shmpool
from conftest import fill


def wait_for(pid, seconds=10):
    """Reaps child ``pid``, killing it if it has not exited within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} hung")
        time.sleep(0.001)


def test_a_forked_child_never_gets_the_blocks_its_parent_cached(pool):
    warm = pool.alloc(64)  # the handle's cache now holds a batch of the parent's blocks
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            offsets = [pool.alloc(64).offset for _ in range(8)]
            os.write(write_end, struct.pack("<8Q", *offsets))
        finally:
            os._exit(0)
    os.close(write_end)
    wait_for(pid)
    data = os.read(read_end, 64)
    os.close(read_end)
    assert len(data) == 64, "the child reported its 8 offsets"
    child = set(struct.unpack("<8Q", data))
    parent = [pool.alloc(64) for _ in range(8)]
    assert not child & {a.offset for a in parent}, "parent and child were handed the same blocks"
    assert pool.current_allocations == 1 + 8 + 8
    for a in parent + [warm]:
        a.free()
    # The child died holding 8 allocations (and a cache): reclaim gives them back.
    freed = pool.reclaim_dead()
    assert len(freed) == 8 and all(owner == pid for _, owner, _ in freed)
    assert pool.current_allocations == 0
    pool.check()


def test_a_forked_child_can_use_and_drop_an_inherited_handle_without_touching_the_parents_cache(pool):
    a = pool.alloc(64)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            # Use, then let Python drop the inherited handle's objects at exit.
            b = pool.alloc(64)
            b.free()
        except BaseException:  # noqa: BLE001 - report through the exit status
            status = 1
        os._exit(status)
    assert os.waitstatus_to_exitcode(wait_for(pid)) == 0
    a.free()
    pool.reclaim_dead()
    stats = pool.check()
    assert stats["live_allocations"] == 0


def test_cached_allocation_works_while_a_forked_process_waits_in_alloc_blocking(pool_name):
    with shmpool.MemoryPool(16 * 2**20, pool_name) as pool:
        held = fill(pool)
        held.pop().free()  # one 1 MiB hole: room for small blocks, not for the waiter
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                waiter = shmpool.MemoryPool.attach_by_name(pool_name)
                got = waiter.alloc_blocking(2 * 2**20, timeout=30)
                got.free()
                status = 0
            finally:
                os._exit(status)
        deadline = time.monotonic() + 10
        while pool.waiters == 0:
            assert time.monotonic() < deadline, "the child never started waiting"
            time.sleep(0.01)
        for _ in range(200):
            pool.alloc(64).free()  # cached pairs while someone waits: no panic
        for a in held:
            a.free()  # the waiter gets its 2 MiB
        assert os.waitstatus_to_exitcode(wait_for(pid, 40)) == 0, "the waiter was served"
        pool.check()


def test_cached_allocation_works_while_another_thread_waits(pool_name):
    with shmpool.MemoryPool(16 * 2**20, pool_name) as pool:
        held = fill(pool)
        held.pop().free()
        waiter_handle = shmpool.MemoryPool.attach_by_name(pool_name)
        outcome = {}

        def wait():
            try:
                outcome["waiter"] = waiter_handle.alloc_blocking(2 * 2**20, timeout=30)
            except BaseException as error:  # noqa: BLE001 - reported below
                outcome["waiter"] = error

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        for _ in range(200):
            pool.alloc(64).free()
        for a in held:
            a.free()
        waiter.join(40)
        assert isinstance(outcome.get("waiter"), shmpool.MemoryAlloc), outcome
        outcome["waiter"].free()
        waiter_handle.detach()
        pool.check()


def test_a_huge_timeout_waits_or_raises_but_never_panics(pool):
    held = fill(pool)
    done = {}

    def wait():
        try:
            done["got"] = pool.alloc_blocking(2**20, timeout=1e20)
        except BaseException as error:  # noqa: BLE001 - reported below
            done["got"] = error

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    held.pop().free()
    waiter.join(30)
    assert isinstance(done.get("got"), shmpool.MemoryAlloc), done
    done["got"].free()
    for a in held:
        a.free()


def test_a_worker_killed_mid_operation_is_reclaimed_online(pool):
    context = multiprocessing.get_context("fork")
    rng = random.Random(7)
    for round_ in range(6):
        ready = context.Queue()
        worker = context.Process(target=mp_workers.churn, args=(pool.serialize(), round_, ready))
        worker.start()
        ready.get(timeout=30)
        time.sleep(rng.uniform(0.001, 0.05))  # somewhere in the middle of its churn
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(30)
        # Online: this process keeps allocating while it reclaims.
        mine = [pool.alloc(rng.choice([16, 700, 5000, 70_000])) for _ in range(20)]
        pool.reclaim_dead()
        for a in mine:
            a.free()
    stats = pool.check()
    assert stats["live_allocations"] == 0
    everything = pool.free_space
    whole = pool.alloc(everything)  # the whole free space is one allocation again
    assert whole.size == everything
    whole.free()
    pool.check()
