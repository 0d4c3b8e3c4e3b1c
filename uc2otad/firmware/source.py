"""Where firmware comes from: an http(s) firmware server or a folder laid out like one (issue 21).

The catalog and the cache ask a :class:`FirmwareSource` for a listing, ``version.json`` and files, and
never ask which kind it is: :class:`~uc2otad.firmware.server.FirmwareServer` for ``http(s)://`` URLs,
:class:`~uc2otad.firmware.directory.FirmwareFolder` for an absolute path or a ``file://`` URL.
"""

from __future__ import annotations

import threading
from typing import BinaryIO, Protocol

from uc2otad.firmware.directory import FirmwareFolder, is_local_source, normalize_folder_url
from uc2otad.firmware.listing import Listing
from uc2otad.firmware.manifest import Manifest
from uc2otad.firmware.server import (
    MAX_IMAGE_SIZE,
    DownloadResult,
    FirmwareServer,
    HttpSettings,
    Validators,
    normalize_server_url,
)


class FirmwareSource(Protocol):
    """What the catalog and the cache need of a source of images."""

    #: the normalized URL: what the ``FirmwareServer`` property and ListFirmware show
    url: str

    @property
    def listing_url(self) -> str: ...

    def file_url(self, name: str) -> str: ...

    async def list_files(self, *, max_image_size: int = MAX_IMAGE_SIZE) -> Listing: ...

    async def get_manifest(self) -> Manifest | None: ...

    async def get_document(self, name: str, limit: int) -> bytes | None: ...

    def download_blocking(
        self,
        name: str,
        sink: BinaryIO,
        stop: threading.Event,
        *,
        max_size: int = MAX_IMAGE_SIZE,
        validators: Validators | None = None,
    ) -> DownloadResult: ...


def normalize_source_url(url: str) -> str:
    """``url`` as the daemon keeps it: an http(s) URL without trailing slashes, or ``file:///folder``.

    :raises ConfigError: neither an acceptable server URL nor an absolute folder
    """
    return normalize_folder_url(url) if is_local_source(url) else normalize_server_url(url)


def open_source(url: str, settings: HttpSettings | None = None) -> FirmwareSource:
    """The source ``url`` names (``settings``: the http(s) server's timeouts and retries).

    :raises ConfigError: see :func:`normalize_source_url`
    """
    if is_local_source(url):
        return FirmwareFolder(url)
    return FirmwareServer(url, settings=settings)
