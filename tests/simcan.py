"""Peers for CAN-level tests of the simulated slaves: the ``canopen`` package's client, and raw frames.

The slave (``uc2otad.sim.canopen_slave``) is checked against two independent peers on its own virtual
bus: python-canopen's SDO client, an implementation of CiA 301 that we did not write, and
:class:`RawPeer`, which sends frames a test composes byte by byte (a lost segment, a wrong CRC) and
hands back what the slave sends. Blocking canopen calls go through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import can
import canopen

from uc2otad.sim.can_bus import CanPort, SimCanBus
from uc2otad.sim.canopen_slave import CanOpenSlave
from uc2otad.sim.nodes import NodeSpec, default_node
from uc2otad.sim.timing import MasterTiming
from uc2otad.sim.wifi_ota import WifiNetwork

#: seconds a test waits for a frame
WAIT = 2.0
#: a slave that reboots at once and times out in well under a second
FAST = MasterTiming(
    sdo_time=0.0,
    restart_delay=0.0,
    node_boot_time=0.05,
    ota_reboot_delay=0.0,
    size_write_time=0.0,
    ota_commit_time=0.0,
    sdo_server_timeout=0.3,
    ota_idle_reset=0.5,
    ota_watchdog_period=0.05,
    partition_erase_time=0.4,
)
NETWORK = WifiNetwork("uc2-lab", "uc2-lab-pass")


@asynccontextmanager
async def slave_on_bus(
    spec: NodeSpec | None = None, timing: MasterTiming = FAST
) -> AsyncIterator[tuple[CanOpenSlave, SimCanBus]]:
    """A slave (node 11 by default) alone on a bus of its own, started and stopped around the block."""
    bus = SimCanBus()
    slave = CanOpenSlave(spec or default_node(11), bus, timing=timing, network=NETWORK, ota_port=0)
    await slave.start()
    try:
        yield slave, bus
    finally:
        await slave.stop()


@asynccontextmanager
async def canopen_node(bus: SimCanBus, node_id: int, response_timeout: float = 0.5) -> AsyncIterator[Any]:
    """python-canopen's ``RemoteNode`` for ``node_id`` on ``bus``; call its SDO client in a thread."""
    network = canopen.Network()
    port = bus.open_port(network.listeners, wait_for_wire=True)
    network.bus = port.can_bus
    node = network.add_node(node_id)
    node.sdo.RESPONSE_TIMEOUT = response_timeout
    try:
        yield node
    finally:
        await port.close()
        network.bus = None


class RawPeer:
    """Sends frames as composed and collects every frame the others send."""

    def __init__(self, bus: SimCanBus) -> None:
        self._frames: asyncio.Queue[can.Message] = asyncio.Queue()
        self._port: CanPort = bus.open_port([self._frames.put_nowait], loop=asyncio.get_running_loop())

    def send(self, can_id: int, data: bytes) -> None:
        self._port.send(can_id, data)

    async def next(self, can_id: int, seconds: float = WAIT) -> bytes:
        """The next frame with ``can_id`` (others are dropped); fails the test after ``seconds``."""
        async with asyncio.timeout(seconds):
            while True:
                message = await self._frames.get()
                if message.arbitration_id == can_id and not message.is_error_frame:
                    return bytes(message.data)

    def pending(self) -> list[can.Message]:
        """What arrived and was not taken yet."""
        frames = []
        while not self._frames.empty():
            frames.append(self._frames.get_nowait())
        return [frame for frame in frames if not frame.is_error_frame]

    async def close(self) -> None:
        await self._port.close()


@asynccontextmanager
async def raw_peer(bus: SimCanBus) -> AsyncIterator[RawPeer]:
    peer = RawPeer(bus)
    try:
        yield peer
    finally:
        await peer.close()
