"""The status store: each board's current status dict and a history row per job, in memory and in SQLite.

Status and history live in memory; SQLite is where they are kept, not where they are read while the
daemon runs. So a status change never waits for the disk: GetStatus, the signal and the next progress
step see it at once, and a database that another process holds locked (a backup, an admin's ``sqlite3``
shell) or a full state filesystem cannot stop a job (issue 14, D3).

One writer task persists the changes, in one short transaction at a time on the store's thread. Of the
status only the newest per board is written (a client never reads an older one back); history rows
keep their order. A write that fails is logged once per outage (a warning naming the error), kept in
memory and tried again with backoff, and the journal says when the file is written again; nothing of it
is raised into a job. GetHistory shows the rows still waiting for the file as they are in memory.

What it guarantees on disk, after fwupd's history database:
- A job's row is written *before* its transfer starts (:meth:`StatusStore.begin_job` returns once it is
  in the file), so a crash can never leave an update that nobody knows about. On the next start,
  :meth:`StatusStore.open` marks every row still ``running`` as ``failed`` with ``error_code``
  ``interrupted``, and so the status of its board.
- The file survives SIGKILL at any point: WAL journal, ``synchronous=FULL``, one short transaction per
  write, nothing held open between writes. A crash loses at most the status steps the writer had not
  written yet (normally a few milliseconds' worth; during an outage, the outage's).
- The schema carries a version (``PRAGMA user_version``) and is brought forward by numbered migrations.

sqlite3 blocks, and its connections belong to the thread that made them, so every call runs on one
dedicated worker thread; the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from uc2otad import timestamps
from uc2otad.engine.store_file import INTERRUPTED_MESSAGE, MIGRATIONS, JobRecord, open_database, write_rows
from uc2otad.errors import StoreError

__all__ = ["INTERRUPTED_MESSAGE", "MIGRATIONS", "JobRecord", "StatusStore"]

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

DATABASE_NAME = "uc2otad.sqlite3"
#: seconds one write waits for a lock held by another connection (a second daemon, a backup, an admin's
#: sqlite3 shell) before it counts as failed and is tried again later; reads are not blocked (WAL)
BUSY_TIMEOUT = 5.0
#: seconds before a failed write is tried again; the wait doubles up to WRITE_RETRY_MAX_DELAY. Short, so
#: that the rows reach the file soon after a lock is released; the busy timeout keeps a locked
#: database from being hammered, the doubling a full disk
WRITE_RETRY_DELAY = 0.5
WRITE_RETRY_MAX_DELAY = 10.0
#: at shutdown, the longest ``close`` waits for the writer to write what it holds (systemd allows 90 s)
FLUSH_TIMEOUT = 10.0


@dataclass
class _Outage:
    """Writes failing since ``since`` (monotonic seconds: the first failed try began), the last one
    with ``reason``."""

    since: float
    reason: str
    attempts: int = 1


class StatusStore:
    """The SQLite file in the state directory, and what it holds in memory. ``open`` before use,
    ``close`` at the end."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        retry_delay: float = WRITE_RETRY_DELAY,
        max_retry_delay: float = WRITE_RETRY_MAX_DELAY,
        flush_timeout: float = FLUSH_TIMEOUT,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.flush_timeout = flush_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uc2otad-store")
        self._connection: sqlite3.Connection | None = None
        #: every board's status dict, as clients see it
        self._status: dict[int, dict[str, Any]] = {}
        #: the rows of the jobs begun and not yet finished
        self._running: dict[str, JobRecord] = {}
        #: what the file still lacks: the newest status per board (JSON, time), and the newest version
        #: of each history row, in the order the jobs began
        self._unwritten_status: dict[int, tuple[str, str]] = {}
        self._unwritten_jobs: dict[str, JobRecord] = {}
        #: the master's last USB flash status (issue 20), and its newest version the file lacks
        self._usb_status: dict[str, Any] | None = None
        self._unwritten_usb: tuple[str, str] | None = None
        #: changes are numbered as they come; every change up to ``_written`` is in the file
        self._queued = 0
        self._written = 0
        self._written_changed = asyncio.Condition()
        self._wake = asyncio.Event()
        #: cuts the writer's pause between tries short (close)
        self._kick = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._outage: _Outage | None = None

    @property
    def write_failure(self) -> str | None:
        """Why the file cannot be written now (the last error of the writer's current outage), if so."""
        return None if self._outage is None else self._outage.reason

    def __repr__(self) -> str:
        return f"StatusStore({str(self.path)!r})"

    async def open(self) -> list[JobRecord]:
        """Open (creating or migrating) the database, reconcile what a crash left running, read the
        status into memory and start the writer.

        :returns: the jobs that were found running and are now ``failed``/``interrupted``
        :raises StoreError: the file cannot be opened, is not a database, or is newer than this program
        """
        opened = await self._in_thread(
            functools.partial(open_database, self.path, self.busy_timeout, repr(self))
        )
        self._connection = opened.connection
        self._status = opened.statuses
        self._usb_status = opened.usb_status
        interrupted = opened.interrupted
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name=f"{self} writer")
        return interrupted

    async def close(self) -> None:
        """Write what is still unwritten (waiting at most ``flush_timeout``), then close the database;
        safe to call twice."""
        if self._writer is not None:
            self._kick.set()
            try:
                async with asyncio.timeout(self.flush_timeout):
                    await self.flush()
            except TimeoutError:
                _LOGGER.error(
                    "%s: closing with %d status and %d history rows not written (%s); they are lost",
                    self, len(self._unwritten_status), len(self._unwritten_jobs),
                    self.write_failure or "the writer is behind",
                )  # fmt: skip
            self._writer.cancel()
            await asyncio.wait({self._writer})
            self._writer = None
        if self._connection is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=False)  # its one thread is idle now: nothing to wait for

    # ---- status: in memory, written behind ------------------------------------------------------------

    def get_status(self, can_id: int) -> dict[str, Any] | None:
        status = self._status.get(can_id)
        return None if status is None else dict(status)

    def all_status(self) -> dict[int, dict[str, Any]]:
        return {can_id: dict(status) for can_id, status in self._status.items()}

    def put_status(self, can_id: int, status: Mapping[str, Any]) -> None:
        """Replace the board's status dict: in memory at once, in the file as soon as it can be."""
        kept = dict(status)
        self._unwritten_status[can_id] = (json.dumps(kept, sort_keys=True), timestamps.now())
        self._status[can_id] = kept
        self._queued_change()

    def usb_status(self) -> dict[str, Any] | None:
        """The master's last USB flash status (as kept by a daemon before, if none since); None if
        none was ever kept. One a crash left under way reads "failed", ``interrupted`` (:meth:`open`)."""
        return None if self._usb_status is None else dict(self._usb_status)

    def put_usb_status(self, status: Mapping[str, Any]) -> None:
        """Replace the master's USB flash status: in memory at once, in the file as soon as it can be
        (written behind, as a board's status: a flash never waits for the disk)."""
        kept = dict(status)
        self._unwritten_usb = (json.dumps(kept, sort_keys=True), timestamps.now())
        self._usb_status = kept
        self._queued_change()

    # ---- history ------------------------------------------------------------------------------------

    async def begin_job(self, job: JobRecord) -> JobRecord:
        """Write the job's row as ``running``, returning once it is in the file: call before anything is
        sent to the board.

        While the file cannot be written this waits, through the writer's retries; the caller bounds
        the wait (``asyncio.timeout``). A row whose wait was given up stays queued (and is finished by
        :meth:`finish_job` as usual): it reaches the file once the file can be written.
        """
        record = replace(job, state="running", started=job.started or timestamps.now())
        self._running[record.job_id] = record
        await self._until_written(self._queued_row(record))
        return record

    def note_image(
        self, job_id: str, *, firmware_version: str | None, sha256: str, firmware: str | None = None
    ) -> None:
        """The running job has its image: the row keeps the release it installs and its sha256, so that
        a crash from now on can be reconciled by asking the board (:mod:`uc2otad.engine.reconcile`).
        In memory at once, in the file as soon as it can be (before the transfer, in practice).

        :param firmware: the image's name, when the row was begun before it was known (a USB flash of
            the master begins its row first thing); None keeps the row's
        """
        running = self._running.get(job_id)
        if running is None:
            return
        version = firmware_version or running.firmware_version
        name = firmware or running.firmware
        record = replace(running, firmware_version=version, sha256=sha256, firmware=name)
        self._running[job_id] = record
        self._queued_row(record)

    def confirm_job(self, record: JobRecord, message: str) -> JobRecord:
        """An interrupted job's board runs its image after all: its row becomes ``success``."""
        confirmed = replace(record, state="success", error_code=None, message=message)
        self._queued_row(confirmed)
        return confirmed

    def finish_job(
        self,
        job_id: str,
        *,
        success: bool,
        error_code: str = "",
        message: str = "",
        attempt: int = 1,
        firmware_version: str | None = None,
        sha256: str | None = None,
    ) -> None:
        """Close the job's row as ``success`` or ``failed``, with what became known on the way: the
        attempts made, the image's version and sha256 (None leaves a known value alone). In memory at
        once, in the file as soon as it can be."""
        running = self._running.pop(job_id, None)
        if running is None:
            _LOGGER.warning("%s: job %s ended, but it was never begun", self, job_id)
            return
        record = replace(
            running,
            state="success" if success else "failed",
            error_code=error_code or None,
            message=message or None,
            finished=timestamps.now(),
            attempt=attempt,
            firmware_version=running.firmware_version if firmware_version is None else firmware_version,
            sha256=running.sha256 if sha256 is None else sha256,
        )
        self._queued_row(record)

    async def history(self, can_id: int = 0, *, limit: int = 1000) -> list[JobRecord]:
        """Jobs newest first; ``can_id`` 0 = every board. Rows not yet in the file are shown as they are
        in memory."""
        unwritten = {job_id: row for job_id, row in self._unwritten_jobs.items() if can_id in (0, row.can_id)}
        where = "" if can_id == 0 else "WHERE can_id = ?"
        parameters: tuple[int, ...] = (limit,) if can_id == 0 else (can_id, limit)
        query = f"SELECT * FROM history {where} ORDER BY started DESC, rowid DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(query, parameters).fetchall())
        in_file = [unwritten.pop(row["job_id"]) if row["job_id"] in unwritten else JobRecord(**dict(row))
                   for row in rows]  # fmt: skip
        return [*reversed(unwritten.values()), *in_file][:limit]  # the rows the file lacks are the newest

    async def flush(self) -> None:
        """Until every change made so far is in the file (however long that takes)."""
        await self._until_written(self._queued)

    # ---- the writer ---------------------------------------------------------------------------------

    def _queued_change(self) -> int:
        self._queued += 1
        self._wake.set()
        return self._queued

    def _queued_row(self, record: JobRecord) -> int:
        self._unwritten_jobs[record.job_id] = record  # a newer version keeps the row's place
        return self._queued_change()

    async def _until_written(self, change: int) -> None:
        async with self._written_changed:
            await self._written_changed.wait_for(lambda: self._written >= change)

    async def _write_loop(self) -> None:
        """Write what the file lacks, one transaction at a time; on failure, keep it and try again."""
        delay = self.retry_delay
        while True:
            await self._wake.wait()
            self._wake.clear()
            upto = self._queued
            statuses = dict(self._unwritten_status)
            jobs = dict(self._unwritten_jobs)
            usb = self._unwritten_usb
            if statuses or jobs or usb is not None:
                tried = time.monotonic()
                try:
                    await self._run(
                        functools.partial(
                            write_rows, statuses=statuses, jobs=list(jobs.values()), usb_status=usb
                        )
                    )
                except Exception as err:  # the writer outlives every failure, and says so
                    self._failed(err, tried, len(statuses), len(jobs), delay)
                    self._wake.set()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._kick.wait()
                    self._kick.clear()
                    delay = min(delay * 2, self.max_retry_delay)
                    continue
                for can_id, entry in statuses.items():  # unless a newer version came meanwhile
                    if self._unwritten_status.get(can_id) is entry:
                        del self._unwritten_status[can_id]
                for job_id, row in jobs.items():
                    if self._unwritten_jobs.get(job_id) is row:
                        del self._unwritten_jobs[job_id]
                if self._unwritten_usb is usb:
                    self._unwritten_usb = None
                self._recovered(len(statuses), len(jobs))
                delay = self.retry_delay
            async with self._written_changed:
                self._written = upto
                self._written_changed.notify_all()

    def _failed(self, err: Exception, tried: float, statuses: int, jobs: int, delay: float) -> None:
        cause = err.__cause__ if isinstance(err, StoreError) and err.__cause__ is not None else err
        reason = f"{type(cause).__name__}: {cause}"
        outage = self._outage
        if outage is not None and outage.reason == reason:
            outage.attempts += 1
            _LOGGER.debug("%s: still cannot write (%s); next try in %.1f s", self, reason, delay)
            return
        if outage is None:
            self._outage = _Outage(tried, reason)
        else:
            outage.reason, outage.attempts = reason, outage.attempts + 1
        _LOGGER.warning(
            "%s: cannot write %d status and %d history rows (%s); they are kept in memory and tried "
            "again, next in %.1f s", self, statuses, jobs, reason, delay,
            exc_info=not isinstance(err, StoreError),  # anything but sqlite's own errors is a bug
        )  # fmt: skip

    def _recovered(self, statuses: int, jobs: int) -> None:
        outage, self._outage = self._outage, None
        if outage is not None:
            _LOGGER.info(
                "%s: written again after %.1f s and %d failed tries (%d status and %d history rows)",
                self, time.monotonic() - outage.since, outage.attempts, statuses, jobs,
            )  # fmt: skip

    # ---- worker thread ------------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` on the store's thread."""

        def call() -> T:
            if self._connection is None:
                raise StoreError(f"{self}: not open")
            return work(self._connection)

        return await self._in_thread(call)

    async def _in_thread(self, work: Callable[[], T]) -> T:
        def call() -> T:
            try:
                return work()
            except sqlite3.Error as err:
                raise StoreError(f"{self}: {type(err).__name__}: {err}") from err

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _close(self, connection: sqlite3.Connection) -> None:
        connection.close()
        self._connection = None
