"""Ctrl-C and SIGTERM for uc2otactl's long-running commands (inhibit, watch, update).

Main constraint: the handler must be in place before the command prints its first line, because a
script or a person reacts to that line (and may press Ctrl-C at once); a signal from then on must end
the command cleanly (release the inhibit, cancel the updates), never as a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def interrupts() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while the block runs, instead of KeyboardInterrupt."""
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted.set)
    try:
        yield interrupted
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def until(interrupted: asyncio.Event, seconds: float | None) -> None:
    """Until ``interrupted`` is set, or ``seconds`` have passed if given."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(interrupted.wait(), seconds)
