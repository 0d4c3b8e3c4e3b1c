"""Proof that a board runs its new image, strongest first (CONTRACT.md §2).

A transfer that the board acknowledged is not yet an update: the board must reboot and come back
running the image. So after a transfer the bus is scanned until the board reports the image's
app-descriptor version ("version"), or, on firmware that reports no release string, the image's
compile date and time ("build"). A board that reports neither but answers again was confirmed by the
transfer protocol itself (CRC or MD5 and boot partition: "transfer"). A board that comes back with its
old image, or not at all, fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from uc2otad.errors import BoardNotBackError, VerificationError
from uc2otad.firmware.image import ImageInfo
from uc2otad.links.commands import ScanResult

_LOGGER = logging.getLogger(__name__)

#: seconds before the first scan: a slave reboots ~2 s after committing (uc2-stack.md §3.1); ImSwitch
#: waits 4 s (uc2-stack.md §4.3)
SETTLE = 4.0
#: seconds the board has to come back in all; ImSwitch polls up to 40 s (§4.3)
WINDOW = 40.0
#: seconds between scans
INTERVAL = 2.0


@dataclass(frozen=True)
class VerifySettings:
    settle: float = SETTLE
    window: float = WINDOW
    interval: float = INTERVAL


def image_build(info: ImageInfo) -> str | None:
    """The image's compile time as the firmware reports its build: ``"Sep 30 2026 09:26:22"``."""
    desc = info.app_desc
    return f"{desc.date} {desc.time}" if desc is not None and desc.date else None


#: one scan of the bus; the WiFi method borrows the link for each, so that boards of a batch that
#: verify at the same time do not hold the link for each other's whole window
Scan = Callable[[], Awaitable[ScanResult]]


async def await_new_image(scan: Scan, can_id: int, info: ImageInfo, settings: VerifySettings) -> str:
    """Scan until board ``can_id`` runs ``info``; the evidence found ("version", "build" or "transfer").

    :raises BoardNotBackError: the board did not answer within the window
    :raises VerificationError: it answered, running another image
    """
    version = info.app_desc.version if info.app_desc is not None else None
    build = image_build(info)
    await asyncio.sleep(settings.settle)
    deadline = time.monotonic() + settings.window
    seen_running: str | None = None
    while True:
        node = (await scan()).node(can_id)
        if node is not None and node.reachable:
            if version and node.fw_version == version:
                return "version"
            if build and node.build == build:
                return "build"
            if node.fw_version is None and node.build is None:
                return "transfer"
            seen_running = node.fw_version or node.build
        if time.monotonic() + settings.interval > deadline:
            break
        await asyncio.sleep(settings.interval)
    if seen_running is not None:
        raise VerificationError(f"board {can_id} came back running {seen_running}, not {version or build}")
    raise BoardNotBackError(f"board {can_id} did not answer within {settings.window:g} s of its reboot")
