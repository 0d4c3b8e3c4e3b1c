"""The status store: status and history persist, a crash leaves jobs interrupted, never a broken file."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from uc2otad.engine.store import MIGRATIONS, JobRecord, StatusStore
from uc2otad.errors import StoreError


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StatusStore]:
    opened = StatusStore(tmp_path / "state" / "uc2otad.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


async def test_status_and_history_survive_a_reopen(store: StatusStore) -> None:
    status = {"can_id": 11, "status": "success", "upload_status": "success", "upload_progress": 100}
    store.put_status(11, status)
    job = await store.begin_job(JobRecord(job_id="j1", can_id=11, method="wifi", firmware="a.bin"))
    assert job.state == "running" and job.started
    store.finish_job("j1", success=True)
    await store.begin_job(JobRecord(job_id="j2", can_id=20, method="can"))
    store.finish_job("j2", success=False, error_code="master_error", message="crc_mismatch")
    await store.close()

    reopened = StatusStore(store.path)
    assert await reopened.open() == []
    try:
        assert reopened.get_status(11) == status
        assert reopened.get_status(12) is None
        assert set(reopened.all_status()) == {11}
        history = await reopened.history()
        assert [entry.job_id for entry in history] == ["j2", "j1"]  # newest first
        assert history[0].as_dict()["error_code"] == "master_error"
        assert "batch_id" not in history[0].as_dict()  # unknown values are left out
        assert [entry.job_id for entry in await reopened.history(11)] == ["j1"]
    finally:
        await reopened.close()


async def test_a_job_left_running_is_interrupted_on_the_next_open(store: StatusStore) -> None:
    store.put_status(11, {"can_id": 11, "status": "initiated", "upload_status": "uploading"})
    store.put_status(20, {"can_id": 20, "status": "success", "upload_status": "success"})
    await store.begin_job(JobRecord(job_id="j1", can_id=11, method="wifi"))
    await store.close()

    reopened = StatusStore(store.path)
    interrupted = await reopened.open()
    try:
        assert [job.job_id for job in interrupted] == ["j1"]
        row = (await reopened.history(11))[0]
        assert (row.state, row.error_code) == ("failed", "interrupted")
        assert row.finished
        board = reopened.get_status(11)
        assert board is not None
        assert (board["status"], board["upload_status"], board["error_code"]) == (
            "failed",
            "failed",
            "interrupted",
        )
        assert (reopened.get_status(20) or {})["status"] == "success"  # final states stay
    finally:
        await reopened.close()


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from uc2otad.engine.store import JobRecord, StatusStore

    async def main() -> None:
        store = StatusStore(Path(sys.argv[1]))
        await store.open()
        store.put_status(11, {"can_id": 11, "status": "initiated", "upload_status": "command_sent"})
        await store.begin_job(JobRecord(job_id="killed", can_id=11, method="can"))
        for n in range(10_000):  # keep writing until the parent kills us mid-transaction
            store.put_status(11, {"can_id": 11, "status": "initiated", "upload_status": "uploading",
                                  "upload_progress": n % 100})
            await store.flush()
            if n == 50:
                print("writing", flush=True)

    asyncio.run(main())
    """
)


def test_sigkill_while_writing_leaves_an_intact_database_and_an_interrupted_row(tmp_path: Path) -> None:
    database = tmp_path / "uc2otad.sqlite3"
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(database)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()

    async def reopen() -> list[JobRecord]:
        store = StatusStore(database)
        try:
            return await store.open()
        finally:
            await store.close()

    assert [job.job_id for job in asyncio.run(reopen())] == ["killed"]
    with sqlite3.connect(database) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("SELECT state, error_code FROM history").fetchall() == [
            ("failed", "interrupted")
        ]
    check.close()


async def test_a_database_from_a_newer_uc2otad_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "uc2otad.sqlite3"

    def write_newer() -> None:
        with sqlite3.connect(database) as newer:
            newer.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        newer.close()

    await asyncio.to_thread(write_newer)
    store = StatusStore(database)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.close()
