"""The checks before an update (issue 19, ``engine/health.py``), through the daemon: a bus-off master and
a silent node are refused with ``Unhealthy`` and their reason, nothing is sent to the board, and
``skip_checks`` lets a technician go ahead anyway.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from conftest import DaemonFactory
from dbus_client import call, unwrap
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from test_daemon_update import FAST_UPDATE
from test_link_ota_stream import IMAGE, NODE, TIMING

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.timing import MasterTiming

#: the master forgets a node it has not heard for 1.5 s (FW-main: 5 s, ``CANopenModule.cpp:611-633``):
#: longer than the 1 s heartbeat period, so a node that is on stays heard
SHORT_MEMORY = replace(TIMING, node_liveness=1.5)
#: seconds a test waits for the master to report a node gone
WAIT = 10.0


def microscope_for(tmp_path: Path, timing: MasterTiming = TIMING) -> VirtualMicroscope:
    config = SimConfig(
        nodes=(default_node(NODE), default_node(12)),
        timing=timing,
        serial_link=tmp_path / "ttyHAT",
        socket=False,
        ota_port=0,
    )
    return VirtualMicroscope(config)


async def start(client: MessageBus, **options: Any) -> Message:
    return await call(client, "StartOTA", "ua{sv}", NODE, options)


def refused(reply: Message) -> tuple[MessageType, str | None]:
    return reply.message_type, reply.error_name


async def test_a_bus_off_master_is_refused_until_the_check_is_skipped(
    start_daemon: DaemonFactory, client: MessageBus, served_image: str, tmp_path: Path
) -> None:
    async with microscope_for(tmp_path) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image,
                           config=FAST_UPDATE)  # fmt: skip
        scope.master.set_bus_health(state="bus_off", tx_errors=255)
        bus_off = await start(client)
        scope.master.set_bus_health(tx_errors=127, rx_errors=3)  # running again, but counting errors
        counting = await start(client)
        skipped = await start(client, skip_checks=Variant("as", ["errors"]))
        slave = scope.master.slave(NODE)
        async with asyncio.timeout(WAIT):
            await slave.wait_until(lambda booted: booted.running_image == IMAGE)
    assert refused(bus_off) == (MessageType.ERROR, names.UNHEALTHY)
    assert "bus-off" in bus_off.body[0] and "check 'bus'" in bus_off.body[0]
    assert refused(counting) == (MessageType.ERROR, names.UNHEALTHY)
    assert "tx=127" in counting.body[0] and "check 'errors'" in counting.body[0]
    assert skipped.message_type is MessageType.METHOD_RETURN, skipped.body


async def test_a_silent_node_is_refused_and_nothing_is_sent_to_it(
    start_daemon: DaemonFactory, client: MessageBus, served_image: str, tmp_path: Path
) -> None:
    async with microscope_for(tmp_path, SHORT_MEMORY) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image,
                           config=FAST_UPDATE)  # fmt: skip
        scope.master.set_node_online(NODE, False)
        async with asyncio.timeout(WAIT):  # until the master's scan no longer counts it as heard
            while any(b["can_id"] == NODE and b["reachable"] for b in await scan(client)):  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # the master's 1.5 s memory runs out: no event to wait on
        silent = await start(client)
        unknown = await start(client, skip_checks=Variant("as", ["nod"]))
        status = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
    assert refused(silent) == (MessageType.ERROR, names.UNHEALTHY)
    assert f"board {NODE} was not heard" in silent.body[0] and "check 'node'" in silent.body[0]
    assert refused(unknown) == (MessageType.ERROR, names.INVALID_ARGUMENT)
    assert status["status"] == "idle"  # no job: the board got nothing


async def scan(client: MessageBus) -> list[dict[str, Any]]:
    reply = await call(client, "ScanDevices")
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    boards: list[dict[str, Any]] = unwrap(reply.body[0])
    return boards
