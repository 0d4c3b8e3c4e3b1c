"""What a simulated board reports after booting an image: its ``esp_app_desc_t`` version and build time.

Written from ``arduino-ota.md`` §5.3 with its own few lines, because the simulators import nothing from
``uc2otad.firmware`` (so that a misreading of the image format cannot hide on both sides of a test).
Main constraint: any bytes at all may arrive here; anything that is not an app image has no version.
"""

from __future__ import annotations

import struct
import zlib
from datetime import datetime, timedelta

#: first byte of an ESP image (``esp_image_header_t.magic``, §5.1)
IMAGE_MAGIC = 0xE9
#: ``esp_app_desc_t`` starts the first segment's data, at file offset 0x20, and is 256 bytes (§5.3)
APP_DESC_OFFSET = 0x20
APP_DESC_LEN = 256
#: ``esp_app_desc_t.magic_word`` (§5.3)
APP_DESC_MAGIC = 0xABCD5432
#: ``version`` is 32 NUL-padded bytes at offset 16 of the descriptor (§5.3)
_VERSION_OFFSET = APP_DESC_OFFSET + 16
_VERSION_LEN = 32
#: ``time`` and ``date`` (``__TIME__``, ``__DATE__``) are 16 bytes each at offsets 80 and 96 (§5.3)
_TIME_OFFSET = APP_DESC_OFFSET + 80
_DATE_OFFSET = APP_DESC_OFFSET + 96
_STAMP_LEN = 16


def app_version(image: bytes) -> str | None:
    """The app descriptor's version string, or None when ``image`` is not an app image with one."""
    return _text(image, _VERSION_OFFSET, _VERSION_LEN) if _has_app_desc(image) else None


def app_build(image: bytes) -> str | None:
    """Compile date and time as the firmware reports its build (``__DATE__ " " __TIME__``), or None."""
    if not _has_app_desc(image):
        return None
    return f"{_text(image, _DATE_OFFSET, _STAMP_LEN)} {_text(image, _TIME_OFFSET, _STAMP_LEN)}"


def _has_app_desc(image: bytes) -> bool:
    if len(image) < APP_DESC_OFFSET + APP_DESC_LEN or image[0] != IMAGE_MAGIC:
        return False
    (magic,) = struct.unpack_from("<I", image, APP_DESC_OFFSET)
    return bool(magic == APP_DESC_MAGIC)


def _text(image: bytes, offset: int, length: int) -> str:
    return image[offset : offset + length].split(b"\0", 1)[0].decode("utf-8", errors="replace")


def module_build(image: bytes) -> str | None:
    """The build a CANopen board reports for ``image``: ``CANopenModule.cpp``'s own compile time.

    FW-main fills 0x2508 with ``__DATE__ " " __TIME__`` of ``CANopenModule.cpp``
    (``CANopenModule.cpp:1250-1251`` @063e5a6), a translation unit compiled apart from the app
    descriptor, so the scan's ``build`` is never the descriptor's date and time. How far apart the two
    are is a matter of the build; the simulator puts the module 1 to 600 s before the descriptor, by a
    hash of the image (an assumption: it only needs to differ from the descriptor and to change with
    the image, as a real rebuild does).
    """
    build = app_build(image)
    if build is None:
        return None
    try:
        stamp = datetime.strptime(build, "%b %d %Y %H:%M:%S")
    except ValueError:
        return build
    stamp -= timedelta(seconds=1 + zlib.crc32(image) % 600)
    return compiler_stamp(stamp)


def compiler_stamp(stamp: datetime) -> str:
    """``stamp`` as ``__DATE__ " " __TIME__`` writes it: the day padded with a space, ``Oct  1 2026``."""
    return f"{stamp:%b} {stamp.day:2d} {stamp:%Y %H:%M:%S}"
