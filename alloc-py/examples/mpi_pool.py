"""One pool per node, a job across nodes, with MPI (mpi4py).

    mpirun -n 4 python mpi_pool.py                    # ranks split by node (shared memory)
    mpirun -n 4 python mpi_pool.py --simulate-nodes 2 # as if on two hosts (rank % 2)

The ranks of a node share one pool: the node's first rank creates it and broadcasts its
descriptor; every rank allocates an array in it and hands it to the next rank of its node as a
descriptor (a few dozen bytes: the receiver reads the same memory, no copy). Data for a rank on
another node goes by value, through MPI. Nothing assumes that all ranks share memory: with
--simulate-nodes the split is by rank, as it would be by host.
"""

import sys

import numpy
from mpi4py import MPI

import shmpool

N = 100_000  # doubles per array

world = MPI.COMM_WORLD
if "--simulate-nodes" in sys.argv:
    nodes = int(sys.argv[sys.argv.index("--simulate-nodes") + 1])
    node = world.Split(color=world.rank % nodes, key=world.rank)
else:
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
# A name unique to the job and the node: world rank 0's pid, and the node's first world rank.
job = world.bcast(f"{__import__('os').getpid()}", root=0)
leader = node.bcast(world.rank, root=0)
node_ranks = node.allgather(world.rank)

if node.rank == 0:
    pool = shmpool.MemoryPool(64 * 2**20, f"mpi-{job}-node{leader}")
    descriptor = pool.serialize()
else:
    descriptor = None
descriptor = node.bcast(descriptor, root=0)
if node.rank != 0:
    pool = shmpool.MemoryPool.attach(descriptor)

# Every rank writes its own array in the node's pool ...
mine = pool.alloc(8 * N)
numpy.frombuffer(mine, dtype=numpy.float64)[:] = world.rank
# ... and hands it to the next rank of its node as a descriptor (the receiver adopts it).
after, before = (node.rank + 1) % node.size, (node.rank - 1) % node.size
received = shmpool.MemoryAlloc.attach(node.sendrecv(mine.serialize(), dest=after, source=before))
seen = numpy.frombuffer(received, dtype=numpy.float64)
assert (seen == node_ranks[before]).all(), f"rank {world.rank} read another rank's bytes"
del seen

# Across nodes, by value: the ranks with the same place on every node form a ring.
across = world.Split(color=node.rank, key=world.rank)
across_ranks = across.allgather(world.rank)
value = numpy.frombuffer(mine, dtype=numpy.float64).copy()
got = numpy.empty_like(value)
source = (across.rank - 1) % across.size
across.Sendrecv(value, dest=(across.rank + 1) % across.size, recvbuf=got, source=source)
assert (got == across_ranks[source]).all(), f"rank {world.rank} got another rank's values"

node.Barrier()  # everyone has read what it received before anything is freed
received.free()  # its owner now: the receiver
node.Barrier()
if node.rank == 0:
    assert pool.check()["live_allocations"] == 0
    pool.destroy()
else:
    pool.detach()
nodes_seen = len(set(world.allgather(leader)))
if world.rank == 0:
    print(f"mpi: {world.size} ranks on {nodes_seen} node(s): descriptors within a node, values across: ok")
