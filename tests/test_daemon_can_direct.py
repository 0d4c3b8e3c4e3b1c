"""The direct CAN link through the daemon (issue 18): no master configured, the daemon on the bus itself.

The daemon runs as a subprocess on a private bus with ``[can] interface = "remote"``: python-can-remote's
client, joined to the virtual microscope's CAN bus that the simulator serves on 127.0.0.1 (this machine
has no vcan). The simulated CANopen slave (node 11) answers as FW-main's does; its master sits on the
same bus and is never used. A client sees the contract's streaming sequence with ``link`` "can"; the
slave's abort, a silent slave and a lost frame end with the contract's error codes; Cancel leaves the
old image; ScanDevices lists the boards the link hears.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import can
import pytest
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap, wait_for_property
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from signals import StatusSignals
from test_link_ota_stream import IMAGE, NEW_VERSION, NODE, OLD_VERSION, TIMING

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, default_node
from uc2otad.sim.ota_objects import OtaStatus

#: verification shrunk; one attempt, so a failure shows at once; the block transfer's answers within
#: 2 s (FW-main's master waits 15 s) so that a silent slave shows quickly
FAST_UPDATE = """
[update]
verify_settle = 0.05
verify_window = 5.0
verify_interval = 0.05
retries = 0
[firmware]
attempts = 1
[can]
interface = "remote"
channel = "{channel}"
block_timeout = 2.0
"""
#: a block download's segment from the client (the daemon) to node 11: COB-ID 0x600 + id, sequence
#: number in the low 7 bits (CiA 301 §7.2.4.3.9); the fifth of the first sub-block
SEGMENT_5 = 0x05
#: the slave's answer to a sub-block: scs 5, subcommand 2 (block download response), 0xA2
BLOCK_ACK = 0xA2


@pytest.fixture
async def signals(client: MessageBus) -> AsyncIterator[StatusSignals]:
    watcher = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    yield watcher


#: the slave's SDO server gives up on a silent client after 1 s (its sub-block timeout 0.7 s), before
#: the daemon's 2 s, as FW-main's 5 s (``CANopenModule.cpp:99`` @063e5a6) comes before its master's
#: 15 s; long enough that a loaded machine's pause between two sub-blocks is not taken for a lost frame
SLAVE_TIMING = replace(TIMING, sdo_server_timeout=1.0)


def microscope_for(tmp_path: Path, **faults: Any) -> VirtualMicroscope:
    node = replace(default_node(NODE), faults=NodeFaults(**faults))
    config = SimConfig(
        nodes=(node,), timing=SLAVE_TIMING, serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0
    )
    return VirtualMicroscope(config)


async def start_direct(
    start_daemon: DaemonFactory, client: MessageBus, scope: VirtualMicroscope, url: str
) -> None:
    """The daemon with the direct link to ``scope``'s bus and no master, once its link is open."""
    assert scope.can_server is not None
    await start_daemon("--firmware-server", url, config=FAST_UPDATE.format(channel=scope.can_server.url))
    await wait_for_property(client, "CanConnected", True)


async def final_status(client: MessageBus, signals: StatusSignals) -> dict[str, Any]:
    await signals.until_final()
    status: dict[str, Any] = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
    return status


async def test_an_update_over_the_direct_link_ends_success_with_the_reboot_seen(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    async with microscope_for(tmp_path) as scope:
        await start_direct(start_daemon, client, scope, served_image)
        reply = await call(client, "StartOTA", "ua{sv}", NODE, {})
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        final = await signals.until("success")
        assert scope.master.slave(NODE).running_image == IMAGE

    steps = [status["upload_status"] for status in signals.statuses]
    assert steps[:3] == ["command_sent", "downloading", "uploading"]
    assert steps[-3:] == ["flashing", "verifying", "success"]
    assert {status["link"] for status in signals.statuses} == {"can"}
    assert (final["verification"], final["firmware_version"], final["method"]) == (
        "version",
        NEW_VERSION,
        "can",
    )
    (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
    assert (job["state"], job["previous_version"]) == ("success", OLD_VERSION)
    assert job["sha256"] == hashlib.sha256(IMAGE).hexdigest()


async def test_scan_lists_the_boards_the_direct_link_hears(
    start_daemon: DaemonFactory, client: MessageBus, served_image: str, tmp_path: Path
) -> None:
    async with microscope_for(tmp_path) as scope:
        await start_direct(start_daemon, client, scope, served_image)
        reply = await call(client, "ScanDevices", "")
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    boards = unwrap(reply.body[0])
    # no master entry: none is configured; the node as the direct link read it
    assert [(b["can_id"], b["link"], b["role"], b["fw_version"]) for b in boards] == [
        (NODE, "can", "motor", OLD_VERSION)
    ]


async def test_a_slave_that_refuses_the_image_is_a_master_error_with_its_reason(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    # a flash write goes wrong: the slave's CRC check refuses the image and aborts the block transfer
    async with microscope_for(tmp_path, corrupt_offset=0x100) as scope:
        await start_direct(start_daemon, client, scope, served_image)
        await call(client, "StartOTA", "ua{sv}", NODE, {})
        status = await final_status(client, signals)
        assert scope.master.slave(NODE).running_image != IMAGE
    assert (status["status"], status["error_code"], status["link"]) == ("failed", "master_error", "can")
    assert "sdo_end_failed" in status["upload_error"] and "crc_mismatch" in status["upload_error"]


async def test_a_silent_slave_is_an_upload_timeout(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    # the slave stops answering halfway: the block transfer's next answer never comes (block_timeout)
    async with microscope_for(tmp_path, stall_at_percent=50.0) as scope:
        await start_direct(start_daemon, client, scope, served_image)
        await call(client, "StartOTA", "ua{sv}", NODE, {})
        status = await final_status(client, signals)
        assert scope.master.slave(NODE).running_image != IMAGE
    assert (status["status"], status["error_code"]) == ("failed", "upload_timeout")
    assert "sdo_chunk_failed" in status["upload_error"]


async def test_a_lost_acknowledgement_is_a_master_error_and_a_lost_segment_is_sent_again(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    # the slave's first sub-block acknowledgement is lost: the slave waits for the next sub-block, the
    # daemon for the acknowledgement; CANopenNode's sub-block timeout (0.7 of its SDO timeout,
    # CO_SDOserver.c:338, 1186-1198 @063e5a6) acknowledges again naming no segment, the daemon sends the
    # sub-block again, and the slave, having taken it once, has more data than indicated: "length of
    # service parameter too high" (0x06070012, :528-533)
    async with microscope_for(tmp_path) as scope:
        loss = scope.master.can_bus.loss
        await start_direct(start_daemon, client, scope, served_image)
        loss.lose_next(lambda m: m.arbitration_id == 0x580 + NODE and m.data[0] == BLOCK_ACK)
        await call(client, "StartOTA", "ua{sv}", NODE, {})
        lost_ack = await final_status(client, signals)
        assert scope.master.slave(NODE).running_image != IMAGE

        # a segment lost on its way to the slave: its acknowledgement names the last one in sequence,
        # and the daemon sends the rest of the sub-block again (CiA 301 block download)
        signals.statuses.clear()
        loss.lose_next(lambda m: m.arbitration_id == 0x600 + NODE and m.data[0] == SEGMENT_5)
        await call(client, "StartOTA", "ua{sv}", NODE, {})
        retransmitted = await final_status(client, signals)
        assert scope.master.slave(NODE).running_image == IMAGE
    assert [_lost_kind(m) for m in loss.lost] == ["block ack", "segment 5"]
    assert (lost_ack["status"], lost_ack["error_code"]) == ("failed", "master_error")
    assert "sdo_chunk_failed" in lost_ack["upload_error"] and "0x06070012" in lost_ack["upload_error"]
    assert (retransmitted["status"], retransmitted["upload_status"]) == ("success", "success")


def _lost_kind(message: can.Message) -> str:
    return "block ack" if message.arbitration_id == 0x580 + NODE else f"segment {message.data[0]}"


async def test_cancel_mid_stream_keeps_the_old_image(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    # the slave pauses halfway for half a second (less than the daemon's 2 s): the stream is certainly
    # under way when Cancel comes
    async with microscope_for(tmp_path, stall_at_percent=50.0, stall_seconds=0.5) as scope:
        await start_direct(start_daemon, client, scope, served_image)
        await call(client, "StartOTA", "ua{sv}", NODE, {})
        await signals.until_uploading(20)
        cancelled = await call(client, "Cancel", "u", NODE)
        assert cancelled.message_type is MessageType.METHOD_RETURN, cancelled.body
        status = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
        slave = scope.master.slave(NODE)
        assert slave.running_image != IMAGE

        # the board is usable at once: the daemon reset its OTA (size 0), so a new update goes through
        slave.faults = NodeFaults()
        assert slave.ota_status is OtaStatus.IDLE
        signals.statuses.clear()
        reply = await call(client, "StartOTA", "ua{sv}", NODE, {"force": Variant("b", True)})
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        final = await final_status(client, signals)
        assert slave.running_image == IMAGE
    assert (status["status"], status["error_code"]) == ("failed", "cancelled")
    assert final["status"] == "success"


async def test_without_any_link_an_update_is_not_connected(
    start_daemon: DaemonFactory, client: MessageBus, served_image: str
) -> None:
    await start_daemon("--firmware-server", served_image, config="")
    reply = await call(client, "StartOTA", "ua{sv}", NODE, {"link": Variant("s", "can")})
    assert (reply.message_type, reply.error_name) == (MessageType.ERROR, names.NOT_CONNECTED)


async def test_with_both_links_a_canopen_board_goes_direct_unless_the_master_is_asked_for(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    async with microscope_for(tmp_path) as scope:
        assert scope.can_server is not None
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image,
                           config=FAST_UPDATE.format(channel=scope.can_server.url))  # fmt: skip
        await wait_for_property(client, "CanConnected", True)
        await wait_for_property(client, "MasterConnected", True)
        boards = unwrap((await call(client, "ScanDevices", "")).body[0])

        await call(client, "StartOTA", "ua{sv}", NODE, {"link": Variant("s", "master")})
        through_master = await final_status(client, signals)
        signals.statuses.clear()
        await call(client, "StartOTA", "ua{sv}", NODE, {"force": Variant("b", True)})
        direct = await final_status(client, signals)
        assert scope.master.slave(NODE).running_image == IMAGE
    # the master first, as the master reports itself; the node once, by the link an update takes
    assert [(b["can_id"], b["link"]) for b in boards] == [(1, "master"), (NODE, "can")]
    assert (through_master["status"], through_master["link"]) == ("success", "master")
    assert (direct["status"], direct["link"]) == ("success", "can"), direct.get("upload_error")
