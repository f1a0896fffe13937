"""The package feels like one: a version, slicing and ``with`` on allocations, a useful repr
for every class, errors that name the argument, and a destroyed pool that says so."""

import re

import pytest

import shmpool


def test_the_package_has_a_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", shmpool.__version__)


def test_allocations_slice_like_bytes(pool):
    a = pool.alloc(16)
    a[0:4] = b"abcd"
    a[4] = 0x65
    assert a[0:5] == b"abcde" and a[4] == 0x65 and a[-16] == 0x61
    assert a[0:6:2] == b"ace"
    with pytest.raises(ValueError):
        a[0:4] = b"toolong"
    with pytest.raises(IndexError):
        a[16]
    a.free()  # BufferError if slicing had left a view alive


def test_with_frees_the_allocation_on_exit(pool):
    with pool.alloc(64) as a:
        a[0:2] = b"hi"
        ident = a.id
    assert not pool.allocation_exists(ident)
    with pool.alloc(64) as b:
        b.free()
    assert pool.current_allocations == 0


def test_every_class_has_a_useful_repr(pool_name):
    with shmpool.MemoryPool(4 * 2**20, pool_name) as created:
        assert "created here" in repr(created)
        attached = shmpool.MemoryPool.attach(created.serialize())
        assert "attached" in repr(attached)
        a = created.alloc(10)
        assert "2 allocations" not in repr(created.get_allocations())
        assert "1 allocations" in repr(created.get_allocations())
        arena = created.arena()
        arena.alloc(8)
        assert pool_name in repr(arena) and "1 allocations" in repr(arena)
        arena.free_all()
        a.free()
        attached.detach()
        assert "detached" in repr(attached)


def test_bad_arguments_give_one_clear_error_naming_them(pool, pool_name):
    with pytest.raises(ValueError, match="alloc_type"):
        pool.alloc(8, 256)
    with pytest.raises(ValueError, match="alloc_type"):
        pool.alloc_blocking(8, 0, -1)
    with pytest.raises(ValueError, match="alloc_type"):
        pool.get_allocations(300)
    with pytest.raises(ValueError, match="mode"):
        shmpool.MemoryPool(2**20, pool_name, mode=-1)
    with pytest.raises(ValueError, match="mode"):
        shmpool.MemoryPool(2**20, pool_name, mode=0o10000)


def test_a_destroyed_pool_says_so_everywhere(pool_name):
    created = shmpool.MemoryPool(4 * 2**20, pool_name)
    other = shmpool.MemoryPool.attach(created.serialize())
    created.destroy()
    for call in (lambda: other.alloc(8), lambda: other.get_allocations()):
        with pytest.raises(shmpool.PoolDestroyedError, match="destroyed"):
            call()


def test_with_never_replaces_an_exception_and_tolerates_a_free_inside(pool):
    # Review of 6828d0c: a view alive at the end of a block that raised replaced the exception
    # with BufferError; a free through a clone inside made __exit__ raise.
    with pytest.raises(KeyError):
        with pool.alloc(64) as a:
            view = memoryview(a)
            raise KeyError("inside")
    view.release()
    a.free()
    with pool.alloc(64) as b:
        b.clone().free()
    with pytest.raises(BufferError):
        with pool.alloc(64) as c:
            view = memoryview(c)
    view.release()
    c.free()


def test_user_alloc_types_accept_any_integer_kind(pool):
    import numpy

    assert shmpool.AllocType(numpy.int64(200)) == 200
    assert shmpool.AllocType(numpy.uint8(1)) is shmpool.AllocType.CHANNEL
    with pytest.raises(ValueError):
        shmpool.AllocType(4.0)
