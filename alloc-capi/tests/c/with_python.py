"""The Python side of with_python.c: creates a pool, writes an allocation, runs the C program on
its descriptor, then reads what C wrote and the allocation C made (adopting it)."""

import os
import subprocess
import sys

import shmpool

with shmpool.MemoryPool(4 * 2**20, f"test-c-python-{os.getpid()}") as pool:
    a = pool.alloc(32)
    a[0:11] = b"from python"
    answer = subprocess.run([sys.argv[1], a.serialize().hex()], capture_output=True, text=True, check=True)
    assert a[16:22] == b"from C", a[0:32]
    made = shmpool.MemoryAlloc.attach(bytes.fromhex(answer.stdout.strip()))
    assert made[0:9] == b"made in C" and made.owner == os.getpid()
    made.free()
    a.free()
    pool.reclaim_dead()
    assert pool.check()["live_allocations"] == 0
print("c and python: one pool, both ways")
