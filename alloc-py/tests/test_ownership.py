"""Ownership follows the data. Every allocation has an owner: the process that made it, the
process it was handed to (a receiver adopts what it unpickles or attaches), or the pool itself.
``reclaim_dead()`` frees what dead processes owned, and nothing else."""

import multiprocessing
import os

import pytest

import shmpool
from conftest import fill
from mp_workers import attach_and_wait, give_to_pool_and_exit, make_result


def test_results_returned_by_pool_workers_survive_the_workers(pool):
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, maxtasksperchild=1) as workers:
        results = workers.starmap(make_result, [(pool, value) for value in range(1, 5)])
    assert pool.reclaim_dead() == [], "the results were adopted by this process"
    for value, result in enumerate(results, start=1):
        assert result.owner == os.getpid()
        assert bytes(result.get_memview()) == bytes([value]) * 4096
        result.free()


def test_what_a_dead_process_gave_to_the_pool_survives_it_and_nothing_else_does(pool):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=give_to_pool_and_exit, args=(pool, queue))
    child.start()
    kept, lost = queue.get(timeout=60)
    child.join(60)
    freed = [entry[0] for entry in pool.reclaim_dead()]
    assert freed == [lost]
    survivor = pool.alloc_from_id(kept)
    assert survivor.owner is None, "owned by the pool"
    survivor.free()


def test_set_owner_hands_an_allocation_to_another_attached_process(pool):
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    child = context.Process(target=attach_and_wait, args=(pool, ready, done))
    child.start()
    try:
        assert ready.wait(60)
        handed = pool.alloc(128)
        handed.set_owner(child.pid)
        assert handed.owner == child.pid
    finally:
        done.set()
        child.join(60)
    reclaimed = [entry[0] for entry in pool.reclaim_dead()]
    assert handed.id in reclaimed, "freed with its owner"
    with pytest.raises(shmpool.InvalidAllocationError):
        handed.get_memview()


def test_set_owner_to_a_process_not_attached_is_a_clear_error_and_changes_nothing(pool):
    a = pool.alloc(64)
    with pytest.raises(ValueError, match="no attached process"):
        a.set_owner(2**22 + 12345)
    assert a.owner == os.getpid()
    with pytest.raises((ValueError, OverflowError)):
        a.set_owner(-1)
    a.give_to_pool()
    assert a.owner is None
    a.free()


def test_repair_runs_on_a_pool_nobody_else_uses_and_refuses_otherwise(pool):
    a = pool.alloc(100)
    assert pool.repair() == {}, "nothing to repair"
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    child = context.Process(target=attach_and_wait, args=(pool, ready, done))
    child.start()
    try:
        assert ready.wait(60)
        with pytest.raises(shmpool.PoolError, match=str(child.pid)):
            pool.repair()
    finally:
        done.set()
        child.join(60)
    pool.reclaim_dead()
    assert pool.repair() == {}
    assert bytes(a.get_memview()) is not None
    a.free()


def test_repair_refuses_while_a_thread_of_this_process_waits_in_alloc_blocking(pool):
    # Review of 861d75f: repair "repaired" the waiter slot of a live thread blocked in
    # alloc_blocking.
    import threading
    import time

    held = fill(pool)
    waiter = threading.Thread(target=lambda: pool.alloc_blocking(2**20, timeout=5).free())
    waiter.start()
    deadline = time.monotonic() + 5
    while pool.waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(shmpool.PoolError, match="alloc_blocking"):
        pool.repair()
    held.pop().free()
    waiter.join(10)
    for a in held:
        a.free()
    assert pool.repair() == {}
