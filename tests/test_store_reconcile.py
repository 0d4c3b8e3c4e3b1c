"""Issue 15, D10 (the file's part): a job whose board's status already says how it ended is not
"interrupted" at the next start; the row learns the release it installs before the transfer."""

from __future__ import annotations

from typing import Any

from test_store import store

from uc2otad.engine.store import JobRecord, StatusStore

__all__ = ["store"]  # a fixture, used by name


Reopened = tuple[list[str], JobRecord, StatusStore]


async def reopened_after(store: StatusStore, status: dict[str, Any]) -> Reopened:
    """The store closed with job j1 of board 11 running and ``status`` as the board's status, reopened."""
    await store.begin_job(JobRecord(job_id="j1", can_id=11, method="can", previous_version="v1.0.0"))
    store.put_status(11, {"can_id": 11, "job_id": "j1", **status})
    await store.close()
    reopened = StatusStore(store.path)
    interrupted = [job.job_id for job in await reopened.open()]
    (row,) = await reopened.history(11)
    return interrupted, row, reopened


async def test_a_status_that_says_success_for_the_running_job_closes_its_row_as_success(
    store: StatusStore,
) -> None:
    """D10 A kill right after the success signal left status "success" but history "interrupted"."""
    success = {"status": "success", "upload_status": "success", "upload_progress": 100,
               "verification": "version", "firmware_version": "v2.0.0",
               "upload_timestamp": "2026-12-05T02:00:00+00:00"}  # fmt: skip
    interrupted, row, reopened = await reopened_after(store, success)
    try:
        assert interrupted == []
        assert (row.state, row.error_code, row.firmware_version) == ("success", None, "v2.0.0")
        assert row.finished == "2026-12-05T02:00:00+00:00"
        assert (reopened.get_status(11) or {})["status"] == "success"
    finally:
        await reopened.close()


async def test_a_failed_attempt_that_was_to_be_retried_is_still_interrupted(store: StatusStore) -> None:
    """D10 Only a final status ends the row: ``retry_in`` promised another attempt, which never came."""
    retrying = {"status": "failed", "upload_status": "failed", "error_code": "link_lost", "retry_in": 5}
    interrupted, row, reopened = await reopened_after(store, retrying)
    try:
        assert interrupted == ["j1"]
        assert (row.state, row.error_code) == ("failed", "interrupted")
    finally:
        await reopened.close()


async def test_a_final_failure_for_the_running_job_closes_its_row_with_that_failure(
    store: StatusStore,
) -> None:
    failed = {"status": "failed", "upload_status": "failed", "error_code": "board_not_back",
              "upload_error": "board 11 did not answer within 40 s of its reboot"}  # fmt: skip
    interrupted, row, reopened = await reopened_after(store, failed)
    try:
        assert interrupted == []
        assert (row.state, row.error_code) == ("failed", "board_not_back")
        assert row.message == "board 11 did not answer within 40 s of its reboot"
    finally:
        await reopened.close()


async def test_the_running_row_learns_the_release_and_sha256_of_its_image(store: StatusStore) -> None:
    """What a restart needs to ask the board is in the file before the transfer, not only at the end."""
    await store.begin_job(JobRecord(job_id="j1", can_id=11, method="can"))
    store.note_image("j1", firmware_version="v2.0.0", sha256="ab" * 32)
    await store.flush()
    await store.close()
    reopened = StatusStore(store.path)
    (job,) = await reopened.open()
    try:
        assert (job.state, job.error_code, job.firmware_version, job.sha256) == (
            "failed",
            "interrupted",
            "v2.0.0",
            "ab" * 32,
        )
    finally:
        await reopened.close()
