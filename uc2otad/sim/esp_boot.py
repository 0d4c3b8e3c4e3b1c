"""What a simulated ESP32 board boots from its flash after a reset.

Written from ``shared/specs/arduino-ota.md`` §5.1-5.3 (image header, segments, checksum, digest;
the app descriptor through :mod:`uc2otad.sim.app_desc`) and ``uc2-stack.md`` §6 (the second-stage
bootloader at 0x1000 on the classic ESP32 and at 0x0 on the S3, the app at 0x10000, and the
"invalid header: 0xffffffff" boot loop of a board whose bootloader is missing). No code runs: a boot
checks what the ROM and the bootloader would check, and keeps the app found, so that the virtual
board can report its version and build.
The app is the one at 0x10000; no partition table or otadata is read, which holds for the master:
it is never updated over CAN (uc2-stack.md §1), so its otadata never points at another partition.

Main constraint: flash contents are arbitrary bytes; every length read from them is bounded by the
flash, and anything unbootable yields a reason, never an exception.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import struct
from dataclasses import dataclass

from uc2otad.sim.app_desc import IMAGE_MAGIC, app_build, app_version
from uc2otad.sim.spi_flash import SpiFlash

#: the first app partition of every UC2 partition table (uc2-stack.md §6, CONTRACT.md §4)
APP_OFFSET = 0x10000
#: ``esp_image_header_t`` is 24 bytes; segment headers ``<II>`` (load address, length) follow it
_IMAGE_HEADER_LEN = 24
_CHIP_ID_OFFSET = 12
_HASH_APPENDED_OFFSET = 23
_SEGMENT_HEADER = struct.Struct("<II")
#: the header's two parts (§5.1): magic, segment count, SPI mode, speed/size, entry; then wp_pin,
#: pin drive, chip_id, min_chip_rev, min/max_chip_rev_full, reserved, hash_appended
_IMAGE_COMMON = struct.Struct("<BBBBI")
_IMAGE_EXTENDED = struct.Struct("<B3sHBHH4sB")
_FLASH_MODE_DIO = 0x02
_FLASH_4MB_80M = 0x2F
_WP_PIN_DISABLED = 0xEE
_ANY_REVISION = 0xFFFF
#: ``ESP_IMAGE_MAX_SEGMENTS``
MAX_SEGMENTS = 16
_CHECKSUM_SEED = 0xEF
_DIGEST_LEN = 32


@dataclass(frozen=True)
class BootResult:
    """The outcome of one boot from flash."""

    #: the bootloader started the app
    ok: bool
    #: what the board prints instead, when it does not start an app
    reason: str = ""
    #: the app image as stored, header to checksum (and digest)
    app: bytes = b""
    #: the flash was written or erased since the board last booted; when False the board restarts
    #: the firmware it ran before — for a board whose firmware never came through the simulated
    #: flash, that is the firmware it was configured with, whatever the check of the flash says
    changed: bool = False

    @property
    def version(self) -> str | None:
        """The app descriptor's version: what the booted board reports (None: no app, no descriptor)."""
        return app_version(self.app)

    @property
    def build(self) -> str | None:
        """The app's compile date and time, as the firmware reports its build."""
        return app_build(self.app)


def boot_from(flash: SpiFlash, *, bootloader_offset: int, chip_id: int) -> BootResult:
    """What the board does after a reset into flash boot.

    :param bootloader_offset: where the chip's ROM looks for the second-stage bootloader
    :param chip_id: the chip's ``esp_image_header_t.chip_id``; the bootloader refuses other apps
    """
    head = flash.read(bootloader_offset, 4)
    if head[0] != IMAGE_MAGIC:
        # the ROM prints the word it found, then resets, again and again
        return BootResult(ok=False, reason=f"invalid header: 0x{int.from_bytes(head, 'little'):08x}")
    _, problem = _image_length(flash, bootloader_offset)
    if problem:
        return BootResult(ok=False, reason=f"bootloader: {problem}")
    length, problem = _image_length(flash, APP_OFFSET)
    if problem:
        return BootResult(ok=False, reason=problem)
    app = flash.read(APP_OFFSET, length)
    (found_chip,) = struct.unpack_from("<H", app, _CHIP_ID_OFFSET)
    if found_chip != chip_id:
        return BootResult(ok=False, reason=f"mismatch chip ID, expected {chip_id}, found {found_chip}")
    return BootResult(ok=True, app=app)


def stand_in_bootloader(chip_id: int) -> bytes:
    """A well-formed second-stage bootloader image that holds no code: one 4-byte segment.

    What a factory-fresh board has at its bootloader offset, as far as :func:`boot_from` looks, so
    that an app written alone to 0x10000 boots as it does on a real board.
    """
    segment = bytes(4)
    header = _IMAGE_COMMON.pack(IMAGE_MAGIC, 1, _FLASH_MODE_DIO, _FLASH_4MB_80M, 0)
    header += _IMAGE_EXTENDED.pack(_WP_PIN_DISABLED, b"", chip_id, 0, 0, _ANY_REVISION, b"", 0)
    image = header + _SEGMENT_HEADER.pack(0, len(segment)) + segment
    image += bytes(15 - len(image) % 16)
    return image + bytes([_xor(segment, _CHECKSUM_SEED)])


def _image_length(flash: SpiFlash, offset: int) -> tuple[int, str]:
    """The length of the image at ``offset``, or a reason why the bootloader would not load it."""
    where = f"image at 0x{offset:x}"
    header = flash.read(offset, _IMAGE_HEADER_LEN)
    if header[0] != IMAGE_MAGIC:
        return 0, f"{where} has invalid magic byte (nothing flashed here?)"
    segments = header[1]
    if not 1 <= segments <= MAX_SEGMENTS:
        return 0, f"{where} has {segments} segments"
    position, checksum = offset + _IMAGE_HEADER_LEN, _CHECKSUM_SEED
    for _ in range(segments):
        if not flash.holds(position, _SEGMENT_HEADER.size):
            return 0, f"{where} runs past the end of flash"
        _, size = _SEGMENT_HEADER.unpack(flash.read(position, _SEGMENT_HEADER.size))
        position += _SEGMENT_HEADER.size
        if not flash.holds(position, size + 16):
            return 0, f"{where} runs past the end of flash"
        checksum = _xor(flash.read(position, size), checksum)
        position += size
    position += 15 - (position - offset) % 16  # the checksum is the last byte of a 16-byte block
    if flash.read(position, 1)[0] != checksum:
        return 0, f"{where} has a bad checksum"
    end = position + 1
    if header[_HASH_APPENDED_OFFSET] == 1:
        if not flash.holds(end, _DIGEST_LEN):
            return 0, f"{where} runs past the end of flash"
        if hashlib.sha256(flash.read(offset, end - offset)).digest() != flash.read(end, _DIGEST_LEN):
            return 0, f"{where} has a bad SHA-256 digest"
        end += _DIGEST_LEN
    return end - offset, ""


def _xor(data: bytes, seed: int) -> int:
    """The image checksum: ``seed`` XOR every byte (§5.2)."""
    return functools.reduce(operator.xor, data, seed)
