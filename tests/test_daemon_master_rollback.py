"""Rollback of the master (issue 20): two FlashMaster runs through the simulator's ROM loader and real
esptool, then Rollback(1) writes the first image back over USB, byte for byte, on the port the
flash it undoes went to; the history marks it. The daemon runs as a subprocess on a private bus, with
Caddy serving the images."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import call, unwrap, wait_for_property
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from espimage import build_app_image
from test_daemon_usb import APP_NAME, FAST_USB, microscope, signals, start_with_hat  # noqa: F401 - fixtures
from usbflash import FlashSignals, flash_master

from uc2otad.sim.microscope import VirtualMicroscope

if importlib.util.find_spec("esptool") is None:
    pytest.skip("esptool is not installed (pip install -e .[test])", allow_module_level=True)

FIRST = build_app_image("esp32", version="v2099.1.0", project="uc2-master", date="Nov 20 2026",
                        time="10:00:00", segment_sizes=(0x400, 0x100, 0x2000, 0x1000))  # fmt: skip
SECOND = build_app_image("esp32", version="v2099.2.0", project="uc2-master", date="Nov 27 2026",
                         time="11:00:00", segment_sizes=(0x400, 0x100, 0x2000, 0x1800))  # fmt: skip


async def flashed(client: MessageBus, flash: FlashSignals, port: str) -> None:
    """FlashMaster on ``port``, until it has succeeded and let go of the master (Busy false again)."""
    flash.statuses.clear()
    await flash_master(client, port=port)
    final = await flash.final()
    assert final["status"] == "success", final
    await wait_for_property(client, "Busy", False)
    await wait_for_property(client, "MasterConnected", True)


async def test_rollback_of_the_master_writes_its_first_image_back_over_usb(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,  # noqa: F811
    caddy: CaddyServer,
) -> None:  # fmt: skip
    await start_with_hat(start_daemon, microscope, caddy.url, FAST_USB)
    loader = microscope.rom_loader
    missing = await call(client, "Rollback", "u", 1)
    for image in (FIRST, SECOND):
        await asyncio.to_thread((caddy.root / APP_NAME).write_bytes, image)
        await flashed(client, signals, loader.url)
    assert loader.flash.read(0x10000, len(SECOND)) == SECOND

    signals.statuses.clear()
    reply = await call(client, "Rollback", "u", 1)
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    accepted = unwrap(reply.body[0])
    final = await signals.final()
    history = unwrap((await call(client, "GetHistory", "u", 1)).body[0])

    assert missing.error_name == "org.openuc2.OTA1.Error.NotFound"
    assert (accepted["firmware"], accepted["sha256"]) == (APP_NAME, hashlib.sha256(FIRST).hexdigest())
    assert (final["status"], final["port"], final["firmware_version"]) == ("success", loader.url, "v2099.1.0")
    assert loader.flash.read(0x10000, len(FIRST)) == FIRST  # byte for byte, though the server has SECOND
    assert microscope.master.identity.version == "v2099.1.0"
    assert [(row["method"], row["state"], row.get("rollback")) for row in history] == [
        ("usb", "success", "requested"), ("usb", "success", None), ("usb", "success", None)
    ]  # fmt: skip
    assert history[0]["job_id"] == accepted["job_id"] == final["job_id"]
