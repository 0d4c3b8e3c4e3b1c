"""Parse a firmware server's JSON directory listing: Caddy ``file_server browse`` or nginx autoindex.

The real UC2 firmware server is Caddy, which answers ``GET <server>/`` with ``Accept: application/json``
by a JSON array of ``{"name", "size", "url", "mod_time", "mode", "is_dir", "is_symlink"}``. nginx with
``autoindex_format json`` sends ``{"name", "type", "mtime", "size"}``. Both are read here.

The listing comes from a server we do not control. Entries we will not use (unsafe names, missing or
absurd sizes) are refused one by one and kept with the reason, so a single bad entry neither hides the
good ones nor disappears without a word.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from uc2otad.errors import ListingError, UnsafeFileNameError
from uc2otad.firmware.names import check_file_name, is_image_name

_LOGGER = logging.getLogger(__name__)
#: nginx's autoindex ``mtime`` (RFC 1123, always GMT). strptime reads English day and month names
#: because Python leaves LC_TIME at "C" unless the program calls setlocale, which uc2otad never does
_NGINX_TIME = "%a, %d %b %Y %H:%M:%S GMT"


@dataclass(frozen=True)
class FirmwareFile:
    """One image file the server offers."""

    name: str
    size: int
    #: last modification as the server reports it, UTC; None when missing or unreadable
    mod_time: datetime | None = None

    @property
    def mod_time_text(self) -> str | None:
        """``mod_time`` as the procedure document writes it: ``2025-12-03T16:31:06Z``."""
        if self.mod_time is None:
            return None
        return self.mod_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RefusedEntry:
    """A listing entry we will not use, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Listing:
    """The ``.bin`` files of a listing, in the server's order, and the entries refused."""

    files: Mapping[str, FirmwareFile] = field(default_factory=dict)
    refused: tuple[RefusedEntry, ...] = ()

    def refusal_of(self, name: str) -> str | None:
        """Why ``name`` was refused, if it was listed and refused."""
        return next((entry.reason for entry in self.refused if entry.name == name), None)


def parse_listing(body: bytes, *, max_image_size: int, content_type: str = "") -> Listing:
    """Read a listing body.

    :param max_image_size: entries larger than this are refused
    :param content_type: the response's Content-Type, only to make the error message useful
    :raises ListingError: the body is not a JSON array
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        hint = f" (Content-Type {content_type})" if content_type else ""
        raise ListingError(
            f"firmware server sent no JSON listing{hint}: {err}; the server needs Caddy "
            "'file_server browse' or nginx 'autoindex_format json'"
        ) from err
    if not isinstance(document, list):
        raise ListingError(f"firmware listing is a JSON {type(document).__name__}, not a list of files")

    files: dict[str, FirmwareFile] = {}
    refused: list[RefusedEntry] = []
    for item in document:
        try:
            entry = _read_entry(item, max_image_size)
        except _RefusedError as refusal:
            refused.append(RefusedEntry(refusal.name, refusal.reason))
            _LOGGER.warning("firmware listing: refused entry name=%r reason=%s", refusal.name, refusal.reason)
            continue
        if entry is None:
            continue
        if entry.name in files:
            refused.append(RefusedEntry(entry.name, "listed twice"))
            continue
        files[entry.name] = entry
    return Listing(files=files, refused=tuple(refused))


class _RefusedError(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.reason = reason


def _read_entry(item: Any, max_image_size: int) -> FirmwareFile | None:
    """One entry as a FirmwareFile; None for what is simply not firmware (folders, other files)."""
    if not isinstance(item, dict):
        raise _RefusedError(repr(item)[:80], "not a JSON object")
    name = item.get("name")
    if not isinstance(name, str):
        raise _RefusedError(repr(name)[:80], "no name")
    if item.get("is_dir") is True or item.get("type") == "directory":
        return None
    try:
        check_file_name(name)
    except UnsafeFileNameError as err:
        raise _RefusedError(name, str(err)) from err
    if not is_image_name(name):
        return None
    size = item.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _RefusedError(name, f"size is not a byte count: {size!r}")
    if size > max_image_size:
        raise _RefusedError(name, f"size {size} over the limit of {max_image_size} bytes")
    return FirmwareFile(name=name, size=size, mod_time=_read_time(item))


def _read_time(item: Mapping[str, Any]) -> datetime | None:
    """Caddy's RFC 3339 ``mod_time`` or nginx's RFC 1123 ``mtime``, as aware UTC; None if unreadable."""
    caddy_time = item.get("mod_time")
    if isinstance(caddy_time, str):
        try:
            return datetime.fromisoformat(caddy_time).astimezone(UTC)
        except ValueError:
            return None
    nginx_time = item.get("mtime")
    if isinstance(nginx_time, str):
        try:  # nginx always writes RFC 1123 in GMT: "Wed, 03 Dec 2025 16:31:06 GMT"
            return datetime.strptime(nginx_time, _NGINX_TIME).replace(tzinfo=UTC)
        except ValueError:
            return None
    return None
