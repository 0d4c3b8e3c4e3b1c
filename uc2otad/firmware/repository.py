"""The firmware room's front door: "give me the image for board N, proven intact and right for it".

It ties the server (listing, manifest, downloads), the cache (verified files) and the catalog (CAN id →
file) together, and finishes with the ESP image check, so that the engine only ever holds a
:class:`VerifiedImage`: a file in the cache whose bytes match what the server promised and that the
target board can boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from uc2otad.aio import run_stoppable
from uc2otad.errors import DownloadTimeoutError, ServerUnreachableError
from uc2otad.firmware.cache import CachedImage, FirmwareCache
from uc2otad.firmware.catalog import SLAVE_CHIP, Catalog, ImageTable, ResolvedImage
from uc2otad.firmware.channels import DEFAULT_CHANNEL, Channel, on_channel
from uc2otad.firmware.directory import FirmwareFolder
from uc2otad.firmware.esp_image import OTA_PARTITION_SIZE, ImageInfo, validate_app_image
from uc2otad.firmware.manifest import MANIFEST_NAME, parse_manifest
from uc2otad.firmware.server import MAX_MANIFEST_BYTES
from uc2otad.firmware.signing import MAX_SIGNATURE_BYTES, SIGNATURE_NAME, SigningPolicy, check_signed
from uc2otad.firmware.source import FirmwareSource

_LOGGER = logging.getLogger(__name__)

#: the offline folder an imported bundle fills, inside the cache folder (:mod:`.imports`); hidden, so
#: that no image name clashes with it
IMPORTED_FOLDER = ".imported"


@dataclass(frozen=True)
class VerifiedImage:
    """An image in the cache, checked against the server's promise and against the target board."""

    resolved: ResolvedImage
    cached: CachedImage
    info: ImageInfo

    @property
    def name(self) -> str:
        return self.cached.name

    @property
    def path(self) -> Path:
        """Where the image was cached; it may be gone (ClearFirmwareCache): send :attr:`data`."""
        return self.cached.path

    @property
    def data(self) -> bytes:
        """The verified bytes, held since the fetch: what a job sends (issue 15, D4)."""
        return self.cached.data

    @property
    def version(self) -> str | None:
        """The release this image is: ``version.json``'s version for it (the release string 2026-09
        firmware reports in full), else its app descriptor's (cut at 31 characters)."""
        if self.resolved.version:
            return self.resolved.version
        if self.info.app_desc is not None and self.info.app_desc.version:
            return self.info.app_desc.version
        return None


@dataclass(eq=False)
class _CatalogFetch:
    """The one listing + manifest fetch in flight, and how many callers wait for it."""

    task: asyncio.Task[Catalog]
    waiters: int = 0


class FirmwareRepository:
    """Server + cache + image table."""

    def __init__(
        self,
        server: FirmwareSource,
        cache: FirmwareCache,
        table: ImageTable | None = None,
        *,
        channel: Channel = DEFAULT_CHANNEL,
        signing: SigningPolicy | None = None,
        imported: FirmwareFolder | None = None,
    ) -> None:
        """
        :param channel: the release channel: on ``stable`` no prerelease is offered (:mod:`.channels`)
        :param signing: when ``version.json`` must be signed, and by which keys (:mod:`.signing`)
        :param imported: the offline folder an imported bundle fills (:mod:`.imports`): it serves
            when ``server`` cannot be reached
        """
        self.imported = imported
        self.server = server
        self.cache = cache
        self.table = table or ImageTable.standard()
        self.channel = channel
        self.signing = signing or SigningPolicy()
        #: the catalog fetch callers share while it runs; None when none runs
        self._catalog_fetch: _CatalogFetch | None = None

    async def catalog(self) -> Catalog:
        """A fresh snapshot of the server: listing and manifest, fetched together.

        Callers that arrive while a fetch runs share it, its result or its error: a burst of ScanDevices
        and StartOTA calls costs the server one listing and one manifest request, not one pair per call.
        Nothing is kept once the fetch ends; the next call fetches again, so the snapshot is never older
        than the call. A cancelled caller (ScanDevices gives up on a slow server) leaves the fetch to the
        others (it waits through :func:`asyncio.shield`); only when the last caller is gone is the fetch
        cancelled, as a lone caller's always was, so no request runs on for nobody.

        :raises ListingError, ManifestError: the server's listing or manifest is unusable
        :raises DownloadError: the server cannot be reached
        """
        fetch = self._catalog_fetch
        if fetch is None or fetch.task.done():  # done: finished, its callbacks not run yet; fetch fresh
            task = asyncio.get_running_loop().create_task(self._fetch_catalog(), name="catalog fetch")
            fetch = self._catalog_fetch = _CatalogFetch(task)
            task.add_done_callback(self._catalog_fetch_ended)
        fetch.waiters += 1
        try:
            return await asyncio.shield(fetch.task)
        finally:
            fetch.waiters -= 1
            if fetch.waiters == 0 and not fetch.task.done():  # the last caller was cancelled
                self._catalog_fetch_ended(fetch.task)
                fetch.task.cancel()
                # as a lone caller's cancel always did (uc2otad.aio): return once the requests stopped
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fetch.task

    def _catalog_fetch_ended(self, task: asyncio.Task[Catalog]) -> None:
        """The fetch ``task`` is over (or abandoned): the next caller starts a new one."""
        if self._catalog_fetch is not None and self._catalog_fetch.task is task:
            self._catalog_fetch = None

    async def _fetch_catalog(self) -> Catalog:
        kind = "folder" if isinstance(self.server, FirmwareFolder) else "server"
        try:
            return await self._catalog_of(self.server, kind)
        except (ServerUnreachableError, DownloadTimeoutError) as err:
            imported = self.imported
            if imported is None or not await asyncio.to_thread(imported.path.is_dir):
                raise
            _LOGGER.warning(
                "firmware: %s cannot be reached (%s); offering the imported bundle", self.server, err
            )
            return await self._catalog_of(imported, "bundle")

    async def _catalog_of(self, source: FirmwareSource, kind: str) -> Catalog:
        """``source``'s listing and manifest (signed, when signatures are enforced), on the channel."""
        keys = await asyncio.to_thread(self.signing.trusted_keys)
        if keys is None:
            listing, manifest = await asyncio.gather(
                source.list_files(max_image_size=self.cache.max_image_size), source.get_manifest()
            )
            listing = on_channel(listing, manifest, self.channel)
            return Catalog(source.url, listing, manifest, self.table, origin=source, source_kind=kind)
        listing, raw, signature = await asyncio.gather(
            source.list_files(max_image_size=self.cache.max_image_size),
            source.get_document(MANIFEST_NAME, MAX_MANIFEST_BYTES),
            source.get_document(SIGNATURE_NAME, MAX_SIGNATURE_BYTES),
        )
        signed = await asyncio.to_thread(check_signed, raw, signature, keys)  # cryptography loads here
        manifest = parse_manifest(signed.manifest)  # the very bytes verified
        _LOGGER.info("firmware: %s of %s signed by key %s", MANIFEST_NAME, source.url, signed.key_id)
        listing = on_channel(listing, manifest, self.channel)
        return Catalog(
            source.url, listing, manifest, self.table, signed=signed, origin=source, source_kind=kind
        )

    def origin_of(self, catalog: Catalog) -> FirmwareSource:
        """Where ``catalog``'s images are fetched from."""
        return catalog.origin or self.server

    async def obtain(
        self,
        can_id: int,
        *,
        reported_image: str | None = None,
        name: str | None = None,
        catalog: Catalog | None = None,
    ) -> VerifiedImage:
        """The app image for slave ``can_id``: resolved, in the cache, verified, checked as an ESP32-S3 app.

        :param reported_image: the image name the board says it runs, if it says
        :param name: a file name the caller chose (the ``firmware`` option)
        :param catalog: a snapshot to resolve against; a fresh one by default
        :raises FirmwareNotFoundError, UnsafeFileNameError: see :meth:`Catalog.resolve`
        :raises DownloadError, ManifestError, ListingError, CacheError: see :meth:`FirmwareCache.fetch`
        :raises ImageError: the file is not an app image an ESP32-S3 slave can take
        """
        catalog = catalog or await self.catalog()
        resolved = catalog.resolve(can_id, reported_image=reported_image, name=name)
        cached = await self.cache.fetch(
            self.origin_of(catalog), resolved.file, resolved.promise, signed=resolved.signed is not None
        )
        info = await run_stoppable(lambda _stop: _check_app(cached, SLAVE_CHIP))
        _LOGGER.info(
            "firmware: board=%d image=%s source=%s version=%s downloaded=%d",
            can_id,
            cached.name,
            resolved.source,
            info.app_desc.version if info.app_desc else "?",
            cached.downloaded_bytes,
        )
        return VerifiedImage(resolved=resolved, cached=cached, info=info)


def _check_app(cached: CachedImage, chip: str) -> ImageInfo:
    return validate_app_image(cached.data, chip=chip, max_size=OTA_PARTITION_SIZE, name=cached.name)
