"""Real child processes (multiprocessing, spawn and fork): allocations by pickle and by
descriptor bytes, a blocking allocation woken by a child's free, and a child killed with
SIGKILL whose allocations reclaim_dead gives back."""

import multiprocessing
import os
import signal

import pytest

import mp_workers
import shmpool
from conftest import fill, in_room_of

METHODS = ["spawn", "fork"]


@pytest.mark.parametrize("method", METHODS)
def test_children_write_allocations_received_by_pickle(pool, method):
    context = multiprocessing.get_context(method)
    allocations = [pool.alloc(4096) for _ in range(4)]
    children = [context.Process(target=mp_workers.fill_pickled, args=(a, i + 1)) for i, a in enumerate(allocations)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    for i, a in enumerate(allocations):
        assert bytes(memoryview(a)) == bytes([i + 1]) * 4096


@pytest.mark.parametrize("method", METHODS)
def test_children_write_allocations_received_as_descriptor_bytes(pool, method):
    context = multiprocessing.get_context(method)
    a = pool.alloc(10_000)
    child = context.Process(target=mp_workers.fill_from_descriptor, args=(a.serialize(), 7))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert bytes(memoryview(a)) == b"\x07" * 10_000


def test_a_blocking_allocation_is_woken_by_a_free_in_a_child(pool):
    held = fill(pool)
    victim = held.pop()
    child = multiprocessing.get_context("spawn").Process(
        target=mp_workers.free_from_descriptor, args=(victim.serialize(), 0.3)
    )
    child.start()
    got = pool.alloc_blocking(2**20, timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert in_room_of(got, victim)


def test_a_child_killed_with_sigkill_is_reclaimed(pool):
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    child = context.Process(target=mp_workers.allocate_and_hang, args=(pool.serialize(), 25, ready))
    child.start()
    pid, ids = ready.get(timeout=30)
    assert pool.current_allocations == 25
    os.kill(pid, signal.SIGKILL)
    child.join(30)
    freed = pool.reclaim_dead()
    assert sorted(entry[0] for entry in freed) == sorted(ids)
    assert all(owner == pid and size == 1000 for _, owner, size in freed)
    assert pool.current_allocations == 0
    pool.check()
