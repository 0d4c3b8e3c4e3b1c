"""Issue 20: the master's USB flash status in the status store — kept across a reopen, written behind
as the boards' are, and a flash a crash cut short reads "failed"/``interrupted`` at the next open, as
does its history row."""

from __future__ import annotations

from typing import Any

from test_store import store

from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.methods.usb.status import INTERRUPTED_DETAILS, INTERRUPTED_MESSAGE

__all__ = ["store"]  # a fixture, used by name

SUCCESS: dict[str, Any] = {
    "status": "success", "progress": 100, "message": "✅ Firmware flashed and reconnected!",
    "timestamp": "2026-12-05T08:00:00+00:00", "firmware": "master.bin", "job_id": "f1",
    "firmware_version": "v2099.9.0",
}  # fmt: skip
WRITING: dict[str, Any] = {
    "status": "flashing", "progress": 52, "message": "Writing firmware to device...",
    "timestamp": "2026-12-05T08:00:00+00:00", "firmware": "master.bin", "job_id": "f1",
    "port": "/dev/ttyUSB0",
}  # fmt: skip


async def reopened(store: StatusStore) -> tuple[StatusStore, list[JobRecord]]:
    await store.close()
    again = StatusStore(store.path)
    return again, await again.open()


async def test_a_new_store_has_no_usb_status(store: StatusStore) -> None:
    assert store.usb_status() is None


async def test_the_last_usb_status_survives_a_reopen(store: StatusStore) -> None:
    store.put_usb_status(WRITING)
    store.put_usb_status(SUCCESS)  # only the newest is kept
    again, interrupted = await reopened(store)
    try:
        assert interrupted == []
        assert again.usb_status() == SUCCESS
    finally:
        await again.close()


async def test_the_usb_status_is_in_memory_before_the_file_has_it(store: StatusStore) -> None:
    """Written behind: a flash's status step never waits for the disk."""
    store.put_usb_status(WRITING)
    assert store.usb_status() == WRITING  # no await between: nothing was written yet
    kept = store.usb_status()
    assert kept is not None
    kept["status"] = "changed"  # a copy: the caller cannot change what the store holds
    assert store.usb_status() == WRITING


async def test_a_flash_under_way_at_a_crash_is_interrupted_with_its_row(store: StatusStore) -> None:
    await store.begin_job(JobRecord(job_id="f1", can_id=1, method="usb", previous_version="v2026.1.0"))
    store.put_usb_status(WRITING)
    await store.flush()
    # a crash: the store is never closed; the file is what the next daemon finds
    again = StatusStore(store.path)
    try:
        interrupted = await again.open()
        status = again.usb_status()
        (row,) = await again.history(1)
    finally:
        await again.close()
    assert [job.job_id for job in interrupted] == ["f1"]
    assert (row.state, row.error_code, row.method) == ("failed", "interrupted", "usb")
    assert status is not None
    assert (status["status"], status["message"], status["error_code"]) == (
        "failed",
        INTERRUPTED_MESSAGE,
        "interrupted",
    )
    assert status["details"] == INTERRUPTED_DETAILS
    assert (status["progress"], status["job_id"], status["port"]) == (52, "f1", "/dev/ttyUSB0")


async def test_a_final_usb_status_is_left_alone_at_the_next_open(store: StatusStore) -> None:
    failed = {**WRITING, "status": "failed", "message": "Write failed", "error_code": "write_failed"}
    store.put_usb_status(failed)
    again, _ = await reopened(store)
    try:
        assert again.usb_status() == failed
    finally:
        await again.close()


async def test_a_row_begun_before_its_image_learns_the_image_name(store: StatusStore) -> None:
    """A USB flash begins its row first thing, its image still unknown; the row learns it (and its
    sha256 and version) before the write, and the file keeps it."""
    await store.begin_job(JobRecord(job_id="f1", can_id=1, method="usb"))
    store.note_image("f1", firmware_version="v2099.9.0", sha256="ab" * 32, firmware="master.bin")
    store.finish_job("f1", success=True, message="✅ Firmware flashed and reconnected!")
    again, _ = await reopened(store)
    try:
        (row,) = await again.history(1)
    finally:
        await again.close()
    assert (row.firmware, row.sha256, row.firmware_version, row.state) == (
        "master.bin",
        "ab" * 32,
        "v2099.9.0",
        "success",
    )
