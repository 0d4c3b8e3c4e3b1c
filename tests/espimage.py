"""Build synthetic ESP-IDF images (app, bootloader, merged) for tests, from the format spec alone.

Written from ``arduino-ota.md`` §5 and esptool's targets, independently of ``uc2otad.firmware.image``
(never import it here): the tests check our parser against these bytes *and* check these bytes against
esptool, so a misreading of the format cannot hide in both places at once.

Images are small (about 2 KB) unless a test asks for large segments. Segment load addresses are the
ones real images use for each chip: the DROM segment first (it carries ``esp_app_desc_t`` at file offset
0x20), then DRAM, IRAM and IROM; flash-mapped addresses keep the file offset's low 16 bits, as the MMU
needs for a real image.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import random
import struct
from dataclasses import dataclass

IMAGE_MAGIC = 0xE9
CHECKSUM_SEED = 0xEF
WP_PIN_DISABLED = 0xEE
APP_DESC_MAGIC = 0xABCD5432
# esp_app_desc_t, 256 bytes (IDF esp_app_desc.h; esptool _parse_app_info uses the same format)
APP_DESC_FORMAT = "<II8s32s32s16s16s32s32sHHB3s72s"
# esp_bootloader_desc_t, 80 bytes (esptool _parse_bootloader_info)
BOOTLOADER_DESC_FORMAT = "<B3sI32s24s16s"
BOOTLOADER_DESC_MAGIC = 0x50

PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_MAX_LEN = 0xC00
APP_OFFSET = 0x10000
MD5_MARKER = b"\xeb\xeb" + b"\xff" * 14

# spi_mode 2 = DIO; spi_size 2 (4MB) << 4 | spi_speed 0xF (80m on esp32/s2/s3/c3)
DEFAULT_FLASH_MODE = 0x02
DEFAULT_FLASH_SIZE_FREQ = 0x2F


@dataclass(frozen=True)
class ChipLayout:
    """Addresses a real image for the chip uses (esptool targets MEMORY_MAP / IROM_MAP / DROM_MAP)."""

    chip_id: int
    bootloader_offset: int
    drom: int
    dram: int
    iram: int
    irom: int
    #: bootloader: DRAM (with esp_bootloader_desc_t), IRAM loader, IRAM text, and entry
    boot_segments: tuple[int, int, int]
    boot_entry: int


LAYOUTS: dict[str, ChipLayout] = {
    "esp32": ChipLayout(
        0x00, 0x1000, 0x3F400000, 0x3FFB0000, 0x40080000, 0x400D0000,
        (0x3FFF0030, 0x40078000, 0x40080400), 0x400805F0,
    ),
    "esp32s2": ChipLayout(
        0x02, 0x1000, 0x3F000000, 0x3FFBE000, 0x40022000, 0x40080000,
        (0x3FFE6100, 0x4004C000, 0x4004F000), 0x4004C1A4,
    ),
    "esp32s3": ChipLayout(
        0x09, 0x0, 0x3C000000, 0x3FC92000, 0x40374000, 0x42000000,
        (0x3FCE3810, 0x403C9700, 0x403CC700), 0x403C9908,
    ),
    "esp32c3": ChipLayout(
        0x05, 0x0, 0x3C000000, 0x3FC8A000, 0x40380000, 0x42000000,
        (0x3FCD5820, 0x403CC710, 0x403CE710), 0x403CC71A,
    ),
}  # fmt: skip

# (label, type, subtype, offset, size): the slaves' custom_partition_esp32s3.csv shape (uc2-stack.md §3.1)
DEFAULT_PARTITIONS: tuple[tuple[str, int, int, int, int], ...] = (
    ("nvs", 0x01, 0x02, 0x9000, 0x5000),
    ("otadata", 0x01, 0x00, 0xE000, 0x2000),
    ("app0", 0x00, 0x10, 0x10000, 0x140000),
    ("app1", 0x00, 0x11, 0x150000, 0x140000),
    ("spiffs", 0x01, 0x82, 0x290000, 0x160000),
)


def _filler(size: int, seed: str) -> bytes:
    """Deterministic non-trivial bytes, so a checksum over them is not a constant."""
    return random.Random(seed).randbytes(size)


def _pad4(size: int) -> int:
    return (size + 3) & ~3


def _header(
    *,
    segment_count: int,
    flash_mode: int,
    flash_size_freq: int,
    entry: int,
    chip_id: int,
    hash_appended: bool,
    min_rev_full: int = 0,
    max_rev_full: int = 99,
) -> bytes:
    common = struct.pack("<BBBBI", IMAGE_MAGIC, segment_count, flash_mode, flash_size_freq, entry)
    extended = struct.pack(
        "<B3sHBHH4sB",
        WP_PIN_DISABLED,
        b"\0\0\0",
        chip_id,
        0,
        min_rev_full,
        max_rev_full,
        b"\0" * 4,
        1 if hash_appended else 0,
    )
    return common + extended


def _assemble(header: bytes, segments: list[tuple[int, bytes]], hash_appended: bool) -> bytes:
    """Header + segments + zero padding + checksum (last byte of a 16-byte block) [+ SHA-256]."""
    out = bytearray(header)
    checksum = CHECKSUM_SEED
    for addr, data in segments:
        out += struct.pack("<II", addr, len(data)) + data
        checksum = functools.reduce(operator.xor, data, checksum)
    out += b"\0" * (15 - len(out) % 16)
    out.append(checksum)
    if hash_appended:
        out += hashlib.sha256(out).digest()
    return bytes(out)


def app_desc(
    *, version: str, project: str, idf_ver: str, date: str, time: str, secure_version: int = 0
) -> bytes:
    """A 256-byte esp_app_desc_t."""
    elf_sha256 = hashlib.sha256(f"{project} {version}".encode()).digest()
    return struct.pack(
        APP_DESC_FORMAT,
        APP_DESC_MAGIC,
        secure_version,
        b"",
        version.encode(),
        project.encode(),
        time.encode(),
        date.encode(),
        idf_ver.encode(),
        elf_sha256,
        0,
        0,
        16,
        b"",
        b"",
    )


def build_app_image(
    chip: str = "esp32s3",
    *,
    version: str = "v2026.1.0",
    project: str = "uc2-slave",
    idf_ver: str = "v5.1.4",
    date: str = "Sep 30 2026",
    time: str = "09:26:22",
    secure_version: int = 0,
    hash_appended: bool = True,
    with_app_desc: bool = True,
    segment_sizes: tuple[int, int, int, int] = (0x200, 0x100, 0x300, 0x500),
    flash_mode: int = DEFAULT_FLASH_MODE,
    flash_size_freq: int = DEFAULT_FLASH_SIZE_FREQ,
    rodata: bytes = b"",
    max_rev_full: int = 99,
) -> bytes:
    """An application image: DROM (app descriptor + rodata), DRAM, IRAM, IROM.

    ``rodata`` goes right after the descriptor (the strings a firmware generation carries, as
    ``uc2otad.sim.profiles.rodata_for`` makes them); the DROM segment grows to hold it.

    ``segment_sizes`` are the DROM, DRAM, IRAM and IROM data lengths, rounded up to 4; DROM must be at
    least 256 when ``with_app_desc``. Without the descriptor the DROM segment holds plain rodata.
    ``max_rev_full`` is the highest chip revision the image runs on (v0.99 by default; ESP-IDF 5 writes
    399, v3.99, for the classic ESP32): esptool 4 refuses to write an image the board's revision exceeds.
    """
    layout = LAYOUTS[chip]
    drom_len, dram_len, iram_len, irom_len = (_pad4(size) for size in segment_sizes)
    if with_app_desc:
        if drom_len < 256:
            raise ValueError(f"DROM segment too small for the app descriptor: {drom_len}")
        desc = app_desc(
            version=version,
            project=project,
            idf_ver=idf_ver,
            date=date,
            time=time,
            secure_version=secure_version,
        )
        drom = desc + rodata + b"\0" * (-len(rodata) % 4) + _filler(drom_len - 256, f"{chip}-drom")
    else:
        drom = _filler(drom_len, f"{chip}-drom")
    dram = _filler(dram_len, f"{chip}-dram")
    iram = _filler(iram_len, f"{chip}-iram")
    irom = _filler(irom_len, f"{chip}-irom")

    # DROM data starts at file offset 0x20 -> load address drom + 0x20, as in real images
    drom_addr = layout.drom + 0x20
    irom_data_offset = 24 + 8 + len(drom) + 8 + len(dram) + 8 + len(iram) + 8
    irom_addr = layout.irom + (irom_data_offset & 0xFFFF)
    segments = [(drom_addr, drom), (layout.dram, dram), (layout.iram, iram), (irom_addr, irom)]
    header = _header(
        segment_count=len(segments),
        flash_mode=flash_mode,
        flash_size_freq=flash_size_freq,
        entry=layout.iram + 0x1C,
        chip_id=layout.chip_id,
        hash_appended=hash_appended,
        max_rev_full=max_rev_full,
    )
    return _assemble(header, segments, hash_appended)


def build_bootloader_image(
    chip: str = "esp32s3", *, idf_ver: str = "v5.1.4", hash_appended: bool = False
) -> bytes:
    """A second-stage bootloader: three RAM segments, the first starting with esp_bootloader_desc_t."""
    layout = LAYOUTS[chip]
    dram_addr, loader_addr, text_addr = layout.boot_segments
    desc = struct.pack(
        BOOTLOADER_DESC_FORMAT, BOOTLOADER_DESC_MAGIC, b"", 1, idf_ver.encode(), b"Sep 30 2026 09:26:22", b""
    )
    segments = [
        (dram_addr, desc + _filler(0x100 - len(desc), f"{chip}-boot-dram")),
        (loader_addr, _filler(0x400, f"{chip}-boot-loader")),
        (text_addr, _filler(0x300, f"{chip}-boot-text")),
    ]
    header = _header(
        segment_count=len(segments),
        flash_mode=DEFAULT_FLASH_MODE,
        flash_size_freq=DEFAULT_FLASH_SIZE_FREQ,
        entry=layout.boot_entry,
        chip_id=layout.chip_id,
        hash_appended=hash_appended,
    )
    return _assemble(header, segments, hash_appended)


def build_partition_table(
    partitions: tuple[tuple[str, int, int, int, int], ...] = DEFAULT_PARTITIONS, *, md5: bool = True
) -> bytes:
    """A 0xC00-byte partition table as gen_esp32part.py writes it: entries, MD5 line, 0xFF fill."""
    table = b"".join(
        struct.pack("<2sBBLL16sL", b"\xaa\x50", ptype, subtype, offset, size, label.encode(), 0)
        for label, ptype, subtype, offset, size in partitions
    )
    if md5:
        table += MD5_MARKER + hashlib.md5(table, usedforsecurity=False).digest()
    return table + b"\xff" * (PARTITION_TABLE_MAX_LEN - len(table))


def build_merged_image(
    chip: str = "esp32s3",
    *,
    app: bytes | None = None,
    bootloader: bytes | None = None,
    partition_table: bytes | None = None,
) -> bytes:
    """What ``esptool merge-bin`` writes: bootloader, partition table at 0x8000, app at 0x10000, 0xFF gaps.

    The bootloader goes where the chip's ROM looks for it: 0x1000 on esp32/esp32s2, 0x0 otherwise.
    """
    parts = [
        (LAYOUTS[chip].bootloader_offset, build_bootloader_image(chip) if bootloader is None else bootloader),
        (PARTITION_TABLE_OFFSET, build_partition_table() if partition_table is None else partition_table),
        (APP_OFFSET, build_app_image(chip) if app is None else app),
    ]
    out = bytearray()
    for offset, blob in parts:
        out += b"\xff" * (offset - len(out))
        out += blob
    return bytes(out)


def flip_byte(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    """``data`` with the byte at ``offset`` XORed with ``mask`` (negative offsets count from the end)."""
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def set_byte(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    out[offset] = value
    return bytes(out)


def truncate(data: bytes, length: int) -> bytes:
    """The first ``length`` bytes (negative: drop that many from the end)."""
    return data[:length]
