"""Stopping the external programs the tests run, the same way for all of them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

#: seconds between SIGTERM and SIGKILL
STOP_TIMEOUT = 5.0


def terminate(process: subprocess.Popen[Any]) -> int:
    """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL; close its pipes; return the exit status."""
    process.terminate()
    try:
        status = process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        status = process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return status


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP the process for the block, SIGCONT after it (also when the block fails)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
