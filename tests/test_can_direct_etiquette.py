"""The direct CAN link's manners: it keeps off a node another client talks to, survives its interface
failing, and refuses the WiFi trigger it cannot relay.

- Etiquette: the node has one SDO server (``lib/uc2_od/OD.h:23`` @063e5a6), so the link never streams to
  a node while another CANopen client — the master CAN HAT, a PC tool — was heard sending it SDO
  requests within ``foreign_sdo_quiet``. The other client here is :class:`simcan.RawPeer`, another port
  of the slave's bus; a bystander port checks what the link sent, with a marker frame sent after the
  refusal (a virtual bus delivers frames in the order they were sent).
- A failing interface: the simulator's bus served across processes by python-can-remote
  (:class:`~uc2otad.sim.remote_bus.RemoteBusServer`), whose server is stopped mid-stream and while the
  link is idle; and python-can interfaces of this file that raise what python-can-remote raises
  (``BrokenPipeError`` on send, ``ConnectionResetError`` on receive, ``OSError`` on shutdown), registered
  by name for the test.

Timeouts are settings the tests shrink; every wait is for a condition, never a sleep.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import can
import pytest
from can.interfaces.virtual import VirtualBus
from espimage import build_app_image
from simcan import FAST, RawPeer, raw_peer, slave_on_bus

from uc2otad.errors import (
    ConfigError,
    LinkBusyError,
    LinkLostError,
    MasterUnsupportedError,
)
from uc2otad.links.can_direct import FOREIGN_SDO_QUIET, CanDirectLink, CanSettings
from uc2otad.links.protocol import WifiTriggerLink
from uc2otad.sim.can_bus import CanPort, SimCanBus
from uc2otad.sim.canopen_slave import CanOpenSlave
from uc2otad.sim.remote_bus import RemoteBusServer

NODE = 11
IMAGE = build_app_image("esp32s3", version="v2099.3.0", segment_sizes=(0x1000, 0x100, 0x400, 0x800))
#: sixteen chunks and more: long enough to be stopped in the middle
LARGE_IMAGE = build_app_image("esp32s3", segment_sizes=(0x4000, 0x4000, 0x4000, 0x4000))
TIMING = replace(FAST, heartbeat_interval=0.05)
#: the link's timeouts, shrunk; the block timeout is long, so that only a prompt LinkLostError passes
LINK: dict[str, Any] = {
    "sdo_timeout": 0.2,
    "size_write_timeout": 2.0,
    "restart_timeout": 0.5,
    "block_timeout": 30.0,
    "ota_settle": 0.0,
    "reachable_timeout": 1.0,
    "discovery_wait": 0.2,
}
#: well under the block timeout: a loss must end the stream this fast
PROMPT = 5.0
#: an SDO upload request for 0x1000 (client command specifier 2), as any client sends it
UPLOAD_1000 = bytes([0x40]) + struct.pack("<HB", 0x1000, 0) + bytes(4)
MARKER = 0x7C0
FAILING = "uc2otad-test-failing"
#: what the failing interface raises, and where: "send", "recv", "shutdown" → an exception, or nothing
_FAIL: dict[str, BaseException | None] = {"send": None, "recv": None, "shutdown": None}


class FailingVirtualBus(VirtualBus):
    """python-can's virtual bus failing as python-can-remote's client does when its server is gone."""

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        failure = _FAIL["send"]
        if failure is not None:
            raise failure
        super().send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        failure = _FAIL["recv"]
        if failure is not None:
            raise failure
        return super()._recv_internal(timeout)

    def shutdown(self) -> None:
        super().shutdown()
        failure = _FAIL["shutdown"]
        if failure is not None:
            raise failure


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> dict[str, BaseException | None]:
    """The failing interface, registered with python-can under :data:`FAILING`."""
    monkeypatch.setitem(can.interfaces.BACKENDS, FAILING, (__name__, "FailingVirtualBus"))
    monkeypatch.setattr("can.util.VALID_INTERFACES", can.interfaces.VALID_INTERFACES | {FAILING})
    for key in _FAIL:
        monkeypatch.setitem(_FAIL, key, None)
    return _FAIL


@pytest.fixture
def thread_failures(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """Exceptions that end a thread unhandled: there must be none."""
    seen: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    return seen


@asynccontextmanager
async def on_bus(
    interface: str = "virtual", **settings: Any
) -> AsyncIterator[tuple[CanOpenSlave, SimCanBus, CanDirectLink]]:
    """Node 11 on a bus of its own, and the link opened on the same channel."""
    async with slave_on_bus(timing=TIMING) as (slave, bus):
        link = CanDirectLink(CanSettings(interface=interface, channel=bus.channel, **{**LINK, **settings}))
        async with link:
            yield slave, bus, link


@asynccontextmanager
async def on_remote_bus() -> AsyncIterator[tuple[RemoteBusServer, CanDirectLink]]:
    """Node 11's bus served by python-can-remote, and the link joined as another process would."""
    async with slave_on_bus(timing=TIMING) as (_slave, bus):
        server = RemoteBusServer(bus)
        await server.start()
        try:
            link = CanDirectLink(CanSettings(interface="remote", channel=server.url, **LINK))
            await link.open()
            try:
                yield server, link
            finally:
                await link.close()  # never raises, whatever became of the server
        finally:
            await server.stop()


class Bystander:
    """Another port of the bus: every frame the others send, up to a marker."""

    def __init__(self, bus: SimCanBus) -> None:
        self.frames: list[can.Message] = []
        self._marker = asyncio.Event()
        self._port: CanPort = bus.open_port([self._on_frame], loop=asyncio.get_running_loop())

    def _on_frame(self, frame: can.Message) -> None:
        if frame.arbitration_id == MARKER:
            self._marker.set()
        elif not frame.is_error_frame:
            self.frames.append(frame)

    async def sent_by_others(self, talker: RawPeer) -> list[can.Message]:
        """What the others sent before now: the talker sends a marker, which comes after all of it."""
        self._marker.clear()
        talker.send(MARKER, b"end")
        async with asyncio.timeout(2.0):
            await self._marker.wait()
        return list(self.frames)

    async def close(self) -> None:
        await self._port.close()


@asynccontextmanager
async def bystander_on(bus: SimCanBus) -> AsyncIterator[Bystander]:
    bystander = Bystander(bus)
    try:
        yield bystander
    finally:
        await bystander.close()


# ---- etiquette ---------------------------------------------------------------------------------------


def test_foreign_sdo_quiet_is_a_setting() -> None:
    assert CanSettings().foreign_sdo_quiet == FOREIGN_SDO_QUIET == 2.0
    assert CanSettings(foreign_sdo_quiet=0.0).foreign_sdo_quiet == 0.0
    with pytest.raises(ConfigError, match=r"can\.foreign_sdo_quiet"):
        CanSettings(foreign_sdo_quiet=-0.1)


async def test_no_stream_to_a_node_another_client_talks_to() -> None:
    # the other client is not quiet for foreign_sdo_quiet (2 s) within reachable_timeout (0.3 s here)
    on_a_bus = on_bus(reachable_timeout=0.3)
    async with on_a_bus as (slave, bus, link), raw_peer(bus) as other, bystander_on(bus) as bystander:
        assert await link.wait_heard(NODE, 2.0)
        other.send(0x600 + NODE, UPLOAD_1000)  # another client reads the node's 0x1000
        assert await link.wait_other_client(NODE, 2.0)
        assert link.other_client_talking(NODE)
        await bystander.sent_by_others(other)
        bystander.frames.clear()  # from here on: what the link sends
        with pytest.raises(
            LinkBusyError, match=f"node {NODE}: another CANopen client is talking to it"
        ) as caught:
            await link.stream_ota(NODE, IMAGE)
        sent = await bystander.sent_by_others(other)
        assert slave.running_image is None
    assert caught.value.error_code is None  # as every LinkBusyError: the job waits, it did not fail
    assert not [frame for frame in sent if frame.arbitration_id == 0x600 + NODE]  # the link sent nothing


async def test_the_link_waits_for_another_clients_read_to_end_and_then_streams() -> None:
    # a master's scan reads the node for a moment: the stream waits until it has been quiet for
    # foreign_sdo_quiet (within reachable_timeout), then goes ahead
    async with on_bus(foreign_sdo_quiet=0.3) as (slave, bus, link), raw_peer(bus) as other:
        other.send(0x600 + NODE, UPLOAD_1000)
        assert await link.wait_other_client(NODE, 2.0)
        assert link.other_client_talking(NODE)
        await link.stream_ota(NODE, IMAGE)
        assert not link.other_client_talking(NODE)
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image == IMAGE)


async def test_the_links_own_requests_are_not_another_client() -> None:
    async with on_bus() as (_slave, _bus, link):
        assert (await link.scan()).node(NODE) is not None  # SDO reads of 0x1000, 0x2508, …
        await link.stream_ota(NODE, IMAGE)  # a whole stream: hundreds of 0x600 + id frames
        assert not link.other_client_talking(NODE)


# ---- the WiFi trigger: refused --------------------------------------------------------------------


async def test_the_wifi_trigger_is_refused_sending_nothing() -> None:
    async with on_bus() as (_slave, bus, link), raw_peer(bus) as other, bystander_on(bus) as bystander:
        wifi: WifiTriggerLink = link  # the protocol, structurally (mypy checks the assignment)
        bystander.frames.clear()
        with pytest.raises(MasterUnsupportedError) as caught:
            await wifi.start_wifi_ota(NODE, "uc2-lab", "uc2-lab-pass", on_accepted=lambda _reply: None)
        sent = await bystander.sent_by_others(other)
    assert (caught.value.code, caught.value.node_id) == ("no_master", NODE)
    assert "uc2-lab-pass" not in str(caught.value)
    assert not [frame for frame in sent if frame.arbitration_id & 0x780 == 0x600]


# ---- a failing interface ------------------------------------------------------------------------------


async def test_the_remote_server_stopping_mid_stream_is_link_lost(
    thread_failures: list[threading.ExceptHookArgs],
) -> None:
    async with on_remote_bus() as (server, link):
        assert await link.wait_heard(NODE, 2.0)
        stopping: list[asyncio.Task[None]] = []

        def stop_server(_done: int, _size: int) -> None:
            if not stopping:  # after the first chunk
                stopping.append(asyncio.create_task(server.stop()))

        with pytest.raises(LinkLostError) as caught:
            async with asyncio.timeout(PROMPT):
                await link.stream_ota(NODE, LARGE_IMAGE, progress=stop_server)
        await stopping[0]
        assert caught.value.error_code == "link_lost"
        assert await link.wait_lost(PROMPT) is not None
        with pytest.raises(LinkLostError, match="the CAN interface failed"):
            await link.scan()
        with pytest.raises(LinkLostError):
            await link.stream_ota(NODE, IMAGE)
    assert not thread_failures


async def test_the_remote_server_stopping_while_idle_marks_the_link_lost(
    thread_failures: list[threading.ExceptHookArgs],
) -> None:
    async with on_remote_bus() as (server, link):
        assert await link.wait_heard(NODE, 2.0)
        await server.stop()
        reason = await link.wait_lost(PROMPT)
        assert reason is not None and reason.startswith("the CAN interface failed: ")
        assert link.lost == reason
        with pytest.raises(LinkLostError, match="the CAN interface failed") as caught:
            await link.restart_node(NODE)
        assert caught.value.error_code == "link_lost"
    assert not thread_failures


async def test_a_send_the_interface_refuses_is_link_lost(failing: dict[str, BaseException | None]) -> None:
    async with on_bus(interface=FAILING) as (_slave, _bus, link):
        assert await link.wait_heard(NODE, 2.0)
        failing["send"] = BrokenPipeError(32, "Broken pipe")  # python-can-remote's socket, server gone
        with pytest.raises(LinkLostError, match="BrokenPipeError") as caught:
            async with asyncio.timeout(PROMPT):
                await link.stream_ota(NODE, IMAGE)
        assert caught.value.error_code == "link_lost"
        assert link.lost is not None and "the CAN interface failed" in link.lost
        with pytest.raises(LinkLostError):
            await link.scan()


async def test_a_receive_that_fails_ends_the_reader_and_marks_the_link_lost(
    failing: dict[str, BaseException | None], thread_failures: list[threading.ExceptHookArgs]
) -> None:
    async with on_bus(interface=FAILING) as (_slave, _bus, link):
        assert await link.wait_heard(NODE, 2.0)
        failing["recv"] = ConnectionResetError(104, "Connection reset by peer")
        reason = await link.wait_lost(PROMPT)
        assert reason is not None and "ConnectionResetError" in reason
        with pytest.raises(LinkLostError):
            await link.stream_ota(NODE, IMAGE)
    assert not thread_failures  # the reader ended quietly: no unhandled exception, no busy loop


async def test_close_never_raises(failing: dict[str, BaseException | None]) -> None:
    async with on_bus(interface=FAILING) as (_slave, _bus, link):
        failing["shutdown"] = OSError(9, "Bad file descriptor")  # python-can-remote after its server left
    assert not link.is_open
    await link.close()  # twice
