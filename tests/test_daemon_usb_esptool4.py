"""FlashMaster with Debian 13's esptool 4.7: as PyPI ships it, and without its flasher stubs.

esptool 4.7 spells its commands with underscores (``write_flash``, ``--flash_mode``), cannot reset a
board over ``socket://`` by itself, and Debian's build lacks the flasher stubs, so the daemon must run
it with ``--no-stub`` and erase through the ROM (:mod:`uc2otad.methods.usb.esptool`). Each case runs the
daemon against the virtual microscope's ROM loader with ``usb.esptool`` pointing at a 4.7 build
(:mod:`esptool4`): the image lands, the master comes back running it, and the loader's counters show
whether the stub ran. A third setup wraps the stubless esptool in a shell script, whose Python the
daemon cannot see: its first run fails on the missing stub and is run again with ``--no-stub``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import wait_for_property
from dbus_fast.aio import MessageBus
from espimage import build_app_image, build_merged_image
from esptool4 import esptool4
from usbflash import FlashSignals, flash_master, flash_merged_with_erase, row

from uc2otad.sim.config import SimConfig
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.microscope import VirtualMicroscope

APP_NAME = "esp32_UC2_canopen_master_release.bin"
MERGED_NAME = "esp32_UC2_canopen_master_release_merged.bin"
NEW_VERSION = "v2099.9.0"
#: ESP-IDF 5 marks classic ESP32 images for chip revisions up to v3.99; esptool 4.7 refuses to write an
#: image whose range leaves out the board's revision (the simulated HAT is a v3.0 ESP32-D0WD-V3)
MAX_REV_FULL = 399
APP = build_app_image("esp32", version=NEW_VERSION, project="uc2-master", date="Nov 27 2026", time="12:00:00",
                      segment_sizes=(0x400, 0x100, 0x8000, 0x10000), max_rev_full=MAX_REV_FULL)  # fmt: skip
MERGED = build_merged_image("esp32", app=APP)
FAST = MasterTiming(sdo_time=0.001, sdo_timeout=0.05, legacy_scan_wait=0.05, restart_delay=0.01,
                    node_boot_time=0.05, master_boot_time=0.05)  # fmt: skip
#: a first build of the environments downloads esptool 4.7 and its dependencies
pytestmark = pytest.mark.timeout(300)
SETUPS = ("pypi", "debian", "debian-wrapped")


@pytest.fixture(params=SETUPS)
def esptool_program(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """(setup, the program usb.esptool names)."""
    setup: str = request.param
    program = esptool4(request.config.cache, setup.split("-", maxsplit=1)[0])
    if setup.endswith("-wrapped"):  # not a Python script: the daemon cannot look for the stub files
        wrapper = tmp_path / "esptool"
        python = program.parent / "python"
        wrapper.write_text(f'#!/bin/sh\nexec "{python}" -m esptool "$@"\n')
        wrapper.chmod(0o755)
        program = wrapper
    return setup, program


@pytest.fixture
async def microscope(tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    config = SimConfig(timing=FAST, serial_link=tmp_path / "ttyHAT", socket=False, master_chip="esp32")
    async with VirtualMicroscope(config) as scope:
        # the firmware it runs, so that a board esptool only looked at boots again
        scope.rom_loader.flash.load(
            0x10000, build_app_image("esp32", version=config.master_version, max_rev_full=MAX_REV_FULL)
        )
        yield scope


@pytest.fixture
async def server(caddy: CaddyServer) -> str:
    def publish() -> None:
        (caddy.root / APP_NAME).write_bytes(APP)
        (caddy.root / MERGED_NAME).write_bytes(MERGED)

    await asyncio.to_thread(publish)
    return caddy.url


async def start(start_daemon: DaemonFactory, scope: VirtualMicroscope, server: str, program: Path) -> None:
    config = (
        f'[usb]\nesptool = "{program}"\nreboot_wait = 0.05\nreconnect_window = 5.0\n'
        "[firmware]\nattempts = 1\n"
    )
    await start_daemon(
        "--serial-port", str(scope.config.serial_link), "--firmware-server", server, config=config
    )


async def test_an_app_image_is_written_and_the_master_comes_back_running_it(
    start_daemon: DaemonFactory, client: MessageBus, microscope: VirtualMicroscope, server: str,
    esptool_program: tuple[str, Path],
) -> None:  # fmt: skip
    setup, program = esptool_program
    await start(start_daemon, microscope, server, program)
    await wait_for_property(client, "MasterConnected", True)
    signals = await FlashSignals(client).subscribe()
    loader = microscope.rom_loader
    bootloader_before = loader.flash.read(0x1000, 0x100)

    await flash_master(client, port=loader.url)
    final = await signals.final()

    assert final["status"] == "success", final
    assert loader.flash.read(0x10000, len(APP)) == APP
    assert loader.flash.read(0x1000, 0x100) == bootloader_before  # --flash_mode keep … kept the bootloader
    assert signals.table_rows() == [
        row("disconnecting"), row("downloading"), row("downloaded", firmware=APP_NAME),
        row("port", port=loader.url), row("writing"), row("written"), row("reconnecting"), row("success"),
    ]  # fmt: skip
    writing = [
        s["progress"] for s in signals.statuses if s["status"] == "flashing" and 45 < s["progress"] < 85
    ]
    assert writing == sorted(writing) and writing, writing  # esptool 4's "(NN %)" lines, rising
    assert final["firmware_version"] == NEW_VERSION
    if setup == "pypi":
        assert loader.counters.stub_starts == 2  # flash_id and write_flash each upload the stub
    else:  # --no-stub: the ROM did the work (the wrapped one learnt it from its first, failed, run)
        assert loader.counters.stub_starts == 0
        assert loader.counters.commands["MEM_BEGIN"] == 0
    sessions = 3 if setup == "debian-wrapped" else 2
    assert loader.counters.sessions == sessions


async def test_a_merged_image_with_erase_lands_on_an_erased_flash(
    start_daemon: DaemonFactory, client: MessageBus, microscope: VirtualMicroscope, server: str,
    esptool_program: tuple[str, Path],
) -> None:  # fmt: skip
    setup, program = esptool_program
    await start(start_daemon, microscope, server, program)
    await wait_for_property(client, "MasterConnected", True)
    signals = await FlashSignals(client).subscribe()
    loader = microscope.rom_loader
    await flash_merged_with_erase(client, loader, signals, MERGED, MERGED_NAME, NEW_VERSION)
    if setup == "pypi":
        assert loader.counters.commands["ERASE_FLASH"] == 1  # the stub's chip erase
    else:  # the ROM erased the whole flash for a FLASH_DEFL_BEGIN of 4 MB of 0xFF
        assert loader.counters.stub_starts == 0
        assert loader.counters.commands["ERASE_FLASH"] == 0
        assert any(write.offset == 0 and write.size == loader.flash.size for write in loader.writes)
