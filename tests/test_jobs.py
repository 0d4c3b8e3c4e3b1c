"""The rules every job follows: one per board, inhibit, history first, retries, cancel, shutdown.

The method here is a scripted implementation of the ``Method`` protocol that walks the WiFi sequence
and fails where the test says; the real methods are tested end to end with the virtual microscope.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from uc2otad.contract import StatusDict
from uc2otad.engine.jobs import JobManager
from uc2otad.engine.status import Phase
from uc2otad.engine.store import StatusStore
from uc2otad.errors import (
    AlreadyCommittedError,
    FirmwareNotFoundError,
    InhibitedError,
    JobBusyError,
    JobError,
    NoJobError,
    UploadTimeoutError,
)
from uc2otad.methods.base import Job
from uc2otad.retry import RetryPolicy


class ScriptedMethod:
    """Walks the WiFi sequence; raises ``failures`` in turn (one per attempt), then succeeds."""

    name = "wifi"

    def __init__(
        self, *failures: Exception, hold: asyncio.Event | None = None, commit_before_hold: bool = False
    ):
        self.failures = list(failures)
        self.hold = hold
        self.commit_before_hold = commit_before_hold
        self.started = asyncio.Event()
        self.attempts = 0

    async def run(self, job: Job) -> None:
        self.attempts += 1
        job.status.advance(Phase.COMMAND_SENT)
        job.status.advance(Phase.WIFI_CONNECTED, ip="127.0.0.111")
        job.status.advance(Phase.DOWNLOADING)
        job.status.progress(0)
        if self.commit_before_hold:
            job.committed()
        self.started.set()
        if self.failures:
            raise self.failures.pop(0)
        if self.hold is not None:
            await self.hold.wait()
        job.status.progress(100)
        job.status.advance(Phase.VERIFYING)
        job.status.succeed(verification="version", firmware_version="v2")


class Published:
    def __init__(self) -> None:
        self.statuses: list[StatusDict] = []

    def __call__(self, can_id: int, status: StatusDict) -> None:
        self.statuses.append(status)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StatusStore]:
    opened = StatusStore(tmp_path / "uc2otad.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


def manager(store: StatusStore, published: Published, *, inhibited: bool = False) -> JobManager:
    retry = RetryPolicy(attempts=3, first_delay=0, factor=1)
    return JobManager(store, published, inhibited=lambda: inhibited, retry=retry)


async def test_a_job_runs_its_sequence_and_is_recorded(store: StatusStore) -> None:
    published = Published()
    jobs = manager(store, published)
    busy: list[bool] = []
    jobs.on_change(lambda: busy.append(jobs.busy))
    context = jobs.start(11, ScriptedMethod(), {}, firmware="m.bin", previous_version="v1")
    await jobs.wait(11)
    assert published.statuses[-1]["status"] == "success"
    assert busy == [True, False]
    (row,) = await store.history(11)
    assert (row.job_id, row.state, row.firmware, row.previous_version) == (
        context.job_id,
        "success",
        "m.bin",
        "v1",
    )


async def test_one_job_per_board_and_none_while_inhibited(store: StatusStore) -> None:
    hold = asyncio.Event()
    jobs = manager(store, Published())
    jobs.start(11, ScriptedMethod(hold=hold), {})
    with pytest.raises(JobBusyError):
        jobs.start(11, ScriptedMethod(), {})
    jobs.start(12, ScriptedMethod(), {})  # another board is fine
    hold.set()
    await jobs.wait(11)
    await jobs.wait(12)
    with pytest.raises(InhibitedError):
        manager(store, Published(), inhibited=True).start(11, ScriptedMethod(), {})


async def test_a_transient_failure_is_retried_with_the_next_attempt_number(store: StatusStore) -> None:
    published = Published()
    jobs = manager(store, published)
    method = ScriptedMethod(UploadTimeoutError("no progress for 20 s", host="127.0.0.111"))
    jobs.start(11, method, {})
    await jobs.wait(11)
    assert method.attempts == 2
    failed = next(s for s in published.statuses if s["upload_status"] == "failed")
    assert (failed["attempt"], failed["error_code"]) == (1, "upload_timeout")
    assert (published.statuses[-1]["status"], published.statuses[-1]["attempt"]) == ("success", 2)
    assert (await store.history(11))[0].state == "success"


async def test_a_bug_in_a_method_ends_the_job_failed_in_status_and_history(
    store: StatusStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 (follow-up of D4): an exception that is no Uc2otadError, a bug, used to end the task
    with "Task exception was never retrieved", the status stuck in "uploading" and the row "running"."""
    published = Published()
    jobs = manager(store, published)
    context = jobs.start(11, ScriptedMethod(KeyError("ota_rx")), {})
    await jobs.wait(11)
    final = published.statuses[-1]
    assert (final["status"], final["error_code"]) == ("failed", "failed")
    assert "internal error (KeyError)" in final["upload_error"]
    (row,) = await store.history(11)
    assert (row.state, row.error_code, row.attempt) == ("failed", "failed", 1)  # a bug is not retried
    with pytest.raises(JobError, match="internal error"):
        await context.acceptance()
    assert any(record.exc_info for record in caplog.records)  # the traceback is in the journal


async def test_a_permanent_failure_is_not_retried(store: StatusStore) -> None:
    published = Published()
    jobs = manager(store, published)
    method = ScriptedMethod(FirmwareNotFoundError("no image for 11"))
    jobs.start(11, method, {})
    await jobs.wait(11)
    assert method.attempts == 1
    assert published.statuses[-1]["error_code"] == "firmware_not_found"
    row = (await store.history(11))[0]
    assert (row.state, row.error_code) == ("failed", "firmware_not_found")


async def test_cancel_before_commit_ends_the_job_cancelled(store: StatusStore) -> None:
    published = Published()
    jobs = manager(store, published)
    method = ScriptedMethod(hold=asyncio.Event())
    jobs.start(11, method, {})
    await method.started.wait()
    await jobs.cancel(11)
    assert (published.statuses[-1]["status"], published.statuses[-1]["error_code"]) == ("failed", "cancelled")
    assert (await store.history(11))[0].error_code == "cancelled"
    with pytest.raises(NoJobError):
        await jobs.cancel(11)


async def test_cancel_after_commit_is_refused(store: StatusStore) -> None:
    hold = asyncio.Event()
    jobs = manager(store, Published())
    method = ScriptedMethod(hold=hold, commit_before_hold=True)
    jobs.start(11, method, {})
    await method.started.wait()
    with pytest.raises(AlreadyCommittedError):
        await jobs.cancel(11)
    hold.set()
    await jobs.wait(11)


async def test_shutdown_leaves_the_row_running_for_reconciliation(store: StatusStore) -> None:
    jobs = manager(store, Published())
    method = ScriptedMethod(hold=asyncio.Event())
    jobs.start(11, method, {})
    await method.started.wait()
    await jobs.stop()
    assert (await store.history(11))[0].state == "running"
    await store.close()
    reopened = StatusStore(store.path)
    assert [job.can_id for job in await reopened.open()] == [11]
    await reopened.close()
