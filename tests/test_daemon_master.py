"""The daemon and the master CAN HAT: MasterConnected, ScanDevices, the two port-ownership modes.

The daemon is a subprocess on a private bus; the virtual microscope runs in the test's own loop, so the
test can pull the HAT out and plug it back in while the daemon watches.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import call, unwrap, wait_for_property
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from espimage import build_app_image

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.microscope import VirtualMicroscope

FAST = MasterTiming(sdo_time=0.001, sdo_timeout=0.05, legacy_scan_wait=0.05, restart_delay=0.01,
                    node_boot_time=0.05, master_boot_time=0.05)  # fmt: skip


@pytest.fixture
async def microscope(tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    async with VirtualMicroscope(
        SimConfig(timing=FAST, serial_link=tmp_path / "ttyHAT", socket=False)
    ) as scope:
        yield scope


#: no firmware server answers here, at once: ScanDevices then reports without update information
NO_SERVER = ("--firmware-server", "http://127.0.0.1:9/firmware")
#: one attempt per firmware request, so an absent server costs nothing
ONE_ATTEMPT = "[firmware]\nattempts = 1\n"


def serial_port(scope: VirtualMicroscope) -> str:
    return str(scope.config.serial_link)


async def test_scan_lists_the_master_and_its_boards_with_update_information(
    start_daemon: DaemonFactory, client: MessageBus, microscope: VirtualMicroscope, caddy: CaddyServer
) -> None:
    newer = build_app_image("esp32s3", version="v2099.1.0")

    def publish() -> None:
        (caddy.root / "esp32_UC2_canopen_slave_motor_release_motX.bin").write_bytes(newer)
        files = {"esp32_UC2_canopen_slave_motor_release_motX.bin":
                 {"size": len(newer), "sha256": hashlib.sha256(newer).hexdigest()}}  # fmt: skip
        (caddy.root / "version.json").write_text(json.dumps({"version": "v2099.1.0", "files": files}))

    await asyncio.to_thread(publish)
    await start_daemon("--serial-port", serial_port(microscope), "--firmware-server", caddy.url)
    await wait_for_property(client, "MasterConnected", True)

    reply = await call(client, "ScanDevices")
    assert (reply.message_type, reply.signature) == (MessageType.METHOD_RETURN, "aa{sv}"), reply.body
    boards = {board["can_id"]: board for board in unwrap(reply.body[0])}
    assert set(boards) == {1, 10, 11, 12, 13, 20, 30, 40}
    assert reply.body[0][0]["can_id"] == Variant("u", 1)  # the master first
    assert reply.body[0][0]["reachable"] == Variant("b", True)
    motor = boards[11]
    assert (motor["role"], motor["reachable"]) == ("motor", True)
    assert motor["fw_version"] and motor["build"] and motor["mac"]
    assert motor["update_available"] is True  # the server has v2099.1.0, the board runs something older
    assert "update_available" not in boards[20]  # no image for the laser on this server: unknown


async def test_master_connected_follows_the_hat_out_and_back(
    start_daemon: DaemonFactory, client: MessageBus, microscope: VirtualMicroscope
) -> None:
    await start_daemon("--serial-port", serial_port(microscope), *NO_SERVER, config=ONE_ATTEMPT)
    await wait_for_property(client, "MasterConnected", True)

    await microscope.pty.vanish()
    await wait_for_property(client, "MasterConnected", False)
    scan = await call(client, "ScanDevices")
    assert (scan.message_type, scan.error_name) == (MessageType.ERROR, names.NOT_CONNECTED)

    await microscope.pty.restore()
    await wait_for_property(client, "MasterConnected", True)
    assert (await call(client, "ScanDevices")).message_type is MessageType.METHOD_RETURN


async def test_a_hat_that_appears_after_start_up_is_picked_up(
    start_daemon: DaemonFactory, client: MessageBus, microscope: VirtualMicroscope
) -> None:
    await microscope.pty.vanish()
    await start_daemon("--serial-port", serial_port(microscope))
    assert await call(client, "GetAll", "s", names.INTERFACE, interface="org.freedesktop.DBus.Properties")
    await wait_for_property(client, "MasterConnected", False)
    await microscope.pty.restore()
    await wait_for_property(client, "MasterConnected", True)


async def test_without_a_serial_port_scan_is_not_connected(
    start_daemon: DaemonFactory, client: MessageBus
) -> None:
    await start_daemon()
    reply = await call(client, "ScanDevices")
    assert (reply.message_type, reply.error_name) == (MessageType.ERROR, names.NOT_CONNECTED)
    assert "serial.port" in reply.body[0]


async def test_on_demand_ownership_leaves_the_port_free_and_reports_busy_when_taken(
    start_daemon: DaemonFactory, client: MessageBus, microscope: VirtualMicroscope
) -> None:
    config = ONE_ATTEMPT + '[serial]\nownership = "on-demand"\n'
    await start_daemon("--serial-port", serial_port(microscope), *NO_SERVER, config=config)
    assert (await call(client, "ScanDevices")).message_type is MessageType.METHOD_RETURN

    # ImSwitch (or anyone) takes the port with the same kind of lock pyserial uses
    holder = await asyncio.to_thread(
        serial.serial_for_url, serial_port(microscope), exclusive=True, timeout=0
    )
    try:
        reply = await call(client, "ScanDevices")
        assert (reply.message_type, reply.error_name) == (MessageType.ERROR, names.BUSY), reply.body
    finally:
        await asyncio.to_thread(holder.close)
    assert (await call(client, "ScanDevices")).message_type is MessageType.METHOD_RETURN
    await wait_for_property(client, "MasterConnected", False)  # released after each use
