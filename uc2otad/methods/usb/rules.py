"""The USB image rules (CONTRACT.md §4), checked before anything touches the board.

The procedure document's defaults brick boards: its default offset 0x0 with its default app-only
master file leaves no bootloader ("invalid header: 0xffffffff" boot loop), erasing before an app image
wipes bootloader and partition table, and an image for another chip never boots. So the image decides:

- a merged image (partition table at 0x8000, bootloader where the chip's ROM looks: 0x1000 on the
  classic ESP32, 0x0 on the S3) goes to 0x0 as it is;
- an app image goes to 0x10000, with flash mode, frequency and size kept (the board's bootloader
  stays, and with it the flash settings it was built for);
- ``flash_offset`` is accepted only when it agrees; ``erase_flash`` only with a merged image;
- the image's chip (and a merged image's app's) must be the board's; the image must fit the flash.

Pure functions on bytes: the caller reads the file and runs this in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from uc2otad.errors import ImageFormatError, ImageRefusedError
from uc2otad.firmware.chips import BOOTLOADER_OFFSET
from uc2otad.firmware.esp_image import ImageInfo, ImageKind, parse_image

#: where an app image goes: the first app partition of every UC2 partition table (uc2-stack.md §6)
APP_OFFSET = 0x10000
#: where a merged image goes: it holds every region at its flash offset
MERGED_OFFSET = 0x0
#: esptool options that leave the image header's flash settings as they are (uc2-stack.md §6)
KEEP_FLASH_SETTINGS = ("--flash-mode", "keep", "--flash-freq", "keep", "--flash-size", "keep")


@dataclass(frozen=True)
class FlashPlan:
    """What will be written, where, and what the board should report after booting it."""

    kind: ImageKind
    offset: int
    erase: bool
    chip: str
    size: int
    #: the app descriptor's version of the app the board will run; None when it has none
    version: str | None
    #: the app's compile time as the firmware reports it (``"Nov 27 2026 12:00:00"``)
    build: str | None
    #: ``write-flash`` options before the offset
    write_options: tuple[str, ...]


def plan_flash(
    data: bytes,
    *,
    name: str,
    board_chip: str | None,
    flash_size: int | None,
    flash_offset: int | None = None,
    erase_flash: bool = False,
) -> FlashPlan:
    """Check ``data`` against the rules and say how to write it.

    :param board_chip: the chip detected on the port, as esptool names it; None checks only what the
        image alone decides (offset, erase), so that a wrong request is refused before the board is probed
    :param flash_size: the board's flash in bytes, when known
    :param flash_offset: the offset the caller asked for; None: the image's own
    :raises ImageRefusedError: any rule broken; the message names the rule and the facts
    """
    try:
        info = parse_image(data, name=name)
    except ImageFormatError as err:
        raise ImageRefusedError(f"{name} is not a valid ESP image: {err}") from err
    if info.kind is ImageKind.BOOTLOADER:
        raise ImageRefusedError(f"{name} is a bootloader image alone; flash a merged or an app image")
    merged = info.kind is ImageKind.MERGED
    offset = MERGED_OFFSET if merged else APP_OFFSET
    if flash_offset is not None and flash_offset != offset:
        raise ImageRefusedError(
            f"{name} is a {info.kind} image: it goes to offset=0x{offset:x}, "
            f"not flash_offset=0x{flash_offset:x}"
            + ("" if merged else "; written at 0x0 it would replace the bootloader and the board boot-loops")
        )
    if erase_flash and not merged:
        raise ImageRefusedError(
            f"{name} is an app image: erase_flash needs a merged image, since erasing removes the "
            "bootloader and partition table that an app image does not bring"
        )
    if board_chip is not None:
        _check_chip(info, name, board_chip)
        if merged:
            _check_bootloader_offset(info, name, board_chip)
    if flash_size is not None and offset + len(data) > flash_size:
        raise ImageRefusedError(
            f"{name} does not fit the flash: offset=0x{offset:x} size={len(data)} flash_size={flash_size}"
        )
    app = info.app if merged else info
    return FlashPlan(
        kind=info.kind,
        offset=offset,
        erase=erase_flash,
        chip=board_chip or info.chip,
        size=len(data),
        version=app.app_desc.version or None if app is not None and app.app_desc is not None else None,
        build=image_build(app) if app is not None else None,
        write_options=() if merged else KEEP_FLASH_SETTINGS,
    )


def _check_chip(info: ImageInfo, name: str, board_chip: str) -> None:
    chips = {info.chip} | ({info.app.chip} if info.app is not None else set())
    wrong = sorted(chip for chip in chips if chip != board_chip)
    if wrong:
        raise ImageRefusedError(f"{name} is for {', '.join(wrong)}, the board is {board_chip}")


def _check_bootloader_offset(info: ImageInfo, name: str, board_chip: str) -> None:
    expected = BOOTLOADER_OFFSET.get(board_chip)
    if expected is not None and info.bootloader_offset != expected:
        raise ImageRefusedError(
            f"{name}: merged image has its bootloader at offset=0x{info.bootloader_offset or 0:x}, "
            f"but {board_chip} boots from 0x{expected:x} (the board would print "
            "'invalid header: 0xffffffff' and boot-loop)"
        )


def image_build(info: ImageInfo) -> str | None:
    """The image's compile time as ``__DATE__ " " __TIME__`` writes it: ``"Sep 30 2026 09:26:22"``."""
    desc = info.app_desc
    return f"{desc.date} {desc.time}" if desc is not None and desc.date else None
