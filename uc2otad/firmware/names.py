"""What counts as a firmware file name we are willing to use.

A name comes from a server we do not control and ends up as a path in the cache, in a URL and in log
lines, so it must be a plain file name and nothing more: one path component, printable, not hidden.
The check is deliberately stricter than the file system needs (``a..b.bin`` is refused too), because a
legitimate firmware build never produces such names and a refused name costs nothing.
"""

from __future__ import annotations

import unicodedata

from uc2otad.errors import UnsafeFileNameError

#: longest name a Linux file system accepts, in bytes (NAME_MAX)
MAX_NAME_BYTES = 255

IMAGE_SUFFIX = ".bin"
#: ``esptool merge-bin`` output as the UC2 build names it: bootloader + partitions + app, for USB at 0x0
MERGED_SUFFIX = "_merged.bin"


def check_file_name(name: str) -> str:
    """Return ``name`` unchanged if it is a plain, visible file name.

    :raises UnsafeFileNameError: for an empty or over-long name, a path separator (``/`` or ``\\``),
        ``..``, a leading dot, NUL or any other control or format character.
    """
    reason = _unsafe_reason(name)
    if reason:
        raise UnsafeFileNameError(f"refused file name {name!r}: {reason}", name=name)
    return name


def _unsafe_reason(name: str) -> str:
    if not name:
        return "empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with a dot"
    # Cc: control characters incl. NUL, CR, LF; Cf: format characters such as the right-to-left
    # override, which can make a name look like another in a log line or a terminal.
    if any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in name):
        return "contains a control character"
    return ""


def is_image_name(name: str) -> bool:
    """True for a ``.bin`` name, the only files the catalog considers firmware."""
    return name.lower().endswith(IMAGE_SUFFIX)


def is_merged_name(name: str) -> bool:
    """True for a merged (factory) image name: such an image is for USB flashing at 0x0 only."""
    return name.lower().endswith(MERGED_SUFFIX)
