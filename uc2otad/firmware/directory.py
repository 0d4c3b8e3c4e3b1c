"""A firmware folder as a firmware server (issue 21): ``firmware.server = "/srv/uc2-firmware"`` or
``"file:///srv/uc2-firmware"``, laid out as the server is — the images (``*.bin``) and, optionally,
``version.json`` beside them.

For a lab without a firmware server: a folder on the Pi, a USB stick mounted somewhere the daemon may
read (the unit's ``ProtectHome`` hides ``/home``: use ``/srv`` or ``/media``), a network share. It
answers the same calls as :class:`~uc2otad.firmware.server.FirmwareServer` with the same errors, so the
catalog, the cache and every check after them cannot tell the two apart:

- the listing is the folder's regular ``.bin`` files (not followed through symbolic links, which could
  lead out of the folder; not in sub-folders), each with its size and modification time; a file
  larger than any image may be is listed as refused, as a server's entry is;
- ``version.json`` is read as the server's is (absent: none; present: it must be valid);
- a "download" copies the file into the cache's temporary file, hashing it on the way; the file's size
  and modification time stand in for the ETag a server sends, so a copy the cache already holds is
  not read again while the file is unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

from uc2otad.aio import StoppedError, run_stoppable
from uc2otad.errors import (
    ConfigError,
    DownloadCorruptError,
    FirmwareNotFoundError,
    ManifestError,
    ServerUnreachableError,
)
from uc2otad.firmware.listing import FirmwareFile, Listing, RefusedEntry
from uc2otad.firmware.manifest import MANIFEST_NAME, Manifest, parse_manifest
from uc2otad.firmware.names import check_file_name, is_image_name
from uc2otad.firmware.server import MAX_IMAGE_SIZE, MAX_MANIFEST_BYTES, DownloadResult, Validators

_LOGGER = logging.getLogger(__name__)

_CHUNK_SIZE = 64 * 1024


def is_local_source(url: str) -> bool:
    """``url`` names a folder (an absolute path or a ``file://`` URL), not an http(s) server."""
    text = url.strip()
    return text.startswith(("/", "file:"))


def normalize_folder_url(url: str) -> str:
    """``file:///abs/path`` for a folder given as an absolute path or a ``file://`` URL.

    :raises ConfigError: a relative path, a ``file://`` URL with a host, a query or a fragment
    """
    text = url.strip()
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("firmware_server", f"a file URL names a folder on this machine, not {url!r}")
        if parts.query or parts.fragment:
            raise ConfigError("firmware_server", f"must not have a query or fragment: {url!r}")
        path = unquote(parts.path)
    else:
        path = text
    if not path.startswith("/"):
        raise ConfigError("firmware_server", f"a firmware folder must be an absolute path, not {url!r}")
    if any(ord(char) < 0x20 for char in path):
        raise ConfigError("firmware_server", "must not contain control characters")
    folder = os.path.normpath(path)
    return "file://" + quote(folder if folder != "//" else "/")


class FirmwareFolder:
    """A folder of images, answering as a :class:`~uc2otad.firmware.server.FirmwareServer` does."""

    def __init__(self, url: str) -> None:
        """:raises ConfigError: ``url`` is not an absolute folder path or ``file://`` URL"""
        self.url = normalize_folder_url(url)
        self.path = Path(unquote(urlsplit(self.url).path))

    def __repr__(self) -> str:
        return f"FirmwareFolder({str(self.path)!r})"

    @property
    def listing_url(self) -> str:
        return self.url + "/"

    def file_url(self, name: str) -> str:
        """``file://`` URL of ``name``.

        :raises UnsafeFileNameError: ``name`` is not a plain file name
        """
        return f"{self.url}/{quote(check_file_name(name))}"

    async def list_files(self, *, max_image_size: int = MAX_IMAGE_SIZE) -> Listing:
        """The folder's ``.bin`` files.

        :raises ServerUnreachableError: the folder is missing or cannot be read (a stick not mounted)
        """
        return await run_stoppable(lambda _stop: self._list_files(max_image_size))

    async def get_manifest(self) -> Manifest | None:
        """The folder's ``version.json``, or None if it has none.

        :raises ManifestError: present but not valid, or too large
        :raises ServerUnreachableError: the folder cannot be read
        """
        return await run_stoppable(lambda _stop: self._get_manifest())

    async def get_document(self, name: str, limit: int) -> bytes | None:
        """The small file ``name`` of the folder (``version.json``, its signature), or None if absent.

        :raises ManifestError: a symbolic link, or larger than ``limit`` bytes
        :raises ServerUnreachableError: it cannot be read
        """
        return await run_stoppable(lambda _stop: self._read_small(check_file_name(name), limit))

    def download_blocking(
        self,
        name: str,
        sink: BinaryIO,
        stop: threading.Event,
        *,
        max_size: int = MAX_IMAGE_SIZE,
        validators: Validators | None = None,
    ) -> DownloadResult:
        """Copy ``name`` into ``sink``; with ``validators`` that still match the file, nothing is read
        (the server's 304).

        :raises FirmwareNotFoundError: no such regular file in the folder
        :raises DownloadCorruptError: larger than ``max_size``, or it changed while it was copied
        :raises ServerUnreachableError: it cannot be read
        :raises StoppedError: ``stop`` was set
        """
        path = self.path / check_file_name(name)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise _file_error(self, name, err) from err
        with os.fdopen(descriptor, "rb") as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FirmwareNotFoundError(f"{name} in {self.path} is not a regular file", name=name)
            stamp = _stamp(info)
            if validators is not None and validators.etag == stamp:
                return DownloadResult(modified=False)
            if info.st_size > max_size:
                raise DownloadCorruptError(
                    f"{name} is {info.st_size} bytes, over the limit of {max_size}", name=name
                )
            sink.seek(0)
            sink.truncate()
            digest, size = hashlib.sha256(), 0
            while chunk := source.read(_CHUNK_SIZE):
                if stop.is_set():
                    raise StoppedError
                size += len(chunk)
                if size > max_size:
                    raise DownloadCorruptError(f"{name} grew over the limit of {max_size} bytes", name=name)
                digest.update(chunk)
                sink.write(chunk)
            if _stamp(os.fstat(source.fileno())) != stamp or size != info.st_size:
                raise DownloadCorruptError(f"{name} changed while it was read; try again", name=name)
        return DownloadResult(
            modified=True, size=size, sha256=digest.hexdigest(), validators=Validators(etag=stamp)
        )

    # ---- blocking side -------------------------------------------------------------------------------

    def _list_files(self, max_image_size: int) -> Listing:
        try:
            entries = sorted(os.scandir(self.path), key=lambda entry: entry.name)
        except OSError as err:
            raise ServerUnreachableError(
                f"firmware folder {self.path} cannot be read: {err.strerror}"
            ) from err
        files: dict[str, FirmwareFile] = {}
        refused: list[RefusedEntry] = []
        for entry in entries:
            if not is_image_name(entry.name):
                continue
            if not entry.is_file(follow_symlinks=False):
                refused.append(RefusedEntry(entry.name, "not a regular file (links are not followed)"))
                continue
            info = entry.stat(follow_symlinks=False)
            if info.st_size > max_image_size:
                refused.append(
                    RefusedEntry(entry.name, f"{info.st_size} bytes, over the limit of {max_image_size}")
                )
                continue
            files[entry.name] = FirmwareFile(
                entry.name, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC)
            )
        _LOGGER.debug("%s: %d images, %d refused", self, len(files), len(refused))
        return Listing(files, tuple(refused))

    def _get_manifest(self) -> Manifest | None:
        body = self._read_small(MANIFEST_NAME, MAX_MANIFEST_BYTES)
        return None if body is None else parse_manifest(body)

    def _read_small(self, name: str, limit: int) -> bytes | None:
        path = self.path / name
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ManifestError(f"{path} is a symbolic link; links are not followed") from err
            raise ServerUnreachableError(f"{path} cannot be read: {err.strerror}") from err
        with os.fdopen(descriptor, "rb") as source:
            body = source.read(limit + 1)
        if len(body) > limit:
            raise ManifestError(f"{path} is larger than {limit} bytes")
        return body


def _stamp(info: os.stat_result) -> str:
    """What stands in for an ETag: size and modification time (ns), which change when the file does."""
    return f'"{info.st_size}-{info.st_mtime_ns}"'


def _file_error(folder: FirmwareFolder, name: str, err: OSError) -> Exception:
    if err.errno in (errno.ENOENT, errno.ELOOP):
        why = "not in" if err.errno == errno.ENOENT else "a symbolic link in"
        return FirmwareNotFoundError(f"{name} is {why} the firmware folder {folder.path}", name=name)
    return ServerUnreachableError(
        f"{name} in the firmware folder {folder.path} cannot be read: {err.strerror}"
    )
