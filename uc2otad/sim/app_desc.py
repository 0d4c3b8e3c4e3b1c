"""The version a simulated board reports after booting an image: its ``esp_app_desc_t.version``.

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


def app_version(image: bytes) -> str | None:
    """The app descriptor's version string, or None when ``image`` is not an app image with one."""
    if len(image) < APP_DESC_OFFSET + APP_DESC_LEN or image[0] != IMAGE_MAGIC:
        return None
    (magic,) = struct.unpack_from("<I", image, APP_DESC_OFFSET)
    if magic != APP_DESC_MAGIC:
        return None
    raw = image[_VERSION_OFFSET : _VERSION_OFFSET + _VERSION_LEN]
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
