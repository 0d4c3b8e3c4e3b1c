"""Issue 14, D2: a daemon killed mid-stream leaves the master in binary mode; the next daemon recovers it.

The daemon is a subprocess on a private bus, the virtual microscope runs in the test's loop on a pty,
and nothing in the test touches the simulator after the kill: whatever brings the master back is the
daemon's own doing. A pty has no modem lines, so this is the daemon's "stay silent past the master's
rx_timeout" path; the reset path is tested at the link (``test_serial_link_recovery.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import DaemonFactory
from dbus_client import add_match, call, properties
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from signals import SignalCollector, property_changes
from signals import StatusSignals as Progress
from test_daemon_update import FAST_UPDATE
from test_link_ota_stream import IMAGE, NODE, TIMING

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, default_node

#: the master's rx_timeout, shrunk from the firmware's 30 s (``OtaBinaryReceive.cpp:32`` @063e5a6) but
#: longer than the daemon takes to restart: the new daemon's first handshake finds the master still in
#: binary mode, as a daemon restarted by systemd after a crash would
RX_TIMEOUT = 5.0
#: the daemon's handshake and reconnect pace shrunk with it: a try every ~1.5 s, well inside the
#: master's rx_timeout, as the defaults (≤ 4 s + 10 s) are inside the firmware's 30 s
STUCK_CONFIG = (
    FAST_UPDATE
    + f"[serial]\nhandshake_timeout = 0.5\nreconnect_max_delay = 0.5\nmaster_rx_timeout = {RX_TIMEOUT}\n"
)
#: the slave holds up the third chunk for a second (the master waits: its block timeout is longer), so
#: the daemon is killed with the stream in full flight at ≥ 30 %
STALL = NodeFaults(stall_at_percent=45.0, stall_seconds=1.0)
#: seconds the restarted daemon may take to reach the master: the rx_timeout it must wait out, and more
CONNECT_TIMEOUT = 4 * RX_TIMEOUT


class MasterConnected(SignalCollector[bool]):
    """When each value of the MasterConnected property arrived, on the test's clock."""

    def __init__(self, client: MessageBus) -> None:
        super().__init__(client, property_changes("MasterConnected"))

    @property
    def changes(self) -> list[tuple[float, bool]]:
        return self.timed()

    async def until_connected(self, since: float) -> float:
        """The time MasterConnected became True after ``since``."""
        return await self.wait_for(
            lambda: next((at for at, value in self.changes if value and at >= since), None), CONNECT_TIMEOUT
        )


def stalling_microscope(tmp_path: Path, rx_timeout: float) -> SimConfig:
    """One node that stalls mid-stream (:data:`STALL`), behind a master with ``rx_timeout`` on a pty."""
    node = replace(default_node(NODE), faults=STALL)
    timing = replace(TIMING, ota_rx_timeout=rx_timeout, block_timeout=3.0)
    return SimConfig(nodes=(node,), timing=timing, serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0)


@pytest.mark.timeout(60)
async def test_after_sigkill_mid_stream_the_master_recovers_and_the_next_update_succeeds(
    start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path, served_image: str
) -> None:
    """D2 The master stays stuck after a crash mid-stream: recovered without touching the simulator.

    Killed at uploading ≥ 30 %, the master is left in binary mode, swallowing every byte as firmware
    until ``rx_timeout`` of silence (``OtaBinaryReceive.cpp:207, 236`` @063e5a6). The restarted daemon's
    handshakes used to restart that clock before it ran out, so the master never came back. Now the
    daemon stays silent once, READY=1 comes before that recovery ends, and the next update succeeds.
    """
    signals = Progress(client, NODE)
    connected = MasterConnected(client)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}'")
    async with VirtualMicroscope(stalling_microscope(tmp_path, RX_TIMEOUT)) as scope:
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image)
        daemon = await start_daemon(*flags, config=STUCK_CONFIG)
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        killed_at = (await signals.until_uploading(30))["upload_progress"]
        await asyncio.to_thread(daemon.kill)
        killed = asyncio.get_running_loop().time()

        restarted = await start_daemon(*flags, config=STUCK_CONFIG)  # returns once READY=1 came
        ready_at = asyncio.get_running_loop().time()
        at_ready = await properties(client)
        connected_at = await connected.until_connected(since=killed)
        signals.statuses.clear()
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        final = await signals.until("success")
        running = scope.master.slave(NODE).running_image
    log = await asyncio.to_thread(restarted.log)
    assert killed_at >= 30
    assert at_ready["MasterConnected"] is False, "the master answered at once: nothing to recover"
    assert ready_at < connected_at  # READY=1 did not wait for the recovery
    assert "staying silent" in log, log
    assert (final["upload_status"], running) == ("success", IMAGE)
