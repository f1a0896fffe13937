"""The ``shmpool`` tool ships with the package (``python -m shmpool`` and the ``shmpool``
command), and is the Rust binary's code: the same subcommands, output and exit statuses."""

import os
import shutil
import subprocess
import sys

import shmpool


def tool(*args, command=(sys.executable, "-m", "shmpool")):
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


def test_python_m_shmpool_lists_inspects_and_checks_a_pool(pool):
    a = pool.alloc(1000)
    listed = tool("ls")
    assert listed.returncode == 0 and pool.name in listed.stdout, listed
    info = tool("info", pool.name)
    assert info.returncode == 0 and "metadata" in info.stdout, info
    checked = tool("check", pool.name)
    assert checked.returncode == 0, checked
    a.free()


def test_errors_and_usage_give_a_failing_status(pool_name):
    missing = tool("check", pool_name)
    assert missing.returncode == 1 and "shmpool:" in missing.stderr
    usage = tool("frobnicate")
    assert usage.returncode == 2 and "Usage" in usage.stderr


def test_the_demo_starts_its_workers_through_python(pool_name):
    demo = tool("demo", "--workers", "2", "--messages", "200", "--pool-mib", "8")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo: PASS" in demo.stdout, demo.stdout


def test_the_package_installs_the_shmpool_command(pool):
    command = shutil.which("shmpool", path=os.path.dirname(sys.executable))
    assert command, "no shmpool command next to this Python"
    listed = tool("ls", command=(command,))
    assert listed.returncode == 0 and pool.name in listed.stdout, listed


def test_running_the_tool_in_process_leaves_this_processs_signals_alone():
    # Review of f4f926a: run_tool reset SIGPIPE to its default for the whole Python process.
    import signal

    from shmpool._shmpool import run_tool

    before = signal.getsignal(signal.SIGPIPE), signal.getsignal(signal.SIGINT)
    assert run_tool(["shmpool", "ls"], [sys.executable, "-m", "shmpool"]) == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        os.write(write_end, b"x")
        raise AssertionError("a write to a closed pipe succeeded")
    except BrokenPipeError:
        pass
    finally:
        os.close(write_end)
    assert (signal.getsignal(signal.SIGPIPE), signal.getsignal(signal.SIGINT)) == before
