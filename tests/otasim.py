"""Shared pieces of the ArduinoOTA tests: loopback addresses, a board config for tests, test images.

The board lives on its own loopback address (as ``uc2otad-sim`` gives each node one), the host on
127.0.0.1, so that "the board connects back from its own address to the invitation's source" is a real
difference on the wire. Boards bind a free UDP port; timeouts are shrunk so that every fault shows in
well under a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import espimage

from uc2otad.sim.ota_board import OtaBoard, OtaBoardConfig

BOARD_IP = "127.0.0.111"
HOST_IP = "127.0.0.1"

#: a board that reboots at once and gives up on an idle host after 0.2 s instead of 1 s
_TEST_BOARD = OtaBoardConfig(ip=BOARD_IP, port=0, reboot_time=0.0, idle_timeout=0.2)

OLD_VERSION = "v2026.1.0"
NEW_VERSION = "v2026.3.0"


def board_config(**changes: Any) -> OtaBoardConfig:
    """The test board with ``changes`` applied; it runs an image of OLD_VERSION."""
    return replace(_TEST_BOARD, firmware=app_image(OLD_VERSION), **changes)


def app_image(version: str = NEW_VERSION) -> bytes:
    """A valid ESP32-S3 app of about 100 KB: more than one 64 KB erase block and a partial last one."""
    return espimage.build_app_image(
        "esp32s3", version=version, segment_sizes=(0x4000, 0x1000, 0x4000, 0x10000)
    )


async def wait_for(board: OtaBoard, predicate: Callable[[OtaBoard], bool], seconds: float = 2.0) -> None:
    """``board.wait_until(predicate)``, failing the test instead of hanging when it never holds."""
    async with asyncio.timeout(seconds):
        await board.wait_until(predicate)
