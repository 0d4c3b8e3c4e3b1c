"""FlashMaster end to end: daemon subprocess, private bus, virtual microscope, real Caddy, real esptool.

The simulated CAN HAT (classic ESP32) has its serial bootloader on ``socket://``: the daemon releases
its link to the master, runs esptool against the loader, and after the board rebooted into the image
the link comes back and ``/state_get`` reports the new version. Refusals happen before any byte is
written; every row of the document's USB error table is produced for real.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import call, unwrap, wait_for_property
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from espimage import build_app_image, build_merged_image
from usbflash import FlashSignals, flash_master, flash_merged_with_erase, row

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.rom_loader import LoaderFaults

if importlib.util.find_spec("esptool") is None:
    pytest.skip("esptool is not installed (pip install -e .[test])", allow_module_level=True)

APP_NAME = "esp32_UC2_canopen_master_release.bin"
MERGED_NAME = "esp32_UC2_canopen_master_release_merged.bin"
NEW_VERSION = "v2099.9.0"
#: about 100 KB of random segments: esptool's stub writes it in several 16 KB blocks, each a progress line
APP = build_app_image("esp32", version=NEW_VERSION, project="uc2-master", date="Nov 27 2026", time="12:00:00",
                      segment_sizes=(0x400, 0x100, 0x8000, 0x10000))  # fmt: skip
MERGED = build_merged_image("esp32", app=APP)
#: boots and reboots in tens of milliseconds
FAST = MasterTiming(sdo_time=0.001, sdo_timeout=0.05, legacy_scan_wait=0.05, restart_delay=0.01,
                    node_boot_time=0.05, master_boot_time=0.05)  # fmt: skip
#: the board's boot wait shrunk; a reconnect window that a working board meets at once
FAST_USB = "[usb]\nreboot_wait = 0.05\nreconnect_window = 5.0\n[firmware]\nattempts = 1\n"


@pytest.fixture
async def microscope(tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    config = SimConfig(timing=FAST, serial_link=tmp_path / "ttyHAT", socket=False, master_chip="esp32")
    async with VirtualMicroscope(config) as scope:
        # the HAT's flash holds the firmware it runs, as a real one does: a board that esptool only looked
        # at boots it again (the simulated flash starts empty, and an empty flash does not boot)
        scope.rom_loader.flash.load(0x10000, build_app_image("esp32", version=config.master_version))
        yield scope


@pytest.fixture
async def server(caddy: CaddyServer) -> str:
    def publish() -> None:
        (caddy.root / APP_NAME).write_bytes(APP)
        (caddy.root / MERGED_NAME).write_bytes(MERGED)
        (caddy.root / "esp32s3_app.bin").write_bytes(build_app_image("esp32s3", version=NEW_VERSION))

    await asyncio.to_thread(publish)
    return caddy.url


@pytest.fixture
async def signals(client: MessageBus) -> FlashSignals:
    return await FlashSignals(client).subscribe()


async def start_with_hat(
    start_daemon: DaemonFactory, scope: VirtualMicroscope, server: str, config: str = FAST_USB
) -> None:
    await start_daemon(
        "--serial-port", str(scope.config.serial_link), "--firmware-server", server, config=config
    )


async def test_an_app_image_lands_at_0x10000_and_the_master_comes_back_running_it(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,
    server: str,
) -> None:  # fmt: skip
    await start_with_hat(start_daemon, microscope, server)
    await wait_for_property(client, "MasterConnected", True)
    idle = unwrap((await call(client, "GetUSBFlashStatus")).body[0])
    assert idle["status"] == "idle"
    loader = microscope.rom_loader
    bootloader_before = loader.flash.read(0x1000, 0x100)

    port = loader.url
    started = await flash_master(client, port=port)
    assert (started["status"], started["port"]) == ("started", port)
    final = await signals.final()

    assert final["status"] == "success", final
    assert loader.flash.read(0x10000, len(APP)) == APP
    assert loader.flash.read(0x1000, 0x100) == bootloader_before  # the board's bootloader was kept
    assert signals.table_rows() == [
        row("disconnecting"), row("downloading"), row("downloaded", firmware=APP_NAME),
        row("port", port=port), row("writing"), row("written"), row("reconnecting"), row("success"),
    ]  # fmt: skip
    writing = [
        s["progress"] for s in signals.statuses if s["status"] == "flashing" and 45 <= s["progress"] <= 85
    ]
    assert writing == sorted(writing) and len(set(writing)) > 3, writing  # esptool's real progress, rising
    assert (final["firmware"], final["flash_offset"], final["chip"]) == (APP_NAME, 0x10000, "esp32")
    assert final["firmware_version"] == NEW_VERSION  # what /state_get said after the reboot
    assert microscope.master.identity.version == NEW_VERSION
    assert unwrap((await call(client, "GetUSBFlashStatus")).body[0]) == final
    await wait_for_property(client, "MasterConnected", True)
    boards = unwrap((await call(client, "ScanDevices")).body[0])
    assert boards[0]["can_id"] == 1  # the link is usable again


async def test_a_merged_image_with_erase_lands_at_0x0_on_an_erased_flash(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,
    server: str,
) -> None:  # fmt: skip
    await start_with_hat(start_daemon, microscope, server)
    loader = microscope.rom_loader
    await flash_merged_with_erase(client, loader, signals, MERGED, MERGED_NAME, NEW_VERSION)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"firmware": APP_NAME, "erase_flash": True}, "erase_flash needs a merged image"),
        ({"firmware": APP_NAME, "flash_offset": 0}, "not flash_offset=0x0"),
        ({"firmware": "esp32s3_app.bin"}, "is for esp32s3, the board is esp32"),
    ],
    ids=["app-with-erase", "app-at-0x0", "wrong-chip"],
)
async def test_an_unsafe_request_is_refused_before_any_write(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,
    server: str, options: dict[str, object], reason: str,
) -> None:  # fmt: skip
    await start_with_hat(start_daemon, microscope, server)
    loader = microscope.rom_loader
    flash_before = loader.flash.read(0, loader.flash.size)

    await flash_master(client, port=loader.url, **options)
    final = await signals.final()

    assert (final["status"], final["message"], final["error_code"]) == (
        "failed",
        "Firmware refused",
        "image_refused",
    )
    assert reason in final["details"]
    assert len(loader.writes) == 0 and "FLASH_BEGIN" not in loader.counters.commands
    assert loader.flash.read(0, loader.flash.size) == flash_before
    await wait_for_property(client, "MasterConnected", True)  # the link was given back


async def test_a_write_that_fails_mid_image_is_write_failed(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,
    server: str,
) -> None:  # fmt: skip
    await start_with_hat(start_daemon, microscope, server)
    microscope.rom_loader.faults = LoaderFaults(drop_after_data_bytes=0x4000)  # the cable breaks, twice

    await flash_master(
        client,
        port=microscope.rom_loader.url,
    )
    final = await signals.final()

    assert (final["status"], final["message"], final["error_code"]) == (
        "failed",
        "Write failed",
        "write_failed",
    )
    assert "check the USB cable, retry" in final["details"]
    assert 45 <= final["progress"] < 85


async def test_a_master_that_does_not_come_back_is_reconnect_failed(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,
    server: str,
) -> None:  # fmt: skip
    short_window = FAST_USB.replace("reconnect_window = 5.0", "reconnect_window = 0.5")
    await start_with_hat(start_daemon, microscope, server, config=short_window)
    microscope.rom_loader.on_boot = lambda result: None  # the board stays silent after the flash

    await flash_master(client, port=microscope.rom_loader.url)
    final = await signals.final()

    assert (final["status"], final["message"], final["error_code"]) == (
        "failed", "Reconnect failed", "reconnect_failed",
    )  # fmt: skip
    assert "manual power cycle required" in final["details"]
    assert microscope.rom_loader.flash.read(0x10000, len(APP)) == APP  # written; only the way back failed


async def test_a_flash_can_be_cancelled_and_a_second_one_is_busy_meanwhile(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,
    server: str,
) -> None:  # fmt: skip
    await start_with_hat(start_daemon, microscope, server)
    microscope.rom_loader.faults = LoaderFaults(ignore_sync=True)  # esptool keeps trying to connect
    port = microscope.rom_loader.url

    await flash_master(client, port=port)
    await signals.until("flashing", message=f"Using port: {port}")
    again = await call(client, "FlashMaster", "a{sv}", {})
    assert (again.message_type, again.error_name) == (MessageType.ERROR, names.BUSY)
    slave_update = await call(client, "StartOTA", "ua{sv}", 11, {})  # it would need the master's port
    assert (slave_update.message_type, slave_update.error_name) == (MessageType.ERROR, names.BUSY)
    assert (await call(client, "Cancel", "u", 1)).message_type is MessageType.METHOD_RETURN
    final = await signals.final()

    assert (final["status"], final["message"], final["error_code"]) == (
        "failed",
        "Flash cancelled",
        "cancelled",
    )
    assert len(microscope.rom_loader.writes) == 0
    await wait_for_property(client, "MasterConnected", True)
    nothing = await call(client, "Cancel", "u", 1)
    assert (nothing.message_type, nothing.error_name) == (MessageType.ERROR, names.NOT_FOUND)
