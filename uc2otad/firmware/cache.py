"""The local firmware cache: every image a board receives passes through here, verified.

Rules, each one for a failure seen in the field or easy to imagine:
- A download goes to a hidden temporary file in the cache folder, is fsynced and renamed over the
  final name only once complete and verified; a crash or SIGKILL at any moment leaves either the old
  file or the new one, never a partial one. Leftover temporary files are removed on :meth:`open`.
- With a manifest entry (size + sha256), a cached file whose sha256 matches is reused with no request
  at all; a download that does not match is refused and deleted.
- Without one, the file's ETag / Last-Modified are kept beside it and sent as a conditional GET; a 304
  reuses the file. The sha256 recorded at download time is checked first, so a file corrupted on disk
  is never reused, only replaced.
- Only plain file names (:mod:`uc2otad.firmware.names`) become paths, and nothing is written outside
  the cache folder.

Layout: ``<dir>/<name>`` the images, ``<dir>/.meta/<name>.json`` what we know of each, ``<dir>/.tmp-*``
transfers in progress. Hidden names cannot clash with images: image names never start with a dot.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from uc2otad import timestamps
from uc2otad.aio import run_stoppable
from uc2otad.errors import (
    CacheBusyError,
    CacheError,
    CacheFullError,
    DownloadCorruptError,
    SignatureInvalidError,
    SignatureReason,
    Uc2otadError,
)
from uc2otad.firmware.listing import FirmwareFile
from uc2otad.firmware.manifest import ManifestFile
from uc2otad.firmware.names import check_file_name
from uc2otad.firmware.server import MAX_IMAGE_SIZE, Validators
from uc2otad.firmware.source import FirmwareSource

_LOGGER = logging.getLogger(__name__)

#: the FHS place for a system daemon's re-creatable downloads (CONTRACT.md §3)
SYSTEM_CACHE_DIR = Path("/var/cache/uc2otad")
_META_DIR = ".meta"
_TEMP_PREFIX = ".tmp-"


def default_cache_dir() -> Path:
    """``/var/cache/uc2otad`` for root, else the user's cache folder (``$XDG_CACHE_HOME/uc2otad``)."""
    if os.geteuid() == 0:
        return SYSTEM_CACHE_DIR
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uc2otad"


@dataclass(frozen=True)
class CachedImage:
    """An image in the cache that matched everything known about it when it was handed out."""

    name: str
    path: Path
    size: int
    sha256: str
    #: bytes transferred from the server to produce this: 0 when the cached copy was reused
    downloaded_bytes: int
    #: how the copy was proven current: "manifest" (sha256 listed by the server) or "server"
    #: (downloaded now and matching the listed size, or confirmed by a 304 to a conditional GET), or
    #: "known_good" (a board's earlier image, kept by :mod:`uc2otad.firmware.known_good`, hashed again)
    verified_by: Literal["manifest", "server", "known_good"]
    #: the image's bytes, read (and hashed) under the cache's lock when it was handed out: a job sends
    #: these, so a ClearFirmwareCache after the fetch deletes the file, never the job's image (D4)
    data: bytes = field(repr=False, compare=False)


@dataclass(frozen=True)
class _Meta:
    """What the cache records about a file, beside it."""

    url: str
    size: int
    sha256: str
    etag: str | None = None
    last_modified: str | None = None
    fetched_at: str = ""

    @classmethod
    def from_json(cls, document: Any) -> _Meta | None:
        try:
            meta = cls(**document)
        except TypeError:
            return None
        if (
            not isinstance(meta.url, str)
            or not isinstance(meta.size, int)
            or not isinstance(meta.sha256, str)
        ):
            return None
        return meta


class FirmwareCache:
    """The cache folder and the rules above. One instance per folder and process."""

    def __init__(self, directory: Path | None = None, *, max_image_size: int = MAX_IMAGE_SIZE) -> None:
        self.directory = (directory or default_cache_dir()).absolute()
        self.max_image_size = max_image_size
        #: bytes downloaded over this instance's life, for benchmarks and diagnostics
        self.downloaded_bytes = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._users = 0
        self._opened = False

    def __repr__(self) -> str:
        return f"FirmwareCache({str(self.directory)!r})"

    @property
    def in_use(self) -> bool:
        """True while a fetch runs or a caller holds :meth:`use`; :meth:`clear` is refused then."""
        return self._users > 0

    async def open(self) -> None:
        """Create the folder (0755) and remove transfers that a crash left behind.

        The first fetch does this by itself; a daemon calls it at start-up to fail early.

        :raises CacheError: the folder cannot be created or is not a folder
        """
        await run_stoppable(lambda _stop: self._open())

    async def fetch(
        self,
        server: FirmwareSource,
        file: FirmwareFile,
        promise: ManifestFile | None,
        *,
        signed: bool = False,
    ) -> CachedImage:
        """The image ``file`` of ``server``, from the cache when it is provably current, else downloaded.

        :param promise: the manifest's size and sha256 for the file, when the server publishes them
        :param signed: ``promise`` comes from a signed manifest: a download that differs from it is
            :class:`SignatureInvalidError` (``signature_invalid``) rather than ``download_corrupt``
        :raises UnsafeFileNameError: ``file.name`` is not a plain file name
        :raises FirmwareNotFoundError, DownloadError: as :meth:`FirmwareServer.download`
        :raises DownloadCorruptError: the bytes differ from the manifest or from the listed size
        :raises CacheError: the cache folder cannot be written
        """
        check_file_name(file.name)
        lock = self._locks.setdefault(file.name, asyncio.Lock())
        async with lock, self.use():
            image = await run_stoppable(lambda stop: self._fetch(server, file, promise, stop, signed))
        self.downloaded_bytes += image.downloaded_bytes
        return image

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        """Hold the cache: :meth:`clear` is refused until the block ends (a job reads an image)."""
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1

    async def clear(self) -> int:
        """Delete every cached image and record; return how many images were deleted.

        :raises CacheBusyError: a fetch runs or a job holds the cache
        """
        if self.in_use:
            raise CacheBusyError(f"{self}: in use by a running update")
        return await run_stoppable(lambda _stop: self._clear())

    def path_of(self, name: str) -> Path:
        """Where ``name`` is (or would be) cached.

        :raises UnsafeFileNameError: ``name`` is not a plain file name
        """
        return self.directory / check_file_name(name)

    # ---- blocking side (worker threads) -------------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            return
        try:
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            (self.directory / _META_DIR).mkdir(mode=0o755, exist_ok=True)
            for leftover in self.directory.glob(_TEMP_PREFIX + "*"):
                _LOGGER.info("%s: removing unfinished transfer %s", self, leftover.name)
                leftover.unlink(missing_ok=True)
        except OSError as err:
            raise _cache_error(self, "cannot prepare the cache folder", err) from err
        self._opened = True

    def _fetch(
        self,
        server: FirmwareSource,
        file: FirmwareFile,
        promise: ManifestFile | None,
        stop: threading.Event,
        signed: bool = False,
    ) -> CachedImage:
        self._open()
        path = self.path_of(file.name)
        url = server.file_url(file.name)
        cached = self._cached_state(path)
        meta = self._read_meta(file.name)

        if cached is not None and promise is not None:
            size, digest, data = cached
            if size == promise.size and digest == promise.sha256:
                _LOGGER.debug("%s: %s matches the manifest; reused", self, file.name)
                return CachedImage(file.name, path, size, digest, 0, "manifest", data)
            _LOGGER.info("%s: cached %s differs from the manifest; downloading it again", self, file.name)

        validators = None
        if cached is not None and promise is None and meta is not None:
            if meta.url == url and meta.sha256 == cached[1] and meta.size == cached[0] == file.size:
                validators = Validators(meta.etag, meta.last_modified)
            elif meta.sha256 != cached[1]:
                _LOGGER.warning(
                    "%s: cached %s is damaged (sha256 changed on disk); replacing it", self, file.name
                )

        with self._temporary() as (temp_path, sink):
            result = server.download_blocking(
                file.name, sink, stop, max_size=self.max_image_size, validators=validators
            )
            if not result.modified and cached is not None:
                _LOGGER.debug("%s: %s not modified on the server; reused", self, file.name)
                return CachedImage(file.name, path, cached[0], cached[1], 0, "server", cached[2])
            _check_download(file, promise, result.size, result.sha256, signed=signed)
            _fsync_file(sink)
            sink.seek(0)
            data = sink.read()
            if hashlib.sha256(data).hexdigest() != result.sha256:  # the disk gave back other bytes
                raise CacheError(f"{self}: {file.name} reads back differently from what was downloaded")
            sink.close()
            # the old record goes first: a crash before the new one is written then leaves an image
            # without a record (downloaded again next time), never an image with a wrong record
            self._meta_path(file.name).unlink(missing_ok=True)
            os.replace(temp_path, path)
        fetched_at = timestamps.now()
        new_meta = _Meta(url, result.size, result.sha256, *_validator_fields(result.validators), fetched_at)
        self._write_meta(file.name, new_meta)
        _fsync_dir(self.directory)
        _LOGGER.info("%s: downloaded %s size=%d sha256=%s", self, file.name, result.size, result.sha256)
        verified_by: Literal["manifest", "server"] = "manifest" if promise is not None else "server"
        return CachedImage(file.name, path, result.size, result.sha256, result.size, verified_by, data)

    @contextlib.contextmanager
    def _temporary(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A new hidden file in the cache folder, removed on the way out unless renamed."""
        try:
            temp_path = self.directory / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
            handle = os.open(temp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise _cache_error(self, "cannot write to the cache folder", err) from err
        sink: BinaryIO = os.fdopen(handle, "w+b")
        try:
            yield temp_path, sink
        except Uc2otadError:  # DownloadTimeoutError is a TimeoutError, hence an OSError: not ours to wrap
            raise
        except OSError as err:
            raise _cache_error(self, f"writing {temp_path.name} failed", err) from err
        finally:
            sink.close()
            temp_path.unlink(missing_ok=True)

    def _cached_state(self, path: Path) -> tuple[int, str, bytes] | None:
        """(size, sha256, bytes) of a regular cached file; None if absent or not a regular file."""
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            _LOGGER.warning("%s: %s is not a regular file; ignoring it", self, path.name)
            return None
        if info.st_size > self.max_image_size:  # not one of ours: never read it whole, replace it
            _LOGGER.warning("%s: %s is larger than any image may be; ignoring it", self, path.name)
            return None
        data = path.read_bytes()
        return len(data), hashlib.sha256(data).hexdigest(), data

    def _meta_path(self, name: str) -> Path:
        return self.directory / _META_DIR / f"{name}.json"

    def _read_meta(self, name: str) -> _Meta | None:
        try:
            return _Meta.from_json(json.loads(self._meta_path(name).read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            _LOGGER.warning("%s: record of %s unreadable; ignoring it", self, name)
            return None

    def _write_meta(self, name: str, meta: _Meta) -> None:
        meta_path = self._meta_path(name)
        with self._temporary() as (temp_path, sink):
            sink.write(json.dumps(asdict(meta), indent=1).encode())
            _fsync_file(sink)
            sink.close()
            os.replace(temp_path, meta_path)

    def _clear(self) -> int:
        removed = 0
        for folder in (self.directory, self.directory / _META_DIR):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                # never follow a link or descend: only regular files directly inside are ours to delete
                if entry.is_symlink() or not entry.is_file():
                    continue
                entry.unlink()
                if folder == self.directory and not entry.name.startswith("."):
                    removed += 1
        _LOGGER.info("%s: cleared, %d images deleted", self, removed)
        return removed


#: errno values that mean "no room on this disk": ENOSPC, and EDQUOT (a quota) where the platform has it
_NO_ROOM = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)


def _cache_error(cache: FirmwareCache, doing: str, err: OSError) -> CacheError:
    """The cache's error for ``err``: :class:`CacheFullError` (``disk_full``) when the disk is full."""
    if err.errno in _NO_ROOM:
        return CacheFullError(
            f"disk full: no room for the firmware cache in {cache.directory} ({doing}: {err.strerror}); "
            "free space on that disk or clear the cache"
        )
    return CacheError(f"{cache}: {doing}: {err.strerror}")


def _check_download(
    file: FirmwareFile, promise: ManifestFile | None, size: int, sha256: str, *, signed: bool = False
) -> None:
    """Compare what arrived with what was promised: the manifest when there is one, else the listing.
    Against a signed manifest a difference is the signature's refusal (the temporary file is deleted)."""
    if promise is not None and signed and (size, sha256) != (promise.size, promise.sha256):
        raise SignatureInvalidError(
            f"{file.name}: {size} bytes sha256 {sha256}, not the {promise.size} bytes sha256 "
            f"{promise.sha256} of the signed manifest; deleted",
            reason=SignatureReason.DIGEST_MISMATCH,
            name=file.name,
        )
    if promise is not None:
        if size != promise.size:
            raise DownloadCorruptError(
                f"{file.name}: {size} bytes, the manifest says {promise.size}", name=file.name
            )
        if sha256 != promise.sha256:
            raise DownloadCorruptError(
                f"{file.name}: sha256 {sha256} does not match the manifest's {promise.sha256}", name=file.name
            )
    elif size != file.size:
        raise DownloadCorruptError(f"{file.name}: {size} bytes, the listing says {file.size}", name=file.name)


def _validator_fields(validators: Validators) -> tuple[str | None, str | None]:
    return validators.etag, validators.last_modified


def _fsync_file(sink: BinaryIO) -> None:
    sink.flush()
    os.fsync(sink.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable: without this a power cut can undo them."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
