"""The one error tree of uc2otad.

Every failure that a caller may act on is a subclass of :class:`Uc2otadError`. Errors that end an update
carry ``error_code``: the value that goes into the status dict (``CONTRACT.md`` §2), so the engine never
has to guess a code from a message. Where a built-in exception says the same thing, we derive from it
too (``DownloadTimeoutError`` is a ``TimeoutError``), so generic callers keep working.

Uc2otadError
├── ConfigError (ValueError)            a setting or argument is not acceptable
├── InvalidArgumentError (ValueError)  a caller's argument is out of range or of the wrong kind
│   └── UnknownMethodError                 StartOTA's method names no method
├── MethodUnavailableError              a method's module cannot be loaded (a broken installation)
├── UnknownCookieError (LookupError)    Uninhibit with a cookie that is not held
├── JobError                            a job cannot be started or cancelled
│   ├── InhibitedError                     an inhibit is held: no job starts
│   ├── JobBusyError                       the board already has a running job
│   ├── NoJobError (LookupError)           Cancel for a board without a running job
│   └── AlreadyCommittedError              Cancel after the board took the new image
├── BoardError                          a board did not end up running its new image
│   ├── BoardNotBackError                  no answer within the reboot window           board_not_back
│   └── VerificationError                  it answers, running another image            verification_failed
├── StoreError                          the status database cannot be used
├── CacheError                          the firmware cache folder cannot be used
│   ├── CacheBusyError                     an update is reading the cache
│   └── CacheFullError                     no room left on the cache's disk              disk_full
├── LinkError                           the master CAN HAT cannot carry a command     link_lost
│   ├── LinkOpenError                      the port cannot be opened
│   │   ├── HandshakeError                 the port opened, no UC2 master answered /state_get
│   │   └── PortInUseError                 another program holds the port's lock (on-demand ownership)
│   ├── LinkClosedError                    not open: never opened, closed, or reconnecting
│   ├── LinkIOError                        reading or writing the port failed
│   │   └── LinkLostError                  the port went away (unplugged, EIO)
│   ├── LinkTimeoutError (TimeoutError)    the master did not answer in time
│   ├── LinkProtocolError                  a reply lacks what the protocol promises
│   ├── MasterRebootedError                the master restarted while a command was pending
│   ├── EventOverflowError                 a listener fell so far behind that events were lost
│   ├── LinkBusyError                      another task holds the link (a firmware stream)  (none)
│   └── MasterError                        the master answered with an error            master_error
│       ├── MasterUnsupportedError         its firmware lacks the method (WiFi OTA or streaming)  master_error
│       └── NodeTimeoutError (TimeoutError)  a node gave no SDO answer in time (direct CAN)    master_error
├── WifiJoinError                       the slave could not join WiFi (1) or start ArduinoOTA (2)  wifi_failed
│   └── WifiJoinTimeoutError (TimeoutError)  the slave did not report back in time              wifi_failed
├── UploadError                         an ArduinoOTA upload failed; carries the board's own text
│   ├── UploadConnectionError              no answer, refused, no call-back, closed  upload_connection_failed
│   │   └── UploadAuthError                the board refused the password, or none    ota_auth_failed
│   ├── UploadTimeoutError (TimeoutError)  no progress within the chunk timeout       upload_timeout
│   └── UploadVerificationError            the board reports an MD5 or flash error   verification_failed
├── UsbFlashError                       flashing the master with esptool failed (``row``: the USB error row)
│   ├── NoSerialPortError                  no port to flash (none given, none found)   no_serial_ports
│   ├── PortAccessError (PermissionError)  the port exists, we may not open it         port_access_denied
│   ├── EsptoolMissingError                esptool cannot be run                       esptool_not_available
│   ├── FlashWriteError                    esptool failed on the board                 write_failed
│   ├── ReconnectError                     the master did not come back with the image reconnect_failed
│   └── ImageRefusedError                  the image breaks a USB rule (CONTRACT §4)   image_refused
└── FirmwareError                       finding, fetching or checking an image failed
    ├── UnsafeFileNameError (ValueError)   a name that is not a plain file name       firmware_not_found
    ├── FirmwareNotFoundError              no image for a board, 404 and other 4xx   firmware_not_found
    │   └── NoRollbackImageError           Rollback: no earlier image of the board kept firmware_not_found
    ├── ListingError                       the server sent no usable JSON listing      firmware_not_found
    ├── ManifestError                      version.json is present but not valid      download_corrupt
    ├── BundleError                        an offline release bundle breaks a rule    download_corrupt
    ├── SignatureInvalidError              not signed by a trusted key (minisign)     signature_invalid
    ├── DownloadError
    │   ├── DownloadTimeoutError (TimeoutError)   too slow                             download_timeout
    │   ├── ServerUnreachableError         refused, reset, 5xx after every retry       download_timeout
    │   └── DownloadCorruptError           truncated, too large, size or sha256 wrong  download_corrupt
    └── ImageError                         not an image this board can run             download_corrupt
        ├── ImageFormatError               magic, segments, checksum or digest wrong
        ├── NotAnAppImageError             a merged or bootloader image where an app is needed
        ├── WrongChipError                 built for another chip
        └── ImageTooLargeError             larger than the OTA partition

"Server unreachable" maps to ``download_timeout`` because that is the procedure document's row for it
("Download timeout — Server unreachable").
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar

from uc2otad.contract import ErrorCode


class Uc2otadError(Exception):
    """Root of every error uc2otad raises on purpose."""

    #: the status dict's ``error_code`` for a job that ends with this error; None when none applies
    error_code: ClassVar[ErrorCode | None] = None


class ConfigError(Uc2otadError, ValueError):
    """A setting or argument is not acceptable; the message names the key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class InvalidArgumentError(Uc2otadError, ValueError):
    """A caller's argument is out of range, too long, of the wrong type or unknown."""


class UnknownMethodError(InvalidArgumentError):
    """StartOTA's ``method`` names no method."""


class MethodUnavailableError(Uc2otadError):
    """A method's module cannot be loaded: the installation is broken, not the request."""


class UnknownCookieError(Uc2otadError, LookupError):
    """No inhibit is held under this cookie."""


class JobError(Uc2otadError):
    """A job cannot be started or cancelled as asked."""


class UnhealthyError(JobError):
    """A check before an update failed (issue 19: the bus, its error counters, the node); ``check``
    names it, as StartOTA's ``skip_checks`` option does."""

    error_code = ErrorCode.UNHEALTHY

    def __init__(self, message: str, *, check: str) -> None:
        super().__init__(message)
        self.check = check


class InhibitedError(JobError):
    """An inhibit is held, so no job starts."""


class JobBusyError(JobError):
    """The board already has a running job: one job per board."""


class NoJobError(JobError, LookupError):
    """Cancel for a board that has no running job."""


class AlreadyCommittedError(JobError):
    """Cancel after the board committed the new image: it will boot it, there is nothing to stop."""


class BatchStoppedError(JobError):
    """A batch board's turn came after an earlier board of the batch failed (``stop_on_failure``): it is
    left alone rather than updated beside a board in an unknown state."""

    error_code = ErrorCode.SKIPPED


class BoardError(Uc2otadError):
    """After a transfer, the board does not show that it runs the new image."""


class BoardNotBackError(BoardError):
    """The board did not answer a scan within the reboot window."""

    error_code = ErrorCode.BOARD_NOT_BACK


class VerificationError(BoardError):
    """The board answers, but runs another image than the one sent."""

    error_code = ErrorCode.VERIFICATION_FAILED


class StoreError(Uc2otadError):
    """The status database (SQLite in the state directory) cannot be opened, read or written."""


class CacheError(Uc2otadError):
    """The firmware cache folder cannot be created, read or written (permissions, disk full)."""


class CacheBusyError(CacheError):
    """The cache cannot be cleared while an update reads from it."""


class CacheFullError(CacheError):
    """The disk of the cache folder is full (ENOSPC, or EDQUOT for a quota): nothing was kept. Not
    retried: space comes back only when someone frees it. The message names the folder."""

    error_code = ErrorCode.DISK_FULL


class FirmwareError(Uc2otadError):
    """Finding, fetching or checking a firmware image failed."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        #: the image file name concerned, when there is one
        self.name = name


class UnsafeFileNameError(FirmwareError, ValueError):
    """A firmware name that is not a plain file name (path separators, ``..``, control characters…)."""

    error_code = ErrorCode.FIRMWARE_NOT_FOUND


class FirmwareNotFoundError(FirmwareError):
    """No image for a board, or the server answered 404 (or another 4xx) for it."""

    error_code = ErrorCode.FIRMWARE_NOT_FOUND


class NoRollbackImageError(FirmwareNotFoundError):
    """Rollback: the board has no earlier image kept (fewer than two verified updates by this daemon,
    or the image was deleted with ClearFirmwareCacheWithOptions ``include_known_good``)."""


class ListingError(FirmwareError):
    """The firmware server did not answer its listing with a JSON list of files."""

    error_code = ErrorCode.FIRMWARE_NOT_FOUND


class ManifestError(FirmwareError):
    """The server's ``version.json`` exists but cannot be trusted as written."""

    error_code = ErrorCode.DOWNLOAD_CORRUPT


class BundleError(FirmwareError):
    """An offline release bundle (a ``.zip`` or ``.tar.gz`` from a USB stick, issue 21) breaks one of the
    rules of :mod:`uc2otad.firmware.bundle`, and none of its images is used. ``rule`` names the rule
    (``sha256``, ``traversal``, ``too_large``…), ``name`` the member concerned when there is one."""

    error_code = ErrorCode.DOWNLOAD_CORRUPT

    def __init__(self, message: str, *, rule: str, name: str | None = None) -> None:
        super().__init__(message, name=name)
        #: which rule of the bundle reader refused it
        self.rule = rule


class SignatureReason(StrEnum):
    """Why :class:`SignatureInvalidError` refused a signature: each needs another fix by a person."""

    #: a ``.minisig`` or a trusted ``.pub`` file is not minisign's format (the file is named)
    MALFORMED = "malformed"
    #: a trusted ``.pub`` file, or the keys folder, cannot be read (permissions, missing)
    KEY_UNREADABLE = "key_unreadable"
    #: signed by a key whose ``.pub`` is not in the trusted folder (the lab's not installed, or a stranger's)
    UNKNOWN_KEY = "unknown_key"
    #: the key id is trusted but the signature does not match: the data changed, or another key has the id
    BAD_SIGNATURE = "bad_signature"
    #: the data's signature is good but the trusted comment (the signed metadata line) was changed
    BAD_TRUSTED_COMMENT = "bad_trusted_comment"
    #: signatures are enforced and the source has no ``version.json``, or no signature of it
    UNSIGNED = "unsigned"
    #: the image is not listed in the signed ``version.json`` (refused before it is downloaded)
    NOT_LISTED = "not_listed"
    #: the image's size or sha256 differs from the signed ``version.json`` (deleted before the cache)
    DIGEST_MISMATCH = "digest_mismatch"


class SignatureInvalidError(FirmwareError):
    """A file from the firmware server (its ``version.json``) is not signed by a trusted key (issue 21).

    Not retried: the server would send the same bytes and the same signature again. ``key_id`` is the
    signature's (or key file's) key id in hex as minisign prints it, never any other key material.
    """

    error_code = ErrorCode.SIGNATURE_INVALID

    def __init__(
        self, message: str, *, reason: SignatureReason, key_id: str | None = None, name: str | None = None
    ) -> None:
        super().__init__(message, name=name)
        self.reason = reason
        #: the key id concerned (16 hex digits), when one is known
        self.key_id = key_id


class DownloadError(FirmwareError):
    """An HTTP transfer failed."""


class DownloadTimeoutError(DownloadError, TimeoutError):
    """The server did not send a byte within the read timeout, or the transfer outlasted its limit."""

    error_code = ErrorCode.DOWNLOAD_TIMEOUT


class ServerUnreachableError(DownloadError):
    """Connection refused or reset, or a 5xx answer, on every allowed attempt."""

    error_code = ErrorCode.DOWNLOAD_TIMEOUT


class DownloadCorruptError(DownloadError):
    """The bytes received are not the bytes announced: truncated, too large, or size/sha256 mismatch."""

    error_code = ErrorCode.DOWNLOAD_CORRUPT


class ImageError(FirmwareError):
    """The file is not an ESP image that the target board can run."""

    error_code = ErrorCode.DOWNLOAD_CORRUPT


class ImageFormatError(ImageError):
    """Header, segment table, checksum or appended SHA-256 are wrong, or the file is truncated."""


class NotAnAppImageError(ImageError):
    """A merged (factory) or bootloader image where an application image is needed."""


class WrongChipError(ImageError):
    """The image was built for another chip than the board's."""


class ImageTooLargeError(ImageError):
    """The image does not fit the board's OTA partition."""


class UploadError(Uc2otadError):
    """An ArduinoOTA upload to a board failed (``arduino-ota.md``); the espota result codes 1, 2 and 3."""

    def __init__(self, message: str, *, host: str, board_text: str | None = None) -> None:
        super().__init__(message)
        #: the board's address as given to the uploader
        self.host = host
        #: what the board itself said ("Authentication Failed", "MD5 Check Failed"), None when it said nothing
        self.board_text = board_text


class UploadConnectionError(UploadError):
    """No answer to the invitation, no call-back, the board closed the connection: espota code 1."""

    error_code = ErrorCode.UPLOAD_CONNECTION_FAILED


class UploadAuthError(UploadConnectionError):
    """The board refused the OTA password, or asked for one that was not given (espota counts it as 1).

    Its own code, not retried: another attempt sends the same password and is refused the same way; a
    person must set the right one (SetOTAPassword).
    """

    error_code = ErrorCode.OTA_AUTH_FAILED


class UploadTimeoutError(UploadError, TimeoutError):
    """The transfer made no progress within the chunk timeout, or outlasted its overall limit: code 2."""

    error_code = ErrorCode.UPLOAD_TIMEOUT


class UploadVerificationError(UploadError):
    """The board received the image but reports an error ("MD5 Check Failed", a flash error): code 3."""

    error_code = ErrorCode.VERIFICATION_FAILED


class LinkError(Uc2otadError):
    """The link to the master CAN HAT cannot carry a command; a job that needed it ends ``link_lost``."""

    error_code: ClassVar[ErrorCode | None] = ErrorCode.LINK_LOST

    def __init__(self, message: str, *, port: str | None = None) -> None:
        super().__init__(message)
        #: the port or URL of the link concerned, when known
        self.port = port


class LinkOpenError(LinkError):
    """The port cannot be opened: missing, permission denied, held by another program."""


class HandshakeError(LinkOpenError):
    """The port opened, but no UC2 master answered ``/state_get`` (wrong baud, other device, busy)."""


class PortInUseError(LinkOpenError):
    """Another program holds the port's exclusive lock: try again when it lets go."""


class LinkClosedError(LinkError):
    """The link is not open: never opened, closed, or waiting to reconnect."""


class LinkIOError(LinkError):
    """Reading or writing the port failed."""


class LinkLostError(LinkIOError):
    """The port went away (USB unplugged, EIO, socket closed); the link reconnects when it returns."""


class LinkTimeoutError(LinkError, TimeoutError):
    """The master did not answer within the command's timeout."""


class LinkProtocolError(LinkError):
    """A reply from the master lacks what the protocol promises (a field, a type)."""


class MasterRebootedError(LinkError):
    """The master restarted while a command was pending, so that command will never be answered."""


class EventOverflowError(LinkError):
    """A listener fell so far behind that its queue filled and events were lost."""


class LinkBusyError(LinkError):
    """Another task holds the link (a firmware stream puts the master in binary mode)."""

    error_code = None


class MasterError(LinkError):
    """The master answered a command with an error (``{"status":"error"}``, ``{"ota_status":"error"}``)."""

    error_code = ErrorCode.MASTER_ERROR

    def __init__(
        self,
        message: str,
        *,
        port: str | None = None,
        code: str = "",
        node_id: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, port=port)
        #: the master's own error text, for the status dict's ``upload_error``
        self.code = code
        #: the node the failed command was for, when it was for one
        self.node_id = node_id
        #: what else the master said (``crc_mismatch`` carries ``computed``, ``expected``, ``comment``)
        self.details: dict[str, Any] = dict(details or {})


class MasterUnsupportedError(MasterError):
    """The master's firmware has no such command: a CANopen master has no WiFi OTA (it ignores the
    ``ota`` key), a legacy master no ``/ota_start`` (it never answers). Refused before anything is sent."""


class NodeTimeoutError(MasterError, TimeoutError):
    """A node did not answer an SDO request in time, on a link that talks CANopen itself (direct CAN).

    ``code`` is the master's code for the step (``crc_write_failed``, ``size_write_failed``,
    ``sdo_chunk_failed``…), so ``upload_error`` reads as on the master path. The job's ``error_code``
    is ``upload_timeout``, retried: the daemon saw the silence itself, where through the master it only
    hears the master's word for it (``master_error``)."""

    error_code = ErrorCode.UPLOAD_TIMEOUT


class WifiJoinError(Uc2otadError):
    """The slave answered the WiFi OTA command with a failure: status 1 "WiFi connection failed" (wrong
    credentials, out of range) or 2 "OTA start failed"; ``status_msg`` is the slave's own text."""

    error_code = ErrorCode.WIFI_FAILED

    def __init__(self, message: str, *, can_id: int, status: int | None = None, status_msg: str = "") -> None:
        super().__init__(message)
        self.can_id = can_id
        #: the slave's status code; None when it never answered
        self.status = status
        #: the slave's words, for the status dict's ``statusMsg``
        self.status_msg = status_msg


class WifiJoinTimeoutError(WifiJoinError, TimeoutError):
    """No ``ota`` answer from the slave in time: it is off the bus, or runs CANopen firmware that ignores
    the command."""


class UsbFlashError(Uc2otadError):
    """Flashing the master over USB with esptool failed (procedure document, "USB Flash Procedure").

    ``row`` is the document's USB error row, which the USB flash status carries as its ``message``; the
    error's own text (the cause, with key=value facts) goes into ``details``.
    """

    #: the "Error" column of the document's USB error table
    row: ClassVar[str] = "Write failed"


class NoSerialPortError(UsbFlashError):
    """No port was given and none was found by the HAT link, the ``match`` text or a known VID:PID."""

    error_code = ErrorCode.NO_SERIAL_PORTS
    row = "No serial ports found"


class PortAccessError(UsbFlashError, PermissionError):
    """The port exists but this process may not open it (not in the ``dialout`` group)."""

    error_code = ErrorCode.PORT_ACCESS_DENIED
    row = "Port access denied"


class EsptoolMissingError(UsbFlashError):
    """esptool cannot be run: the module is not installed, or the configured program is missing."""

    error_code = ErrorCode.ESPTOOL_NOT_AVAILABLE
    row = "esptool not available"


class FlashWriteError(UsbFlashError):
    """esptool failed on the board: lost connection, MD5 mismatch, no answer, a timeout."""

    error_code = ErrorCode.WRITE_FAILED
    row = "Write failed"


class ReconnectError(UsbFlashError):
    """After the flash the master did not answer ``/state_get`` in time, or runs another image."""

    error_code = ErrorCode.RECONNECT_FAILED
    row = "Reconnect failed"


class ImageRefusedError(UsbFlashError):
    """The image breaks a USB rule (CONTRACT.md §4): offset, erase, chip or size; nothing was written."""

    error_code = ErrorCode.IMAGE_REFUSED
    row = "Firmware refused"
