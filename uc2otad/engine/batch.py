"""Batches (StartMultipleOTA): the order and pace in which their boards go, and the overall progress.

The procedure document advises one board at a time with ``delay_between`` seconds between them; a batch
may allow ``parallel`` boards at once (WiFi uploads only: a stream holds the master link, so streaming
boards always go one by one). A board whose turn comes while an inhibit is held waits until it ends.
Commands on the CAN link are serialised by the link itself.

The ``Progress`` property is the document's "batch progress tracking": the mean upload progress of the
jobs started since the daemon was last idle, a finished job (success or not) counting 100.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

#: seconds between two boards of a batch (the document's startMultipleDeviceOTA default)
DELAY_BETWEEN = 2
#: boards of a batch at once (the document: "Update devices one at a time unless necessary")
PARALLEL = 1


async def _never_held() -> None:
    return None


class BatchGate:
    """Admits a batch's jobs in order: ``parallel`` at once at most, ``delay_between`` s apart at least,
    and none while an inhibit is held (the contract's "no job starts"; issue 15, D7)."""

    def __init__(
        self,
        parallel: int = PARALLEL,
        delay_between: float = DELAY_BETWEEN,
        *,
        inhibited: Callable[[], bool] = lambda: False,
        until_uninhibited: Callable[[], Awaitable[None]] = _never_held,
    ) -> None:
        """
        :param inhibited: an inhibit is held now
        :param until_uninhibited: returns once no inhibit is held (at once if none is)
        """
        self._slots = asyncio.Semaphore(parallel)
        self._pace = asyncio.Lock()
        self._delay_between = delay_between
        self._next_start: float | None = None
        self._inhibited = inhibited
        self._until_uninhibited = until_uninhibited

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Held by one job from its first attempt to its end."""
        async with self._slots:
            async with self._pace:
                loop = asyncio.get_running_loop()
                while True:
                    if self._next_start is not None and self._next_start > loop.time():
                        await asyncio.sleep(
                            self._next_start - loop.time()
                        )  # the document's pause, not a sync
                    if not self._inhibited():
                        break  # no await from here to the job's start: an inhibit cannot slip in between
                    await self._until_uninhibited()
                self._next_start = loop.time() + self._delay_between
            yield


class OverallProgress:
    """Percent of the work started since the daemon was last idle."""

    def __init__(self) -> None:
        self._percent_of: dict[str, int] = {}

    def add(self, job_id: str) -> None:
        self._percent_of[job_id] = 0

    def update(self, status: Mapping[str, Any]) -> bool:
        """Take a board's new status into account; True when it belongs to a tracked job."""
        job_id = status.get("job_id")
        if job_id not in self._percent_of:
            return False
        finished = status.get("upload_status") in ("success", "failed")
        self._percent_of[job_id] = 100 if finished else int(status.get("upload_progress", 0))
        return True

    def clear(self) -> None:
        self._percent_of.clear()

    @property
    def percent(self) -> int:
        if not self._percent_of:
            return 0
        return sum(self._percent_of.values()) // len(self._percent_of)
