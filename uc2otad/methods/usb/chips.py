"""Which ESP chip sits behind a USB serial adapter.

The VID:PID table is the one ImSwitch uses to guess the master's chip (``uc2-stack.md`` §6,
``_detect_chip_from_port``); an adapter that is not in it is asked through esptool's own detection
instead of being guessed (the spec's "unknown → esp32s3" would flash a classic ESP32 HAT as an S3).
Where each chip's ROM looks for its bootloader is in the one chip table, ``uc2otad/firmware/chips.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: USB (VID, PID) → chip as esptool's ``--chip`` spells it (uc2-stack.md §6)
CHIP_BY_USB_ID: Mapping[tuple[int, int], str] = MappingProxyType(
    {
        (0x10C4, 0xEA60): "esp32",  # Silicon Labs CP2102: the UC2 CAN HAT
        (0x303A, 0x1001): "esp32s3",  # Espressif native USB-Serial/JTAG (Seeed XIAO ESP32-S3)
        (0x1A86, 0x55D4): "esp32s3",  # WCH CH9102
        (0x303A, 0x0002): "esp32s2",  # Espressif ESP32-S2 native USB
    }
)


def chip_for_usb_id(vid: int | None, pid: int | None) -> str | None:
    """The chip the table gives for this adapter; None when the adapter is unknown (or not USB)."""
    if vid is None or pid is None:
        return None
    return CHIP_BY_USB_ID.get((vid, pid))
