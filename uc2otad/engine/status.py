"""One board's status dict during a job, kept to the contract's sequences (CONTRACT.md §2).

The procedure document promises clients an exact sequence of ``upload_status`` values and progress
steps, and ImSwitch's UI switches on them. So every change of a board's status goes through
:class:`BoardStatus`, which refuses to go backwards, sends each value once per attempt, reports upload
progress in the document's 10 % steps, and only ever says "success" with evidence (``verification``).
A retry starts the sequence again with ``attempt`` + 1.

Sequences::

    wifi: command_sent 0 → wifi_connected 0 → downloading 0 → uploading 0,10,…,90 → verifying 100 → success
    can:  command_sent 0 → downloading 0 → uploading 0,10,…,90 → flashing 100 → verifying 100 → success

``failed`` may follow any step. A batch board that waits for its turn shows ``queued`` (True), status
"initiated" and no ``upload_status`` until its first step (:meth:`BoardStatus.queue`).
The top-level ``status`` is the document's: "initiated" from the
command on, "wifi_connected" once the board joined WiFi, "wifi_failed" when it could not, then
"success" or "failed".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from uc2otad import timestamps
from uc2otad.contract import ErrorCode, Phase, StatusDict

__all__ = ["BoardStatus", "Phase", "SequenceError"]


SEQUENCES: Mapping[str, tuple[Phase, ...]] = {
    "wifi": (Phase.COMMAND_SENT, Phase.WIFI_CONNECTED, Phase.DOWNLOADING, Phase.UPLOADING, Phase.VERIFYING,
             Phase.SUCCESS),
    "can": (Phase.COMMAND_SENT, Phase.DOWNLOADING, Phase.UPLOADING, Phase.FLASHING, Phase.VERIFYING,
            Phase.SUCCESS),
}  # fmt: skip

#: the document's messages for each step (Phases 2-6; "Frontend State" lines)
PHASE_MESSAGES: Mapping[Phase, str] = {
    Phase.COMMAND_SENT: "OTA command sent, waiting for WiFi connection...",
    Phase.WIFI_CONNECTED: "Device connected at {ip}",
    Phase.DOWNLOADING: "Device connected, downloading firmware...",
    Phase.UPLOADING: "Uploading: {progress}%",
    Phase.FLASHING: "Firmware transferred, the board is writing it to flash...",
    Phase.VERIFYING: "Waiting for the board to restart with the new firmware...",
    Phase.SUCCESS: "✅ Firmware uploaded successfully",
}
#: for the streaming method the first step is the daemon's own start: it downloads the image before the
#: master gets ``/ota_start``
STREAM_COMMAND_MESSAGE = "OTA stream started, getting the firmware..."
#: a batch board that waits for its turn (``queued``: True, no ``upload_status`` yet)
QUEUED_MESSAGE = "Waiting for its turn in the batch..."

#: the document's error table ("Common Failure Points"), by our error_code: what happened and what to do
ERROR_ROWS: Mapping[str, str] = {  # by ErrorCode
    ErrorCode.WIFI_FAILED: "WiFi connection failed: invalid credentials or out of range. "
    "Check SSID/password, move closer",
    ErrorCode.FIRMWARE_NOT_FOUND: "Firmware not found: missing firmware on server. Upload firmware to server",
    ErrorCode.DOWNLOAD_TIMEOUT: "Download timeout: server unreachable. Check server URL and network",
    ErrorCode.DOWNLOAD_CORRUPT: "Verification failed: corrupted download. Clear cache, retry",
    ErrorCode.SIGNATURE_INVALID: "Signature invalid: the firmware is not signed by a trusted key. "
    "Check the server's signature and /etc/uc2otad/keys",
    ErrorCode.DISK_FULL: "Disk full: no room for the firmware cache on its disk. "
    "Free space or clear the cache",
    ErrorCode.UPLOAD_CONNECTION_FAILED: "Upload failed: device busy or low memory. Restart device, retry",
    ErrorCode.OTA_AUTH_FAILED: "ArduinoOTA authentication failed: the board refused the OTA password "
    "or none is stored. Set the board's OTA password: uc2otactl set-ota-password",
    ErrorCode.UPLOAD_TIMEOUT: "Upload timeout: network instability. Retry update",
    ErrorCode.VERIFICATION_FAILED: "Verification failed: the board rejected the image. Clear cache, retry",
    ErrorCode.MASTER_ERROR: "Upload failed: the master reported an error. Retry update",
    ErrorCode.BOARD_NOT_BACK: "The board did not come back with the new firmware. "
    "Check the board, power-cycle it",
    ErrorCode.LINK_LOST: "The connection to the master CAN HAT was lost. Check the USB cable, retry",
    ErrorCode.CANCELLED: "Cancelled; the board keeps the firmware it had",
    ErrorCode.INTERRUPTED: "The daemon stopped during the update; the board keeps the image it booted",
    ErrorCode.UNHEALTHY: "The microscope is not ready for an update: a check failed. "
    "Fix what it names, retry",
    ErrorCode.SKIPPED: "Skipped: an earlier board of the batch failed; this board keeps its firmware. "
    "Fix that board, then update again",
}

#: every progress report of the upload is a multiple of this (the document: "every 10%")
PROGRESS_STEP = 10

#: takes each new version of the dict: keeps it, signals it, and has it persisted; it never waits
Publish = Callable[[StatusDict], None]


class SequenceError(RuntimeError):
    """A step out of the contract's order: a bug in the method that drives the job."""


class BoardStatus:
    """The status dict of one board for one job; ``publish`` keeps, signals and persists each version.

    Every change is synchronous: a progress callback of a link or an uploader calls :meth:`progress`
    directly, and the new dict is published before the call returns, so changes can neither overtake
    each other nor wait for the disk.
    """

    def __init__(self, can_id: int, method: str, publish: Publish, **fields: Any) -> None:
        """:param fields: added fields known from the start: job_id, batch_id, firmware, previous_version…"""
        if method not in SEQUENCES:
            raise ValueError(f"unknown method {method!r}")
        self.method = method
        self._publish = publish
        self._sequence = SEQUENCES[method]
        self._done: list[Phase] = []
        self._progress_sent = -1
        self.status: dict[str, Any] = {"can_id": can_id, "method": method, "attempt": 1, **fields}

    @property
    def phase(self) -> Phase | None:
        return self._done[-1] if self._done else None

    def advance(self, phase: Phase, **fields: Any) -> None:
        """Move to ``phase`` (the next one of the sequence, never back); ``fields`` go into the dict.

        :raises SequenceError: ``phase`` is not ahead in the sequence, or success without evidence
        """
        if phase in (Phase.SUCCESS, Phase.FAILED, Phase.UPLOADING):
            raise SequenceError(f"use succeed(), fail() or progress() for {phase}")
        self._step(phase)
        progress = 100 if phase in (Phase.FLASHING, Phase.VERIFYING) else 0
        top = self.status.get("status")
        if phase is Phase.COMMAND_SENT:
            top = "initiated"
        elif phase is Phase.WIFI_CONNECTED:
            top = "wifi_connected"
            fields.setdefault("success", True)
        message = self._message(phase, fields)
        self._emit(status=top, upload_status=phase.value, upload_progress=progress, message=message, **fields)

    def queue(self) -> None:
        """The job waits for its turn (a batch's ``parallel``, ``delay_between``, an inhibit): status
        "initiated" with ``queued`` True and no ``upload_status``, since no step of the sequence has begun.
        The first step removes ``queued``."""
        if self._done:
            raise SequenceError(
                f"queued after {self.phase}: only a job that has not begun waits for its turn"
            )
        self._emit(status="initiated", upload_progress=0, message=QUEUED_MESSAGE, queued=True)

    def progress(self, percent: float) -> None:
        """Upload progress: enters "uploading" at 0 and reports each 10 % step reached, up to 90."""
        if self.phase is not Phase.UPLOADING:
            self._step(Phase.UPLOADING)
            self._send_progress(0)
        step = min(int(percent) // PROGRESS_STEP * PROGRESS_STEP, 100 - PROGRESS_STEP)
        while self._progress_sent < step:
            self._send_progress(self._progress_sent + PROGRESS_STEP)

    def succeed(self, *, verification: str, firmware_version: str | None = None) -> None:
        """The board runs the new image; ``verification`` names the evidence (version, build, transfer).

        :raises SequenceError: not after "verifying", or no evidence named
        """
        if verification not in ("version", "build", "transfer"):
            raise SequenceError(f"success needs evidence, not {verification!r}")
        if self.phase is not Phase.VERIFYING:
            raise SequenceError(f"success after {self.phase}: the board must be seen running the image first")
        self._step(Phase.SUCCESS)
        now = timestamps.now()
        self._emit(
            status="success",
            upload_status="success",
            upload_progress=100,
            message=PHASE_MESSAGES[Phase.SUCCESS],
            verification=verification,
            upload_timestamp=now,
            firmware_version=firmware_version,
        )

    def fail(self, error_code: ErrorCode, *, detail: str = "", wifi: bool = False, **fields: Any) -> None:
        """End the attempt as failed: the document's error row in ``message``, details in ``upload_error``.

        :param wifi: the board could not join WiFi (status "wifi_failed", the document's Phase 3)
        :param fields: what else is known now (``statusMsg``: the board's own words)
        """
        self._done.append(Phase.FAILED)
        row = ERROR_ROWS.get(error_code, error_code)
        self._emit(
            status="wifi_failed" if wifi else "failed",
            upload_status="failed",
            error_code=error_code,
            message=f"❌ {row}",
            upload_error=detail or row,
            success=False if wifi else self.status.get("success"),
            **fields,
        )

    def retry(self) -> None:
        """Start the sequence again for the next attempt."""
        self._done.clear()
        self._progress_sent = -1
        self.status["attempt"] += 1
        for key in ("error_code", "upload_error", "verification", "retry_in"):
            self.status.pop(key, None)

    # ---- internals -----------------------------------------------------------------------------------

    def _step(self, phase: Phase) -> None:
        if phase not in self._sequence:
            raise SequenceError(f"{phase} is not a step of the {self.method} method")
        last = self._done[-1] if self._done else None
        if last is Phase.FAILED or (
            last is not None and self._sequence.index(phase) <= self._sequence.index(last)
        ):
            raise SequenceError(f"{phase} after {last}: the sequence only moves forward")
        self._done.append(phase)

    def _send_progress(self, percent: int) -> None:
        self._progress_sent = percent
        message = PHASE_MESSAGES[Phase.UPLOADING].format(progress=percent)
        self._emit(upload_status=Phase.UPLOADING.value, upload_progress=percent, message=message)

    def _message(self, phase: Phase, fields: Mapping[str, Any]) -> str:
        if phase is Phase.COMMAND_SENT and self.method == "can":
            return STREAM_COMMAND_MESSAGE
        return PHASE_MESSAGES[phase].format(ip=fields.get("ip", self.status.get("ip", "?")))

    def _emit(self, **changes: Any) -> None:
        changes.setdefault("queued", None)  # any step ends the wait for a turn
        for key, value in changes.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        self.status["timestamp"] = timestamps.now()
        self._publish(cast(StatusDict, dict(self.status)))  # kept to StatusDict by the methods above
