"""The status database out of reach mid-update (issue 14, D3): the job goes on, the rows follow later.

Another process may hold the SQLite file locked for longer than the store's busy timeout (a backup, an
admin's ``sqlite3`` shell), or the state filesystem may be full. Neither may stop an update: the status
lives in memory, one writer persists it and retries, and the journal says what happened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonFactory
from dbus_client import add_match, call, properties, unwrap, wait_for_property
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from signals import SIGNAL_TIMEOUT, StatusSignals
from test_daemon_update import FAST_UPDATE
from test_jobs import ScriptedMethod
from test_link_ota_stream import NODE, TIMING

from uc2otad.api import names
from uc2otad.contract import StatusDict
from uc2otad.engine.jobs import JobManager
from uc2otad.engine.store import BUSY_TIMEOUT, JobRecord, StatusStore
from uc2otad.errors import StoreError
from uc2otad.retry import RetryPolicy
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, default_node

#: the acceptance's lock: longer than the store's busy timeout, so that a write attempt fails for real
LOCK_SECONDS = 8.0
#: how long the writer may take to write what it kept once the lock is gone (its backoff is shorter)
CATCH_UP_TIMEOUT = 15.0


@pytest.fixture
async def signals(client: MessageBus) -> AsyncIterator[StatusSignals]:
    watcher = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    yield watcher


class DatabaseLock:
    """Another process's exclusive lock on the daemon's database, held for ``seconds`` from entry;
    ``before_release`` runs (in a thread) just before the lock goes."""

    def __init__(self, database: Path, seconds: float, before_release: Callable[[], None]) -> None:
        self.database = database
        self.seconds = seconds
        self.before_release = before_release
        self.released = asyncio.Event()
        self._holding: asyncio.Future[None] | None = None

    async def __aenter__(self) -> DatabaseLock:
        connection = await asyncio.to_thread(self._take)
        self._holding = asyncio.ensure_future(asyncio.to_thread(self._hold, connection))
        self._holding.add_done_callback(lambda _: self.released.set())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._holding is not None
        await self._holding

    def _take(self) -> sqlite3.Connection:
        # a short wait for the lock: the daemon writes often, and BEGIN EXCLUSIVE needs a moment without
        connection = sqlite3.connect(
            self.database, timeout=2.0, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("BEGIN EXCLUSIVE")
        except BaseException:
            connection.close()
            raise
        return connection

    def _hold(self, connection: sqlite3.Connection) -> None:
        try:
            time.sleep(self.seconds)
            self.before_release()
            connection.execute("ROLLBACK")
        finally:
            connection.close()


def read_rows(database: Path) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Every history row's state by job, and the board's persisted status, read as another process would."""
    connection = sqlite3.connect(database, timeout=1.0)
    try:
        history = dict(connection.execute("SELECT job_id, state FROM history").fetchall())
        status = connection.execute("SELECT status FROM board_status WHERE can_id = ?", (NODE,)).fetchone()
        return history, None if status is None else json.loads(status[0])
    finally:
        connection.close()


async def job_end(signals: StatusSignals, job_id: str) -> dict[str, Any]:
    """The final status of job ``job_id``."""
    async with asyncio.timeout(SIGNAL_TIMEOUT):
        while True:
            for status in signals.statuses:
                if status["job_id"] == job_id and status["upload_status"] in ("success", "failed"):
                    return status
            await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_d3_a_database_locked_mid_update_neither_stops_nor_wedges_the_job(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: StatusSignals,
    served_image: str,
    tmp_path: Path,
) -> None:
    """D3 (issue 14): one failed status write wedged the job until restart.

    The daemon's database is locked by another process for 8 s (longer than its 5 s busy timeout) once
    the update is uploading. The update still ends with success while the lock is held, and Busy
    clears; a second update may start at once, but it touches the board only once its history row is
    in the file, after the lock. Once the lock is gone, the rows and the status are written, and the
    log says what happened.
    """
    assert LOCK_SECONDS > BUSY_TIMEOUT
    # the slave pauses at 30 % for a second, so that the lock is surely taken mid-upload
    timing = replace(TIMING, block_timeout=5.0, ota_rx_timeout=5.0)
    node = replace(default_node(NODE), faults=NodeFaults(stall_at_percent=30.0, stall_seconds=1.0))
    config = SimConfig(
        nodes=(node,), timing=timing, serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0
    )
    seen_while_locked: list[dict[str, Any]] = []
    async with VirtualMicroscope(config) as scope:
        daemon = await start_daemon("--serial-port", str(scope.config.serial_link),
                                    "--firmware-server", served_image, config=FAST_UPDATE)  # fmt: skip
        database = daemon.state_dir / "uc2otad.sqlite3"
        reply = await call(client, "StartOTA", "ua{sv}", NODE, {})
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        first = unwrap(reply.body[0])["job_id"]
        await signals.until("uploading")

        def before_release() -> None:
            seen_while_locked.extend(list(signals.statuses))

        async with DatabaseLock(database, LOCK_SECONDS, before_release) as lock:
            try:
                async with asyncio.timeout(LOCK_SECONDS - 2):
                    final = await job_end(signals, first)
                    await wait_for_property(client, "Busy", False)
            except TimeoutError:
                busy = (await properties(client))["Busy"]
                pytest.fail(f"no end while the database was locked: Busy={busy}, last {signals.statuses[-1]}")
            status = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
            # no version.json: the board is not known to be current, so this starts a second job
            again = await call(client, "StartOTA", "ua{sv}", NODE, {})
            assert again.message_type is MessageType.METHOD_RETURN, again.body
            second = unwrap(again.body[0])["job_id"]
            assert not lock.released.is_set(), "the lock ended before the test was done with it"
        assert (await job_end(signals, second))["upload_status"] == "success"

        async with asyncio.timeout(CATCH_UP_TIMEOUT):
            while True:
                history, persisted = await asyncio.to_thread(read_rows, database)
                board = (persisted or {}).get("job_id"), (persisted or {}).get("status")
                if history == {first: "success", second: "success"} and board == (second, "success"):
                    break
                await asyncio.sleep(0.1)
        rows = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])

    assert (final["upload_status"], final["status"]) == ("success", "success"), final
    steps = [
        s["upload_progress"]
        for s in seen_while_locked
        if s["job_id"] == first and s["upload_status"] == "uploading"
    ]
    assert steps == list(range(0, 100, 10))
    assert (status["status"], status["job_id"]) == ("success", first)
    assert [s for s in seen_while_locked if s["job_id"] == second] == [], "a transfer before its history row"
    assert [(row["job_id"], row["state"]) for row in rows] == [(second, "success"), (first, "success")]
    log = await asyncio.to_thread(daemon.log)
    assert "cannot write" in log and "database is locked" in log, log
    assert "written again" in log, log


# ---- the store and the job manager alone, with the store's waits shrunk ------------------------------

#: the store's busy timeout, backoff and shutdown bound, shrunk as the daemon test's 5 s are not
QUICK = {"busy_timeout": 0.05, "retry_delay": 0.02, "max_retry_delay": 0.1, "flush_timeout": 0.5}
STORE_LOGGER = "uc2otad.engine.store"


@asynccontextmanager
async def locked(database: Path) -> AsyncIterator[None]:
    """Another connection holds the database exclusively until the block ends."""

    def take() -> sqlite3.Connection:
        connection = sqlite3.connect(database, timeout=2.0, isolation_level=None, check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")
        return connection

    def release(connection: sqlite3.Connection) -> None:
        connection.execute("ROLLBACK")
        connection.close()

    connection = await asyncio.to_thread(take)
    try:
        yield
    finally:
        await asyncio.to_thread(release, connection)


def rows_in_file(database: Path) -> tuple[list[tuple[str, str]], list[int]]:
    connection = sqlite3.connect(database, timeout=2.0)
    try:
        history = connection.execute("SELECT job_id, state FROM history ORDER BY rowid").fetchall()
        boards = [row[0] for row in connection.execute("SELECT can_id FROM board_status")]
        return history, boards
    finally:
        connection.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StatusStore]:
    opened = StatusStore(tmp_path / "uc2otad.sqlite3", **QUICK)
    await opened.open()
    yield opened
    await opened.close()


async def test_d3_a_locked_database_delays_the_rows_never_the_status(
    store: StatusStore, caplog: pytest.LogCaptureFixture
) -> None:
    """D3 (issue 14): a write that fails on a locked database is kept, logged once, and retried."""
    caplog.set_level(logging.DEBUG, STORE_LOGGER)
    await store.begin_job(JobRecord(job_id="before", can_id=11, method="can"))
    async with locked(store.path):
        for percent in range(0, 100, 10):  # returns at once, every time
            store.put_status(11, {"can_id": 11, "status": "initiated", "upload_progress": percent})
        store.finish_job("before", success=True, sha256="ab")
        waiting = asyncio.ensure_future(store.begin_job(JobRecord(job_id="during", can_id=12, method="can")))
        await asyncio.sleep(0.3)  # several of the store's busy timeouts and retries
        assert not waiting.done()  # a history row written before the transfer: this one waits
        assert store.get_status(11) == {"can_id": 11, "status": "initiated", "upload_progress": 90}
        shown = [(row.job_id, row.state, row.sha256) for row in await store.history()]
        assert shown == [("during", "running", None), ("before", "success", "ab")]  # memory, not the file
        history, boards = await asyncio.to_thread(rows_in_file, store.path)
        assert (history, boards) == ([("before", "running")], [])
    async with asyncio.timeout(2):
        await waiting
        await store.flush()
    assert await asyncio.to_thread(rows_in_file, store.path) == (
        [("before", "success"), ("during", "running")],
        [11],
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write" in warnings[0] and "database is locked" in warnings[0]
    assert any("still cannot write" in r.getMessage() for r in caplog.records)  # retried
    assert any("written again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_d3_a_full_disk_is_survived_and_written_once_there_is_room(
    store: StatusStore, caplog: pytest.LogCaptureFixture
) -> None:
    """D3 (issue 14): "database or disk is full" is kept in memory and retried, as a lock is."""
    caplog.set_level(logging.INFO, STORE_LOGGER)

    def limit(pages: int | None) -> Callable[[sqlite3.Connection], object]:
        # SQLite's own size limit gives the very error a full filesystem gives (SQLITE_FULL)
        def pragma(db: sqlite3.Connection) -> object:
            size = pages or db.execute("PRAGMA page_count").fetchone()[0]
            return db.execute(f"PRAGMA max_page_count = {size}").fetchone()

        return pragma

    await store._run(limit(None))  # no page more than it has now
    store.put_status(20, {"can_id": 20, "status": "success", "statusMsg": "x" * 20_000})
    await asyncio.sleep(0.2)
    assert store.write_failure == "OperationalError: database or disk is full"
    assert store.get_status(20) is not None
    await store._run(limit(1_000_000))  # room again
    async with asyncio.timeout(2):
        await store.flush()
    assert store.write_failure is None
    assert (await asyncio.to_thread(rows_in_file, store.path))[1] == [20]
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot write" in m and "database or disk is full" in m for m in messages)
    assert any("written again" in m for m in messages)


async def test_d3_a_history_row_that_cannot_be_written_fails_the_job_before_the_board(
    store: StatusStore,
) -> None:
    """D3 (issue 14): the history row comes before the transfer; a file that stays unwritable fails the
    job cleanly (nothing sent to the board, Busy clears), and the row follows once the file is back."""
    statuses: list[StatusDict] = []
    jobs = JobManager(store, lambda _, status: statuses.append(status), inhibited=lambda: False,
                      retry=RetryPolicy(attempts=1), history_timeout=0.3)  # fmt: skip
    method = ScriptedMethod()
    async with locked(store.path):
        context = jobs.start(11, method, {})
        with pytest.raises(StoreError, match="nothing was sent to board 11"):
            await context.acceptance()
        await jobs.wait(11)
        assert not jobs.busy and method.attempts == 0
        assert [(s["status"], s["error_code"]) for s in statuses] == [("failed", "failed")]
        assert "database is locked" in statuses[-1]["upload_error"]
    async with asyncio.timeout(2):
        await store.flush()
    history, _ = await asyncio.to_thread(rows_in_file, store.path)
    assert history == [(context.job_id, "failed")]


async def test_closing_while_the_database_stays_locked_is_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown waits for the writer at most ``flush_timeout``, and says what it could not write."""
    store = StatusStore(tmp_path / "uc2otad.sqlite3", **QUICK)
    await store.open()
    async with locked(store.path):
        store.put_status(11, {"can_id": 11, "status": "success"})
        started = time.monotonic()
        await store.close()
        assert time.monotonic() - started < QUICK["flush_timeout"] + 1
    assert any("not written" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
