"""Fixtures: every test pool has a unique name starting with ``test-`` (file
``/dev/shm/shmpool-test-*``, swept by scripts/test) and is destroyed after the test."""

import itertools
import os

import pytest

import shmpool

_counter = itertools.count()


def unique_name(label):
    return f"test-py-{label}-{os.getpid()}-{next(_counter)}"


@pytest.fixture
def pool_name(request):
    name = unique_name(request.node.name[:40].replace("[", "-").replace("]", ""))
    yield name
    path = f"/dev/shm/shmpool-{name}"
    if os.path.exists(path):
        try:
            shmpool.MemoryPool.attach_by_name(name).destroy()
        except shmpool.PoolError:
            os.unlink(path)
    assert not os.path.exists(path)


@pytest.fixture
def pool(pool_name):
    with shmpool.MemoryPool(16 * 2**20, pool_name) as created:
        yield created


def fill(pool, size=2**20):
    """Allocates blocks of ``size`` until the pool is full; returns them."""
    held = []
    while True:
        try:
            held.append(pool.alloc(size))
        except shmpool.PoolFullError:
            return held


def in_room_of(got, freed):
    """Whether allocation ``got`` starts in the pages ``freed`` gave back (in a full pool, the
    only room). Not always at its first page: a blocked allocation that tries again as the free
    ends may find that page still marked by the freer, and claims never wait for another
    participant, so it takes the fit that starts a page later when there is one."""
    return freed.offset <= got.offset < freed.offset + freed.size
