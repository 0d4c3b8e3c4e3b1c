"""The virtual microscope's CAN bus from another process: ``uc2otad-sim`` serves it, this process joins it.

The simulator runs as a subprocess; the test joins its bus with the interface and channel of the ready
line — python-can's ``remote`` (python-can-remote) on 127.0.0.1 — and talks to the CANopen slaves with
the ``canopen`` package, as the daemon's direct CAN link will. Blocking python-can and canopen calls
run in threads, every wait is for a frame (with a deadline), never a sleep.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can
import canopen
import pytest
from can_remote.websocket import WebsocketClosed
from test_sim_cli import simulator, stop

from uc2otad.errors import ConfigError
from uc2otad.sim.can_bus import SOCKETCAN_TX_QUEUE
from uc2otad.sim.can_rate import CanRate
from uc2otad.sim.config import load_config
from uc2otad.sim.nodes import DEFAULT_BUILD, DEFAULT_VERSION, mac_for
from uc2otad.sim.timing import MasterTiming

NODES = (10, 11, 20)
#: a standard identifier no simulated board listens to (no SDO, PDO, NMT or heartbeat of a node)
TEST_ID = 0x7C0
#: seconds to wait for a frame that must come: two heartbeat periods and some
WAIT = 2 * MasterTiming().heartbeat_interval + 2.0
BURST = 300


def _can(ready: dict[str, Any]) -> tuple[str, str]:
    config = ready["can"]
    assert config["interface"] == "remote"
    assert config["channel"].startswith("ws://127.0.0.1:")  # loopback only
    return config["interface"], config["channel"]


@contextmanager
def _bus(ready: dict[str, Any]) -> Iterator[can.BusABC]:
    interface, channel = _can(ready)
    bus = can.Bus(interface=interface, channel=channel)
    try:
        yield bus
    finally:
        bus.shutdown()


@contextmanager
def _network(ready: dict[str, Any]) -> Iterator[canopen.Network]:
    interface, channel = _can(ready)
    network = canopen.Network()
    network.connect(interface=interface, channel=channel)
    try:
        yield network
    finally:
        network.disconnect()


def _recv_until(bus: can.BusABC, done: Any, what: str) -> list[can.Message]:
    """Frames until ``done(frames)`` holds; fails after :data:`WAIT` seconds."""
    frames: list[can.Message] = []
    deadline = time.monotonic() + WAIT
    while not done(frames):
        left = deadline - time.monotonic()
        assert left > 0, f"no {what} within {WAIT} s; heard {[hex(f.arbitration_id) for f in frames]}"
        frame = bus.recv(left)
        if frame is not None:
            frames.append(frame)
    return frames


async def test_canopen_reads_node_11_from_another_process() -> None:
    async with simulator("--nodes", ",".join(map(str, NODES)), "--quiet-master") as running:
        assert running.ready["can"]["bitrate"] == 500000 and running.ready["can"]["paced"] is False

        def read() -> dict[int, bytes]:
            with _network(running.ready) as network:
                node = network.add_node(11)
                node.sdo.RESPONSE_TIMEOUT = 2.0
                return {index: node.sdo.upload(index, 0) for index in (0x1000, 0x2500, 0x2508, 0x2509)}

        values = await asyncio.to_thread(read)
    assert values[0x1000] == (0).to_bytes(4, "little")  # device type: no CiA profile
    assert values[0x2500].decode() == DEFAULT_VERSION == running.ready["nodes"]["11"]["version"]
    assert values[0x2508].decode() == DEFAULT_BUILD  # segmented: 20 bytes
    assert values[0x2509].decode() == mac_for(11)


async def test_heartbeats_of_every_node() -> None:
    async with simulator("--nodes", ",".join(map(str, NODES)), "--quiet-master") as running:

        def listen() -> list[can.Message]:
            with _bus(running.ready) as bus:
                return _recv_until(
                    bus,
                    lambda frames: (
                        {f.arbitration_id - 0x700 for f in frames if f.data == b"\x05"} >= set(NODES)
                    ),
                    "heartbeat of every node",
                )

        frames = await asyncio.to_thread(listen)
    beats = [f for f in frames if 0x700 < f.arbitration_id <= 0x77F]
    assert all(len(f.data) == 1 and not f.is_extended_id for f in beats)


async def test_segmented_upload_seen_in_order_by_a_bystander() -> None:
    """A third participant hears the client's requests and the slave's segments, in the order sent."""
    async with simulator("--nodes", "11", "--quiet-master") as running:

        def upload_and_watch() -> tuple[bytes, list[can.Message]]:
            with _bus(running.ready) as bystander, _network(running.ready) as network:
                node = network.add_node(11)
                node.sdo.RESPONSE_TIMEOUT = 2.0
                value = node.sdo.upload(0x2508, 0)
                # the upload is over for the client; the bystander waits for the last segment (c = 1)
                frames = _recv_until(
                    bystander,
                    lambda frames: any(
                        f.arbitration_id == 0x58B and f.data[0] & 0xE1 == 0x01 for f in frames
                    ),
                    "last segment",
                )
            return value, frames

        value, frames = await asyncio.to_thread(upload_and_watch)
    sdo = [f for f in frames if f.arbitration_id in (0x60B, 0x58B)]
    assert [f.arbitration_id for f in sdo] == [0x60B, 0x58B] * (len(sdo) // 2)  # request, answer, …
    initiate, *segments = [f for f in sdo if f.arbitration_id == 0x58B]
    assert initiate.data[0] & 0xE0 == 0x40 and int.from_bytes(initiate.data[4:8], "little") == len(value)
    assert [f.data[0] >> 4 & 1 for f in segments] == [i % 2 for i in range(len(segments))]  # toggle
    data = b"".join(bytes(f.data[1 : 8 - (f.data[0] >> 1 & 7)]) for f in segments)
    assert data == value == DEFAULT_BUILD.encode()


async def test_burst_reaches_the_others_in_order_and_not_the_sender() -> None:
    """Two clients of the bus: every frame of one reaches the other, in order, error frames as such."""
    async with simulator("--nodes", "11", "--quiet-master") as running:

        def exchange() -> tuple[list[can.Message], list[can.Message]]:
            with _bus(running.ready) as sender, _bus(running.ready) as receiver:
                for number in range(BURST):
                    sender.send(
                        can.Message(
                            arbitration_id=TEST_ID, data=number.to_bytes(2, "big"), is_extended_id=False
                        )
                    )
                sender.send(can.Message(arbitration_id=TEST_ID, is_error_frame=True, is_extended_id=False))
                heard = _recv_until(
                    receiver, lambda frames: any(f.is_error_frame for f in frames), "error frame"
                )
                # a marker from the receiver: anything of the sender's own would have reached it first
                receiver.send(can.Message(arbitration_id=TEST_ID + 1, data=b"end", is_extended_id=False))
                echoed = _recv_until(
                    sender, lambda frames: any(f.arbitration_id == TEST_ID + 1 for f in frames), "marker"
                )
            return heard, echoed

        heard, echoed = await asyncio.to_thread(exchange)
    mine = [f for f in heard if f.arbitration_id == TEST_ID]
    assert [int.from_bytes(f.data, "big") for f in mine if not f.is_error_frame] == list(range(BURST))
    assert mine[-1].is_error_frame
    assert not [f for f in echoed if f.arbitration_id == TEST_ID]


async def test_paced_bus_paces_a_remote_sender(tmp_path: Path) -> None:
    """With the CAN-rate model on, another process's frames take their time on the wire too."""
    config = tmp_path / "sim.toml"
    bitrate = 125000
    await asyncio.to_thread(config.write_text, f"[can]\nbitrate = {bitrate}\npaced = true\n")
    count = 100
    async with simulator("--config", str(config), "--nodes", "11", "--quiet-master") as running:
        assert running.ready["can"]["paced"] is True and running.ready["can"]["bitrate"] == bitrate

        def burst() -> list[can.Message]:
            with _bus(running.ready) as sender, _bus(running.ready) as receiver:
                for _ in range(count):
                    sender.send(can.Message(arbitration_id=TEST_ID, data=bytes(8), is_extended_id=False))
                return _recv_until(
                    receiver,
                    lambda frames: sum(f.arbitration_id == TEST_ID for f in frames) == count,
                    "burst",
                )

        frames = [f for f in await asyncio.to_thread(burst) if f.arbitration_id == TEST_ID]
    wire = CanRate(bitrate=bitrate, paced=True).frame_seconds(TEST_ID, bytes(8))
    spread = frames[-1].timestamp - frames[0].timestamp
    # the sender may run a transmit queue (up to twice its length) ahead of the wire, as on SocketCAN
    assert spread >= 0.9 * (count - 1 - 2 * SOCKETCAN_TX_QUEUE) * wire, (spread, wire)


async def test_stopping_the_simulator_drops_a_connected_client() -> None:
    async with simulator("--nodes", "11", "--quiet-master") as running:
        interface, channel = _can(running.ready)
        bus = await asyncio.to_thread(can.Bus, interface=interface, channel=channel)
        try:
            assert await stop(running, signal.SIGTERM) == 0
            # the frames sent before the stop, then the end: a close (1001), or a broken pipe when the
            # client's answer to the close finds the socket gone
            with pytest.raises((WebsocketClosed, OSError)):
                while True:
                    await asyncio.to_thread(bus.recv, WAIT)
        finally:
            await asyncio.to_thread(_leave, bus)
    assert b"Traceback" not in running.stderr


def _leave(bus: can.BusABC) -> None:
    """Shut a client down whose server may be gone."""
    try:
        bus.shutdown()
    except OSError:  # python-can-remote 0.3.0's client cannot close a connection the server closed
        socket: Any = getattr(bus, "socket", None)  # RemoteBus.socket: what it failed to close
        if socket is not None:
            socket.close()
        can.BusABC.shutdown(bus)  # only marks it shut down, so that its __del__ does not try again


def test_config_can_remote(tmp_path: Path) -> None:
    assert load_config(None).can_remote is True
    path = tmp_path / "sim.toml"
    path.write_text("[can]\nremote = false\n")
    assert load_config(path).can_remote is False
    path.write_text('[can]\nremote = "no"\n')
    with pytest.raises(ConfigError, match=r"can\.remote"):
        load_config(path)
