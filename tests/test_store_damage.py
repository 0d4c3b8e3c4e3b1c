"""A damaged state database never stops the daemon (issue 15, D8): bad rows are skipped, a bad file is
moved aside to ``<name>.damaged-<UTC time>`` and a fresh one started, and the journal says so once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest
from conftest import DaemonFactory
from dbus_client import call
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus

from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.errors import StoreError


async def _set_aside(directory: Path) -> list[Path]:
    return await asyncio.to_thread(lambda: sorted(directory.glob("uc2otad.sqlite3.damaged-*")))


def _store_messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "uc2otad.engine.store" and r.levelno >= level]


async def _fill(database: Path) -> None:
    store = StatusStore(database)
    await store.open()
    store.put_status(11, {"can_id": 11, "status": "success", "upload_status": "success"})
    store.put_status(20, {"can_id": 20, "status": "initiated", "upload_status": "uploading"})
    await store.begin_job(JobRecord(job_id="j1", can_id=11, method="wifi"))
    store.finish_job("j1", success=True)
    await store.close()


async def test_a_status_row_that_is_not_json_is_skipped_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """D8: a board_status row that is not JSON used to crash start-up (JSONDecodeError, a traceback).
    Now that board's row is skipped with one journal line; the rest of the file is kept."""
    database = tmp_path / "uc2otad.sqlite3"
    await _fill(database)

    def damage_row() -> None:
        with sqlite3.connect(database) as db:
            db.execute("UPDATE board_status SET status = '{not json' WHERE can_id = 20")
        db.close()

    await asyncio.to_thread(damage_row)
    store = StatusStore(database)
    with caplog.at_level(logging.WARNING, logger="uc2otad.engine.store"):
        await store.open()
    try:
        assert store.get_status(20) is None
        assert store.get_status(11) == {"can_id": 11, "status": "success", "upload_status": "success"}
        assert [job.job_id for job in await store.history()] == ["j1"]
        messages = _store_messages(caplog)
        assert len(messages) == 1 and "board 20" in messages[0], messages
        assert await _set_aside(tmp_path) == []
    finally:
        await store.close()


async def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """D8: ``file is not a database`` used to exit 1 at every start (Restart= looped forever)."""
    database = tmp_path / "uc2otad.sqlite3"
    garbage = b"this is not sqlite" * 300
    await asyncio.to_thread(database.write_bytes, garbage)
    store = StatusStore(database)
    with caplog.at_level(logging.WARNING, logger="uc2otad.engine.store"):
        assert await store.open() == []
    try:
        [aside] = await _set_aside(tmp_path)
        assert await asyncio.to_thread(aside.read_bytes) == garbage
        await store.begin_job(JobRecord(job_id="j1", can_id=11, method="can"))
        assert [job.job_id for job in await store.history()] == ["j1"]
        messages = _store_messages(caplog)
        assert len(messages) == 1 and aside.name in messages[0] and "damaged" in messages[0], messages
    finally:
        await store.close()
    reopened = StatusStore(database)  # the fresh file is a good one: nothing more is moved aside
    await reopened.open()
    await reopened.close()
    assert len(await _set_aside(tmp_path)) == 1


async def test_a_malformed_database_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """D8: a real database with a damaged page (``database disk image is malformed`` or an integrity
    check that is not ok) is moved aside too, not an exit 1."""
    database = tmp_path / "uc2otad.sqlite3"
    await _fill(database)
    data = bytearray(await asyncio.to_thread(database.read_bytes))
    assert len(data) >= 3 * 4096
    data[4096 : 3 * 4096] = b"\xa5" * (2 * 4096)  # every page after the schema page
    await asyncio.to_thread(database.write_bytes, bytes(data))
    store = StatusStore(database)
    with caplog.at_level(logging.WARNING, logger="uc2otad.engine.store"):
        await store.open()
    try:
        [aside] = await _set_aside(tmp_path)
        assert await asyncio.to_thread(aside.read_bytes) == bytes(data)
        assert store.all_status() == {}
        assert await store.history() == []
        assert len(_store_messages(caplog)) == 1
    finally:
        await store.close()


async def test_an_empty_file_is_reported_and_kept_not_silently_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """D8: a 0-byte state database used to be taken as a new, empty one: all history gone without a
    word. The daemon never leaves a 0-byte file (the first pragma writes the header), so one found at
    start was truncated: it is moved aside like any damaged file and the journal says so."""
    database = tmp_path / "uc2otad.sqlite3"
    await asyncio.to_thread(database.write_bytes, b"")
    store = StatusStore(database)
    with caplog.at_level(logging.WARNING, logger="uc2otad.engine.store"):
        await store.open()
    try:
        [aside] = await _set_aside(tmp_path)
        assert (await asyncio.to_thread(aside.stat)).st_size == 0
        messages = _store_messages(caplog)
        assert len(messages) == 1 and "0 bytes" in messages[0], messages
    finally:
        await store.close()


async def test_a_locked_database_is_not_mistaken_for_a_damaged_one(tmp_path: Path) -> None:
    """D8 (guard): a file another process holds locked is healthy: it stays where it is."""
    database = tmp_path / "uc2otad.sqlite3"
    await _fill(database)

    def lock() -> sqlite3.Connection:
        holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        return holder

    holder = await asyncio.to_thread(lock)
    try:
        store = StatusStore(database, busy_timeout=0.2)
        with pytest.raises(StoreError, match="locked"):
            await store.open()
        await store.close()
    finally:
        await asyncio.to_thread(holder.close)
    assert await _set_aside(tmp_path) == []


async def test_the_daemon_starts_on_a_damaged_state_database(
    start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path
) -> None:
    """D8: the daemon used to exit 1 on a state file that is not a database, at every start (systemd's
    ``Restart=`` looped forever). Now it starts, with a fresh file, and the journal says so once."""
    state = tmp_path / "daemon" / "state"
    await asyncio.to_thread(lambda: state.mkdir(parents=True))
    await asyncio.to_thread((state / "uc2otad.sqlite3").write_bytes, b"\x00garbage" * 512)
    daemon = await start_daemon()
    reply = await call(client, "GetAllStatus")
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    assert len(await _set_aside(state)) == 1
    assert (await asyncio.to_thread(daemon.log)).count("the state database is damaged") == 1
