"""The status store's SQLite file: its schema and migrations, opening it (what a crash left running is
closed, a damaged file is moved aside), and the one kind of write the store's writer makes.

Everything here runs on the store's worker thread (sqlite3 blocks, and a connection belongs to the
thread that made it); :mod:`.store` decides when.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from uc2otad import timestamps
from uc2otad.errors import StoreError
from uc2otad.methods.usb.status import interrupted_status

#: the store's logger: its messages read as one component's, wherever in it they come from
_LOGGER = logging.getLogger("uc2otad.engine.store")

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
    # 3: the USB flash status of the master, kept across restarts (issue 20); one row
    """
    CREATE TABLE usb_flash_status (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        status  TEXT NOT NULL,          -- the USB flash status dict (CONTRACT.md §4) as JSON
        updated TEXT NOT NULL
    )
    """,
    # 4: why a job installed its image: NULL for an update, "requested" (Rollback) or "unhealthy" (the
    # check after an update failed and rollback_on_unhealthy is set) for a rollback (issue 20)
    "ALTER TABLE history ADD COLUMN rollback TEXT",
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
    #: None for an update; why it put back an earlier image for a rollback: "requested", "unhealthy"
    rollback: str | None = None
    attempt: int = 1
    error_code: str | None = None
    message: str | None = None
    started: str = ""
    finished: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The row without its unknown (None) values: D-Bus has no null."""
        return {name: value for name, value in self.__dict__.items() if value is not None}


@dataclass(frozen=True)
class OpenedFile:
    """An open, checked, migrated database, and what was in it."""

    connection: sqlite3.Connection
    #: the jobs a crash left running, now failed/interrupted
    interrupted: list[JobRecord]
    #: every board's stored status dict
    statuses: dict[int, dict[str, Any]]
    #: the master's last USB flash status (``usb_flash_status``), None if none was ever kept
    usb_status: dict[str, Any] | None = None


def open_database(path: Path, busy_timeout: float, label: str) -> OpenedFile:
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
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        empty = False
    damage = "it is empty (0 bytes)" if empty else None
    if damage is None:
        try:
            return _open_file(path, busy_timeout, label)
        except _DamagedError as err:
            damage = str(err)
    aside = _set_aside(path, label)
    _LOGGER.error(
        "%s: the state database is damaged (%s); moved aside to %s and started with an empty one: "
        "the status and history from before are only in that file",
        label, damage, aside.name,
    )  # fmt: skip
    return _open_file(path, busy_timeout, label)


def _open_file(path: Path, busy_timeout: float, label: str) -> OpenedFile:
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    connection.row_factory = sqlite3.Row
    try:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            check = [row[0] for row in connection.execute("PRAGMA integrity_check").fetchall()]
            if check != ["ok"]:
                raise _DamagedError(f"integrity check: {'; '.join(check[:3])}")
            _migrate(connection, label)
            interrupted = _reconcile(connection)
            rows = connection.execute("SELECT can_id, status FROM board_status").fetchall()
            usb_row = connection.execute("SELECT status FROM usb_flash_status WHERE id = 1").fetchone()
        except sqlite3.DatabaseError as err:
            if _is_damage(err):
                raise _DamagedError(f"{type(err).__name__}: {err}") from err
            raise
    except BaseException:
        connection.close()
        raise
    for job in interrupted:
        _LOGGER.warning(
            "%s: job %s on board %d was interrupted",
            label,
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
                "update of the board writes a new one)", label, can_id,
            )  # fmt: skip
            continue
        statuses[can_id] = status
    usb_status = None if usb_row is None else _status_of(usb_row[0])
    if usb_row is not None and usb_status is None:
        _LOGGER.warning("%s: the stored USB flash status is not a JSON object; skipped", label)
    return OpenedFile(connection, interrupted, statuses, usb_status)


def _set_aside(path: Path, label: str) -> Path:
    """Rename the damaged file (and its WAL) to ``<name>.damaged-<UTC time>``; drop its shm index."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}.{number}")
    try:
        path.rename(aside)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            wal.rename(aside.with_name(aside.name + "-wal"))
        path.with_name(path.name + "-shm").unlink(missing_ok=True)
    except OSError as err:
        raise StoreError(f"{label}: damaged, and it cannot be moved aside: {err}") from err
    return aside


_PUT_STATUS = """
    INSERT INTO board_status (can_id, status, updated) VALUES (?, ?, ?)
    ON CONFLICT (can_id) DO UPDATE SET status = excluded.status, updated = excluded.updated
"""
_PUT_USB_STATUS = """
    INSERT INTO usb_flash_status (id, status, updated) VALUES (1, ?, ?)
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated = excluded.updated
"""
_PUT_JOB = """
    INSERT INTO history (job_id, can_id, batch_id, method, firmware, firmware_version, previous_version,
                         sha256, rollback, attempt, state, error_code, message, started, finished)
    VALUES (:job_id, :can_id, :batch_id, :method, :firmware, :firmware_version, :previous_version,
            :sha256, :rollback, :attempt, :state, :error_code, :message, :started, :finished)
    ON CONFLICT (job_id) DO UPDATE SET
        firmware = excluded.firmware, firmware_version = excluded.firmware_version, sha256 = excluded.sha256,
        attempt = excluded.attempt,
        state = excluded.state, error_code = excluded.error_code, message = excluded.message,
        finished = excluded.finished
"""


def write_rows(
    connection: sqlite3.Connection,
    statuses: Mapping[int, tuple[str, str]],
    jobs: list[JobRecord],
    usb_status: tuple[str, str] | None = None,
) -> None:
    """One short transaction: committed before the call returns, or nothing of it is written.

    :param usb_status: the master's USB flash status (JSON, time), if it changed
    """
    if connection.in_transaction:  # a failed write whose rollback failed too
        connection.rollback()
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(_PUT_STATUS, [(can_id, *entry) for can_id, entry in statuses.items()])
        connection.executemany(_PUT_JOB, [job.__dict__ for job in jobs])
        if usb_status is not None:
            connection.execute(_PUT_USB_STATUS, usb_status)


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


def _migrate(connection: sqlite3.Connection, label: str) -> None:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(f"{label}: schema version {version} is newer than this uc2otad ({len(MIGRATIONS)})")
    for number in range(version, len(MIGRATIONS)):
        with connection:
            connection.execute("BEGIN IMMEDIATE")
            for statement in _statements(MIGRATIONS[number]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number + 1}")
        _LOGGER.info("%s: schema migrated to version %d", label, number + 1)


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
        _reconcile_usb_status(connection, finished)
    return interrupted


def _reconcile_usb_status(connection: sqlite3.Connection, finished: str) -> None:
    """The master's USB flash status, if a crash left it under way: "failed", ``interrupted`` (its
    history row, ``running`` like any other, is closed by :func:`_reconcile`)."""
    row = connection.execute("SELECT status FROM usb_flash_status WHERE id = 1").fetchone()
    status = None if row is None else _status_of(row[0])
    ended = None if status is None else interrupted_status(status, finished)
    if ended is not None:
        connection.execute(_PUT_USB_STATUS, (json.dumps(ended, sort_keys=True), finished))


def _ended_as(job: JobRecord, status: Mapping[str, Any], finished: str) -> JobRecord:
    """The history row of a job whose board's status says how it ended."""
    if status.get("status") == "success":
        return replace(job, state="success", error_code=None, message=None,
                       firmware_version=status.get("firmware_version") or job.firmware_version,
                       finished=status.get("upload_timestamp") or finished)  # fmt: skip
    return replace(job, state="failed", error_code=status.get("error_code") or "failed",
                   message=status.get("upload_error") or status.get("message"),
                   finished=status.get("timestamp") or finished)  # fmt: skip
