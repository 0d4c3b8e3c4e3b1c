"""What a simulated board reports after booting an image: its ``esp_app_desc_t`` version and build time.

Written from ``arduino-ota.md`` §5.3 with its own few lines, because the simulators import nothing from
``uc2otad.firmware`` (so that a misreading of the image format cannot hide on both sides of a test).
Main constraint: any bytes at all may arrive here; anything that is not an app image has no version.
"""

from __future__ import annotations

import struct

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
