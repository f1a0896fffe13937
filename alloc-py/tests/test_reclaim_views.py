"""A received allocation is adopted by its receiver, so a view of it survives its producer's
death: found by review, seen failing before (reclaim_dead freed what a live view showed)."""
import os

import shmpool


def test_reclaim_dead_in_this_process_never_frees_memory_a_live_view_shows(pool):
    pool.alloc(64).free()  # this process is registered
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            a = pool.alloc(64)
            os.write(w, a.serialize())
        finally:
            os._exit(0)  # dies holding the allocation
    os.close(w)
    descriptor = os.read(r, 256)
    os.close(r)
    os.waitpid(pid, 0)
    inherited = shmpool.MemoryAlloc.attach(descriptor)
    view = memoryview(inherited)
    view[:] = b"A" * 64
    freed = pool.reclaim_dead()  # pure Python, through a handle of this process
    reused = [pool.alloc(64) for _ in range(64)]
    for b in reused:
        memoryview(b)[:] = b"B" * 64
    seen = bytes(view)
    view.release()
    for b in reused:
        b.free()
    assert seen == b"A" * 64, f"live view shows memory freed by reclaim_dead ({freed}) and reused: {seen[:8]!r}"
