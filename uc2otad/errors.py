"""The one error tree of uc2otad.

Every failure that a caller may act on is a subclass of :class:`Uc2otadError`. Errors that end an update
carry ``error_code``: the value that goes into the status dict (``CONTRACT.md`` §2), so the engine never
has to guess a code from a message. Where a built-in exception says the same thing, we derive from it
too (``DownloadTimeoutError`` is a ``TimeoutError``), so generic callers keep working.

Uc2otadError
├── ConfigError (ValueError)            a setting or argument is not acceptable
├── StoreError                          the status database cannot be used
├── CacheError                          the firmware cache folder cannot be used
│   └── CacheBusyError                     an update is reading the cache
└── FirmwareError                       finding, fetching or checking an image failed
    ├── UnsafeFileNameError (ValueError)   a name that is not a plain file name       firmware_not_found
    ├── FirmwareNotFoundError              no image for a board, 404 and other 4xx   firmware_not_found
    ├── ListingError                       the server sent no usable JSON listing      firmware_not_found
    ├── ManifestError                      version.json is present but not valid      download_corrupt
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

from typing import ClassVar


class Uc2otadError(Exception):
    """Root of every error uc2otad raises on purpose."""

    #: the status dict's ``error_code`` for a job that ends with this error; "" when none applies
    error_code: ClassVar[str] = ""


class ConfigError(Uc2otadError, ValueError):
    """A setting or argument is not acceptable; the message names the key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class StoreError(Uc2otadError):
    """The status database (SQLite in the state directory) cannot be opened, read or written."""


class CacheError(Uc2otadError):
    """The firmware cache folder cannot be created, read or written (permissions, disk full)."""


class CacheBusyError(CacheError):
    """The cache cannot be cleared while an update reads from it."""


class FirmwareError(Uc2otadError):
    """Finding, fetching or checking a firmware image failed."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        #: the image file name concerned, when there is one
        self.name = name


class UnsafeFileNameError(FirmwareError, ValueError):
    """A firmware name that is not a plain file name (path separators, ``..``, control characters…)."""

    error_code = "firmware_not_found"


class FirmwareNotFoundError(FirmwareError):
    """No image for a board, or the server answered 404 (or another 4xx) for it."""

    error_code = "firmware_not_found"


class ListingError(FirmwareError):
    """The firmware server did not answer its listing with a JSON list of files."""

    error_code = "firmware_not_found"


class ManifestError(FirmwareError):
    """The server's ``version.json`` exists but cannot be trusted as written."""

    error_code = "download_corrupt"


class DownloadError(FirmwareError):
    """An HTTP transfer failed."""


class DownloadTimeoutError(DownloadError, TimeoutError):
    """The server did not send a byte within the read timeout, or the transfer outlasted its limit."""

    error_code = "download_timeout"


class ServerUnreachableError(DownloadError):
    """Connection refused or reset, or a 5xx answer, on every allowed attempt."""

    error_code = "download_timeout"


class DownloadCorruptError(DownloadError):
    """The bytes received are not the bytes announced: truncated, too large, or size/sha256 mismatch."""

    error_code = "download_corrupt"


class ImageError(FirmwareError):
    """The file is not an ESP image that the target board can run."""

    error_code = "download_corrupt"


class ImageFormatError(ImageError):
    """Header, segment table, checksum or appended SHA-256 are wrong, or the file is truncated."""


class NotAnAppImageError(ImageError):
    """A merged (factory) or bootloader image where an application image is needed."""


class WrongChipError(ImageError):
    """The image was built for another chip than the board's."""


class ImageTooLargeError(ImageError):
    """The image does not fit the board's OTA partition."""
