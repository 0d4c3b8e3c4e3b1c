"""The public contract's vocabulary as types: methods, phases, error codes and the status dict.

docs/api.md is the contract; these are its words as Python knows them, shared by every room (the
error tree gives each error its :class:`ErrorCode`, the job manager asks a code whether another
attempt may cure it, the status carries the document's row for it), so that a code cannot be spelled
two ways. They are ``StrEnum``: each member *is* the string on the wire, and the D-Bus adapter (the
only code that knows D-Bus types) sends it as it is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypedDict


class Method(StrEnum):
    """How an image reaches a board (``method`` in the status dict and StartOTA's options)."""

    WIFI = "wifi"  # the procedure document's: CAN trigger, WiFi join, ArduinoOTA upload
    CAN = "can"  # streamed through a CANopen master over CAN (SDO)
    USB = "usb"  # the master itself, with esptool


class Link(StrEnum):
    """Which link to the bus an update or a scan entry goes through (``link`` in the status dict and
    ScanDevices' entries, StartOTA's ``link`` option)."""

    MASTER = "master"  # the master CAN HAT on its serial port
    CAN = "can"  # the daemon on the bus itself: a direct CAN link ([can] interface)


class UpdateState(StrEnum):
    """A board's firmware against the server's (``state`` in CheckUpdates' entries; ImSwitch's
    ``update_status``, ``docs/FIRMWARE_VERSIONING.md`` @33e3850)."""

    UP_TO_DATE = "up_to_date"  # it runs the offered release (or, unversioned, was last given that image)
    UPDATE_AVAILABLE = "update_available"  # the offered release is newer
    DEVICE_NEWER = "device_newer"  # it runs a newer build (a developer's): never downgraded unasked
    UNKNOWN = "unknown"  # no order can be told: no version on either side, or none that parses
    NO_FIRMWARE = "no_firmware"  # the server has no image for it
    UNREACHABLE = "unreachable"  # listed, but it did not answer the scan


class Phase(StrEnum):
    """``upload_status`` values, in the order a job passes them (CONTRACT.md §2)."""

    COMMAND_SENT = "command_sent"
    WIFI_CONNECTED = "wifi_connected"
    DOWNLOADING = "downloading"
    UPLOADING = "uploading"
    FLASHING = "flashing"
    VERIFYING = "verifying"
    SUCCESS = "success"
    FAILED = "failed"


class ErrorCode(StrEnum):
    """``error_code``: of a board's status dict (the first group) or of the USB flash status (the second)."""

    WIFI_FAILED = "wifi_failed"
    FIRMWARE_NOT_FOUND = "firmware_not_found"
    DOWNLOAD_TIMEOUT = "download_timeout"
    DOWNLOAD_CORRUPT = "download_corrupt"
    #: the server's version.json is not signed by a key in /etc/uc2otad/keys (minisign; issue 21): not
    #: retried, the server would send the same signature again
    SIGNATURE_INVALID = "signature_invalid"
    DISK_FULL = "disk_full"
    UPLOAD_CONNECTION_FAILED = "upload_connection_failed"
    #: the board's ArduinoOTA refused the stored OTA password, or asked for one and none is stored: not
    #: retried, the same password would be refused again (issue 20)
    OTA_AUTH_FAILED = "ota_auth_failed"
    UPLOAD_TIMEOUT = "upload_timeout"
    VERIFICATION_FAILED = "verification_failed"
    MASTER_ERROR = "master_error"
    BOARD_NOT_BACK = "board_not_back"
    LINK_LOST = "link_lost"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    #: a check before the update failed at a batch board's turn (the bus, its error counters, the node
    #: not heard); before any board starts, the same check is the D-Bus error ``Unhealthy``
    UNHEALTHY = "unhealthy"
    #: a batch with ``stop_on_failure``: an earlier board failed, so this one was never touched
    SKIPPED = "skipped"
    #: none of the above: the reason is in ``upload_error``
    FAILED = "failed"

    NO_SERIAL_PORTS = "no_serial_ports"
    PORT_ACCESS_DENIED = "port_access_denied"
    ESPTOOL_NOT_AVAILABLE = "esptool_not_available"
    WRITE_FAILED = "write_failed"
    RECONNECT_FAILED = "reconnect_failed"
    IMAGE_REFUSED = "image_refused"

    @property
    def transient(self) -> bool:
        """Another attempt may cure it (CONTRACT.md §2; issue 7): a flaky network, a master that answers
        ``size_write_failed`` right after its own reboot, a USB glitch. Not a full disk: freeing space
        takes a person."""
        return self in _TRANSIENT


_TRANSIENT = frozenset(
    {
        ErrorCode.UPLOAD_TIMEOUT,
        ErrorCode.UPLOAD_CONNECTION_FAILED,
        ErrorCode.MASTER_ERROR,
        ErrorCode.LINK_LOST,
    }
)


class StatusDict(TypedDict, total=False):
    """A board's status dict (docs/api.md, "The status dict"); only ``can_id`` and ``status`` are always
    there. Values that are unknown are absent, never None: D-Bus has no null."""

    can_id: int
    status: str  # idle, initiated, wifi_connected, wifi_failed, success, failed
    upload_status: str  # a Phase
    upload_progress: int
    message: str
    timestamp: str
    ip: str
    hostname: str
    statusMsg: str
    upload_error: str
    upload_timestamp: str
    success: bool
    method: str  # a Method
    link: str  # a Link
    job_id: str
    batch_id: str
    attempt: int
    firmware: str
    firmware_version: str
    previous_version: str
    verification: str  # version, build or transfer
    error_code: str  # an ErrorCode
    queued: bool
    retry_in: int
