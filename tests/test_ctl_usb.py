"""``uc2otactl ports`` and ``flash-master`` against the real daemon, virtual microscope and esptool."""

from __future__ import annotations

import json

import jsonschema
from caddy import CaddyServer
from conftest import DaemonFactory
from test_ctl import ctl
from test_daemon_usb import APP, FAST_USB, NEW_VERSION, microscope, server  # noqa: F401 - fixtures

from uc2otad.ctl import schemas
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.private_bus import PrivateBus


async def test_ports_lists_what_the_os_lists(start_daemon: DaemonFactory, private_bus: PrivateBus) -> None:
    await start_daemon()
    code, stdout, stderr = await ctl(private_bus, "ports", "--json")
    assert code == 0, stderr
    listed = json.loads(stdout)
    jsonschema.validate(listed, schemas.COMMANDS["ports"])
    code, text, _ = await ctl(private_bus, "ports")
    assert code == 0
    assert all(port["device"] in text for port in listed)
    assert "DEVICE" in text or "no serial ports found" in text


async def test_flash_master_shows_each_step_and_ends_with_the_new_image(
    start_daemon: DaemonFactory, private_bus: PrivateBus, microscope: VirtualMicroscope, server: str,  # noqa: F811
) -> None:  # fmt: skip
    await start_daemon("--serial-port", str(microscope.config.serial_link), "--firmware-server", server,
                       config=FAST_USB)  # fmt: skip
    port = microscope.rom_loader.url

    code, stdout, stderr = await ctl(private_bus, "flash-master", "--port", port)

    assert code == 0, (stdout, stderr)
    lines = stdout.splitlines()
    assert lines[0] == f"flashing the master CAN HAT over USB (port {port})"
    assert "  5% disconnecting: Disconnecting from ESP32..." in lines
    assert f" 25% flashing: Using port: {port}" in lines
    assert lines[-1] == "100% success: ✅ Firmware flashed and reconnected!"
    assert microscope.rom_loader.flash.read(0x10000, len(APP)) == APP
    assert microscope.master.identity.version == NEW_VERSION


async def test_a_failed_flash_exits_1_with_the_documents_row(
    start_daemon: DaemonFactory, private_bus: PrivateBus, caddy: CaddyServer
) -> None:
    await start_daemon("--firmware-server", caddy.url, config="[firmware]\nattempts = 1\n")

    code, stdout, _ = await ctl(private_bus, "flash-master", "--port", "socket://127.0.0.1:9", "--json")

    assert code == 1
    final = json.loads(stdout)
    jsonschema.validate(final, schemas.COMMANDS["flash-master"])
    assert (final["status"], final["message"]) == ("failed", "Firmware not found")
