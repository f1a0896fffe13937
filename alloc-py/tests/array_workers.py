"""Functions run in child processes by test_shared_array.py (importable under spawn and
forkserver)."""

import os
import pickle

import numpy

import shmpool


def check_and_write(array, expected, value):
    """Receives an array (or a view) by pickle: checks it holds ``expected`` and is over the
    pool, writes ``value`` everywhere, and reports what it saw."""
    seen = numpy.array(array)  # a private copy of what the parent wrote
    ok = isinstance(array, shmpool.SharedArray) and array.shared and numpy.array_equal(seen, expected)
    array[...] = value
    return ok, array.shape, array.strides, array.dtype.str


def write_field(array, field, value):
    """Writes ``value`` into field ``field`` of a structured array received by pickle."""
    array[field] = value
    return array[field].tolist()


def write_and_return_view(array, value):
    """Writes ``value`` into every other row of a 2-D array, then returns those rows (a view,
    which travels back as a view)."""
    rows = array[::2]
    rows[...] = value
    return rows


def make_result(pool, shape, value):
    """Makes a SharedArray in the pool in this (worker) process, fills it, returns it."""
    result = pool.ndarray(shape, numpy.float32)
    result[...] = value
    return result


def serve(inbox, outbox):
    """Gets arrays from ``inbox`` until None: doubles each in place, sends back its sum and a
    view of its first half."""
    while (array := inbox.get()) is not None:
        array *= 2
        outbox.put((float(array.sum()), array[: len(array) // 2]))


def receive_and_exit(array, value):
    """Receives an array (so adopts its allocation), writes ``value``, and reports this pid."""
    array[...] = value
    return os.getpid()


def pickled_size(array):
    """How many bytes ``array`` pickles to here (in a worker: after a round trip)."""
    return len(pickle.dumps(array))
