"""Which image a board gets: CAN id → file on the firmware server.

Order, as the procedure document and the current firmware want it:
1. a file named explicitly by the caller (the ``firmware`` option);
2. a custom ``id_<CANID>_*.bin`` ("custom firmware takes precedence"); the trailing underscore keeps
   ``id_1_`` from matching ``id_10_x.bin``; several: the newest wins;
3. the image the board reports it runs (``fwImage``), when the server has it;
4. the standard table (``images.toml``, per CAN id, overridable in the config file).

Merged (``*_merged.bin``) images are for USB flashing at 0x0 and never go to a slave; the master
(CAN id 1) has its own list and is only ever flashed over USB.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uc2otad.errors import ConfigError, FirmwareNotFoundError, SignatureInvalidError, SignatureReason
from uc2otad.firmware.listing import FirmwareFile, Listing
from uc2otad.firmware.manifest import MANIFEST_NAME, Manifest, ManifestFile
from uc2otad.firmware.names import MERGED_SUFFIX, check_file_name, is_image_name, is_merged_name

if TYPE_CHECKING:
    from uc2otad.firmware.signing import SignedManifest
    from uc2otad.firmware.source import FirmwareSource

_LOGGER = logging.getLogger(__name__)

MASTER_CAN_ID = 1
#: CANopen node ids are 1..127 (CiA 301); the master is 1, every other id is a slave
MAX_CAN_ID = 127
#: every UC2 slave board is an ESP32-S3 (Seeed XIAO); the master is an ESP32 or ESP32-S3 by board
SLAVE_CHIP = "esp32s3"
_CUSTOM_NAME = re.compile(r"id_(\d+)_.*\.bin", re.IGNORECASE)
_EPOCH = datetime.min.replace(tzinfo=UTC)

ImageSource = Literal["named", "custom", "reported", "standard", "known_good"]


@dataclass(frozen=True)
class ImageTable:
    """Standard images: per slave CAN id, and for the master, candidate names best first."""

    slaves: Mapping[int, tuple[str, ...]]
    master: tuple[str, ...]

    @classmethod
    def standard(cls) -> ImageTable:
        """The table shipped in the package (``uc2otad/firmware/images.toml``)."""
        # beside this module; not importlib.resources, whose import alone costs the daemon ~8 ms at start
        text = (Path(__file__).parent / "images.toml").read_text(encoding="utf-8")
        return cls.from_document(tomllib.loads(text))

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ImageTable:
        """Build from ``{"images": {"10": [...], "20-24": [...]}, "master": {"images": [...]}}``.

        :raises ConfigError: a key that is not a CAN id or range, or a value that is not a list of names
        """
        master = document.get("master", {}).get("images", [])
        return cls(slaves=_read_images(document.get("images", {})), master=_names("master.images", master))

    def with_overrides(self, images: Mapping[str, Any]) -> ImageTable:
        """A copy in which each CAN id of ``images`` (config ``[catalog.images]``) has its list replaced.

        :raises ConfigError: as :meth:`from_document`
        """
        return ImageTable(slaves={**self.slaves, **_read_images(images)}, master=self.master)

    def candidates(self, can_id: int) -> tuple[str, ...]:
        return self.master if can_id == MASTER_CAN_ID else self.slaves.get(can_id, ())


@dataclass(frozen=True)
class ResolvedImage:
    """The file chosen for a board, and why."""

    can_id: int
    file: FirmwareFile
    source: ImageSource
    #: the manifest's size and sha256 for the file; None if the server has no manifest or omits the file
    promise: ManifestFile | None = None
    #: the signed manifest that lists it, when signatures are enforced (:mod:`.signing`): its size and
    #: sha256 are then the signature's word, and a download that differs is ``signature_invalid``
    signed: SignedManifest | None = None

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def version(self) -> str | None:
        return self.promise.version if self.promise else None


class Catalog:
    """One snapshot of a server (listing + manifest) and the rules above."""

    def __init__(
        self,
        server_url: str,
        listing: Listing,
        manifest: Manifest | None,
        table: ImageTable | None = None,
        *,
        signed: SignedManifest | None = None,
        origin: FirmwareSource | None = None,
        source_kind: str = "server",
    ) -> None:
        """
        :param signed: the manifest's verified signature, when signatures are enforced: an image it
            does not list is then refused (``signature_invalid``) rather than offered unchecked
        :param origin: where the images are fetched from (the configured source, or the imported
            bundle when that cannot be reached)
        :param source_kind: what ListFirmware says of each image's source: "server", "folder", "bundle"
        """
        self.origin = origin
        self.source_kind = source_kind
        self.server_url = server_url
        self.listing = listing
        self.manifest = manifest
        self.table = table or ImageTable.standard()
        self.signed = signed

    def resolve(
        self, can_id: int, *, reported_image: str | None = None, name: str | None = None
    ) -> ResolvedImage:
        """The app image for slave ``can_id``.

        :raises ValueError: ``can_id`` is the master's or outside 2..127
        :raises UnsafeFileNameError: ``name`` is not a plain file name
        :raises FirmwareNotFoundError: no such image on the server
        """
        if not MASTER_CAN_ID < can_id <= MAX_CAN_ID:
            raise ValueError(
                f"CAN id {can_id} is not a slave (2..{MAX_CAN_ID}); the master is flashed over USB"
            )
        if name is not None:
            return self._named(can_id, name, allow_merged=False)
        custom = self._custom(can_id, merged=False)
        if custom is not None:
            return self._resolved(can_id, custom, "custom")
        reported = self._reported(reported_image)
        if reported is not None:
            return self._resolved(can_id, reported, "reported")
        for candidate in self.table.candidates(can_id):
            file = self.listing.files.get(candidate)
            if file is not None and not is_merged_name(candidate):
                return self._resolved(can_id, file, "standard")
        raise self._not_found(can_id, self.table.candidates(can_id))

    def resolve_master(self, *, name: str | None = None, merged: bool = False) -> ResolvedImage:
        """The image for the master (CAN id 1), for USB flashing.

        By default the app image (flashed at 0x10000, keeping the board's bootloader); ``merged`` asks for
        the merged counterpart of the same build, for a flash that erases the chip first.

        :raises UnsafeFileNameError: ``name`` is not a plain file name
        :raises FirmwareNotFoundError: no such image on the server
        """
        if name is not None:
            return self._named(MASTER_CAN_ID, name, allow_merged=True)
        custom = self._custom(MASTER_CAN_ID, merged=merged)
        if custom is not None:
            return self._resolved(MASTER_CAN_ID, custom, "custom")
        wanted = [_merged_name(candidate) if merged else candidate for candidate in self.table.master]
        for candidate in wanted:
            if candidate in self.listing.files:
                return self._resolved(MASTER_CAN_ID, self.listing.files[candidate], "standard")
        for file in self.listing.files.values():
            lowered = file.name.lower()
            if "hat" in lowered and "master" in lowered and is_merged_name(file.name) == merged:
                return self._resolved(MASTER_CAN_ID, file, "standard")
        raise self._not_found(MASTER_CAN_ID, wanted)

    def available(self, reported_images: Mapping[int, str] | None = None) -> dict[int, ResolvedImage]:
        """Every board id that has an image: the master, the table's ids and ids with a custom image."""
        reported_images = reported_images or {}
        found: dict[int, ResolvedImage] = {}
        with contextlib.suppress(FirmwareNotFoundError, SignatureInvalidError):
            found[MASTER_CAN_ID] = self.resolve_master()
        for can_id in sorted(set(self.table.slaves) | self._custom_ids() | set(reported_images)):
            if can_id == MASTER_CAN_ID or not 0 < can_id <= MAX_CAN_ID:
                continue
            try:
                found[can_id] = self.resolve(can_id, reported_image=reported_images.get(can_id))
            except (FirmwareNotFoundError, SignatureInvalidError):  # the journal has the unlisted ones
                continue
        return found

    def as_document(self, reported_images: Mapping[int, str] | None = None) -> dict[str, Any]:
        """The procedure document's ``listAvailableFirmware`` response; unknown values are left out."""
        firmware: dict[str, dict[str, Any]] = {}
        for can_id, image in self.available(reported_images).items():
            entry: dict[str, Any] = {
                "filename": image.name,
                "url": f"{self.server_url}/{image.name}",
                "can_id": can_id,
                "size": image.file.size,
                "source": self.source_kind,
            }
            if image.file.mod_time_text is not None:
                entry["mod_time"] = image.file.mod_time_text
            if image.promise is not None:
                entry["sha256"] = image.promise.sha256
                if image.promise.version is not None:
                    entry["version"] = image.promise.version
            firmware[str(can_id)] = entry
        return {
            "status": "success",
            "firmware_server": self.server_url,
            "firmware_count": len(firmware),
            "firmware": firmware,
        }

    # ---- rules ---------------------------------------------------------------------------------------

    def _named(self, can_id: int, name: str, *, allow_merged: bool) -> ResolvedImage:
        check_file_name(name)
        file = self.listing.files.get(name)
        if file is None:
            refusal = self.listing.refusal_of(name)
            detail = f" (refused: {refusal})" if refusal else ""
            raise FirmwareNotFoundError(f"{name} is not on {self.server_url}{detail}", name=name)
        if is_merged_name(name) and not allow_merged:
            raise FirmwareNotFoundError(f"{name} is a merged image: for USB flashing only", name=name)
        return self._resolved(can_id, file, "named")

    def _custom(self, can_id: int, *, merged: bool) -> FirmwareFile | None:
        prefix = f"id_{can_id}_"
        matches = [
            file
            for name, file in self.listing.files.items()
            if name.lower().startswith(prefix) and is_merged_name(name) == merged
        ]
        if not matches:
            return None
        newest = max(matches, key=lambda file: (file.mod_time or _EPOCH, file.name))
        if len(matches) > 1:
            _LOGGER.warning(
                "catalog: %d custom images for CAN id %d; using the newest, %s",
                len(matches),
                can_id,
                newest.name,
            )
        return newest

    def _reported(self, reported_image: str | None) -> FirmwareFile | None:
        if not reported_image:
            return None
        name = reported_image if is_image_name(reported_image) else reported_image + ".bin"
        file = self.listing.files.get(name)
        return None if file is None or is_merged_name(name) else file

    def _custom_ids(self) -> set[int]:
        return {int(match[1]) for name in self.listing.files if (match := _CUSTOM_NAME.fullmatch(name))}

    def _resolved(self, can_id: int, file: FirmwareFile, source: ImageSource) -> ResolvedImage:
        promise = self.manifest.files.get(file.name) if self.manifest else None
        if self.signed is not None:
            if promise is None:
                _LOGGER.warning("catalog: %s is not in the signed manifest; refused", file.name)
                raise SignatureInvalidError(
                    f"{file.name} is not listed in the signed {MANIFEST_NAME} (key {self.signed.key_id}): "
                    "refused before download",
                    reason=SignatureReason.NOT_LISTED,
                    key_id=self.signed.key_id,
                    name=file.name,
                )
            return ResolvedImage(can_id=can_id, file=file, source=source, promise=promise, signed=self.signed)
        if self.manifest is not None and promise is None:
            _LOGGER.warning(
                "catalog: %s is not in the manifest; it can only be checked against its size", file.name
            )
        return ResolvedImage(can_id=can_id, file=file, source=source, promise=promise)

    def _not_found(self, can_id: int, candidates: Iterable[str]) -> FirmwareNotFoundError:
        looked_for = [f"id_{can_id}_*.bin", *candidates]
        refused = [f"{name} ({reason})" for name in candidates if (reason := self.listing.refusal_of(name))]
        message = f"no firmware for CAN id {can_id} on {self.server_url}: looked for {', '.join(looked_for)}"
        if len(looked_for) == 1:
            message += " (no standard image for this id)"
        if refused:
            message += "; refused: " + ", ".join(refused)
        return FirmwareNotFoundError(message)


def _merged_name(app_name: str) -> str:
    return app_name[: -len(".bin")] + MERGED_SUFFIX


def _read_images(images: Any) -> dict[int, tuple[str, ...]]:
    if not isinstance(images, Mapping):
        raise ConfigError("catalog.images", "must be a table of CAN id = [file names]")
    table: dict[int, tuple[str, ...]] = {}
    for key, names in images.items():
        for can_id in _can_ids(str(key)):
            table[can_id] = _names(f"catalog.images.{key}", names)
    return table


def _can_ids(key: str) -> range:
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", key.strip())
    if match is None:
        raise ConfigError(f"catalog.images.{key}", "is not a CAN id or a range like 20-24")
    first = int(match[1])
    last = int(match[2] or first)
    if not MASTER_CAN_ID < first <= last <= MAX_CAN_ID:
        raise ConfigError(f"catalog.images.{key}", f"slave CAN ids are 2..{MAX_CAN_ID}")
    return range(first, last + 1)


def _names(key: str, names: Any) -> tuple[str, ...]:
    if (
        not isinstance(names, Sequence)
        or isinstance(names, str)
        or not all(isinstance(n, str) for n in names)
    ):
        raise ConfigError(key, "must be a list of file names")
    for name in names:
        try:
            check_file_name(name)
        except ValueError as err:
            raise ConfigError(key, str(err)) from err
        if not is_image_name(name):
            raise ConfigError(key, f"{name!r} is not a .bin file name")
    return tuple(names)
