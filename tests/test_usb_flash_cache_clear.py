"""A ClearFirmwareCache during a USB flash of the master takes nothing from it: issue 15, D4 (USB flash).

D4's twin: the USB flash kept only the cache's path. It read the image back from that path after the
fetch, and handed esptool that path to write, so a ClearFirmwareCache (or any eviction) between the fetch
and esptool's open deleted the image under the flash: "internal error: FileNotFoundError" when the clear
came before the read, an esptool failure reported as "Write failed … check the USB cable" when it came
before the write. The flash holds the bytes the cache verified; esptool writes a private copy of them.

In process, with the pieces the daemon uses: :class:`UsbFlasher`, the firmware repository against a real
HTTP server on 127.0.0.1, the real esptool (a subprocess) against the simulated ROM loader. The clear is
made at an exact step by the test's own cache or esptool subclass, never after a sleep.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from espimage import build_app_image
from faultserver import FaultServer, Reply

from uc2otad.firmware.cache import CachedImage, FirmwareCache
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.listing import FirmwareFile
from uc2otad.firmware.manifest import ManifestFile
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.server import FirmwareServer
from uc2otad.firmware.source import FirmwareSource
from uc2otad.methods.usb import flash as usb_flash
from uc2otad.methods.usb.esptool import BoardProbe, Esptool
from uc2otad.methods.usb.flash import FlashOptions, UsbFlasher, UsbFlashSettings
from uc2otad.methods.usb.status import UsbFlashStatus, UsbStep
from uc2otad.sim.rom_loader import RomLoader, RomLoaderConfig

if importlib.util.find_spec("esptool") is None:
    pytest.skip("esptool is not installed (pip install -e .[test])", allow_module_level=True)

NAME = "esp32_UC2_canopen_master_release.bin"
#: a few esptool blocks of random segments: big enough to be a real write, small enough to be quick
IMAGE = build_app_image(
    "esp32", version="v2099.9.0", project="uc2-master", segment_sizes=(0x400, 0x100, 0x4000, 0x4000)
)
APP_OFFSET = 0x10000
#: seconds for the whole flash: two esptool runs of ~0.5 s each, and the download
FLASH_TIMEOUT = 60.0


class _ClearedAfterFetch(FirmwareCache):
    """A cache that is cleared (as ClearFirmwareCache does) the moment a fetch has handed out its image."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.cleared: list[int] = []

    async def fetch(
        self,
        server: FirmwareSource,
        file: FirmwareFile,
        promise: ManifestFile | None,
        *,
        signed: bool = False,
    ) -> CachedImage:
        image = await super().fetch(server, file, promise, signed=signed)
        self.cleared.append(await self.clear())  # refused (CacheBusyError) if the flash held the cache
        return image


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder the flash's private copy goes to (the unit's PrivateTmp), watched by the test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
async def loader() -> AsyncIterator[RomLoader]:
    """The CAN HAT's serial bootloader (classic ESP32) on socket://, flashed by the real esptool."""
    async with RomLoader(RomLoaderConfig(chip="esp32")) as board:
        yield board


def _repository(fault_server: FaultServer, cache: FirmwareCache) -> FirmwareRepository:
    """A server publishing the master image (no manifest: the listing's size is the promise)."""
    entry = {"name": NAME, "size": len(IMAGE), "url": f"./{NAME}", "mode": 420,
             "mod_time": "2026-11-01T10:00:00Z", "is_dir": False, "is_symlink": False}  # fmt: skip
    fault_server.script("/firmware/", Reply(200, json.dumps([entry]).encode()))
    fault_server.script(f"/firmware/{NAME}", Reply(200, IMAGE))
    return FirmwareRepository(FirmwareServer(fault_server.url + "/firmware"), cache, ImageTable.standard())


async def _flash(repository: FirmwareRepository, port: str) -> dict[str, Any]:
    """One FlashMaster to ``port`` without a HAT link (nothing to reconnect); its final status."""
    published: list[dict[str, Any]] = []
    ended = asyncio.Event()
    flasher = UsbFlasher(
        settings=UsbFlashSettings(reboot_wait=0.0),
        master=None,
        hat_port="",
        repository=lambda: repository,
        status=UsbFlashStatus(published.append),
        slave_jobs_running=lambda: False,
        inhibited=lambda: False,
        on_running=lambda running: None if running else ended.set(),
    )
    flasher.start(FlashOptions(port=port, firmware=NAME, reconnect_after=False))
    async with asyncio.timeout(FLASH_TIMEOUT):
        await ended.wait()
    return flasher.status.current


async def test_a_clear_right_after_the_fetch_leaves_the_flash_its_verified_image(
    fault_server: FaultServer, loader: RomLoader, private_tmp: Path, tmp_path: Path
) -> None:
    """Issue 15, D4 (USB flash): the cache cleared between the fetch and the read. Before, the flash
    read the image back from the cache's path: FileNotFoundError, "internal error", nothing written.
    Now it flashes the bytes the fetch verified, and the private copy esptool read is gone after."""
    cache = _ClearedAfterFetch(tmp_path / "cache")
    repository = await asyncio.to_thread(_repository, fault_server, cache)

    final = await _flash(repository, loader.url)

    assert cache.cleared == [1]  # the clear went through: the flash holds bytes, not the cache
    assert not await asyncio.to_thread((tmp_path / "cache" / NAME).exists)
    assert (final["status"], final["message"]) == ("success", UsbStep.FLASHED.value[2]), final
    assert loader.flash.read(APP_OFFSET, len(IMAGE)) == IMAGE
    assert await asyncio.to_thread(lambda: list(private_tmp.iterdir())) == []


async def test_a_clear_while_esptool_probes_leaves_the_write_its_image(
    fault_server: FaultServer,
    loader: RomLoader,
    private_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 15, D4 (USB flash): the cache cleared after the image was read and checked, before esptool
    writes it. Before, esptool was given the cache's path and failed to open it ("Write failed … check
    the USB cable"). Now esptool writes a private copy of the verified bytes, outside the cache."""
    cache = FirmwareCache(tmp_path / "cache")
    repository = await asyncio.to_thread(_repository, fault_server, cache)
    cleared: list[int] = []

    class ClearedAfterProbe(Esptool):
        async def probe(self, chip: str | None = None) -> BoardProbe:
            board = await super().probe(chip)
            cleared.append(await cache.clear())  # ClearFirmwareCache between the probe and the write
            return board

    monkeypatch.setattr(usb_flash, "Esptool", ClearedAfterProbe)
    caplog.set_level(logging.INFO, logger="uc2otad.methods.usb.esptool")

    final = await _flash(repository, loader.url)

    assert cleared == [1]
    assert (final["status"], final["message"]) == ("success", UsbStep.FLASHED.value[2]), final
    assert loader.flash.read(APP_OFFSET, len(IMAGE)) == IMAGE
    # the command line the flasher logged: esptool's argv, the image file last
    commands = [
        message
        for message in (record.getMessage() for record in caplog.records)
        if message.startswith("esptool: write-flash port=") and " -m esptool " in message
    ]
    assert len(commands) == 1 and commands[0].endswith(f"/{NAME}"), commands
    written_from = Path(commands[0].rsplit(" ", 1)[1])
    assert written_from.parent.parent == private_tmp  # a folder of its own, not the cache
    assert await asyncio.to_thread(lambda: list(private_tmp.iterdir())) == []
