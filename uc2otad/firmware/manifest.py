"""Read the firmware server's ``version.json`` manifest (``uc2-stack.md`` §4.3).

``{"version": "v2026.0.0-…", "commit": "…", "commit_time": "…", "files": {"<name>.bin": {"size": N,
"sha256": "<hex>"}}}``, written by the firmware build (uc2-esp32 ``tools/write_fw_manifest.py``).

The manifest is optional, but once a server publishes one, it is what lets us prove an image intact and
reuse a cached copy without a request. A manifest we cannot read as written is therefore an error, not
something to skip: skipping it would silently turn verification off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from uc2otad.errors import ManifestError, UnsafeFileNameError
from uc2otad.firmware.names import check_file_name

MANIFEST_NAME = "version.json"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ManifestFile:
    """What the manifest promises about one file."""

    size: int
    sha256: str
    #: the build version of this file: its own ``version`` if given, else the manifest's
    version: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A parsed ``version.json``."""

    version: str | None = None
    commit: str | None = None
    commit_time: str | None = None
    files: Mapping[str, ManifestFile] = field(default_factory=dict)


def parse_manifest(body: bytes) -> Manifest:
    """Parse and check a manifest body.

    :raises ManifestError: not JSON, not an object, or a ``files`` entry without a byte count and a
        64-digit sha256
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{MANIFEST_NAME} is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise ManifestError(f"{MANIFEST_NAME} is a JSON {type(document).__name__}, not an object")
    version = _optional_text(document, "version")
    files_field = document.get("files", {})
    if not isinstance(files_field, dict):
        raise ManifestError(f"{MANIFEST_NAME}: 'files' is not an object")
    files: dict[str, ManifestFile] = {}
    for name, promise in files_field.items():
        try:
            check_file_name(name)
        except UnsafeFileNameError:
            continue  # such a name is never fetched, so its promise cannot matter
        files[name] = _read_file_entry(name, promise, version)
    return Manifest(
        version=version,
        commit=_optional_text(document, "commit"),
        commit_time=_optional_text(document, "commit_time"),
        files=files,
    )


def _read_file_entry(name: str, promise: Any, default_version: str | None) -> ManifestFile:
    if not isinstance(promise, dict):
        raise ManifestError(f"{MANIFEST_NAME}: entry {name!r} is not an object", name=name)
    size = promise.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{MANIFEST_NAME}: entry {name!r} has no byte count: size={size!r}", name=name)
    sha256 = promise.get("sha256")
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256.lower()):
        raise ManifestError(f"{MANIFEST_NAME}: entry {name!r} has no valid sha256", name=name)
    own_version = _optional_text(promise, "version")
    return ManifestFile(size=size, sha256=sha256.lower(), version=own_version or default_version)


def _optional_text(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{MANIFEST_NAME}: {key!r} is not a string")
    return value
