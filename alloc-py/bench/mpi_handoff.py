"""Handing a numpy array to another rank of the same node: its descriptor through MPI (the
receiver attaches and views the same memory) against sending the array itself with mpi4py's
comm.send (pickled) and comm.Send (a buffer). Two ranks; median of 5 handoffs per size.

    mpirun -n 2 python alloc-py/bench/mpi_handoff.py
"""

import os
import statistics
import time

import numpy
from mpi4py import MPI

import shmpool

comm = MPI.COMM_WORLD
assert comm.size == 2, "run with mpirun -n 2"
sizes = [1 << 20, 16 << 20, 256 << 20]
if comm.rank == 0:
    pool = shmpool.MemoryPool(shmpool.MemoryPool.size_for_data(sum(sizes)) + (16 << 20), f"bench-mpi-{os.getpid()}")
    comm.send(pool.serialize(), dest=1)
else:
    pool = shmpool.MemoryPool.attach(comm.recv(source=0))


def timed(handoff):
    times = []
    for _ in range(5):
        comm.Barrier()
        start = time.perf_counter()
        handoff()
        comm.Barrier()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


rows = []
for size in sizes:
    if comm.rank == 0:
        a = pool.alloc(size)
        array = numpy.frombuffer(a, dtype=numpy.float32)
        array[:] = 1.5
        descriptor = a.serialize()
    else:
        array = numpy.empty(size // 4, dtype=numpy.float32)

    def by_descriptor():
        if comm.rank == 0:
            comm.send(descriptor, dest=1)
        else:
            got = shmpool.MemoryAlloc.attach(comm.recv(source=0))  # adopts it (owner: this rank)
            view = numpy.frombuffer(got, dtype=numpy.float32)
            assert view[-1] == 1.5
            del view

    def by_pickle():
        if comm.rank == 0:
            comm.send(array, dest=1)
        else:
            assert comm.recv(source=0)[-1] == 1.5

    def by_buffer():
        if comm.rank == 0:
            comm.Send(array, dest=1)
        else:
            comm.Recv(array, source=0)
            assert array[-1] == 1.5

    rows.append((size, timed(by_descriptor), timed(by_pickle), timed(by_buffer)))
    comm.Barrier()
    if comm.rank == 0:
        del array
        a.free()

if comm.rank == 0:
    print("| array | descriptor through MPI | comm.send (pickle) | comm.Send (buffer) | pickle / descriptor |")
    print("|---|---|---|---|---|")
    for size, descriptor_s, pickle_s, buffer_s in rows:
        print(f"| {size >> 20} MiB | {descriptor_s * 1e6:.0f} µs | {pickle_s * 1e6:.0f} µs | {buffer_s * 1e6:.0f} µs | {pickle_s / descriptor_s:.0f}× |")
    pool.destroy()
else:
    pool.detach()
