"""StartOTA end to end: daemon subprocess, private bus, virtual microscope, real Caddy.

A client sees the contract's streaming sequence as OTAStatusChanged signals and a GetStatus with the
document's fields; a daemon killed with SIGKILL mid-upload leaves, after its restart, that board
``failed``/``interrupted`` with its history intact.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap, wait_for_property
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from signals import SIGNAL_TIMEOUT, StatusSignals
from test_link_ota_stream import IMAGE, NEW_VERSION, NODE, OLD_VERSION, TIMING

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, default_node

#: verification shrunk to fractions of a second; one attempt, so a failure shows at once
FAST_UPDATE = (
    "[update]\nverify_settle = 0.05\nverify_window = 5.0\nverify_interval = 0.05\nretries = 0\n"
    "[firmware]\nattempts = 1\n"
)


async def microscope_for(tmp_path: Path, **faults: Any) -> VirtualMicroscope:
    node = replace(default_node(NODE), faults=NodeFaults(**faults))
    config = SimConfig(
        nodes=(node,), timing=TIMING, serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0
    )
    return VirtualMicroscope(config)


@pytest.fixture
async def signals(client: MessageBus) -> AsyncIterator[StatusSignals]:
    watcher = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    yield watcher


async def test_start_ota_streams_with_the_contracts_sequence_and_records_it(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    async with await microscope_for(tmp_path) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image,
                           config=FAST_UPDATE)  # fmt: skip
        reply = await call(client, "StartOTA", "ua{sv}", NODE, {})
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        accepted = unwrap(reply.body[0])
        assert (accepted["status"], accepted["message"]) == (
            "success",
            f"OTA update initiated for device {NODE}",
        )
        final = await signals.until("success")
        assert scope.master.slave(NODE).running_image == IMAGE

    assert final["upload_status"] == "success", final
    steps = [(s["upload_status"], s["upload_progress"]) for s in signals.statuses]
    assert steps == [
        ("command_sent", 0), ("downloading", 0), *[("uploading", p) for p in range(0, 100, 10)],
        ("flashing", 100), ("verifying", 100), ("success", 100),
    ]  # fmt: skip
    status = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
    assert {"can_id", "status", "upload_status", "upload_progress", "message", "timestamp"} <= set(status)
    assert (status["verification"], status["firmware_version"], status["job_id"]) == (
        "version",
        NEW_VERSION,
        accepted["job_id"],
    )
    (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
    assert (job["state"], job["method"], job["job_id"]) == ("success", "can", accepted["job_id"])
    assert (job["firmware_version"], job["previous_version"], job["attempt"]) == (NEW_VERSION, OLD_VERSION, 1)
    assert job["sha256"] == hashlib.sha256(IMAGE).hexdigest() and job["finished"] >= job["started"]


async def test_a_missing_image_fails_fast_and_a_second_start_is_busy(
    start_daemon: DaemonFactory, client: MessageBus, caddy: CaddyServer, served_image: str, tmp_path: Path
) -> None:
    async with await microscope_for(tmp_path, stall_at_percent=30.0) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image,
                           config=FAST_UPDATE)  # fmt: skip
        missing = await call(client, "StartOTA", "ua{sv}", 20, {})
        assert (missing.message_type, missing.error_name) == (MessageType.ERROR, names.NOT_FOUND)
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        again = await call(client, "StartOTA", "ua{sv}", NODE, {"force": Variant("b", True)})
        assert (again.message_type, again.error_name) == (MessageType.ERROR, names.BUSY)
        assert (await call(client, "Cancel", "u", NODE)).message_type is MessageType.METHOD_RETURN
    status = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
    assert (status["status"], status["error_code"]) == ("failed", "cancelled")


async def test_sigkill_mid_upload_leaves_the_board_interrupted_after_restart(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    async with await microscope_for(tmp_path, stall_at_percent=50.0) as scope:
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image)
        daemon = await start_daemon(*flags, config=FAST_UPDATE)
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        await signals.until("uploading")
        await asyncio.to_thread(daemon.kill)

        await asyncio.to_thread(daemon.start)
        status = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
        (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
        assert scope.master.slave(NODE).running_image != IMAGE  # the board kept its old image

        scope.master.slave(NODE).faults = NodeFaults()
        # the master may still wait out the killed daemon's stream before it answers the new one
        await wait_for_property(client, "MasterConnected", True)
        signals.statuses.clear()
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        final = await signals.until("success")
        history = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
        assert scope.master.slave(NODE).running_image == IMAGE
    assert (status["status"], status["error_code"]) == ("failed", "interrupted")
    assert (job["state"], job["error_code"]) == ("failed", "interrupted")
    assert final["upload_status"] == "success"
    assert [(row["state"], row.get("error_code")) for row in history] == [
        ("success", None), ("failed", "interrupted"),
    ]  # fmt: skip

    def integrity() -> Any:
        database = sqlite3.connect(daemon.state_dir / "uc2otad.sqlite3")
        try:
            return database.execute("PRAGMA integrity_check").fetchone()
        finally:
            database.close()

    assert await asyncio.to_thread(integrity) == ("ok",)


async def test_no_update_starts_while_inhibited_and_one_does_after(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    async with await microscope_for(tmp_path) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image,
                           config=FAST_UPDATE)  # fmt: skip
        (cookie,) = (await call(client, "Inhibit", "s", "lab course until 16:00")).body
        single = await call(client, "StartOTA", "ua{sv}", NODE, {})
        batch = await call(client, "StartMultipleOTA", "aua{sv}", [NODE], {})
        untouched = scope.master.slave(NODE).running_image
        assert (await call(client, "Uninhibit", "s", cookie)).message_type is MessageType.METHOD_RETURN
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        final = await signals.until("success")
        updated = scope.master.slave(NODE).running_image
    for refused in (single, batch):
        assert (refused.message_type, refused.error_name) == (MessageType.ERROR, names.INHIBITED)
    assert untouched is None
    assert (final["upload_status"], updated) == ("success", IMAGE)
    assert signals.statuses[0]["upload_status"] == "command_sent"  # nothing before the uninhibit


async def test_cancel_mid_stream_keeps_the_old_image_and_the_next_update_succeeds(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    async with await microscope_for(tmp_path, stall_at_percent=40.0, stall_seconds=0.5) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", served_image,
                           config=FAST_UPDATE)  # fmt: skip
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        await signals.until("uploading")
        cancelled = await call(client, "Cancel", "u", NODE)
        cancelled_status = await signals.until("success")
        slave = scope.master.slave(NODE)
        async with asyncio.timeout(SIGNAL_TIMEOUT):  # the slave drops the abandoned transfer first
            await slave.wait_until(lambda idle: idle.reachable and not idle.busy and not idle.transferring)
        (board,) = [b for b in unwrap((await call(client, "ScanDevices")).body[0]) if b["can_id"] == NODE]
        slave.faults = NodeFaults()
        signals.statuses.clear()
        assert (await call(client, "StartOTA", "ua{sv}", NODE, {})).message_type is MessageType.METHOD_RETURN
        final = await signals.until("success")
        updated = slave.running_image
    assert cancelled.message_type is MessageType.METHOD_RETURN, cancelled.body
    assert (cancelled_status["upload_status"], cancelled_status["error_code"]) == ("failed", "cancelled")
    assert (board["reachable"], board["fw_version"]) == (True, OLD_VERSION)
    assert (final["upload_status"], updated) == ("success", IMAGE)
