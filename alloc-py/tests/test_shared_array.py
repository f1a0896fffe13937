"""Shared numpy arrays: pool.ndarray / pool.share give SharedArrays over one allocation, which
pickle (with their views) as a few hundred bytes naming the memory, and unpickle in other
processes over the same memory; the allocation cannot be freed under an array, an arena frees
its arrays, a receiver adopts what it unpickles, and numpy stays optional."""

import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import subprocess
import sys

import numpy
import pytest

import array_workers
import shmpool

METHODS = ["spawn", "fork", "forkserver"]
MAX_PICKLE = 512


@pytest.fixture
def pool(pool):
    """conftest's pool, and after the test: every allocation left is freed, which fails
    (BufferError) if an array of the test outlived it, and the heap is checked."""
    yield pool
    gc.collect()
    for allocation_id in pool.get_allocations():
        pool.alloc_from_id(allocation_id).free()
    assert pool.check()["live_allocations"] == 0


def address(array):
    return array.__array_interface__["data"][0]


# Creation


@pytest.mark.parametrize("shape", [(), 0, 7, (3, 0), (4, 5), (2, 3, 4), [6, 1]])
@pytest.mark.parametrize("dtype", [None, float, "f4", numpy.int8, "complex128", "U3", "M8[ns]"])
def test_ndarray_has_the_shape_dtype_and_a_64_byte_aligned_start(pool, shape, dtype):
    array = pool.ndarray(shape, dtype)
    expected = numpy.empty(shape, dtype)
    assert type(array) is shmpool.SharedArray
    assert isinstance(array, numpy.ndarray)
    assert array.shape == expected.shape and array.dtype == expected.dtype
    assert array.flags.c_contiguous and array.flags.writeable
    assert address(array) % 64 == 0
    assert array.shared
    allocation = array.allocation
    assert isinstance(allocation, shmpool.MemoryAlloc)
    assert address(array) + array.nbytes <= array.base.address + len(array.base)
    array[...] = expected  # every byte is writable


@pytest.mark.parametrize("nbytes", [0, 1, 16, 2000, 2001, 2048, 4096, 5000, 3 * 2**20])
def test_alignment_holds_for_small_and_large_arrays_alike(pool, nbytes):
    arrays = [pool.ndarray(nbytes, numpy.uint8) for _ in range(20 if nbytes < 2**16 else 3)]
    assert all(address(array) % 64 == 0 for array in arrays)
    starts = sorted(address(array) for array in arrays)
    assert all(b - a >= nbytes for a, b in zip(starts, starts[1:])), "no two arrays overlap"


def test_fortran_order_gives_fortran_strides(pool):
    array = pool.ndarray((3, 5), "f8", order="F")
    assert array.flags.f_contiguous and not array.flags.c_contiguous
    assert array.strides == (8, 24)
    array[...] = numpy.arange(15).reshape(3, 5)
    assert array.tolist() == numpy.arange(15).reshape(3, 5).tolist()


def test_a_default_dtype_is_float64_as_numpy_empty(pool):
    assert pool.ndarray(4).dtype == numpy.float64
    assert pool.ndarray((2, 2), float).dtype == numpy.float64


@pytest.mark.parametrize(
    "source",
    [
        numpy.arange(100, dtype=numpy.int64),
        numpy.arange(24, dtype=numpy.float32).reshape(2, 3, 4),
        numpy.asfortranarray(numpy.arange(12.0).reshape(3, 4)),
        numpy.arange(40.0).reshape(5, 8)[::2, ::-3],  # neither C nor F ordered
        numpy.array([b"ab", b"cde"]),
        numpy.array(3.5),
        numpy.zeros((0, 3)),
        numpy.array([(1, 2.0, (3, 4)), (5, 6.0, (7, 8))], dtype=[("a", "i2"), ("b", ">f8"), ("c", "u1", (2,))]),
        numpy.arange(10, dtype=numpy.dtype("i4").newbyteorder()),
        numpy.arange(6).view("datetime64[s]"),
    ],
    ids=["int64", "3d", "fortran", "strided", "bytes", "0d", "empty", "structured", "byteswapped", "datetime"],
)
def test_share_copies_any_array_into_the_pool_contiguously(pool, source):
    shared = pool.share(source)
    assert type(shared) is shmpool.SharedArray and shared.shared
    assert shared.dtype == source.dtype and shared.shape == source.shape
    assert numpy.array_equal(shared, source)
    assert shared.flags.c_contiguous or shared.flags.f_contiguous
    assert address(shared) % 64 == 0
    assert not numpy.shares_memory(shared, source)
    if source.flags.f_contiguous and not source.flags.c_contiguous:
        assert shared.flags.f_contiguous, "a Fortran-ordered source stays Fortran-ordered"


def test_share_takes_array_likes_and_an_explicit_order(pool):
    shared = pool.share([[1, 2, 3], [4, 5, 6]], order="F")
    assert shared.flags.f_contiguous and shared.tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ValueError, match="order"):
        pool.share([1, 2], order="X")


# Pickling: a few hundred bytes, never the data


@pytest.mark.parametrize("dtype", ["f4", "u1", [("x", "f8"), ("y", "i4", (3,))]])
def test_a_large_array_and_its_views_pickle_to_at_most_512_bytes(pool_name, dtype):
    with shmpool.MemoryPool(96 * 2**20, pool_name) as pool:
        array = pool.ndarray((2000, 2000) if dtype != "u1" else 64 * 2**20, dtype)
        assert array.nbytes >= 10**7
        views = [array] + (
            [array[5:-7], array[::-1], array[::3], array.reshape(-1, 4)]
            if array.ndim == 1
            else [array[10:20, ::-2], array.T, array[::-1, ::-1], array.reshape(4000, 1000), array[3], array[:, 7]]
        )
        for view in views:
            for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
                data = pickle.dumps(view, protocol=protocol)
                assert len(data) <= MAX_PICKLE, (view.shape, view.strides, protocol, len(data))


def test_a_view_unpickles_as_a_view_of_the_same_memory(pool):
    array = pool.ndarray((6, 8), "i4")
    array[...] = numpy.arange(48).reshape(6, 8)
    for view in [array[1:5, 2:7], array[::-1, ::-2], array.T, array.reshape(8, 6)[2:], array[4], array[2, 3:4]]:
        back = pickle.loads(pickle.dumps(view))
        assert type(back) is shmpool.SharedArray and back.shared
        assert back.strides == view.strides and back.shape == view.shape
        assert address(back) == address(view), "the same memory, not a copy"
        assert numpy.array_equal(back, view)
        back[...] = -1
        assert (view == -1).all()
        view[...] = 7
        assert (back == 7).all()
        del back


def test_an_unpickled_view_is_over_the_whole_allocation_and_pickles_alike_again(pool):
    array = pool.ndarray(100, "f8")
    view = array[10:20]
    back = pickle.loads(pickle.dumps(view))
    assert back.allocation == array.allocation
    again = pickle.loads(pickle.dumps(back))
    assert address(again) == address(view)
    del back, again, view


def test_results_of_numpy_operations_in_new_memory_do_not_pass_for_shared(pool):
    array = pool.ndarray(1000, "f8")
    array[...] = 1.5
    plus = array + 1
    assert type(plus) is numpy.ndarray, "ufunc results are plain ndarrays"
    assert type(array.sum()) is numpy.float64 and array.sum() == 1500.0
    assert type(array.reshape(10, 100).sum(axis=0)) is numpy.ndarray
    assert type(array == 1.5) is numpy.ndarray
    copied = array.copy()
    assert type(copied) is shmpool.SharedArray and not copied.shared
    with pytest.raises(ValueError, match="private memory"):
        copied.allocation
    data = pickle.dumps(copied)
    assert len(data) > copied.nbytes, "pickled by value"
    back = pickle.loads(data)
    assert type(back) is numpy.ndarray and numpy.array_equal(back, array)
    fancy = array[[1, 2, 3]]
    assert not fancy.shared and type(pickle.loads(pickle.dumps(fancy))) is numpy.ndarray
    # An `out=` array over the pool stays what it is.
    result = numpy.add(array, 1, out=array)
    assert result is array and array.shared and array[0] == 2.5
    # A plain ndarray view of the memory is a plain ndarray: it pickles by value.
    plain = array.view(numpy.ndarray)
    assert len(pickle.dumps(plain)) > plain.nbytes
    del plain, result


def test_an_unpickled_array_keeps_its_dtype_metadata_and_byte_order(pool):
    dtype = numpy.dtype(">i4", metadata={"unit": "m"})
    shared = pool.share(numpy.arange(5, dtype=dtype))
    back = pickle.loads(pickle.dumps(shared))
    assert back.dtype == dtype and back.dtype.metadata == {"unit": "m"}
    assert back.tolist() == [0, 1, 2, 3, 4]
    del back


def test_a_tampered_pickle_cannot_reach_outside_the_allocation(pool):
    array = pool.ndarray(10, "f8")
    size = len(array.base)
    function, (descriptor, _, dtype, _, _) = array.__reduce_ex__(4)
    for shape, strides, offset in [((size // 8 + 1,), (8,), 0), ((1,), (8,), size), ((2,), (-8,), 0), ((2,), (size,), 0), ((1,), (8,), -8)]:
        with pytest.raises(ValueError):
            function(descriptor, shape, dtype, strides, offset)
    assert function(descriptor, (size // 8,), dtype, (8,), 0).shape == (size // 8,)
    gc.collect()


# Other processes


@pytest.mark.parametrize("method", METHODS)
def test_processes_see_and_write_the_same_memory(pool, method):
    array = pool.ndarray((4, 1000), "f4")
    array[...] = numpy.arange(4000, dtype="f4").reshape(4, 1000)
    expected = numpy.array(array)
    context = multiprocessing.get_context(method)
    with context.Pool(2) as workers:
        ok, shape, strides, dtype = workers.apply(array_workers.check_and_write, (array, expected, 3.0))
        view = array[1:3, ::-10]
        view_expected = numpy.array(view)
        view_ok, view_shape, view_strides, _ = workers.apply(array_workers.check_and_write, (view, view_expected, -1.0))
    assert ok and shape == (4, 1000) and strides == array.strides and dtype == "<f4"
    assert view_ok and view_shape == view.shape and view_strides == view.strides
    assert (array[0] == 3).all() and (array[3] == 3).all(), "the parent sees the child's writes"
    assert (array[1:3, ::-10] == -1).all() and (array[1:3, -2::-10] == 3).all(), "only the view's elements"
    del view


@pytest.mark.parametrize("method", METHODS)
def test_a_view_sent_back_from_a_process_is_over_the_parents_memory(pool, method):
    array = pool.ndarray((6, 5), "i8")
    array[...] = 0
    context = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
        rows = executor.submit(array_workers.write_and_return_view, array, 9).result(timeout=120)
    assert type(rows) is shmpool.SharedArray and rows.shape == (3, 5)
    assert address(rows) == address(array) and rows.strides == (80, 8)
    assert array[::2].tolist() == [[9] * 5] * 3 and array[1::2].tolist() == [[0] * 5] * 3
    rows[...] = 4
    assert (array[::2] == 4).all()
    del rows


def test_arrays_travel_through_a_queue_both_ways(pool):
    context = multiprocessing.get_context("spawn")
    inbox, outbox = context.Queue(), context.Queue()
    child = context.Process(target=array_workers.serve, args=(inbox, outbox))
    child.start()
    arrays = [pool.share(numpy.arange(n, dtype="f8")) for n in (10, 1000, 100_000)]
    try:
        for array in arrays:
            inbox.put(array)
        for array in arrays:
            total, half = outbox.get(timeout=120)
            n = len(array)
            assert total == float(n * (n - 1))
            assert (array == 2 * numpy.arange(n)).all(), "doubled in place by the child"
            assert address(half) == address(array) and len(half) == n // 2
            del half
    finally:
        inbox.put(None)
        child.join(60)
    assert child.exitcode == 0


def test_structured_arrays_are_shared_field_by_field(pool):
    dtype = numpy.dtype([("id", "<u4"), ("pos", "<f8", (3,)), ("tag", "S4")], align=True)
    shared = pool.share(numpy.zeros(5, dtype))
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as workers:
        written = workers.apply(array_workers.write_field, (shared, "id", 42))
        workers.apply(array_workers.write_field, (shared["pos"][:, 1], ..., 2.5))
    assert written == [42] * 5
    assert shared["id"].tolist() == [42] * 5 and (shared["pos"][:, 1] == 2.5).all()
    assert (shared["pos"][:, 0] == 0).all()
    assert pickle.loads(pickle.dumps(shared)).dtype.isalignedstruct


# Ownership: a receiver adopts


def test_a_workers_array_survives_the_worker_and_nothing_is_reclaimed(pool):
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, maxtasksperchild=1) as workers:
        results = workers.starmap(array_workers.make_result, [(pool, (100, 10), value) for value in range(4)])
    assert pool.reclaim_dead() == [], "the parent adopted the results"
    for value, result in enumerate(results):
        assert result.shape == (100, 10) and (result == value).all()
        assert result.allocation.owner == os.getpid()


def test_an_array_sent_one_way_belongs_to_the_receiver_until_taken_back(pool):
    kept, left = pool.ndarray(100, "f8"), pool.ndarray(100, "f8")
    left_id = left.allocation.id
    context = multiprocessing.get_context("spawn")
    child = context.Pool(1)
    try:
        pid = child.apply(array_workers.receive_and_exit, (kept, 6.0))
        assert child.apply(array_workers.receive_and_exit, (left, 7.0)) == pid
        assert kept.allocation.owner == pid and left.allocation.owner == pid, "the receiver adopted them"
        kept.allocation.set_owner(os.getpid())  # taken back while the receiver lives
        del left  # not taken back: it goes with the receiver
    finally:
        child.close()
        child.join()
    assert [entry[0] for entry in pool.reclaim_dead()] == [left_id]
    assert (kept == 6.0).all()


# Lifetime


def test_free_is_refused_while_the_array_or_any_view_lives(pool):
    array = pool.ndarray((100, 100), "f8")
    allocation = array.allocation
    view = array[10:20, ::3]
    plain = numpy.asarray(array).reshape(-1)[5:]
    with pytest.raises(BufferError):
        allocation.free()
    del array
    with pytest.raises(BufferError):
        allocation.free()
    del view
    with pytest.raises(BufferError):
        allocation.free()
    del plain
    gc.collect()
    allocation.free()
    assert pool.check()["live_allocations"] == 0


def test_an_unpickled_array_holds_the_allocation_in_this_process_too(pool):
    array = pool.ndarray(10)
    back = pickle.loads(pickle.dumps(array[2:]))
    allocation = array.allocation
    del array
    with pytest.raises(BufferError):
        allocation.free()
    with pytest.raises(BufferError):
        back.allocation.free()
    del back
    allocation.free()


def test_the_memory_under_an_array_cannot_be_released_early(pool):
    array = pool.ndarray(10)
    memory = array.base
    assert isinstance(memory, shmpool.ArrayMemory) and not hasattr(memory, "release")
    with memoryview(memory) as bytes_view:  # a buffer of its own, ending without harm
        assert bytes_view.nbytes == len(memory) and not bytes_view.readonly
    with pytest.raises(BufferError):
        array.allocation.free()
    del memory


def test_a_new_array_takes_no_attributes_and_its_collection_frees_nothing(pool):
    """pool.ndarray takes its arrays off the cyclic collector's lists: they must hold nothing
    that could close a cycle (no instance dict), and collecting them gives the allocation's
    view back without freeing the allocation."""
    array = pool.ndarray(10)
    with pytest.raises(AttributeError):
        array.note = "kept"
    allocation_id = array.allocation.id
    del array
    gc.collect()
    assert pool.allocation_exists(allocation_id)
    pool.alloc_from_id(allocation_id).free()


def test_detaching_the_pool_handle_is_refused_while_arrays_live(pool):
    array = pool.ndarray(10)
    with pytest.raises(BufferError):
        pool.detach()


def test_np_ndarray_over_an_allocation_bypasses_the_count_and_shared_array_does_not(pool):
    """The documented difference: given ``buffer=a``, numpy takes the buffer of a MemoryAlloc
    and releases it at once, keeping ``a`` as the base: nothing is counted. numpy.frombuffer
    and numpy.asarray keep a memoryview as the base, which is counted."""
    a = pool.alloc(80)
    unsafe = numpy.ndarray((10,), "f8", buffer=a)
    a.free()  # not refused: nothing counts `unsafe`, which now dangles
    del unsafe
    for make in (lambda b: numpy.frombuffer(b, "f8"), numpy.asarray):
        b = pool.alloc(80)
        counted = make(b)
        with pytest.raises(BufferError):
            b.free()
        del counted
        b.free()
    array = pool.ndarray(10)
    with pytest.raises(BufferError):
        array.allocation.free()


def test_an_arena_frees_its_arrays(pool):
    with pool.arena() as arena:
        array = arena.ndarray((50, 50), "f4")
        copy = arena.share(numpy.arange(10))
        assert len(arena) == 2 and array.shared and copy.tolist() == list(range(10))
        ids = [array.allocation.id, copy.allocation.id]
        del array, copy
    assert not any(pool.allocation_exists(i) for i in ids)
    assert pool.check()["live_allocations"] == 0


def test_an_arena_refuses_to_end_under_a_live_array_and_frees_it_later(pool):
    arena = pool.arena()
    array = arena.ndarray(10)
    allocation_id = array.allocation.id
    with pytest.raises(BufferError):
        arena.free_all()
    assert pool.allocation_exists(allocation_id)
    del array
    arena.free_all()
    assert not pool.allocation_exists(allocation_id)


# Bad input


@pytest.mark.parametrize(
    "shape, error",
    [(-1, ValueError), ((3, -2), ValueError), ("ab", TypeError), (2.5, TypeError), ((2, None), TypeError), (2**70, ValueError), ((2**40, 2**40), ValueError)],
)
def test_bad_shapes_are_clear_errors_and_allocate_nothing(pool, shape, error):
    with pytest.raises(error, match="shape|dimension|too big"):
        pool.ndarray(shape)
    assert pool.check()["live_allocations"] == 0


@pytest.mark.parametrize("dtype", [object, [("a", "f8"), ("b", "O")], "T"])
def test_dtypes_holding_pointers_are_refused(pool, dtype):
    try:
        numpy.dtype(dtype)
    except TypeError:
        pytest.skip("this numpy has no such dtype")  # "T" (StringDType) is numpy 2's
    with pytest.raises(TypeError, match="cannot be shared"):
        pool.ndarray(3, dtype)
    with pytest.raises(TypeError, match="cannot be shared"):
        pool.share(numpy.zeros(3, dtype))
    assert pool.check()["live_allocations"] == 0


def test_bad_dtype_and_order_are_clear_errors(pool):
    with pytest.raises(TypeError):
        pool.ndarray(3, "not a dtype")
    with pytest.raises(ValueError, match="order"):
        pool.ndarray(3, order="K")
    assert pool.check()["live_allocations"] == 0


def test_an_array_larger_than_the_pool_is_pool_full_and_the_pool_stays_sound(pool):
    keep = pool.ndarray(1000)
    with pytest.raises(shmpool.PoolFullError):
        pool.ndarray((2**20, 1024), "f8")
    with pytest.raises(MemoryError):
        pool.ndarray(pool.size // 2, "f8")
    with pytest.raises(shmpool.PoolFullError):
        pool.share(numpy.zeros(pool.size // 4))
    assert pool.check()["live_allocations"] == 1


def test_a_freed_allocation_cannot_be_unpickled(pool):
    array = pool.ndarray(10)
    data = pickle.dumps(array)
    allocation = array.allocation
    del array
    allocation.free()
    with pytest.raises(shmpool.InvalidAllocationError):
        pickle.loads(data)


# numpy stays optional


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_shmpool_does_not_import_numpy():
    done = run_python("import sys, shmpool; print('numpy' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_shmpool_works_without_numpy_and_says_why_arrays_do_not(pool_name):
    code = f"""
import sys
sys.modules["numpy"] = None  # as if numpy were not installed
import shmpool
with shmpool.MemoryPool(2**20, {pool_name!r}) as pool:
    a = pool.alloc(100)
    memoryview(a)[:3] = b"abc"
    assert bytes(a[0:3]) == b"abc"
    a.free()
    for attempt in (lambda: pool.ndarray(3), lambda: pool.share([1]), lambda: shmpool.SharedArray):
        try:
            attempt()
        except ImportError as error:
            assert "numpy" in str(error), error
        else:
            raise AssertionError("no ImportError")
print("ok")
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
