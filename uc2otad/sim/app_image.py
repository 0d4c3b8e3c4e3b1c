"""Valid ESP32-S3 application images for the virtual microscope's firmware folder (the demo's "newer" builds).

Written from ``arduino-ota.md`` §5 with its own few lines, because the simulators import nothing from
``uc2otad.firmware``: header (§5.1), segments with the XOR checksum and the appended SHA-256 (§5.2), and
``esp_app_desc_t`` at file offset 0x20 (§5.3), whose version and build time a slave reports after it
boots the image (:mod:`uc2otad.sim.app_desc`). Main constraint: the bytes must pass the same checks a
real image passes (esptool's and the daemon's), so load addresses are those a real ESP32-S3 build uses.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import random
import struct

#: §5.1: magic, the ESP32-S3's chip id, wp_pin "disabled", DIO flash mode, 4 MB at 80 MHz
IMAGE_MAGIC = 0xE9
CHIP_ID_ESP32S3 = 0x0009
WP_PIN_DISABLED = 0xEE
FLASH_MODE_DIO = 0x02
FLASH_SIZE_FREQ_4MB_80M = 0x2F
#: §5.2: the checksum starts from this value
CHECKSUM_SEED = 0xEF
#: §5.3: ``esp_app_desc_t`` as esptool parses it, and its magic word
APP_DESC_FORMAT = "<II8s32s32s16s16s32s32sHHB3s72s"
APP_DESC_MAGIC = 0xABCD5432
#: ESP32-S3 memory map (esptool targets): DROM and IROM are flash-mapped, DRAM and IRAM are RAM
DROM, DRAM, IRAM, IROM = 0x3C000000, 0x3FC92000, 0x40374000, 0x42000000
#: mmu_page_size field: log2 of the 64 KB MMU page
MMU_PAGE_LOG2 = 16


def build_app_image(
    *,
    version: str,
    project: str = "uc2-slave",
    date: str = "Oct  2 2026",
    time: str = "10:00:00",
    size: int = 64 * 1024,
    seed: str = "",
    rodata: bytes = b"",
) -> bytes:
    """An ESP32-S3 app image of about ``size`` bytes that reports ``version`` and ``date time``.

    :param seed: varies the filler bytes, so that images of different boards differ
    :param rodata: constant data the firmware carries after the descriptor (the strings a generation
        reports, :func:`uc2otad.sim.profiles.rodata_for`)
    :raises ValueError: ``size`` too small to hold the descriptor and four segments
    """
    if size < 1024:
        raise ValueError(f"an app image needs at least 1024 bytes, not size={size}")
    rng = random.Random(f"{project} {version} {seed}")
    desc = struct.pack(
        APP_DESC_FORMAT, APP_DESC_MAGIC, 0, b"", version.encode(), project.encode(), time.encode(),
        date.encode(), b"v5.1.4", hashlib.sha256(f"{project} {version} {seed}".encode()).digest(),
        0, 0, MMU_PAGE_LOG2, b"", b"",
    )  # fmt: skip
    body = size - 256 - 24 - 4 * 8 - 48  # header, descriptor, segment headers, checksum and digest
    irom_len = body // 2 & ~3
    drom = desc + rodata + b"\0" * (-len(rodata) % 4) + rng.randbytes(0x100)
    dram = rng.randbytes(0x100)
    iram = rng.randbytes((body - irom_len - 0x200) & ~3)
    irom = rng.randbytes(irom_len)
    # flash-mapped segments keep their file offset's low 16 bits, as the MMU needs (§5.2)
    irom_offset = 24 + 8 + len(drom) + 8 + len(dram) + 8 + len(iram) + 8
    segments = [(DROM + 0x20, drom), (DRAM, dram), (IRAM, iram), (IROM + (irom_offset & 0xFFFF), irom)]
    header = struct.pack("<BBBBI", IMAGE_MAGIC, len(segments), FLASH_MODE_DIO, FLASH_SIZE_FREQ_4MB_80M,
                         IRAM + 0x1C)  # fmt: skip
    header += struct.pack("<B3sHBHH4sB", WP_PIN_DISABLED, b"", CHIP_ID_ESP32S3, 0, 0, 99, b"", 1)
    image = bytearray(header)
    checksum = CHECKSUM_SEED
    for address, data in segments:
        image += struct.pack("<II", address, len(data)) + data
        checksum = functools.reduce(operator.xor, data, checksum)
    image += b"\0" * (15 - len(image) % 16)
    image.append(checksum)
    image += hashlib.sha256(image).digest()
    return bytes(image)
