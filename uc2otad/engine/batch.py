"""Batches (StartMultipleOTA): the order and pace in which their boards go, and the overall progress.

The procedure document advises one board at a time with ``delay_between`` seconds between them; a batch
may allow ``parallel`` boards at once (WiFi uploads only: a stream holds the master link, so streaming
boards always go one by one). A board whose turn comes while an inhibit is held waits until it ends.
Commands on the CAN link are serialised by the link itself.

With ``stop_on_failure`` (StartMultipleOTA's default for more than one board) a board that fails, after
its retries, stops the batch: every board whose turn has not come yet is refused it
(:class:`BatchStoppedError`, ``error_code`` "skipped") and keeps its firmware, as fwupd stops a
composite update at its first failed device; boards already running finish. The gate counts the
outcomes, so that whoever follows the batch (the master's flash, ``include_master``) knows whether
every board succeeded.

The ``Progress`` property is the document's "batch progress tracking": the mean upload progress of the
jobs started since the daemon was last idle, a finished job (success or not) counting 100.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from uc2otad.errors import BatchStoppedError, Uc2otadError

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
        stop_on_failure: bool = False,
    ) -> None:
        """
        :param inhibited: an inhibit is held now
        :param until_uninhibited: returns once no inhibit is held (at once if none is)
        :param stop_on_failure: a failed board ends the turns of the boards still waiting
        """
        self._slots = asyncio.Semaphore(parallel)
        self._pace = asyncio.Lock()
        self._delay_between = delay_between
        self._next_start: float | None = None
        self._inhibited = inhibited
        self._until_uninhibited = until_uninhibited
        self._stop_on_failure = stop_on_failure
        #: the board whose failure stopped the batch; None while it goes on
        self.stopped_by: int | None = None
        #: boards that ended successfully, and that ended failed (a skipped board counts in neither)
        self.succeeded: set[int] = set()
        self.failed: set[int] = set()

    def ended(self, can_id: int, error: Uc2otadError | None) -> None:
        """A board's job has ended (None: success); called before its turn is given back, so that a
        failure stops the batch before the next board's turn begins."""
        if error is None:
            self.succeeded.add(can_id)
            return
        self.failed.add(can_id)
        if self._stop_on_failure and self.stopped_by is None:
            self.stopped_by = can_id

    def _check_not_stopped(self) -> None:
        if self.stopped_by is not None:
            raise BatchStoppedError(
                f"skipped: board {self.stopped_by} of the batch failed, so this board was left alone"
            )

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Held by one job from its first attempt to its end.

        :raises BatchStoppedError: the batch was stopped by a failure before this turn began
        """
        async with self._slots:
            self._check_not_stopped()
            async with self._pace:
                loop = asyncio.get_running_loop()
                while True:
                    self._check_not_stopped()
                    if self._next_start is not None and self._next_start > loop.time():
                        await asyncio.sleep(
                            self._next_start - loop.time()
                        )  # the document's pause, not a sync
                        continue  # a board may have failed meanwhile
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
