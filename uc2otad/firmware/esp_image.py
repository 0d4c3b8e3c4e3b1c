"""The ESP-IDF image format: the facts of an image file, and the check before one is sent to a board.

A slave board takes a new application over CAN into its inactive OTA partition and only finds out at
``esp_ota_end`` whether the bytes were a runnable app; a merged (factory) or bootloader image, an image
for another chip, or one that does not fit the partition costs a whole transfer and may leave the board
in a failed update. This module reads the ESP-IDF image format (``arduino-ota.md`` §5) so the updater can
refuse such files up front; the chips come from ``chips.py``, and ``python -m uc2otad.firmware.image
FILE`` (``image.py``) prints what a file is.

Main constraint: the input is untrusted bytes from a download. The parser is pure and synchronous (no
I/O), bounds every length it reads from the data against the data actually present, and never depends on
esptool at runtime (esptool is only the peer the tests check us against).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from uc2otad.errors import (
    ImageFormatError,
    ImageTooLargeError,
    NotAnAppImageError,
    WrongChipError,
)
from uc2otad.firmware.chips import BOOTLOADER_OFFSETS, SPECS_BY_ID, ChipSpec, normalize_chip_name

#: first byte of every ESP32-family image (IDF-fmt ``ESP_IMAGE_HEADER_MAGIC``)
IMAGE_MAGIC = 0xE9
#: ``esp_image_header_t`` is 24 packed bytes (IDF-fmt)
HEADER_LEN = 24
#: each segment is preceded by ``load_addr`` u32 and ``data_len`` u32 (IDF-fmt ``esp_image_segment_header_t``)
SEGMENT_HEADER_LEN = 8
#: IDF-fmt ``ESP_IMAGE_MAX_SEGMENTS``
MAX_SEGMENTS = 16
#: the XOR checksum starts from this value (esptool ``loader.py`` ``ESP_CHECKSUM_MAGIC``)
CHECKSUM_SEED = 0xEF
#: the checksum byte is the last byte of a 16-byte block (esptool ``read_checksum``/``align_file_position``)
CHECKSUM_ALIGN = 16
#: length of the SHA-256 appended when ``hash_appended`` is 1 (IDF-fmt)
DIGEST_LEN = 32

#: ``esp_app_desc_t`` sits at the start of the first segment's data, i.e. file offset 0x20 (IDF-desc)
APP_DESC_OFFSET = HEADER_LEN + SEGMENT_HEADER_LEN
#: ``esp_app_desc_t`` is 256 bytes (IDF-desc)
APP_DESC_LEN = 256
#: ``esp_app_desc_t.magic_word`` (IDF-desc ``ESP_APP_DESC_MAGIC_WORD``)
APP_DESC_MAGIC = 0xABCD5432
# magic, secure_version, reserv1, version, project_name, time, date, idf_ver, app_elf_sha256
# (esptool cmds.py ``_parse_app_info`` reads the same prefix; the rest is efuse/mmu fields and reserved)
_APP_DESC_STRUCT = struct.Struct("<II8s32s32s16s16s32s32s")

# magic, segment_count, spi_mode, spi_speed|spi_size, entry_addr, wp_pin, spi_pin_drv[3], chip_id,
# min_chip_rev, min_chip_rev_full, max_chip_rev_full, reserved[4], hash_appended (IDF-fmt, 2022 layout)
_HEADER_STRUCT = struct.Struct("<BBBBIB3sHBHH4sB")
_SEGMENT_HEADER_STRUCT = struct.Struct("<II")

#: the partition table lives at flash offset 0x8000 (gen_esp32part.py ``PARTITION_TABLE_OFFSET``)
PARTITION_TABLE_OFFSET = 0x8000
#: at most 0xC00 bytes of entries, leaving 1 KB of the sector for a signature
#: (gen_esp32part.py ``MAX_PARTITION_LENGTH``)
PARTITION_TABLE_MAX_LEN = 0xC00
#: one entry: magic, type, subtype, offset, size, label, flags (gen_esp32part.py ``STRUCT_FORMAT``)
_PARTITION_STRUCT = struct.Struct("<2sBBLL16sL")
PARTITION_ENTRY_MAGIC = b"\xaa\x50"
#: the optional MD5 line after the last entry starts like this; its last 16 bytes are the MD5 of the
#: entries before it (gen_esp32part.py ``MD5_PARTITION_BEGIN``)
PARTITION_MD5_MARKER = b"\xeb\xeb" + b"\xff" * 14
#: erased flash: an entry starting with this ends the table
_ERASED_ENTRY_MAGIC = b"\xff\xff"
#: partition type 0 is "app" (gen_esp32part.py ``APP_TYPE``)
PARTITION_TYPE_APP = 0x00

#: Slave OTA partition size: the slaves' ``custom_partition_esp32s3.csv`` gives app0/app1 0x140000 bytes
#: each (at 0x10000 / 0x150000), and the slave refuses an announced size above it (OD 0x2F01, error 7).
#: Source: ``uc2-stack.md`` §3.1.
OTA_PARTITION_SIZE = 0x140000


# spi_mode byte (IDF-fmt ``esp_image_spi_mode_t``; names as esptool's FLASH_MODES)
_FLASH_MODES: Mapping[int, str] = MappingProxyType(
    {0: "qio", 1: "qout", 2: "dio", 3: "dout", 4: "fast_read", 5: "slow_read"}
)


# partition (sub)type names for display (gen_esp32part.py ``TYPES`` / ``SUBTYPES``)
_PARTITION_TYPES: Mapping[int, str] = MappingProxyType(
    {0x00: "app", 0x01: "data", 0x02: "bootloader", 0x03: "partition_table"}
)
_APP_SUBTYPES: Mapping[int, str] = MappingProxyType(
    {0x00: "factory", 0x20: "test", **{0x10 + n: f"ota_{n}" for n in range(16)}}
)
_DATA_SUBTYPES: Mapping[int, str] = MappingProxyType(
    {
        0x00: "ota",
        0x01: "phy",
        0x02: "nvs",
        0x03: "coredump",
        0x04: "nvs_keys",
        0x05: "efuse",
        0x06: "undefined",
        0x80: "esphttpd",
        0x81: "fat",
        0x82: "spiffs",
        0x83: "littlefs",
    }
)


class ImageKind(StrEnum):
    """What an ESP image file is; only an APP can go into an OTA partition."""

    #: an application image: what an OTA partition (0x10000, ...) holds
    APP = "app"
    #: a factory image from ``esptool merge-bin``: bootloader, partition table and app at flash offsets
    MERGED = "merged"
    #: a second-stage bootloader: no app descriptor, every segment loaded into RAM
    BOOTLOADER = "bootloader"


@dataclass(frozen=True)
class Segment:
    """One segment of an image, as esptool ``image-info`` lists it."""

    load_addr: int
    length: int
    #: offset of the segment's 8-byte header in the image (esptool's "File offs"); data follows it
    file_offset: int
    #: True when ``load_addr`` is in the chip's cache-mapped flash range (IROM/DROM), not RAM
    flash_mapped: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "load_addr": _hex(self.load_addr),
            "length": self.length,
            "file_offset": _hex(self.file_offset),
            "flash_mapped": self.flash_mapped,
        }


@dataclass(frozen=True)
class AppDescription:
    """``esp_app_desc_t``: what the app says about itself; the board reports ``version`` after booting."""

    secure_version: int
    version: str
    project_name: str
    time: str
    date: str
    idf_ver: str
    #: SHA-256 of the ELF the image was made from, lower-case hex
    app_elf_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "project_name": self.project_name,
            "version": self.version,
            "idf_ver": self.idf_ver,
            "date": self.date,
            "time": self.time,
            "secure_version": self.secure_version,
            "app_elf_sha256": self.app_elf_sha256,
        }


@dataclass(frozen=True)
class PartitionEntry:
    """One line of the partition table of a merged image."""

    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int

    @property
    def type_name(self) -> str:
        return _PARTITION_TYPES.get(self.type, _hex(self.type))

    @property
    def subtype_name(self) -> str:
        names = {0x00: _APP_SUBTYPES, 0x01: _DATA_SUBTYPES}.get(self.type, {})
        return names.get(self.subtype, _hex(self.subtype))

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "type": self.type_name,
            "subtype": self.subtype_name,
            "offset": _hex(self.offset),
            "size": self.size,
            "flags": self.flags,
        }


@dataclass(frozen=True)
class ImageInfo:
    """Facts about an ESP image that parsed without error.

    For a MERGED image the header facts (chip, flash settings, entry, segments, checksum, digest,
    ``image_size``) are those of its bootloader, which is what the ROM reads first; ``app`` describes the
    app in the first app partition. ``checksum_valid`` and ``hash_valid`` are True (or ``hash_valid``
    None when no digest is appended), since a failed check raises instead: they are kept as facts for
    the JSON output.
    """

    kind: ImageKind
    chip: str
    chip_id: int
    flash_mode: str
    flash_freq: str
    flash_size: str
    entry_addr: int
    #: ``min_chip_rev_full`` / ``max_chip_rev_full``: major * 100 + minor
    min_chip_rev_full: int
    max_chip_rev_full: int
    segments: tuple[Segment, ...]
    checksum_stored: int
    checksum_computed: int
    checksum_valid: bool
    hash_appended: bool
    #: None when no digest is appended
    hash_valid: bool | None
    app_desc: AppDescription | None
    #: bytes from the magic through the checksum and appended digest
    image_size: int
    #: bytes of the whole file (for a nested app: of its image, ``image_size``)
    size: int
    #: SHA-256 of the same bytes as ``size``, lower-case hex
    sha256: str
    #: MERGED only: where the bootloader starts in the file (= flash offset)
    bootloader_offset: int | None = None
    partitions: tuple[PartitionEntry, ...] = ()
    #: MERGED only: the app image at the first app partition, when the file reaches it
    app: ImageInfo | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready facts: addresses and offsets as ``"0x…"`` strings, sizes as integers."""
        return {
            "kind": str(self.kind),
            "chip": self.chip,
            "chip_id": self.chip_id,
            "flash_mode": self.flash_mode,
            "flash_freq": self.flash_freq,
            "flash_size": self.flash_size,
            "entry_addr": _hex(self.entry_addr),
            "min_chip_rev": _rev(self.min_chip_rev_full),
            "max_chip_rev": _rev(self.max_chip_rev_full),
            "segments": [segment.as_dict() for segment in self.segments],
            "checksum_stored": _hex(self.checksum_stored),
            "checksum_computed": _hex(self.checksum_computed),
            "checksum_valid": self.checksum_valid,
            "hash_appended": self.hash_appended,
            "hash_valid": self.hash_valid,
            "app_desc": None if self.app_desc is None else self.app_desc.as_dict(),
            "image_size": self.image_size,
            "size": self.size,
            "sha256": self.sha256,
            "bootloader_offset": None if self.bootloader_offset is None else _hex(self.bootloader_offset),
            "partitions": [entry.as_dict() for entry in self.partitions],
            "app": None if self.app is None else self.app.as_dict(),
        }


@dataclass(frozen=True)
class _Header:
    """The decoded 24-byte ``esp_image_header_t``."""

    segment_count: int
    flash_mode: int
    flash_size_freq: int
    entry_addr: int
    chip_id: int
    min_chip_rev_full: int
    max_chip_rev_full: int
    hash_appended: int


# --------------------------------------------------------------------------- public API


def parse_image(data: bytes, *, name: str | None = None) -> ImageInfo:
    """Classify and describe an ESP image: app, merged (factory) or bootloader.

    :param data: the whole file
    :param name: the file name, only carried into errors
    :raises ImageFormatError: empty or truncated data, wrong magic, 0 or more than 16 segments,
        ``hash_appended`` not 0/1, unknown chip id, a segment past the end, checksum or appended
        SHA-256 mismatch, a broken partition table in a merged image, or a broken app inside it
    """
    if not data:
        raise ImageFormatError("empty file: size=0", name=name)
    if _looks_merged(data):
        return _parse_merged(data, name)
    return _parse_single(data, name)


def validate_app_image(
    data: bytes, *, chip: str, max_size: int = OTA_PARTITION_SIZE, name: str | None = None
) -> ImageInfo:
    """Check that ``data`` is an app image a ``chip`` board can take into its OTA partition.

    This is what the updater calls before it sends an image: a merged or bootloader image, or an image
    for another chip, would only be refused by the board after the whole transfer.

    :param data: the exact bytes that would be sent
    :param chip: the board's chip, as esptool names it (``"esp32s3"``; ``"ESP32-S3"`` is accepted too)
    :param max_size: the OTA partition size in bytes
    :param name: the file name, only carried into errors
    :raises ConfigError: ``chip`` is not a chip name we know
    :raises ImageFormatError: see :func:`parse_image`; also an app without ``esp_app_desc_t``
    :raises NotAnAppImageError: a merged or bootloader image
    :raises WrongChipError: built for another chip
    :raises ImageTooLargeError: ``len(data) > max_size``
    """
    board_chip = normalize_chip_name(chip)
    info = parse_image(data, name=name)
    require_app(info, board_chip=board_chip, max_size=max_size, name=name)
    return info


# --------------------------------------------------------------------------- app checks


def require_app(info: ImageInfo, *, board_chip: str | None, max_size: int, name: str | None) -> None:
    """Raise unless ``info`` is an OTA-able app; ``board_chip`` None skips the chip check.

    :raises NotAnAppImageError: a merged or bootloader image
    :raises WrongChipError: built for another chip than ``board_chip``
    :raises ImageTooLargeError: ``info.size > max_size``
    :raises ImageFormatError: an app without ``esp_app_desc_t``
    """
    if info.kind is ImageKind.MERGED:
        app_at = _hex(_first_app_offset(info.partitions)) if info.app is not None else "none"
        raise NotAnAppImageError(
            f"image is a merged image (bootloader at offset={_hex(info.bootloader_offset or 0)}, "
            f"app at offset={app_at}); an OTA update needs the app image alone",
            name=name,
        )
    if info.kind is ImageKind.BOOTLOADER:
        raise NotAnAppImageError(
            f"image is a bootloader image for {info.chip}; an OTA update needs an app image", name=name
        )
    if board_chip is not None:
        require_chip(info, board_chip, name)
    if info.size > max_size:
        raise ImageTooLargeError(
            f"image does not fit the OTA partition: size={info.size} max_size={max_size}", name=name
        )
    if info.app_desc is None:
        raise ImageFormatError(
            f"app image has no app descriptor: no magic=0x{APP_DESC_MAGIC:08x} at offset=0x20; "
            "ESP-IDF refuses such an image at the end of the update",
            name=name,
        )


def require_chip(info: ImageInfo, board_chip: str, name: str | None) -> None:
    """:raises WrongChipError: ``info`` is for another chip than ``board_chip`` (a normalized name)"""
    if info.chip != board_chip:
        raise WrongChipError(f"image is for {info.chip}, board is {board_chip}", name=name)


def embedded_app(data: bytes, *, name: str | None = None) -> bytes | None:
    """The app image a merged image carries at its first app partition, cut out (its own bytes, without
    the partition's padding): what a slave's OTA takes from a release's merged image. None when ``data``
    is not a merged image or ends before its app.

    :raises ImageFormatError: ``data`` is not a valid ESP image
    """
    info = parse_image(data, name=name)
    offset = _first_app_offset(info.partitions)
    if info.kind is not ImageKind.MERGED or info.app is None or offset is None:
        return None
    return data[offset : offset + info.app.image_size]


def _first_app_offset(partitions: tuple[PartitionEntry, ...]) -> int | None:
    return next((entry.offset for entry in partitions if entry.type == PARTITION_TYPE_APP), None)


# --------------------------------------------------------------------------- single images


def _parse_single(data: bytes, name: str | None) -> ImageInfo:
    """Parse one E9 image at the start of ``data``; trailing bytes (padding, signature) are allowed."""
    header = _parse_header(data, name)
    spec = SPECS_BY_ID[header.chip_id]
    segments, data_end = _parse_segments(data, header.segment_count, spec, name)
    checksum_stored, checksum_computed, image_end = _check_checksum(data, segments, data_end, name)
    hash_valid: bool | None = None
    if header.hash_appended:
        image_end = _check_digest(data, image_end, name)
        hash_valid = True
    app_desc = _parse_app_desc(data, segments, name)
    all_in_ram = not any(segment.flash_mapped for segment in segments)
    kind = ImageKind.BOOTLOADER if app_desc is None and all_in_ram else ImageKind.APP
    return ImageInfo(
        kind=kind,
        chip=spec.name,
        chip_id=spec.chip_id,
        flash_mode=_FLASH_MODES.get(header.flash_mode, f"unknown({header.flash_mode})"),
        flash_freq=spec.flash_freqs.get(
            header.flash_size_freq & 0x0F, f"unknown({header.flash_size_freq & 0x0F:#x})"
        ),
        flash_size=_flash_size_name(header.flash_size_freq >> 4),
        entry_addr=header.entry_addr,
        min_chip_rev_full=header.min_chip_rev_full,
        max_chip_rev_full=header.max_chip_rev_full,
        segments=segments,
        checksum_stored=checksum_stored,
        checksum_computed=checksum_computed,
        checksum_valid=True,
        hash_appended=bool(header.hash_appended),
        hash_valid=hash_valid,
        app_desc=app_desc,
        image_size=image_end,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _parse_header(data: bytes, name: str | None) -> _Header:
    if data[0] != IMAGE_MAGIC:
        raise ImageFormatError(
            f"not an ESP image: magic=0x{data[0]:02x} expected=0x{IMAGE_MAGIC:02x}", name=name
        )
    if len(data) < HEADER_LEN:
        raise ImageFormatError(f"truncated header: size={len(data)} needed={HEADER_LEN}", name=name)
    (_, count, mode, size_freq, entry, _, _, chip_id, _, min_rev, max_rev, _, hash_appended) = (
        _HEADER_STRUCT.unpack_from(data)
    )
    if not 1 <= count <= MAX_SEGMENTS:
        raise ImageFormatError(f"bad segment count: segments={count} allowed=1..{MAX_SEGMENTS}", name=name)
    if hash_appended not in (0, 1):
        raise ImageFormatError(f"bad header: hash_appended={hash_appended} allowed=0,1", name=name)
    if chip_id not in SPECS_BY_ID:
        raise ImageFormatError(f"unknown chip: chip_id=0x{chip_id:04x}", name=name)
    return _Header(count, mode, size_freq, entry, chip_id, min_rev, max_rev, hash_appended)


def _parse_segments(
    data: bytes, count: int, spec: ChipSpec, name: str | None
) -> tuple[tuple[Segment, ...], int]:
    """Walk the segment table; return the segments and the offset just past the last one's data."""
    segments: list[Segment] = []
    pos = HEADER_LEN
    for index in range(count):
        if pos + SEGMENT_HEADER_LEN > len(data):
            raise ImageFormatError(
                f"truncated: segment {index} header at offset={_hex(pos)} runs past the end size={len(data)}",
                name=name,
            )
        load_addr, length = _SEGMENT_HEADER_STRUCT.unpack_from(data, pos)
        data_start = pos + SEGMENT_HEADER_LEN
        if length > len(data) - data_start:
            raise ImageFormatError(
                f"truncated: segment {index} at offset={_hex(pos)} length={length} "
                f"runs past the end size={len(data)}",
                name=name,
            )
        segments.append(Segment(load_addr, length, pos, spec.is_flash_addr(load_addr)))
        pos = data_start + length
    return tuple(segments), pos


def _check_checksum(
    data: bytes, segments: tuple[Segment, ...], data_end: int, name: str | None
) -> tuple[int, int, int]:
    """Return (stored, computed, offset past the checksum byte); raise when they differ."""
    checksum_pos = data_end + (CHECKSUM_ALIGN - 1) - data_end % CHECKSUM_ALIGN
    if checksum_pos >= len(data):
        raise ImageFormatError(
            f"truncated: checksum byte at offset={_hex(checksum_pos)} is past the end size={len(data)}",
            name=name,
        )
    computed = CHECKSUM_SEED
    for segment in segments:
        start = segment.file_offset + SEGMENT_HEADER_LEN
        computed ^= _xor_bytes(data[start : start + segment.length])
    stored = data[checksum_pos]
    if stored != computed:
        raise ImageFormatError(
            f"checksum mismatch: stored=0x{stored:02x} computed=0x{computed:02x}", name=name
        )
    return stored, computed, checksum_pos + 1


def _check_digest(data: bytes, hashed_end: int, name: str | None) -> int:
    """Check the SHA-256 appended after the checksum; return the offset past it."""
    if hashed_end + DIGEST_LEN > len(data):
        raise ImageFormatError(
            f"truncated: appended sha256 at offset={_hex(hashed_end)} needs {DIGEST_LEN} bytes, "
            f"size={len(data)}",
            name=name,
        )
    stored = data[hashed_end : hashed_end + DIGEST_LEN].hex()
    computed = hashlib.sha256(data[:hashed_end]).hexdigest()
    if stored != computed:
        raise ImageFormatError(f"appended sha256 mismatch: stored={stored} computed={computed}", name=name)
    return hashed_end + DIGEST_LEN


def _parse_app_desc(data: bytes, segments: tuple[Segment, ...], name: str | None) -> AppDescription | None:
    """Read ``esp_app_desc_t`` at offset 0x20 (start of segment 0's data), or None when it is absent."""
    if len(data) < APP_DESC_OFFSET + 4:
        return None
    (magic,) = struct.unpack_from("<I", data, APP_DESC_OFFSET)
    if magic != APP_DESC_MAGIC:
        return None
    if segments[0].length < APP_DESC_LEN:
        raise ImageFormatError(
            f"app descriptor runs past segment 0: length={segments[0].length} needed={APP_DESC_LEN}",
            name=name,
        )
    (_, secure_version, _, version, project, time, date, idf_ver, elf_sha256) = _APP_DESC_STRUCT.unpack_from(
        data, APP_DESC_OFFSET
    )
    return AppDescription(
        secure_version=secure_version,
        version=_c_string(version),
        project_name=_c_string(project),
        time=_c_string(time),
        date=_c_string(date),
        idf_ver=_c_string(idf_ver),
        app_elf_sha256=elf_sha256.hex(),
    )


# --------------------------------------------------------------------------- merged images


def _looks_merged(data: bytes) -> bool:
    """A partition table at 0x8000, unless the file is plainly an app (E9 + app descriptor at 0x20).

    The app check comes first because an app larger than 32 KB could hold AA 50 at 0x8000 by chance.
    """
    if data[0] == IMAGE_MAGIC and _has_app_desc_magic(data):
        return False
    table_magic = data[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + len(PARTITION_ENTRY_MAGIC)]
    return table_magic == PARTITION_ENTRY_MAGIC


def _has_app_desc_magic(data: bytes) -> bool:
    return data[APP_DESC_OFFSET : APP_DESC_OFFSET + 4] == struct.pack("<I", APP_DESC_MAGIC)


def _parse_merged(data: bytes, name: str | None) -> ImageInfo:
    bootloader_offset = _find_bootloader(data, name)
    try:
        bootloader = _parse_single(data[bootloader_offset:PARTITION_TABLE_OFFSET], name)
    except ImageFormatError as err:
        raise ImageFormatError(
            f"merged image: bootloader at offset={_hex(bootloader_offset)}: {err}", name=name
        ) from err
    partitions = _parse_partition_table(data, name)
    app = _parse_embedded_app(data, partitions, name)
    return ImageInfo(
        kind=ImageKind.MERGED,
        chip=bootloader.chip,
        chip_id=bootloader.chip_id,
        flash_mode=bootloader.flash_mode,
        flash_freq=bootloader.flash_freq,
        flash_size=bootloader.flash_size,
        entry_addr=bootloader.entry_addr,
        min_chip_rev_full=bootloader.min_chip_rev_full,
        max_chip_rev_full=bootloader.max_chip_rev_full,
        segments=bootloader.segments,
        checksum_stored=bootloader.checksum_stored,
        checksum_computed=bootloader.checksum_computed,
        checksum_valid=bootloader.checksum_valid,
        hash_appended=bootloader.hash_appended,
        hash_valid=bootloader.hash_valid,
        app_desc=None,
        image_size=bootloader.image_size,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        bootloader_offset=bootloader_offset,
        partitions=partitions,
        app=app,
    )


def _find_bootloader(data: bytes, name: str | None) -> int:
    """The first offset a ROM loads a bootloader from (0x0, 0x1000, 0x2000) that holds an E9 image."""
    for offset in BOOTLOADER_OFFSETS:
        if offset < len(data) and data[offset] == IMAGE_MAGIC:
            return offset
    offsets = ", ".join(_hex(offset) for offset in BOOTLOADER_OFFSETS)
    raise ImageFormatError(
        f"merged image without bootloader: no magic=0x{IMAGE_MAGIC:02x} at offsets {offsets}", name=name
    )


def _parse_partition_table(data: bytes, name: str | None) -> tuple[PartitionEntry, ...]:
    """Decode entries until erased flash or the MD5 line; check the MD5 when it is there."""
    table = data[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + PARTITION_TABLE_MAX_LEN]
    entries: list[PartitionEntry] = []
    for pos in range(0, PARTITION_TABLE_MAX_LEN, _PARTITION_STRUCT.size):
        offset = PARTITION_TABLE_OFFSET + pos
        if pos + _PARTITION_STRUCT.size > len(table):
            raise ImageFormatError(f"truncated partition table: entry at offset={_hex(offset)}", name=name)
        raw = table[pos : pos + _PARTITION_STRUCT.size]
        if raw[:2] == _ERASED_ENTRY_MAGIC:
            return tuple(entries)
        if raw[:16] == PARTITION_MD5_MARKER:
            _check_partition_md5(table[:pos], raw[16:], name)
            return tuple(entries)
        magic, ptype, subtype, poffset, size, label, flags = _PARTITION_STRUCT.unpack(raw)
        if magic != PARTITION_ENTRY_MAGIC:
            raise ImageFormatError(
                f"bad partition entry at offset={_hex(offset)}: magic={magic.hex()} "
                f"expected={PARTITION_ENTRY_MAGIC.hex()}",
                name=name,
            )
        entries.append(PartitionEntry(_c_string(label), ptype, subtype, poffset, size, flags))
    raise ImageFormatError(
        f"partition table has no end marker within length={_hex(PARTITION_TABLE_MAX_LEN)}", name=name
    )


def _check_partition_md5(entries: bytes, stored: bytes, name: str | None) -> None:
    computed = hashlib.md5(entries, usedforsecurity=False).digest()
    if stored != computed:
        raise ImageFormatError(
            f"partition table md5 mismatch: stored={stored.hex()} computed={computed.hex()}", name=name
        )


def _parse_embedded_app(
    data: bytes, partitions: tuple[PartitionEntry, ...], name: str | None
) -> ImageInfo | None:
    """Parse the app at the first app partition; None when the file ends before it."""
    app_partition = next((entry for entry in partitions if entry.type == PARTITION_TYPE_APP), None)
    if app_partition is None or app_partition.offset >= len(data):
        return None
    region = data[app_partition.offset : app_partition.offset + app_partition.size]
    try:
        app = _parse_single(region, name)
    except ImageFormatError as err:
        raise ImageFormatError(
            f"merged image: app at offset={_hex(app_partition.offset)}: {err}", name=name
        ) from err
    # describe the app as the file one would get by cutting it out: its own bytes, not the padding
    image = region[: app.image_size]
    return replace(app, size=len(image), sha256=hashlib.sha256(image).hexdigest())


# --------------------------------------------------------------------------- small helpers


def _xor_bytes(buf: bytes) -> int:
    """XOR of all bytes, folded on one big integer so a 1.3 MB segment costs milliseconds, not a loop."""
    width = len(buf)
    value = int.from_bytes(buf, "little")
    while width > 1:
        half = (width + 1) // 2
        value = (value & ((1 << (8 * half)) - 1)) ^ (value >> (8 * half))
        width = half
    return value


def _flash_size_name(code: int) -> str:
    # spi_size 0..7 = 1MB..128MB (IDF-fmt ``esp_image_flash_size_t``; esptool FLASH_SIZES)
    return f"{1 << code}MB" if code <= 7 else f"unknown({code:#x})"


def _c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _hex(value: int | None) -> str:
    return "none" if value is None else f"0x{value:x}"


def _rev(full: int) -> str:
    return f"{full // 100}.{full % 100}"
