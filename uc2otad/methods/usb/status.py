"""The USB flash status dict, kept to the procedure document's status table (CONTRACT.md §1, §4).

ImSwitch's USB flash wizard switches on these exact values, so every step of a flash goes through
:class:`UsbFlashStatus`: the document's ``status``, ``progress`` and ``message`` per step, esptool's
write progress mapped into 45-85, and a failure as ``status`` "failed" with the document's USB error
row as ``message`` and the cause and solution in ``details``. Fields beyond the document's (``port``,
``firmware``, ``flash_offset``, ``erase_flash``, ``chip``, ``firmware_version``, ``error_code``) are
added as they become known; none is renamed. ``job_id`` names the flash's history row (GetHistory).

The status outlives the daemon: every change, the unsignalled "started" too, goes to ``keep`` (the
engine's status store), and a restarted daemon shows the last one again (:meth:`UsbFlashStatus.restore`).
A flash the daemon died in the middle of is shown as ended: :func:`interrupted_status`.

Table (document, "USB Flash Status Updates")::

     5 disconnecting  Disconnecting from ESP32...
    10 downloading    Downloading firmware from server...
    20 downloading    Firmware downloaded: <file>
    25 flashing       Using port: <port>
    30 erasing        Erasing flash memory...          (erase_flash only)
    40 flashing       Flash erased successfully         (erase_flash only)
    45 flashing       Writing firmware to device...     (then 46…84 from esptool's progress)
    85 flashing       Firmware written successfully!
    90 reconnecting   Reconnecting to device...         (reconnect_after only)
   100 success        ✅ Firmware flashed and reconnected!
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

from uc2otad import timestamps
from uc2otad.errors import Uc2otadError, UsbFlashError


class UsbStep(Enum):
    """One row of the document's status table: (status, progress, message)."""

    DISCONNECTING = ("disconnecting", 5, "Disconnecting from ESP32...")
    DOWNLOADING = ("downloading", 10, "Downloading firmware from server...")
    DOWNLOADED = ("downloading", 20, "Firmware downloaded: {firmware}")
    USING_PORT = ("flashing", 25, "Using port: {port}")
    ERASING = ("erasing", 30, "Erasing flash memory...")
    ERASED = ("flashing", 40, "Flash erased successfully")
    WRITING = ("flashing", 45, "Writing firmware to device...")
    WRITTEN = ("flashing", 85, "Firmware written successfully!")
    RECONNECTING = ("reconnecting", 90, "Reconnecting to device...")
    SUCCESS = ("success", 100, "✅ Firmware flashed and reconnected!")
    #: not in the document: success with ``reconnect_after`` false, where nothing was reconnected
    FLASHED = ("success", 100, "✅ Firmware flashed (not reconnected: reconnect_after is false)")


#: esptool's 0-100 % of the write, mapped into the table's gap between "Writing" and "written"
WRITE_FIRST, WRITE_LAST = 45, 85

#: the document's USB error table: row → "cause: solution", for ``details``
USB_ERROR_ROWS: Mapping[str, str] = {
    "No serial ports found": "USB not connected: connect the device via USB",
    "Port access denied": "permission issue: add the daemon's user to the dialout group",
    "esptool not available": "missing package: pip install esptool",
    "Firmware not found": "server misconfigured: check the firmware server URL",
    "Write failed": "connection issue: check the USB cable, retry",
    "Reconnect failed": "device not responding: manual power cycle required",
    # not in the document: an image that breaks a rule of CONTRACT.md §4; nothing was written
    "Firmware refused": "the image does not fit this board: choose the image for this board",
}
#: the document's row for any failure to find or fetch the image (FirmwareError)
FIRMWARE_NOT_FOUND_ROW = "Firmware not found"
CANCELLED_MESSAGE = "Flash cancelled"
#: a batch's flash of the master (StartMultipleOTA ``include_master``) that did not start: a board of the
#: batch failed, or the master could not be flashed when its turn came; ``details`` says which
SKIPPED_MESSAGE = "Flash skipped"
#: a flash accepted, before its first step: FlashMaster's own answer
STARTED_STATUS, STARTED_MESSAGE = "started", "Master firmware flash started"
#: ``status`` values after which nothing more happens; any other one is a flash under way
FINAL_STATUSES = ("idle", "success", "failed")
#: a flash the daemon stopped (a crash, SIGKILL, a power cut) in the middle of, seen at the next start
INTERRUPTED_MESSAGE, INTERRUPTED_CODE = "Flash interrupted", "interrupted"
#: ``details`` as the document's rows have it: what happened, then "cause: solution"
INTERRUPTED_DETAILS = (
    "the daemon stopped during the flash (a crash, a kill, a power cut). "
    "flash not finished: the master may hold a partial image, flash it again"
)


def interrupted_status(status: Mapping[str, Any], now: str) -> dict[str, Any] | None:
    """``status`` as a restarted daemon shows it: a flash under way when the daemon died ended
    "failed" with ``error_code`` "interrupted" (its progress and facts kept); None for a final status.

    A pure function of the stored dict: the status store calls it while it opens its file, in the same
    transaction as it closes the history rows a crash left running.
    """
    if status.get("status") in FINAL_STATUSES:
        return None
    ended = {**status, "status": "failed", "message": INTERRUPTED_MESSAGE, "details": INTERRUPTED_DETAILS,
             "error_code": INTERRUPTED_CODE, "timestamp": now}  # fmt: skip
    return ended


def failure_row(error: Uc2otadError) -> str:
    """The document's USB error row for ``error``."""
    return error.row if isinstance(error, UsbFlashError) else FIRMWARE_NOT_FOUND_ROW


class UsbFlashStatus:
    """The one USB flash status of the daemon; every change goes to ``publish`` (a copy)."""

    def __init__(
        self,
        publish: Callable[[dict[str, Any]], None],
        keep: Callable[[dict[str, Any]], None] = lambda status: None,
    ) -> None:
        """
        :param publish: every change clients are told of (USBFlashStatusChanged)
        :param keep: every change, the unsignalled "started" of :meth:`begin` included: what is kept
            across restarts (a crash right after FlashMaster answered must not show the flash before)
        """
        self._publish = publish
        self._keep = keep
        self._facts: dict[str, Any] = {}
        #: the progress of the flash running now (a failure keeps it)
        self._progress = 0
        self.current: dict[str, Any] = {
            "status": "idle",
            "progress": 0,
            "message": "",
            "timestamp": timestamps.now(),
        }

    def begin(self, **facts: Any) -> None:
        """A new flash: forget the last one's facts and its status (a "failed" must not outlive it).

        The fresh status is "started", as FlashMaster answers; it is not signalled, since the document's
        table begins with "disconnecting", which follows at once.
        """
        self._facts = {key: value for key, value in facts.items() if value is not None}
        self._progress = 0
        self.current = {
            "status": STARTED_STATUS,
            "progress": 0,
            "message": STARTED_MESSAGE,
            "timestamp": timestamps.now(),
            **self._facts,
        }
        self._keep(dict(self.current))

    def restore(self, status: Mapping[str, Any]) -> None:
        """Show ``status`` (the last one a daemon before this one kept) until the next flash begins;
        nothing is published or kept again."""
        self.current = dict(status)
        self._progress = int(status.get("progress", 0))

    def learn(self, **facts: Any) -> None:
        """Facts known from now on (port, firmware, chip…), shown with the next step."""
        self._facts.update({key: value for key, value in facts.items() if value is not None})

    def step(self, step: UsbStep, **values: Any) -> None:
        status, progress, message = step.value
        self._set(status, progress, message.format(**values))

    def write_progress(self, percent: float) -> None:
        """esptool's write percent, as one step of 45-85 whenever the whole number changes."""
        # 85 belongs to "written", which only esptool's exit status may say
        share = min(max(percent, 0.0), 100.0) * (WRITE_LAST - WRITE_FIRST) / 100
        progress = min(WRITE_FIRST + int(share), WRITE_LAST - 1)
        if progress != self._progress or self.current["message"] != UsbStep.WRITING.value[2]:
            self._set("flashing", progress, UsbStep.WRITING.value[2])

    def fail(self, error: Uc2otadError) -> None:
        row = failure_row(error)
        self.learn(error_code=error.error_code or None)
        self._set("failed", self._progress, row, details=f"{error}. {USB_ERROR_ROWS.get(row, '')}")

    def skipped(self, reason: str) -> None:
        """A flash planned by a batch was not started (``reason``); the master keeps its firmware."""
        self.begin()
        self.learn(error_code="skipped")
        self._set("failed", 0, SKIPPED_MESSAGE, details=f"{reason}; the master keeps its firmware")

    def cancelled(self) -> None:
        self.learn(error_code="cancelled")
        self._set("failed", self._progress, CANCELLED_MESSAGE, details="cancelled by request")

    def _set(self, status: str, progress: int, message: str, *, details: str | None = None) -> None:
        self._progress = progress
        current: dict[str, Any] = {
            "status": status,
            "progress": progress,
            "message": message,
            "details": details,
            "timestamp": timestamps.now(),
            **self._facts,
        }
        self.current = {key: value for key, value in current.items() if value is not None}
        self._keep(dict(self.current))
        self._publish(dict(self.current))
