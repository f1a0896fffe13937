"""One pool per node under MPI (examples/mpi_pool.py) with Open MPI and mpi4py: on this node,
and as if on two nodes. Skipped, saying why, where mpirun or mpi4py is missing (scripts/test
installs them where it can)."""

import os
import shutil
import subprocess
import sys

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "mpi_pool.py")


def mpirun(*args):
    if shutil.which("mpirun") is None:
        pytest.skip("SKIPPED: no mpirun (apt-get install openmpi-bin libopenmpi-dev)")
    # Imported in a child: importing mpi4py.MPI here would initialise MPI in pytest itself.
    if subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True).returncode:
        pytest.skip("SKIPPED: no working mpi4py (pip install mpi4py, with an MPI library)")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = ["mpirun", "--oversubscribe", "-n", "4", sys.executable, EXAMPLE, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.parametrize("simulated", [None, 2])
def test_ranks_share_a_pool_per_node_and_send_values_across_nodes(simulated):
    before = set(os.listdir("/dev/shm"))
    run = mpirun(*(["--simulate-nodes", str(simulated)] if simulated else []))
    assert run.returncode == 0, run.stdout + run.stderr
    nodes = simulated or 1
    assert f"4 ranks on {nodes} node(s)" in run.stdout and ": ok" in run.stdout, run.stdout
    left = {f for f in set(os.listdir("/dev/shm")) - before if f.startswith("shmpool-mpi-")}
    assert not left, f"pools left behind: {left}"
