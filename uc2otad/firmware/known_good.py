"""Last-known-good images: the images boards ran after their verified updates, kept for a rollback.

The openUC2 firmware is built with ESP-IDF's app rollback switched off (every ``sdkconfig.*`` of
youseetoo/uc2-esp32 @063e5a6, line 61: ``# CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE is not set``): a
board that took an image keeps booting it, whatever it does. So a rollback has to come from the host,
and the host must still have the image the board ran before — the server may have replaced it (one
file name per role, overwritten by each release) and the cache keeps one file per name. This store
keeps the images themselves, by content.

Layout, inside the cache folder (hidden, so that no image name can clash with it, and left alone by
ClearFirmwareCache unless it is told ``include_known_good``)::

    .known-good/<sha256>        the image's bytes (0644, as the cache's)
    .known-good/<sha256>.json   what it was: name, size, version, where it came from, when it was kept
    .known-good/<sha256>.manifest, <sha256>.minisig   the signed version.json that listed it, and its
                                signature (issue 21: a rollback's image is checked again against the
                                keys trusted at the rollback), when signatures were enforced

The file's name is its sha256: two boards with one image share one file, and a damaged file is found
by hashing it before it is handed out, never sent. Which images stay is not decided here but by the
history (:mod:`uc2otad.engine.rollback`): :meth:`KnownGoodImages.prune` deletes every image it is not
told to keep. Writes are atomic (a temporary file, fsynced, renamed), so a crash leaves an image whole
or absent; its record is written after it, and an image without a record is not handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from uc2otad import timestamps
from uc2otad.aio import run_stoppable
from uc2otad.errors import CacheError, FirmwareNotFoundError

_LOGGER = logging.getLogger(__name__)

FOLDER = ".known-good"
_TEMP_PREFIX = ".tmp-"
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: the suffixes of the signed manifest and its signature beside a kept image
_MANIFEST, _SIGNATURE = ".manifest", ".minisig"


@dataclass(frozen=True)
class KnownGoodRecord:
    """What an image was when a board ran it after a verified update."""

    name: str
    size: int
    sha256: str
    #: the release it is (the manifest's or its app descriptor's); None when neither says
    version: str | None = None
    #: the firmware server it came from
    source: str | None = None
    #: when it was first kept
    kept_at: str = ""

    @classmethod
    def from_json(cls, document: Any) -> KnownGoodRecord | None:
        try:
            record = cls(**document)
        except TypeError:
            return None
        if not isinstance(record.name, str) or not isinstance(record.size, int):
            return None
        return record


@dataclass(frozen=True)
class KnownGoodImage:
    """A kept image with its bytes, hashed again as it was read."""

    record: KnownGoodRecord
    path: Path
    data: bytes
    #: the signed ``version.json`` that listed it and its signature; None when it came unsigned
    manifest: bytes | None = None
    signature: bytes | None = None


class KnownGoodImages:
    """The ``.known-good`` folder of a cache folder: one instance per folder and process, whose calls
    take turns (a listing must never take a transfer in progress for a crash's leftover)."""

    def __init__(self, cache_dir: Path) -> None:
        self.directory = cache_dir.absolute() / FOLDER
        self._turn = asyncio.Lock()

    def __repr__(self) -> str:
        return f"KnownGoodImages({str(self.directory)!r})"

    async def keep(
        self, record: KnownGoodRecord, data: bytes, signed: tuple[bytes, bytes] | None = None
    ) -> None:
        """Keep ``data`` as ``record`` says (no-op when it is kept already), with ``signed`` (the
        ``version.json`` that listed it and its signature) beside it.

        :raises CacheError: the folder cannot be written (the disk is full…)
        """
        async with self._turn:
            await run_stoppable(lambda _stop: self._keep(record, data, signed))

    async def load(self, sha256: str) -> KnownGoodImage:
        """The kept image ``sha256``, its bytes checked.

        :raises FirmwareNotFoundError: not kept, or its file no longer matches its hash
        """
        async with self._turn:
            return await run_stoppable(lambda _stop: self._load(sha256))

    async def kept(self) -> list[KnownGoodRecord]:
        """Every kept image's record."""
        async with self._turn:
            return await run_stoppable(lambda _stop: self._records())

    async def prune(self, keep: Iterable[str]) -> int:
        """Delete every kept image whose sha256 is not in ``keep``; how many were deleted."""
        wanted = frozenset(keep)
        async with self._turn:
            return await run_stoppable(lambda _stop: self._prune(lambda sha256: sha256 in wanted))

    async def clear(self) -> int:
        """Delete every kept image (ClearFirmwareCacheWithOptions ``include_known_good``)."""
        async with self._turn:
            return await run_stoppable(lambda _stop: self._prune(lambda _sha256: False))

    # ---- blocking side (worker threads) -------------------------------------------------------------

    def _keep(self, record: KnownGoodRecord, data: bytes, signed: tuple[bytes, bytes] | None) -> None:
        path = self._path(record.sha256)
        if self._read_record(record.sha256) is not None and _digest_of(path) == record.sha256:
            if signed is not None:  # kept before, unsigned or under an older signature: the newer word
                self._keep_signed(path, signed)
            return
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise CacheError(f"{self}: the bytes of {record.name} do not match the sha256 to keep them under")
        try:
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._write_atomically(path, data)
            if signed is not None:
                self._keep_signed(path, signed)
            kept = (
                record
                if record.kept_at
                else KnownGoodRecord(**{**asdict(record), "kept_at": timestamps.now()})
            )
            self._write_atomically(
                path.with_name(path.name + ".json"), json.dumps(asdict(kept), indent=1).encode()
            )
            _fsync_dir(self.directory)
        except OSError as err:
            raise CacheError(f"{self}: cannot keep {record.name}: {err.strerror}") from err
        _LOGGER.info(
            "%s: kept %s sha256=%s version=%s", self, record.name, record.sha256, record.version or "-"
        )

    def _load(self, sha256: str) -> KnownGoodImage:
        record = self._read_record(sha256)
        if record is None:
            raise FirmwareNotFoundError(f"no kept image with sha256 {sha256}")
        path = self._path(sha256)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise FirmwareNotFoundError(
                f"the kept image {record.name} ({sha256}) cannot be read: {err.strerror}"
            ) from err
        if hashlib.sha256(data).hexdigest() != sha256:
            _LOGGER.warning("%s: %s is damaged (its sha256 changed on disk); deleting it", self, record.name)
            self._delete(sha256)
            raise FirmwareNotFoundError(
                f"the kept image {record.name} ({sha256}) was damaged on disk and is deleted"
            )
        return KnownGoodImage(
            record, path, data, _read_optional(path, _MANIFEST), _read_optional(path, _SIGNATURE)
        )

    def _records(self) -> list[KnownGoodRecord]:
        records = (self._read_record(sha256) for sha256 in self._hashes())
        return [record for record in records if record is not None]

    def _prune(self, stays: Any) -> int:
        deleted = 0
        for sha256 in self._hashes():
            if not stays(sha256):
                self._delete(sha256)
                deleted += 1
        if deleted:
            _LOGGER.info("%s: %d images no board needs for a rollback deleted", self, deleted)
        return deleted

    def _hashes(self) -> list[str]:
        """The sha256 of every image in the folder (leftover temporary files are removed on the way)."""
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        hashes = []
        for entry in entries:
            if entry.name.startswith(_TEMP_PREFIX):
                entry.unlink(missing_ok=True)
            elif _SHA256.fullmatch(entry.name):
                hashes.append(entry.name)
        return sorted(hashes)

    def _path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise FirmwareNotFoundError(f"not a sha256: {sha256!r}")
        return self.directory / sha256

    def _read_record(self, sha256: str) -> KnownGoodRecord | None:
        path = self._path(sha256)
        try:
            record = KnownGoodRecord.from_json(json.loads(path.with_name(path.name + ".json").read_bytes()))
        except (OSError, ValueError):
            return None
        return record if record is not None and record.sha256 == sha256 else None

    def _delete(self, sha256: str) -> None:
        path = self._path(sha256)
        path.with_name(path.name + ".json").unlink(missing_ok=True)  # the record first: no record, no image
        for suffix in (_MANIFEST, _SIGNATURE):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def _keep_signed(self, path: Path, signed: tuple[bytes, bytes]) -> None:
        manifest, signature = signed
        self._write_atomically(path.with_name(path.name + _MANIFEST), manifest)
        self._write_atomically(path.with_name(path.name + _SIGNATURE), signature)

    def _write_atomically(self, path: Path, data: bytes) -> None:
        temporary = self.directory / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(descriptor, "wb") as sink:
                sink.write(data)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def _read_optional(path: Path, suffix: str) -> bytes | None:
    try:
        return path.with_name(path.name + suffix).read_bytes()
    except FileNotFoundError:
        return None


def _digest_of(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
