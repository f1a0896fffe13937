"""The ``shmpool`` tool (``python -m shmpool``, or the ``shmpool`` command the package installs):
list, inspect, check, reclaim, repair and remove pools, and run the multi-process demo. It is
the Rust ``shmpool`` binary's code, run in this process."""

import signal
import sys

from ._shmpool import run_tool


def main():
    """Runs the tool with this process's command line; returns its exit status. This process is
    the tool: Ctrl-C and a reader that goes away end it at once, as any Unix tool."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return run_tool(["shmpool", *sys.argv[1:]], [sys.executable, "-m", "shmpool"])


if __name__ == "__main__":
    sys.exit(main())
