"""The status sequences of CONTRACT.md §2, as a client observes them."""

from __future__ import annotations

import pytest

from uc2otad.contract import ErrorCode, StatusDict
from uc2otad.engine.status import BoardStatus, Phase, SequenceError


class Recorder:
    def __init__(self) -> None:
        self.published: list[StatusDict] = []

    def __call__(self, status: StatusDict) -> None:
        self.published.append(status)

    def steps(self) -> list[tuple[str, int]]:
        return [(s["upload_status"], s["upload_progress"]) for s in self.published]


async def test_the_wifi_sequence_is_the_documents() -> None:
    seen = Recorder()
    board = BoardStatus(11, "wifi", seen, job_id="j1", firmware="m.bin")
    board.advance(Phase.COMMAND_SENT)
    board.advance(Phase.WIFI_CONNECTED, ip="127.0.0.111", hostname="UC2-CAN-B.local")
    board.advance(Phase.DOWNLOADING)
    for percent in (0, 3, 9.9, 10, 47, 55, 99.5, 100):
        board.progress(percent)
    board.advance(Phase.VERIFYING)
    board.succeed(verification="version", firmware_version="v2026.2.0")

    assert seen.steps() == [
        ("command_sent", 0), ("wifi_connected", 0), ("downloading", 0),
        *[("uploading", p) for p in range(0, 100, 10)],
        ("verifying", 100), ("success", 100),
    ]  # fmt: skip
    final = seen.published[-1]
    assert (final["status"], final["verification"], final["firmware_version"]) == (
        "success",
        "version",
        "v2026.2.0",
    )
    assert final["message"] == "✅ Firmware uploaded successfully"
    assert final["ip"] == "127.0.0.111" and final["success"] is True and final["upload_timestamp"]
    assert [s["status"] for s in seen.published[:2]] == ["initiated", "wifi_connected"]
    assert seen.published[1]["message"] == "Device connected at 127.0.0.111"


async def test_the_streaming_sequence_flashes_before_verifying() -> None:
    seen = Recorder()
    board = BoardStatus(20, "can", seen)
    board.advance(Phase.COMMAND_SENT)
    board.advance(Phase.DOWNLOADING)
    board.progress(100)
    board.advance(Phase.FLASHING)
    board.advance(Phase.VERIFYING)
    board.succeed(verification="transfer")
    assert seen.steps() == [
        ("command_sent", 0), ("downloading", 0), *[("uploading", p) for p in range(0, 100, 10)],
        ("flashing", 100), ("verifying", 100), ("success", 100),
    ]  # fmt: skip
    assert all(s["status"] == "initiated" for s in seen.published[:-1])


async def test_steps_never_go_back_nor_skip_to_success() -> None:
    board = BoardStatus(11, "wifi", Recorder())
    board.advance(Phase.COMMAND_SENT)
    board.advance(Phase.DOWNLOADING)
    with pytest.raises(SequenceError):
        board.advance(Phase.WIFI_CONNECTED)
    with pytest.raises(SequenceError):
        board.advance(Phase.FLASHING)  # not a WiFi step
    with pytest.raises(SequenceError):
        board.succeed(verification="version")  # not after verifying
    with pytest.raises(SequenceError):
        board.succeed(verification="hope")


async def test_a_failure_carries_the_documents_row_and_a_retry_starts_again() -> None:
    seen = Recorder()
    board = BoardStatus(11, "wifi", seen)
    board.advance(Phase.COMMAND_SENT)
    board.fail(ErrorCode.WIFI_FAILED, detail="1: WiFi connection failed", wifi=True)
    failed = seen.published[-1]
    assert (failed["status"], failed["upload_status"], failed["error_code"]) == (
        "wifi_failed",
        "failed",
        "wifi_failed",
    )
    assert (
        "Check SSID/password" in failed["message"] and failed["upload_error"] == "1: WiFi connection failed"
    )
    with pytest.raises(SequenceError):
        board.advance(Phase.WIFI_CONNECTED)

    board.retry()
    board.advance(Phase.COMMAND_SENT)
    again = seen.published[-1]
    assert (again["attempt"], again["upload_status"]) == (2, "command_sent")
    assert "error_code" not in again
