"""The status store: each board's current status dict and a history row per job, in SQLite.

What it guarantees, after fwupd's history database:
- A job's row is written *before* its transfer starts, so a crash can never leave an update that
  nobody knows about. On the next start, :meth:`StatusStore.open` marks every row still ``running``
  as ``failed`` with ``error_code`` ``interrupted``, and so the status of its board.
- The file survives SIGKILL at any point: WAL journal, ``synchronous=FULL``, one short transaction per
  change, nothing held open between calls.
- The schema carries a version (``PRAGMA user_version``) and is brought forward by numbered migrations.

sqlite3 blocks, and its connections belong to the thread that made them, so every call runs on one
dedicated worker thread; the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from uc2otad.errors import StoreError

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

DATABASE_NAME = "uc2otad.sqlite3"
#: seconds to wait for a lock held by another connection (only a second daemon could hold one)
BUSY_TIMEOUT = 5.0
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


def now_text() -> str:
    """The contract's timestamp: ISO 8601, UTC offset, seconds precision."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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


class StatusStore:
    """The SQLite file in the state directory. ``open`` before use, ``close`` at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uc2otad-store")
        self._connection: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"StatusStore({str(self.path)!r})"

    async def open(self) -> list[JobRecord]:
        """Open (creating or migrating) the database and reconcile what a crash left running.

        :returns: the jobs that were found running and are now ``failed``/``interrupted``
        :raises StoreError: the file cannot be opened, is not a database, or is newer than this program
        """
        return await self._in_thread(self._open)

    async def close(self) -> None:
        """Close the database; safe to call twice."""
        if self._connection is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=False)  # its one thread is idle now: nothing to wait for

    async def get_status(self, can_id: int) -> dict[str, Any] | None:
        return await self._run(lambda db: _get_status(db, can_id))

    async def all_status(self) -> dict[int, dict[str, Any]]:
        rows = await self._run(lambda db: db.execute("SELECT can_id, status FROM board_status").fetchall())
        return {can_id: json.loads(status) for can_id, status in rows}

    async def put_status(self, can_id: int, status: Mapping[str, Any]) -> None:
        """Replace the board's status dict."""
        text = json.dumps(dict(status), sort_keys=True)
        await self._run(lambda db: _write(db, _PUT_STATUS, (can_id, text, now_text())))

    async def begin_job(self, job: JobRecord) -> JobRecord:
        """Write the job's row as ``running``: call before anything is sent to the board."""
        started = job.started or now_text()
        row = (job.job_id, job.can_id, job.batch_id, job.method, job.firmware, job.firmware_version,
               job.previous_version, job.attempt, started)  # fmt: skip
        await self._run(lambda db: _write(db, _BEGIN_JOB, row))
        return JobRecord(**{**job.__dict__, "state": "running", "started": started})

    async def finish_job(
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
        attempts made, the image's version and sha256 (None leaves a known value alone)."""
        row = ("success" if success else "failed", error_code or None, message or None, now_text(), attempt,
               firmware_version, sha256, job_id)  # fmt: skip
        await self._run(lambda db: _write(db, _FINISH_JOB, row))

    async def history(self, can_id: int = 0, *, limit: int = 1000) -> list[JobRecord]:
        """Jobs newest first; ``can_id`` 0 = every board."""
        where = "" if can_id == 0 else "WHERE can_id = ?"
        parameters: tuple[int, ...] = (limit,) if can_id == 0 else (can_id, limit)
        query = f"SELECT * FROM history {where} ORDER BY started DESC, rowid DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(query, parameters).fetchall())
        return [JobRecord(**dict(row)) for row in rows]

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

    def _open(self) -> list[JobRecord]:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            _migrate(connection, self)
            interrupted = _reconcile(connection)
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
        return interrupted

    def _close(self, connection: sqlite3.Connection) -> None:
        connection.close()
        self._connection = None


_PUT_STATUS = """
    INSERT INTO board_status (can_id, status, updated) VALUES (?, ?, ?)
    ON CONFLICT (can_id) DO UPDATE SET status = excluded.status, updated = excluded.updated
"""
_BEGIN_JOB = """
    INSERT INTO history (job_id, can_id, batch_id, method, firmware, firmware_version, previous_version,
                         attempt, state, started)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)
"""
_FINISH_JOB = """
    UPDATE history SET state = ?, error_code = ?, message = ?, finished = ?, attempt = ?,
                       firmware_version = coalesce(?, firmware_version), sha256 = coalesce(?, sha256)
    WHERE job_id = ?
"""


def _write(connection: sqlite3.Connection, statement: str, parameters: tuple[Any, ...]) -> None:
    with connection:  # one short transaction: committed before the call returns
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(statement, parameters)


def _get_status(connection: sqlite3.Connection, can_id: int) -> dict[str, Any] | None:
    row = connection.execute("SELECT status FROM board_status WHERE can_id = ?", (can_id,)).fetchone()
    return None if row is None else dict(json.loads(row["status"]))


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
    """Mark what a crash left running as failed/interrupted, in one transaction."""
    finished = now_text()
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        rows = connection.execute("SELECT * FROM history WHERE state = 'running'").fetchall()
        connection.execute(
            "UPDATE history SET state = 'failed', error_code = 'interrupted', message = ?, finished = ? "
            "WHERE state = 'running'",
            (INTERRUPTED_MESSAGE, finished),
        )
        for can_id, text in connection.execute("SELECT can_id, status FROM board_status").fetchall():
            status = json.loads(text)
            if status.get("status") in _UNFINISHED_STATUS:
                status.update(status="failed", upload_status="failed", error_code="interrupted",
                              message=INTERRUPTED_MESSAGE, timestamp=finished)  # fmt: skip
                connection.execute(_PUT_STATUS, (can_id, json.dumps(status, sort_keys=True), finished))
    closed = {
        "state": "failed",
        "error_code": "interrupted",
        "message": INTERRUPTED_MESSAGE,
        "finished": finished,
    }
    return [JobRecord(**{**dict(row), **closed}) for row in rows]
