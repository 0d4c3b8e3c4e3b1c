"""Rollback (issue 20): which images the daemon keeps for each board, and which one a rollback puts back.

The history decides, so that the images kept and the rows shown can never disagree: a board's
last-known-good image is the one its newest successful job installed (a verified update or an earlier
rollback; the row's sha256), and the image a rollback puts back is the one before it — the newest
successful job's image that differs from the current one. Each board keeps those two
(:data:`DEPTH`); every other kept image is deleted once no board needs it (after each success, not on
a timer). A failed job changes nothing: a transfer that failed before its commit leaves the board on
its image (the slave switches its boot partition only after checking the whole image), and a
verification failure is no reason to put an image back.

Rows written before this feature carry a sha256 but no kept image: Rollback then answers
:class:`~uc2otad.errors.NoRollbackImageError` (``NotFound``) naming the image it lacks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Literal

from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.errors import (
    FirmwareNotFoundError,
    NoRollbackImageError,
    SignatureInvalidError,
    SignatureReason,
    Uc2otadError,
)
from uc2otad.firmware.cache import CachedImage
from uc2otad.firmware.catalog import MASTER_CAN_ID, SLAVE_CHIP, ResolvedImage
from uc2otad.firmware.esp_image import OTA_PARTITION_SIZE, validate_app_image
from uc2otad.firmware.known_good import KnownGoodImage, KnownGoodImages, KnownGoodRecord
from uc2otad.firmware.listing import FirmwareFile
from uc2otad.firmware.manifest import ManifestFile, parse_manifest
from uc2otad.firmware.repository import VerifiedImage
from uc2otad.firmware.signing import SignedManifest, SigningPolicy, check_signed

_LOGGER = logging.getLogger(__name__)

#: the history's ``rollback`` column: a Rollback call, or the check after an update failing with
#: ``update.rollback_on_unhealthy`` set
RollbackReason = Literal["requested", "unhealthy"]
REQUESTED: RollbackReason = "requested"
UNHEALTHY: RollbackReason = "unhealthy"
#: images kept per board: the one it runs and the one before
DEPTH = 2
#: history rows read per board to find its images: far more than a board's failed jobs in a row
_ROWS_PER_BOARD = 1000


def installed(jobs: Iterable[JobRecord], depth: int = DEPTH) -> list[str]:
    """The sha256 of the images a board's successful jobs installed, newest first, each once, at most
    ``depth``: ``jobs`` are the board's history rows, newest first."""
    hashes: list[str] = []
    for job in jobs:
        if job.state == "success" and job.sha256 and job.sha256 not in hashes:
            hashes.append(job.sha256)
            if len(hashes) == depth:
                break
    return hashes


class LastKnownGood:
    """The kept images (:class:`KnownGoodImages`), as the history says which ones each board needs."""

    def __init__(self, store: StatusStore, images: KnownGoodImages) -> None:
        self._store = store
        self.images = images
        #: one keep-and-prune at a time: a prune must not delete what another success is keeping
        self._lock = asyncio.Lock()

    async def remember(
        self, can_id: int, record: KnownGoodRecord, data: bytes, signed: SignedManifest | None = None
    ) -> None:
        """A job installed ``data`` on board ``can_id`` and its row says success: keep the image, and
        delete those no board needs any more. Never raises: a full disk costs the rollback, never the
        update that succeeded (the journal says so)."""
        async with self._lock:
            try:
                kept_signed = (signed.manifest, signed.signature) if signed is not None else None
                await self.images.keep(record, data, kept_signed)
                needed = await self._needed()
                await self.images.prune({*needed, record.sha256})
            except Uc2otadError as err:
                _LOGGER.warning(
                    "rollback: the image %s of board %d is not kept, so it cannot be put back later: %s",
                    record.name, can_id, err, extra={"UC2_CAN_ID": can_id},
                )  # fmt: skip

    async def previous(self, can_id: int) -> KnownGoodImage:
        """The image a rollback of ``can_id`` puts back: the one before the one it runs.

        :raises NoRollbackImageError: the history knows no earlier image, or it is no longer kept
        """
        hashes = installed(await self._store.history(can_id, limit=_ROWS_PER_BOARD))
        if len(hashes) < DEPTH:
            raise NoRollbackImageError(
                f"board {can_id} has no earlier image to go back to: the daemon put "
                f"{'one image' if hashes else 'no image'} on it"
            )
        try:
            return await self.images.load(hashes[1])
        except FirmwareNotFoundError as err:
            raise NoRollbackImageError(
                f"board {can_id}: its earlier image is not kept any more ({err})"
            ) from err

    async def wanted(self) -> set[str]:
        """Every image some board needs (to see what ClearFirmwareCacheWithOptions would keep)."""
        return await self._needed()

    async def _needed(self) -> set[str]:
        boards = {*self._store.all_status(), MASTER_CAN_ID}
        needed: set[str] = set()
        for can_id in boards:
            needed.update(installed(await self._store.history(can_id, limit=_ROWS_PER_BOARD)))
        return needed


def check_kept(kept: KnownGoodImage, policy: SigningPolicy) -> None:
    """With signatures enforced now, a kept image goes back only if the ``version.json`` kept beside it
    is signed by a key trusted now and lists it with its size and sha256 (issue 21). Blocking.

    :raises SignatureInvalidError: no signed manifest kept with it (it came unsigned), a signature the
        keys trusted now refuse, or a manifest that does not list this very image
    """
    keys = policy.trusted_keys()
    if keys is None:
        return
    record = kept.record
    signed = check_signed(kept.manifest, kept.signature, keys)
    promise = parse_manifest(signed.manifest).files.get(record.name)
    if promise is None or (promise.size, promise.sha256) != (record.size, record.sha256):
        raise SignatureInvalidError(
            f"the kept image {record.name} ({record.sha256}) is not the one its signed manifest lists",
            reason=SignatureReason.NOT_LISTED if promise is None else SignatureReason.DIGEST_MISMATCH,
            key_id=signed.key_id,
            name=record.name,
        )


def record_of(image: VerifiedImage | CachedImage, version: str | None, source: str | None) -> KnownGoodRecord:
    """What the kept image says of itself."""
    cached = image.cached if isinstance(image, VerifiedImage) else image
    return KnownGoodRecord(cached.name, cached.size, cached.sha256, version, source)


def cached_of(kept: KnownGoodImage) -> CachedImage:
    """A kept image as the cache hands images out (its bytes hashed as they were read)."""
    record = kept.record
    return CachedImage(record.name, kept.path, record.size, record.sha256, 0, "known_good", kept.data)


def slave_image(can_id: int, kept: KnownGoodImage) -> VerifiedImage:
    """A kept image as a slave's update takes it, checked again as an ESP32-S3 app (what the server's
    images are checked for before any byte is sent).

    :raises ImageError: not such an app (a file from a daemon that never checked it)
    """
    record = kept.record
    info = validate_app_image(kept.data, chip=SLAVE_CHIP, max_size=OTA_PARTITION_SIZE, name=record.name)
    resolved = ResolvedImage(
        can_id,
        FirmwareFile(record.name, record.size),
        "known_good",
        ManifestFile(record.size, record.sha256, record.version),
    )
    return VerifiedImage(resolved=resolved, cached=cached_of(kept), info=info)
