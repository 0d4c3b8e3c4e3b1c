"""Run blocking work (requests, file hashing, esptool) off the event loop, and stop it on cancel.

``asyncio.to_thread`` cannot stop its thread: a cancelled caller returns at once while the thread goes
on writing files. Here the worker receives a :class:`threading.Event`; cancelling the caller sets it and
then waits for the worker to notice and clean up, so "cancelled" always means "nothing is still
running". Workers check the event between chunks of work, so the wait is at most one chunk (for a
download: one read timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class StoppedError(Exception):
    """Raised inside a worker that saw its stop event; the awaiting side turns it into CancelledError."""


async def run_stoppable(work: Callable[[threading.Event], T]) -> T:
    """Run ``work(stop)`` in the default executor and return its result.

    :raises asyncio.CancelledError: when the caller is cancelled, after ``work`` has returned
    :raises: whatever ``work`` raises
    """
    stop = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, work, stop)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            await future
        raise
