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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from uc2otad import timestamps
from uc2otad.errors import StoreError

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
INTERRUPTED_MESSAGE = "the daemon stopped during the update; the board keeps the image it booted"

#: migrations[n] brings the schema from version n to n + 1
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE board_status (
        can_id  INTEGER PRIMARY KEY,
        status  TEXT NOT NULL,          -- the status dict (CONTRACT.md §2) as JSON
        updated TEXT NOT NULL
    );
    CREATE TABLE history (
        job_id           TEXT PRIMARY KEY,
        can_id           INTEGER NOT NULL,
        batch_id         TEXT,
        method           TEXT NOT NULL,
        firmware         TEXT,
        firmware_version TEXT,
        previous_version TEXT,
        attempt          INTEGER NOT NULL DEFAULT 1,
        state            TEXT NOT NULL CHECK (state IN ('running', 'success', 'failed')),
        error_code       TEXT,
        message          TEXT,
        started          TEXT NOT NULL,
        finished         TEXT
    );
    CREATE INDEX history_by_board ON history (can_id, started);
    """,
    # 2: the sha256 of the image each job transferred
    "ALTER TABLE history ADD COLUMN sha256 TEXT",
)

#: status values that mean "an update was under way" (CONTRACT.md §2); the others are final or idle
_UNFINISHED_STATUS = ("initiated", "wifi_connected")


@dataclass(frozen=True)
class JobRecord:
    """One history row."""

    job_id: str
    can_id: int
    method: str
    state: str = "running"
    batch_id: str | None = None
    firmware: str | None = None
    firmware_version: str | None = None
    previous_version: str | None = None
    sha256: str | None = None
    attempt: int = 1
    error_code: str | None = None
    message: str | None = None
    started: str = ""
    finished: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The row without its unknown (None) values: D-Bus has no null."""
        return {name: value for name, value in self.__dict__.items() if value is not None}


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
        interrupted, statuses = await self._in_thread(self._open)
        self._status = statuses
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

    def note_image(self, job_id: str, *, firmware_version: str | None, sha256: str) -> None:
        """The running job has its image: the row keeps the release it installs and its sha256, so that
        a crash from now on can be reconciled by asking the board (:mod:`uc2otad.engine.reconcile`).
        In memory at once, in the file as soon as it can be (before the transfer, in practice)."""
        running = self._running.get(job_id)
        if running is None:
            return
        version = firmware_version or running.firmware_version
        record = replace(running, firmware_version=version, sha256=sha256)
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
            if statuses or jobs:
                tried = time.monotonic()
                try:
                    await self._run(
                        functools.partial(_write_rows, statuses=statuses, jobs=list(jobs.values()))
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

    def _open(self) -> tuple[list[JobRecord], dict[int, dict[str, Any]]]:
        """Open the file; a damaged one is moved aside and a fresh one started (issue 15, D8).

        Damaged means: SQLite says it is not a database or is malformed (``SQLITE_NOTADB``,
        ``SQLITE_CORRUPT``), ``PRAGMA integrity_check`` is not ``ok``, or the file is 0 bytes long. The
        last because SQLite would take an empty file for a new database and the history would be gone
        without a word, while this daemon never leaves one behind: the first pragma after creating the
        file writes its header, before anything else happens. So a 0-byte file found at start was
        truncated (a crash of a file system without data journalling, an admin's ``: >``) and is
        reported like any damage. The file goes to ``<name>.damaged-<UTC time>`` (its ``-wal`` beside
        it), where an admin can still read what is left; the journal says so once, at ERROR. Anything
        else (a lock, permissions, a newer schema) is a :class:`StoreError` as before: the file is
        healthy, or not ours to decide about.
        """
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            empty = self.path.stat().st_size == 0
        except FileNotFoundError:
            empty = False
        damage = "it is empty (0 bytes)" if empty else None
        if damage is None:
            try:
                return self._open_file()
            except _DamagedError as err:
                damage = str(err)
        aside = self._set_aside()
        _LOGGER.error(
            "%s: the state database is damaged (%s); moved aside to %s and started with an empty one: "
            "the status and history from before are only in that file",
            self, damage, aside.name,
        )  # fmt: skip
        return self._open_file()

    def _open_file(self) -> tuple[list[JobRecord], dict[int, dict[str, Any]]]:
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                check = [row[0] for row in connection.execute("PRAGMA integrity_check").fetchall()]
                if check != ["ok"]:
                    raise _DamagedError(f"integrity check: {'; '.join(check[:3])}")
                _migrate(connection, self)
                interrupted = _reconcile(connection)
                rows = connection.execute("SELECT can_id, status FROM board_status").fetchall()
            except sqlite3.DatabaseError as err:
                if _is_damage(err):
                    raise _DamagedError(f"{type(err).__name__}: {err}") from err
                raise
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        for job in interrupted:
            _LOGGER.warning(
                "%s: job %s on board %d was interrupted",
                self,
                job.job_id,
                job.can_id,
                extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "interrupted"},
            )
        statuses: dict[int, dict[str, Any]] = {}
        for can_id, text in rows:
            status = _status_of(text)
            if status is None:
                _LOGGER.warning(
                    "%s: the stored status of board %s is not a JSON object; skipped (the next scan or "
                    "update of the board writes a new one)", self, can_id,
                )  # fmt: skip
                continue
            statuses[can_id] = status
        return interrupted, statuses

    def _set_aside(self) -> Path:
        """Rename the damaged file (and its WAL) to ``<name>.damaged-<UTC time>``; drop its shm index."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        number = 1
        while aside.exists():
            number += 1
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}.{number}")
        try:
            self.path.rename(aside)
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists():
                wal.rename(aside.with_name(aside.name + "-wal"))
            self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
        except OSError as err:
            raise StoreError(f"{self}: damaged, and it cannot be moved aside: {err}") from err
        return aside

    def _close(self, connection: sqlite3.Connection) -> None:
        connection.close()
        self._connection = None


_PUT_STATUS = """
    INSERT INTO board_status (can_id, status, updated) VALUES (?, ?, ?)
    ON CONFLICT (can_id) DO UPDATE SET status = excluded.status, updated = excluded.updated
"""
_PUT_JOB = """
    INSERT INTO history (job_id, can_id, batch_id, method, firmware, firmware_version, previous_version,
                         sha256, attempt, state, error_code, message, started, finished)
    VALUES (:job_id, :can_id, :batch_id, :method, :firmware, :firmware_version, :previous_version,
            :sha256, :attempt, :state, :error_code, :message, :started, :finished)
    ON CONFLICT (job_id) DO UPDATE SET
        firmware_version = excluded.firmware_version, sha256 = excluded.sha256, attempt = excluded.attempt,
        state = excluded.state, error_code = excluded.error_code, message = excluded.message,
        finished = excluded.finished
"""


def _write_rows(
    connection: sqlite3.Connection, statuses: Mapping[int, tuple[str, str]], jobs: list[JobRecord]
) -> None:
    """One short transaction: committed before the call returns, or nothing of it is written."""
    if connection.in_transaction:  # a failed write whose rollback failed too
        connection.rollback()
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(_PUT_STATUS, [(can_id, *entry) for can_id, entry in statuses.items()])
        connection.executemany(_PUT_JOB, [job.__dict__ for job in jobs])


class _DamagedError(Exception):
    """The file is not a healthy database (internal to :meth:`StatusStore._open`)."""


#: SQLite's primary result codes for a damaged file
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def _is_damage(err: sqlite3.DatabaseError) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return not isinstance(err, sqlite3.OperationalError)


def _status_of(text: object) -> dict[str, Any] | None:
    """A stored status dict, or None if the row is not a JSON object."""
    try:
        status = json.loads(text) if isinstance(text, str | bytes) else None
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


def _migrate(connection: sqlite3.Connection, store: StatusStore) -> None:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(f"{store}: schema version {version} is newer than this uc2otad ({len(MIGRATIONS)})")
    for number in range(version, len(MIGRATIONS)):
        with connection:
            connection.execute("BEGIN IMMEDIATE")
            for statement in _statements(MIGRATIONS[number]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number + 1}")
        _LOGGER.info("%s: schema migrated to version %d", store, number + 1)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit the open transaction)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _reconcile(connection: sqlite3.Connection) -> list[JobRecord]:
    """Close what a crash left running, in one transaction; the jobs now ``failed``/``interrupted``.

    A row whose board's status already names the job's end (the status dict with its ``job_id`` says
    "success" or "failed": a crash between the two writes of an older daemon, or a file edited by
    hand) takes that end: the status is only ever published at the end with its evidence, so it is
    the newer word (a failed attempt with ``retry_in`` is not an end). Every other running row is
    interrupted, and so is its board's status if it was unfinished.
    """
    finished = timestamps.now()
    interrupted: list[JobRecord] = []
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        statuses = {
            can_id: status
            for can_id, text in connection.execute("SELECT can_id, status FROM board_status").fetchall()
            if (status := _status_of(text)) is not None  # a row that is not JSON is reported by the caller
        }
        for row in connection.execute("SELECT * FROM history WHERE state = 'running'").fetchall():
            job = JobRecord(**dict(row))
            status = statuses.get(job.can_id, {})
            final = status.get("status") == "success" or (
                status.get("status") in ("failed", "wifi_failed") and "retry_in" not in status
            )  # a failed attempt that was to be retried is not the job's end
            ended = final and status.get("job_id") == job.job_id
            if ended:
                closed = _ended_as(job, status, finished)
            else:
                closed = replace(job, state="failed", error_code="interrupted", message=INTERRUPTED_MESSAGE,
                                 finished=finished)  # fmt: skip
                interrupted.append(closed)
            connection.execute(_PUT_JOB, closed.__dict__)
        for can_id, status in statuses.items():
            if status.get("status") in _UNFINISHED_STATUS:
                status.update(status="failed", upload_status="failed", error_code="interrupted",
                              message=INTERRUPTED_MESSAGE, timestamp=finished)  # fmt: skip
                status.pop("queued", None)
                connection.execute(_PUT_STATUS, (can_id, json.dumps(status, sort_keys=True), finished))
    return interrupted


def _ended_as(job: JobRecord, status: Mapping[str, Any], finished: str) -> JobRecord:
    """The history row of a job whose board's status says how it ended."""
    if status.get("status") == "success":
        return replace(job, state="success", error_code=None, message=None,
                       firmware_version=status.get("firmware_version") or job.firmware_version,
                       finished=status.get("upload_timestamp") or finished)  # fmt: skip
    return replace(job, state="failed", error_code=status.get("error_code") or "failed",
                   message=status.get("upload_error") or status.get("message"),
                   finished=status.get("timestamp") or finished)  # fmt: skip
