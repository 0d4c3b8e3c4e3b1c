"""The ESP chips uc2otad knows: one table of what tells them apart in an image and on flash.

Each row comes from esptool's ``targets/*.py`` (``IMAGE_CHIP_ID``, ``BOOTLOADER_FLASH_OFFSET``, the
``IROM_MAP_*``/``DROM_MAP_*`` ranges, ``FLASH_FREQUENCY``); ``tests/test_image.py`` checks the table against
the installed esptool. The image parser (``esp_image.py``) reads it to name a header's chip and to find a
merged image's bootloader; the USB rules (``methods/usb/rules.py``) read it to refuse a merged image whose
bootloader is not where the board's ROM looks.

Main constraint: pure data and one pure function; no I/O, nothing imported beyond the standard library
and the error tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from uc2otad.errors import ConfigError

# spi_speed nibble -> esptool's name for it; the names differ per chip (esptool targets ``FLASH_FREQUENCY``)
_FREQ_CLASSIC: Mapping[int, str] = MappingProxyType({0xF: "80m", 0x0: "40m", 0x1: "26m", 0x2: "20m"})
_FREQ_C2: Mapping[int, str] = MappingProxyType({0xF: "60m", 0x0: "30m", 0x1: "20m", 0x2: "15m"})
# esptool's ESP32-C6 table maps both "80m" and "40m" to 0; it prints the first, "80m"
_FREQ_C6: Mapping[int, str] = MappingProxyType({0x0: "80m", 0x2: "20m"})
_FREQ_C5: Mapping[int, str] = MappingProxyType({0xF: "80m", 0x0: "40m", 0x2: "20m"})
_FREQ_H2: Mapping[int, str] = MappingProxyType({0xF: "48m", 0x0: "24m", 0x1: "16m", 0x2: "12m"})
_FREQ_H4: Mapping[int, str] = MappingProxyType({0xF: "48m", 0x0: "24m"})


@dataclass(frozen=True)
class ChipSpec:
    """What the image parser and the USB rules know about one chip; numbers from esptool ``targets/*.py``."""

    name: str
    chip_id: int
    #: where the ROM loads the second-stage bootloader from (``BOOTLOADER_FLASH_OFFSET``)
    bootloader_offset: int
    #: flash-mapped (cache) address ranges, ``[start, end)``: ``IROM_MAP_*`` and ``DROM_MAP_*``
    flash_ranges: tuple[tuple[int, int], ...]
    flash_freqs: Mapping[int, str]

    def is_flash_addr(self, addr: int) -> bool:
        return any(start <= addr < end for start, end in self.flash_ranges)


# Chip IDs from the IDF-fmt ``esp_chip_id_t`` enum and esptool ``IMAGE_CHIP_ID`` (arduino-ota.md §5.1).
CHIP_SPECS: tuple[ChipSpec, ...] = (
    ChipSpec("esp32", 0x00, 0x1000, ((0x400D0000, 0x40400000), (0x3F400000, 0x3F800000)), _FREQ_CLASSIC),
    ChipSpec("esp32s2", 0x02, 0x1000, ((0x40080000, 0x40B80000), (0x3F000000, 0x3F3F0000)), _FREQ_CLASSIC),
    ChipSpec("esp32c3", 0x05, 0x0, ((0x42000000, 0x42800000), (0x3C000000, 0x3C800000)), _FREQ_CLASSIC),
    ChipSpec("esp32s3", 0x09, 0x0, ((0x42000000, 0x44000000), (0x3C000000, 0x3E000000)), _FREQ_CLASSIC),
    ChipSpec("esp32c2", 0x0C, 0x0, ((0x42000000, 0x42400000), (0x3C000000, 0x3C400000)), _FREQ_C2),
    ChipSpec("esp32c6", 0x0D, 0x0, ((0x42000000, 0x42800000), (0x42800000, 0x43000000)), _FREQ_C6),
    ChipSpec("esp32h2", 0x10, 0x0, ((0x42000000, 0x42800000), (0x42800000, 0x43000000)), _FREQ_H2),
    ChipSpec("esp32p4", 0x12, 0x2000, ((0x40000000, 0x4C000000),), _FREQ_CLASSIC),
    ChipSpec("esp32c61", 0x14, 0x0, ((0x42000000, 0x42800000), (0x42800000, 0x43000000)), _FREQ_C5),
    ChipSpec("esp32c5", 0x17, 0x2000, ((0x42000000, 0x44000000),), _FREQ_C5),
    ChipSpec("esp32h21", 0x19, 0x0, ((0x42000000, 0x43000000),), _FREQ_H4),
    ChipSpec("esp32h4", 0x1C, 0x2000, ((0x42000000, 0x44000000),), _FREQ_H4),
    ChipSpec("esp32e22", 0x1F, 0x0, ((0x3C000000, 0x40000000),), _FREQ_CLASSIC),
    ChipSpec("esp32s31", 0x20, 0x2000, ((0x40000000, 0x54000000),), _FREQ_C5),
)
SPECS_BY_ID: Mapping[int, ChipSpec] = MappingProxyType({spec.chip_id: spec for spec in CHIP_SPECS})
SPECS_BY_NAME: Mapping[str, ChipSpec] = MappingProxyType({spec.name: spec for spec in CHIP_SPECS})

#: image header ``chip_id`` -> chip name as esptool's ``--chip`` spells it (arduino-ota.md §5.1)
CHIPS: Mapping[int, str] = MappingProxyType({spec.chip_id: spec.name for spec in CHIP_SPECS})

#: chip name -> where its ROM loads the second-stage bootloader from: a merged image, written at 0x0,
#: must hold it there (0x1000 on the classic ESP32 of the CAN HAT, 0x0 on the S3: uc2-stack.md §6)
BOOTLOADER_OFFSET: Mapping[str, int] = MappingProxyType(
    {spec.name: spec.bootloader_offset for spec in CHIP_SPECS}
)

#: every offset a merged image may hold its bootloader at, lowest first
BOOTLOADER_OFFSETS = tuple(sorted({spec.bootloader_offset for spec in CHIP_SPECS}))


def normalize_chip_name(chip: str) -> str:
    """Turn ``"ESP32-S3"``, ``"esp32s3"`` or ``"ESP32(S3)"`` into ``"esp32s3"``, as esptool does.

    :raises ConfigError: not a chip this table knows
    """
    normalized = chip.lower().replace("-", "").replace("(", "").replace(")", "").replace("_", "")
    if normalized not in SPECS_BY_NAME:
        raise ConfigError("chip", f"unknown chip name={chip!r}, known: {', '.join(CHIPS.values())}")
    return normalized
