"""Issue 20, the rollback's seams in the USB flash: a flash of an image the caller gives (not fetched),
recorded as a rollback in the history, and the success listener told of the image and its version.

In process, with the pieces the daemon uses: :class:`UsbFlasher`, the engine's
:class:`UsbFlashHistory` on a real status store, the real esptool against the simulated ROM loader. The
firmware server is one that answers nothing: a flash that asked it would fail "Firmware not found".
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_store import store
from test_usb_flash_cache_clear import APP_OFFSET, FLASH_TIMEOUT, IMAGE, NAME, loader

from uc2otad.engine.store import StatusStore
from uc2otad.engine.usb_history import UsbFlashHistory
from uc2otad.firmware.cache import CachedImage, FirmwareCache
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.server import FirmwareServer
from uc2otad.firmware.signing import SignedManifest
from uc2otad.methods.usb.flash import FlashOptions, UsbFlasher, UsbFlashSettings
from uc2otad.methods.usb.status import UsbFlashStatus, UsbStep
from uc2otad.sim.rom_loader import RomLoader

if importlib.util.find_spec("esptool") is None:
    pytest.skip("esptool is not installed (pip install -e .[test])", allow_module_level=True)

__all__ = ["loader", "store"]  # fixtures, used by name

#: nothing listens there: asking the server for the image would fail the flash
NO_SERVER = "http://127.0.0.1:9/firmware"


@pytest.fixture
def given() -> CachedImage:
    """An image held by the caller (a rollback's known-good copy), not on any server."""
    return CachedImage(
        name=NAME, path=Path("/nonexistent") / NAME, size=len(IMAGE),
        sha256=hashlib.sha256(IMAGE).hexdigest(), downloaded_bytes=0, verified_by="known_good", data=IMAGE,
    )  # fmt: skip


@pytest.fixture
async def flashed(
    loader: RomLoader, store: StatusStore, given: CachedImage, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, Any], list[tuple[CachedImage, str | None]], dict[str, Any]]]:
    """One flash of ``given`` as a rollback: (final status, what on_success heard, FlashMaster's reply)."""
    table = await asyncio.to_thread(ImageTable.standard)  # it reads images.toml
    repository = FirmwareRepository(FirmwareServer(NO_SERVER), FirmwareCache(tmp_path / "cache"), table)
    heard: list[tuple[CachedImage, str | None]] = []
    ended = asyncio.Event()

    async def on_success(image: CachedImage, version: str | None, signed: SignedManifest | None) -> None:
        assert signed is None  # an image the caller gave comes with no signed manifest of its own
        heard.append((image, version))
        raise RuntimeError("a listener's failure is logged, not the flash's")

    flasher = UsbFlasher(
        settings=UsbFlashSettings(reboot_wait=0.0),
        master=None,
        hat_port="",
        repository=lambda: repository,
        status=UsbFlashStatus(lambda status: None, keep=store.put_usb_status),
        slave_jobs_running=lambda: False,
        inhibited=lambda: False,
        on_running=lambda running: None if running else ended.set(),
        history=UsbFlashHistory(store, timeout=5.0, previous_version=lambda: "v2026.1.0"),
        on_success=on_success,
    )
    reply = flasher.start(
        FlashOptions(port=loader.url, reconnect_after=False), image=given, rollback="requested"
    )
    async with asyncio.timeout(FLASH_TIMEOUT):
        await ended.wait()
    yield flasher.status.current, heard, reply


async def test_a_given_image_is_flashed_without_asking_the_server_and_recorded_as_a_rollback(
    flashed: tuple[dict[str, Any], list[tuple[CachedImage, str | None]], dict[str, Any]],
    loader: RomLoader, store: StatusStore, given: CachedImage,
) -> None:  # fmt: skip
    final, heard, reply = flashed

    assert (final["status"], final["message"]) == ("success", UsbStep.FLASHED.value[2]), final
    assert (final["firmware"], final["job_id"]) == (NAME, reply["job_id"])
    assert loader.flash.read(APP_OFFSET, len(IMAGE)) == IMAGE
    assert heard == [(given, "v2099.9.0")]  # told once, the listener's error not the flash's
    assert store.usb_status() == final  # every change kept
    (row,) = await store.history(1)
    assert (row.job_id, row.method, row.state, row.rollback) == (
        reply["job_id"],
        "usb",
        "success",
        "requested",
    )
    assert (row.firmware, row.sha256, row.firmware_version, row.previous_version) == (
        NAME, given.sha256, "v2099.9.0", "v2026.1.0",
    )  # fmt: skip
