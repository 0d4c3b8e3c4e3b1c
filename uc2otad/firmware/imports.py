"""ImportFirmware (issue 21): a release bundle into the daemon's offline firmware folder.

A lab without network carries a release on a stick; ``uc2otactl import FILE`` opens it and hands the
daemon the open file descriptor (the sandboxed daemon cannot see users' folders, as fwupd's Install
takes an fd). :func:`import_bundle` reads it with :mod:`.bundle` (every rule checked; a bundle that
breaks one is refused whole), checks its signature when signatures are enforced (:mod:`.signing`),
and replaces the offline folder ``<cache>/.imported`` with it — atomically: a new folder is written
and fsynced beside the old one, then renamed over it, so a crash leaves the old import or the new one.

The offline folder is laid out as a firmware server is (:mod:`.directory`) and serves when the
configured source cannot be reached (:class:`~uc2otad.firmware.repository.FirmwareRepository`):

- a bundle with our ``version.json`` (signed or not) is kept exactly as it came, its manifest and
  signature beside the images, so that the catalog checks them as it checks a server's;
- a bundle in the release workflow's layout (``firmware-index.json``, no checksums) brings merged
  images named by board id (youseetoo/uc2-esp32 @063e5a6 ``build-and-release.yaml:166-183``): each
  is kept as ``<id>_merged.bin`` (a USB flash with ``erase_flash``), and the app it carries at its
  first app partition as ``<id>.bin`` (what a slave's OTA and the master's app flash take); the
  catalog's table knows the release's names (``images.toml``). A ``version.json`` is written for the
  folder with each file's size and sha256 (the bundle's archive CRCs checked them on the way in) and
  the release's version. Under enforced signatures such a bundle is refused: nothing signs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from uc2otad.errors import BundleError, ImageFormatError, SignatureInvalidError, SignatureReason
from uc2otad.firmware.bundle import Bundle, read_bundle
from uc2otad.firmware.esp_image import ImageKind, embedded_app, parse_image
from uc2otad.firmware.manifest import MANIFEST_NAME
from uc2otad.firmware.names import MERGED_SUFFIX
from uc2otad.firmware.repository import IMPORTED_FOLDER
from uc2otad.firmware.signing import SIGNATURE_NAME, SignedManifest, SigningPolicy, check_signed

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Imported:
    """What an import put in the offline folder."""

    version: str | None
    #: file name → sha256 of every image now offered offline
    images: dict[str, str]
    #: the key that signed the bundle's ``version.json``; None when it came unsigned
    signed_by: str | None

    def as_dict(self) -> dict[str, object]:
        reply: dict[str, object] = {"status": "success", "images": dict(self.images)}
        if self.version is not None:
            reply["version"] = self.version
        if self.signed_by is not None:
            reply["signed_by"] = self.signed_by
        return reply


def import_bundle(source: BinaryIO, cache_dir: Path, policy: SigningPolicy) -> Imported:
    """Read, check and install the bundle ``source`` as the offline folder of ``cache_dir``. Blocking.

    :raises BundleError: the bundle breaks a rule, or an image in it is no valid ESP image
    :raises SignatureInvalidError: signatures are enforced and it is unsigned or badly signed
    :raises OSError: the folder cannot be written
    """
    bundle = read_bundle(source)
    signed = _signature(bundle, policy)
    files = _files(bundle)
    folder = cache_dir / IMPORTED_FOLDER
    _install(folder, files)
    imported = Imported(
        bundle.version,
        {name: hashlib.sha256(data).hexdigest() for name, data in files.items() if name.endswith(".bin")},
        signed.key_id if signed is not None else None,
    )
    _LOGGER.info(
        "firmware: bundle %s imported into %s: %s", bundle.version or "(no version)", folder,
        ", ".join(sorted(imported.images)),
    )  # fmt: skip
    return imported


def _signature(bundle: Bundle, policy: SigningPolicy) -> SignedManifest | None:
    keys = policy.trusted_keys()
    if keys is None:
        return None
    if bundle.manifest_bytes is None:
        raise SignatureInvalidError(
            "signatures are required, and the bundle has no version.json to sign its images "
            "(a release bundle lists them only in firmware-index.json)",
            reason=SignatureReason.UNSIGNED,
            name=MANIFEST_NAME,
        )
    return check_signed(bundle.manifest_bytes, bundle.signature_bytes, keys)


def _files(bundle: Bundle) -> dict[str, bytes]:
    """The offline folder's files: the bundle's as they came with its ``version.json``; else each image,
    a merged one split into the app it carries and itself as ``_merged.bin``, and a ``version.json``."""
    if bundle.manifest_bytes is not None:
        files = {image.name: image.data for image in bundle.images}
        files[MANIFEST_NAME] = bundle.manifest_bytes
        if bundle.signature_bytes is not None:
            files[SIGNATURE_NAME] = bundle.signature_bytes
        return files
    files = {}
    for image in bundle.images:
        try:
            kind = parse_image(image.data, name=image.name).kind
            app = embedded_app(image.data, name=image.name) if kind is ImageKind.MERGED else None
        except ImageFormatError as err:
            raise BundleError(
                f"{image.name} is not a valid ESP image: {err}", rule="image", name=image.name
            ) from err
        stem = image.name.removesuffix(".bin")
        if kind is ImageKind.MERGED:
            files[stem + MERGED_SUFFIX] = image.data
            if app is not None:
                files[image.name] = app
        else:
            files[image.name] = image.data
    entries = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in sorted(files.items())
    }
    document: dict[str, object] = {"files": entries}
    if bundle.version is not None:
        document["version"] = bundle.version
    files[MANIFEST_NAME] = json.dumps(document, indent=1).encode()
    return files


def _install(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a new folder beside ``folder`` and swap it in; what a crash left is removed."""
    parent = folder.parent
    parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    for leftover in parent.glob(f"{IMPORTED_FOLDER}.*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{IMPORTED_FOLDER}.new-", dir=parent))
    try:
        for name, data in files.items():
            with (staging / name).open("xb") as sink:
                sink.write(data)
                sink.flush()
                os.fsync(sink.fileno())
        staging.chmod(0o755)
        _fsync(staging)
        old = parent / f"{IMPORTED_FOLDER}.old-{os.getpid()}"
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
