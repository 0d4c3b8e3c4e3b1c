"""Every row of the procedure document's USB error table, produced for real by FlashMaster.

"No serial ports found", "Port access denied", "esptool not available" and "Firmware not found" fail
before the board or the link is touched; "Write failed" and "Reconnect failed" need a board and are in
``test_daemon_usb.py``. Each failure ends as a USBFlashStatusChanged and GetUSBFlashStatus with
``status`` "failed", the row as ``message``, and the cause and solution in ``details``.
"""

from __future__ import annotations

import asyncio
import secrets
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from serial.tools.list_ports import comports
from signals import SignalCollector
from unprivileged import NobodyDaemon, can_switch_user
from usbflash import FlashSignals, flash_master

from uc2otad.api import names
from uc2otad.methods.usb.chips import chip_for_usb_id

#: seconds uc2otad has to take its bus name when started without a notify socket
NAME_TIMEOUT = 20.0
#: nothing listens here: a run that got as far as esptool would fail with "Write failed", not the row
UNUSED_PORT = "socket://127.0.0.1:9"
ONE_ATTEMPT = "[firmware]\nattempts = 1\n"


def failed_with(status: dict[str, Any], message: str, error_code: str) -> bool:
    return (status["status"], status["message"], status["error_code"]) == ("failed", message, error_code)


async def flash_and_wait(client: MessageBus, **options: Any) -> dict[str, Any]:
    signals = await FlashSignals(client).subscribe()
    await flash_master(client, **options)
    final = await signals.final()
    assert unwrap((await call(client, "GetUSBFlashStatus")).body[0]) == final
    return final


async def test_no_serial_port_to_flash(start_daemon: DaemonFactory, client: MessageBus) -> None:
    ports = await asyncio.to_thread(comports)
    if any(chip_for_usb_id(port.vid, port.pid) for port in ports):
        pytest.skip("a USB adapter of a known VID:PID is plugged in; this test would try to flash it")
    await start_daemon("--firmware-server", "http://127.0.0.1:9/firmware", config=ONE_ATTEMPT)  # no HAT link

    final = await flash_and_wait(client, match=f"no-such-port-{secrets.token_hex(4)}")

    assert failed_with(final, "No serial ports found", "no_serial_ports"), final
    assert "Connect the device via USB".lower() in final["details"].lower()


async def test_esptool_not_available(start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "esptool"
    await start_daemon(config=f'[usb]\nesptool = "{missing}"\n')

    final = await flash_and_wait(client, port=UNUSED_PORT)

    assert failed_with(final, "esptool not available", "esptool_not_available"), final
    assert str(missing) in final["details"] and "pip install esptool" in final["details"]


async def test_firmware_not_found(
    start_daemon: DaemonFactory, client: MessageBus, caddy: CaddyServer
) -> None:
    await start_daemon("--firmware-server", caddy.url, config=ONE_ATTEMPT)  # the server has no master image

    final = await flash_and_wait(client, port=UNUSED_PORT)

    assert failed_with(final, "Firmware not found", "firmware_not_found"), final
    assert "check the firmware server URL" in final["details"]
    assert final["progress"] == 10  # it got as far as "Downloading firmware from server..."


# --------------------------------------------------------------------------- port access denied


@pytest.fixture
async def unreadable_port(tmp_path: Path) -> AsyncIterator[Path]:
    """A port node the daemon's user may not open (mode 000)."""
    port = tmp_path / "ttyUSB9"

    def make() -> None:
        port.touch()
        port.chmod(0)

    await asyncio.to_thread(make)
    yield port
    await asyncio.to_thread(port.chmod, stat.S_IRUSR | stat.S_IWUSR)


@pytest.fixture
async def unprivileged_client(
    start_daemon: DaemonFactory, client: MessageBus
) -> AsyncIterator[tuple[MessageBus, NobodyDaemon | None]]:
    """A client of a daemon that runs unprivileged: as nobody when we are root, else as ourselves."""
    if not await asyncio.to_thread(can_switch_user):
        await start_daemon(config=ONE_ATTEMPT)
        yield client, None
        return
    nobody = await asyncio.to_thread(NobodyDaemon)
    try:
        address = await asyncio.to_thread(nobody.start_bus)
        bus = await MessageBus(bus_address=address).connect()
        try:
            await _start_and_wait_for_name(bus, nobody)
            yield bus, nobody
        finally:
            bus.disconnect()
    finally:
        await asyncio.to_thread(nobody.close)


async def _start_and_wait_for_name(bus: MessageBus, nobody: NobodyDaemon) -> None:
    owners = SignalCollector(bus, _new_owner)
    await add_match(bus, f"type='signal',member='NameOwnerChanged',arg0='{names.BUS_NAME}'")
    await asyncio.to_thread(nobody.start_daemon)
    try:
        await owners.first(lambda _owner: True, NAME_TIMEOUT)
    except TimeoutError:
        log = await asyncio.to_thread(nobody.log)
        raise AssertionError(f"uc2otad as nobody did not take its name; log:\n{log}") from None
    finally:
        owners.close()


def _new_owner(message: Message) -> str | None:
    """The new owner of the daemon's bus name, from NameOwnerChanged (None when it was released)."""
    if message.member == "NameOwnerChanged" and message.body[0] == names.BUS_NAME and message.body[2]:
        owner: str = message.body[2]
        return owner
    return None


async def test_port_access_denied_for_an_unprivileged_daemon(
    unprivileged_client: tuple[MessageBus, NobodyDaemon | None], unreadable_port: Path
) -> None:
    bus, nobody = unprivileged_client
    port = unreadable_port
    if nobody is not None:  # the daemon must be able to reach the node, just not open it
        port = nobody.folder / "ttyUSB9"
        await asyncio.to_thread(port.touch)
        await asyncio.to_thread(port.chmod, 0o600)  # root's, as /dev/ttyUSB0 is root:dialout 0660

    final = await flash_and_wait(bus, port=str(port))

    assert failed_with(final, "Port access denied", "port_access_denied"), final
    assert "dialout group" in final["details"] and str(port) in final["details"]
    if nobody is not None:
        assert "uid=65534" in final["details"]  # refused to nobody, as it would be to root's daemon user
    reply = await call(bus, "GetUSBFlashStatus")
    assert reply.message_type is MessageType.METHOD_RETURN
