"""Which ESP chip sits behind a USB serial adapter, and where each chip's ROM looks for its bootloader.

The VID:PID table is the one ImSwitch uses to guess the master's chip (``uc2-stack.md`` §6,
``_detect_chip_from_port``); an adapter that is not in it is asked through esptool's own detection
instead of being guessed (the spec's "unknown → esp32s3" would flash a classic ESP32 HAT as an S3).
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

#: where the ROM loads the second-stage bootloader from, per chip (esptool ``targets/*.py``
#: ``BOOTLOADER_FLASH_OFFSET``): a merged image must hold it there, since it is written at 0x0
BOOTLOADER_OFFSET: Mapping[str, int] = MappingProxyType(
    {
        "esp32": 0x1000,
        "esp32s2": 0x1000,
        "esp32s3": 0x0,
        "esp32c3": 0x0,
        "esp32c2": 0x0,
        "esp32c6": 0x0,
        "esp32h2": 0x0,
        "esp32c61": 0x0,
        "esp32p4": 0x2000,
        "esp32c5": 0x2000,
    }
)


def chip_for_usb_id(vid: int | None, pid: int | None) -> str | None:
    """The chip the table gives for this adapter; None when the adapter is unknown (or not USB)."""
    if vid is None or pid is None:
        return None
    return CHIP_BY_USB_ID.get((vid, pid))
