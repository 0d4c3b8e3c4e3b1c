"""The direct CAN link (``uc2otad.links.can_direct``) against the simulator's CANopen slaves, in process.

The link opens python-can's ``virtual`` interface by name on the channel of a slave's own bus, as it
opens ``socketcan``/``can0`` on a Pi. The slave's SDO server (``uc2otad.sim``) was written from the spec
and the firmware, not from this client; the client is the ``canopen`` package's. A lost frame comes
from a python-can interface of this file, registered by name for the test: the simulator has no fault
that loses frames. Timeouts are settings the tests shrink; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import can
import pytest
from espimage import build_app_image
from lossy_bus import LOSSY
from simcan import FAST, slave_on_bus

from uc2otad.errors import LinkBusyError, LinkLostError, MasterError, NodeTimeoutError
from uc2otad.links.can_direct import (
    CAN_ERR_BUSOFF,
    CAN_ERR_CRTL,
    CAN_ERR_CRTL_ACTIVE,
    CAN_ERR_CRTL_TX_PASSIVE,
    CanDirectLink,
    CanSettings,
)
from uc2otad.links.protocol import LinkCapability, UpdateLink, WifiTriggerLink
from uc2otad.sim.canopen_slave import CanOpenSlave
from uc2otad.sim.nodes import DEFAULT_BUILD, DEFAULT_VERSION, NodeFaults, NodeSpec, default_node, mac_for
from uc2otad.sim.ota_objects import OtaStatus
from uc2otad.sim.profiles import Profile
from uc2otad.sim.timing import MasterTiming

NODE = 11
IMAGE = build_app_image("esp32s3", version="v2099.3.0", segment_sizes=(0x1000, 0x100, 0x400, 0x800))
#: sixteen chunks and more: long enough to be cancelled in the middle
LARGE_IMAGE = build_app_image("esp32s3", segment_sizes=(0x4000, 0x4000, 0x4000, 0x4000))
#: slaves that beat often, so a scan hears them at once
TIMING = replace(FAST, heartbeat_interval=0.05)
#: the link's timeouts, shrunk; the size write keeps room for an erase
LINK = {
    "sdo_timeout": 0.2,
    "size_write_timeout": 2.0,
    "restart_timeout": 0.5,
    "block_timeout": 0.5,
    "ota_settle": 0.0,
    "reachable_timeout": 0.3,
    "discovery_wait": 0.2,
}


@asynccontextmanager
async def on_bus(
    spec: NodeSpec | None = None, timing: MasterTiming = TIMING, interface: str = "virtual", **settings: Any
) -> AsyncIterator[tuple[CanOpenSlave, CanDirectLink]]:
    """Node 11 (or ``spec``) on a bus of its own, and the link opened on the same channel."""
    async with slave_on_bus(spec, timing) as (slave, bus):
        link = CanDirectLink(CanSettings(interface=interface, channel=bus.channel, **{**LINK, **settings}))
        async with link:
            yield slave, link


async def booted_with(slave: CanOpenSlave, image: bytes | None) -> None:
    async with asyncio.timeout(2):
        await slave.wait_until(lambda booted: booted.running_image == image)


def error_frame(classes: int, status: int = 0) -> can.Message:
    """A SocketCAN error frame (``linux/can/error.h``): classes in the id, controller status in byte 1."""
    return can.Message(arbitration_id=classes, data=bytes([0, status, 0, 0, 0, 0, 0, 0]), is_error_frame=True)


def test_the_link_satisfies_the_update_protocol() -> None:
    link: UpdateLink = CanDirectLink()
    wifi: WifiTriggerLink = CanDirectLink()  # structurally: it offers the WiFi trigger, and refuses it
    assert wifi.capabilities == frozenset()
    assert link.name == "can:socketcan:can0"
    assert link.identity is None  # no master in the path
    assert link.capabilities == frozenset()  # closed


async def test_discovery_lists_the_node_with_its_version_and_build() -> None:
    async with on_bus() as (_slave, link):
        assert link.capabilities == {LinkCapability.STREAM}
        scan = await link.scan()
    node = scan.node(NODE)
    assert node is not None
    assert (node.role, node.reachable, node.answered, node.status) == ("motor", True, True, "idle")
    assert (node.fw_version, node.build, node.mac) == (DEFAULT_VERSION, DEFAULT_BUILD, mac_for(NODE))
    assert scan.master is None


async def test_a_probe_finds_a_node_that_only_answers_sdo() -> None:
    async with on_bus(timing=replace(TIMING, heartbeat_interval=60.0)) as (_slave, link):
        assert await link.scan() == await link.scan()  # nothing heard since it opened, after its boot-up
        scan = await link.scan(probe_range=(2, 20))
    assert [node.can_id for node in scan.nodes] == [NODE]


async def test_an_image_streams_in_and_the_node_boots_it() -> None:
    seen: list[tuple[int, int]] = []
    flashing: list[bool] = []
    async with on_bus() as (slave, link):
        since = asyncio.get_running_loop().time()
        result = await link.stream_ota(
            NODE,
            IMAGE,
            progress=lambda done, size: seen.append((done, size)),
            on_flashing=lambda: flashing.append(True),
        )
        assert await link.wait_for_boot(NODE, 2.0, since=since)  # the boot-up message: reboot evidence
        await booted_with(slave, IMAGE)
    assert (result.node_id, result.size, result.crc32) == (NODE, len(IMAGE), zlib.crc32(IMAGE))
    assert result.chunks == -(-len(IMAGE) // 4096)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1] == (len(IMAGE), len(IMAGE))
    assert flashing == [True]


async def test_a_restart_is_seen_as_a_boot_up() -> None:
    async with on_bus() as (slave, link):
        since = asyncio.get_running_loop().time()
        await link.restart_node(NODE)
        assert await link.wait_for_boot(NODE, 2.0, since=since)
    assert slave.boots == 2


async def test_a_boot_up_is_not_invented() -> None:
    async with on_bus() as (_slave, link):
        assert not await link.wait_for_boot(NODE, 0.2)


async def test_a_slave_abort_is_the_masters_error_with_the_slaves_code() -> None:
    spec = replace(default_node(NODE), faults=NodeFaults(corrupt_offset=100))
    async with on_bus(spec) as (slave, link):
        with pytest.raises(MasterError) as caught:
            await link.stream_ota(NODE, IMAGE)
        assert slave.running_image is None
    error = caught.value
    assert not isinstance(error, TimeoutError)
    assert (error.code, error.node_id, error.error_code) == ("sdo_end_failed", NODE, "master_error")
    assert error.details["ota_error"] == "crc_mismatch"  # 0x2F05 = 4, read back
    assert error.details["abort_code"] == "0x08000020"  # the abort for a store failure (CiA 301)


async def test_an_image_larger_than_the_partition_is_refused_at_the_size_write() -> None:
    async with on_bus() as (_slave, link):
        with pytest.raises(MasterError) as caught:
            await link.stream_ota(NODE, b"\xe9" + bytes(0x140000))
    assert caught.value.code == "size_write_failed"
    assert caught.value.details["ota_error"] == "size_too_large"


async def test_a_node_never_heard_is_unreachable() -> None:
    spec = replace(default_node(NODE), online=False)
    async with on_bus(spec) as (_slave, link):
        with pytest.raises(MasterError) as caught:
            await link.stream_ota(NODE, IMAGE)
    assert caught.value.code == "slave_unreachable"


async def test_a_node_gone_silent_is_a_timeout() -> None:
    async with on_bus() as (slave, link):
        assert await link.wait_heard(NODE, 1.0)
        slave.set_online(False)
        with pytest.raises(NodeTimeoutError) as caught:
            await link.stream_ota(NODE, IMAGE)
    assert isinstance(caught.value, TimeoutError)
    assert (caught.value.code, caught.value.error_code) == ("crc_write_failed", "upload_timeout")


async def test_a_node_that_stalls_mid_image_is_a_timeout() -> None:
    spec = replace(default_node(NODE), faults=NodeFaults(stall_at_percent=50))
    async with on_bus(spec) as (slave, link):
        with pytest.raises(NodeTimeoutError) as caught:
            await link.stream_ota(NODE, IMAGE)
        assert slave.running_image is None
    assert caught.value.code == "sdo_chunk_failed"


async def test_a_lost_acknowledgement_is_an_error(lossy: dict[str, Any]) -> None:
    # the node's first sub-block acknowledgement (0xA2) never reaches the link: the node waits for the
    # next sub-block, the link for the acknowledgement; CANopenNode's sub-block timeout (0.7 of its SDO
    # timeout, CO_SDOserver.c:338, 1186-1198 @063e5a6) acknowledges again, naming no segment of the new
    # sub-block; the link takes that for the lost one and sends the sub-block again, which the node
    # takes as more data: more than the initiate indicated, "length too high" (:528-533)
    lossy["receive"] = lambda msg: msg.arbitration_id == 0x580 + NODE and msg.data[0] == 0xA2
    async with on_bus(interface=LOSSY) as (slave, link):
        with pytest.raises(MasterError) as caught:
            await link.stream_ota(NODE, IMAGE)
        assert slave.running_image is None
    assert (caught.value.code, caught.value.details["abort_code"]) == ("sdo_chunk_failed", "0x06070012")


async def test_a_lost_segment_is_sent_again(lossy: dict[str, Any]) -> None:
    # the fifth segment of the first sub-block (sequence number 5) never reaches the node
    lossy["send"] = lambda msg: msg.arbitration_id == 0x600 + NODE and msg.data[0] == 0x05
    async with on_bus(interface=LOSSY) as (slave, link):
        await link.stream_ota(NODE, IMAGE)
        await booted_with(slave, IMAGE)
    assert lossy["send"] is None  # it was lost


@pytest.mark.parametrize(("size_write_timeout", "succeeds"), [(2.0, True), (0.2, False)])
async def test_the_size_write_waits_for_the_erase(size_write_timeout: float, succeeds: bool) -> None:
    # FW-main erases the partition before it answers the size write: 0.6 s, longer than canopen's
    # 0.3 s default and the master's 250 ms
    spec = replace(default_node(NODE), profile=Profile.FW_MAIN_2026_07)
    timing = replace(TIMING, partition_erase_time=0.6, ota_idle_reset=30.0)
    async with on_bus(spec, timing, size_write_timeout=size_write_timeout) as (slave, link):
        if succeeds:
            await link.stream_ota(NODE, IMAGE)
            await booted_with(slave, IMAGE)
            return
        with pytest.raises(NodeTimeoutError) as caught:
            await link.stream_ota(NODE, IMAGE)
    assert caught.value.code == "size_write_failed"


async def test_cancel_keeps_the_old_image() -> None:
    async with on_bus(timing=replace(TIMING, ota_idle_reset=30.0)) as (slave, link):

        def cancel(_done: int, _size: int) -> None:
            task.cancel()  # after the first chunk

        task = asyncio.create_task(link.stream_ota(NODE, LARGE_IMAGE, progress=cancel))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert slave.ota_status is OtaStatus.IDLE  # size 0 reset it at once, not its 30 s watchdog
        assert slave.running_image is None
        await link.stream_ota(NODE, IMAGE)  # the link and the node take the next stream
        await booted_with(slave, IMAGE)


async def test_the_link_is_held_while_it_streams() -> None:
    async with on_bus() as (_slave, link):
        held, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with link.exclusive("another stream"):
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await held.wait()
        with pytest.raises(LinkBusyError):
            await link.stream_ota(NODE, IMAGE)
        release.set()
        await holder


async def test_tasks_started_inside_the_hold_may_use_the_link() -> None:
    # the hold is a context variable (links/holder.py): a task inherits it from the block that starts it
    async with on_bus() as (_slave, link):
        async with link.exclusive("a stream and its helpers"):
            inside = asyncio.create_task(link.scan())
            assert (await inside).node(NODE) is not None
        release = asyncio.Event()

        async def outsider() -> None:
            await release.wait()
            await link.scan()

        task = asyncio.create_task(outsider())  # started outside the hold
        async with link.exclusive("a stream"):
            release.set()
            with pytest.raises(LinkBusyError, match="held for a stream"):
                await task


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (error_frame(CAN_ERR_BUSOFF), "bus-off"),
        (error_frame(CAN_ERR_CRTL, CAN_ERR_CRTL_TX_PASSIVE), "error-passive"),
    ],
)
async def test_bus_off_and_error_passive_are_link_lost(frame: can.Message, reason: str) -> None:
    async with on_bus() as (_slave, link):
        reporter = can.Bus(interface="virtual", channel=link.settings.channel)
        try:
            with pytest.raises(LinkLostError, match=reason) as caught:
                await link.stream_ota(NODE, LARGE_IMAGE, progress=lambda _done, _size: reporter.send(frame))
            assert caught.value.error_code == "link_lost"
            with pytest.raises(LinkLostError, match=reason):
                await link.scan()
            health = await link.bus_health()
            assert health.bus_state == reason.replace("-", "_")
            reporter.send(error_frame(CAN_ERR_CRTL, CAN_ERR_CRTL_ACTIVE))  # the controller recovered
            assert await link.wait_usable(2.0)
            assert (await link.bus_health()).bus_state == "error_active"
            assert (await link.scan()).node(NODE) is not None
        finally:
            reporter.shutdown()
