"""Rollback (issue 20) through the daemon: two updates of a board, then Rollback puts the first image back
byte for byte, from the images the cache keeps (the server offers only the second by then); a board
with one update has nothing to go back to (NotFound); ClearFirmwareCache keeps the images a rollback
needs, ``include_known_good`` deletes them. With ``update.rollback_on_unhealthy`` an update that went
well but leaves the bus counting errors is rolled back by itself, and a failed verification is not.

The daemon runs as a subprocess on a private bus, with Caddy serving the images and the virtual
microscope (FW-main CANopen master and slave; a legacy one for the WiFi method, whose rollback goes
over WiFi as its updates do).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import test_daemon_wifi as wifi
from caddy import CaddyServer
from conftest import DaemonFactory
from daemon_process import DaemonProcess
from dbus_client import add_match, call, unwrap
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from espimage import build_app_image
from signals import SignalCollector, StatusSignals, property_changes
from test_ctl import ctl, ctl_json
from test_daemon_update import FAST_UPDATE
from test_link_ota_stream import NODE, TIMING

from uc2otad.api import names
from uc2otad.ctl.client import EXIT_NOT_FOUND
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, default_node
from uc2otad.sim.private_bus import PrivateBus
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

MOTOR_IMAGE = "esp32_UC2_canopen_slave_motor_release_motX.bin"
FIRST = build_app_image("esp32s3", version="v2099.1.0", date="Nov 20 2026", time="10:00:00",
                        segment_sizes=(0x1000, 0x200, 0x800, 0x400))  # fmt: skip
SECOND = build_app_image("esp32s3", version="v2099.2.0", date="Nov 27 2026", time="11:00:00",
                         segment_sizes=(0x1000, 0x200, 0x800, 0x600))  # fmt: skip
#: FAST_UPDATE, and the check after an update that may roll it back
CHECKED_UPDATE = FAST_UPDATE.replace("[update]\n", "[update]\nrollback_on_unhealthy = true\n")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def microscope_for(tmp_path: Path, faults: NodeFaults | None = None) -> VirtualMicroscope:
    node = replace(default_node(NODE), faults=faults or NodeFaults())
    config = SimConfig(
        nodes=(node,), timing=TIMING, serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0
    )
    return VirtualMicroscope(config)


class Signals(StatusSignals):
    """Board 11's statuses, and the daemon's Busy property: a job has ended once Busy is false again
    (its success is published a moment before it lets go of the board)."""

    def __init__(self, client: MessageBus) -> None:
        super().__init__(client, NODE)
        self.busy = SignalCollector(client, property_changes("Busy"))

    async def job_ended(self, job_id: str, busy_before: int) -> dict[str, Any]:
        final = await self.wait_for(ended(self, job_id))
        await self.busy.wait_until(lambda: False in self.busy.items[busy_before:])
        return final


@pytest.fixture
async def signals(client: MessageBus) -> AsyncIterator[Signals]:
    watcher = Signals(client)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='PropertiesChanged'")
    yield watcher
    watcher.close()
    watcher.busy.close()


async def serve(caddy: CaddyServer, image: bytes) -> None:
    """The server offers ``image`` as the motor's (it replaces the one before, as a release does)."""
    await asyncio.to_thread((caddy.root / MOTOR_IMAGE).write_bytes, image)


def ok(reply: Message) -> Any:
    assert reply.message_type is MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return unwrap(reply.body[0]) if reply.body else None


def ended(signals: Signals, job_id: str) -> Callable[[], dict[str, Any] | None]:
    """The final status of job ``job_id``, once it came."""

    def find() -> dict[str, Any] | None:
        for status in signals.statuses:
            final = status["upload_status"] == "success" or (
                status["upload_status"] == "failed" and "retry_in" not in status
            )
            if status.get("job_id") == job_id and final:
                return status
        return None

    return find


async def update(client: MessageBus, signals: Signals, **options: Variant) -> dict[str, Any]:
    busy_before = len(signals.busy.items)
    started = ok(await call(client, "StartOTA", "ua{sv}", NODE, options))
    return await signals.job_ended(started["job_id"], busy_before)


async def rollback(client: MessageBus, signals: Signals) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rollback(11): its reply and the job's final status."""
    busy_before = len(signals.busy.items)
    accepted = ok(await call(client, "Rollback", "u", NODE))
    return accepted, await signals.job_ended(accepted["job_id"], busy_before)


async def start(
    start_daemon: DaemonFactory, scope: VirtualMicroscope, caddy: CaddyServer, config: str = FAST_UPDATE
) -> DaemonProcess:
    """The daemon on the microscope's master, with Caddy's images."""
    return await start_daemon(
        "--serial-port", str(scope.config.serial_link), "--firmware-server", caddy.url, config=config
    )


async def two_updates(client: MessageBus, signals: Signals, caddy: CaddyServer) -> None:
    await serve(caddy, FIRST)
    assert (await update(client, signals))["upload_status"] == "success"
    await serve(caddy, SECOND)
    assert (await update(client, signals))["upload_status"] == "success"


async def test_rollback_puts_the_first_image_back_byte_for_byte(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: Signals,
    caddy: CaddyServer,
    tmp_path: Path,
) -> None:
    async with microscope_for(tmp_path) as scope:
        await start(start_daemon, scope, caddy)
        await two_updates(client, signals, caddy)
        slave = scope.master.slave(NODE)
        assert slave.running_image == SECOND
        ok(await call(client, "ClearFirmwareCache"))  # the plain clear keeps what a rollback needs

        accepted, final = await rollback(client, signals)
        running = slave.running_image
        await rollback(client, signals)  # back to the second: the one before the current
        back_again = slave.running_image

    assert (accepted["firmware"], accepted["sha256"], accepted["firmware_version"]) == (
        MOTOR_IMAGE,
        sha256(FIRST),
        "v2099.1.0",
    )
    assert (final["upload_status"], final["rollback"], final["firmware_version"]) == (
        "success",
        "requested",
        "v2099.1.0",
    )
    assert running == FIRST  # byte for byte, though the server offers only SECOND
    assert back_again == SECOND
    history = ok(await call(client, "GetHistory", "u", NODE))
    assert [(row["sha256"], row.get("rollback")) for row in history] == [
        (sha256(SECOND), "requested"),
        (sha256(FIRST), "requested"),
        (sha256(SECOND), None),
        (sha256(FIRST), None),
    ]
    assert {row["state"] for row in history} == {"success"}


async def test_no_earlier_image_is_not_found_and_include_known_good_deletes_them(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: Signals,
    caddy: CaddyServer,
    tmp_path: Path,
) -> None:
    async with microscope_for(tmp_path) as scope:
        daemon = await start(start_daemon, scope, caddy)
        await serve(caddy, FIRST)
        await update(client, signals)
        only_one = await call(client, "Rollback", "u", NODE)
        never_updated = await call(client, "Rollback", "u", 12)
        await serve(caddy, SECOND)
        await update(client, signals)
        kept = ok(await call(client, "ClearFirmwareCacheWithOptions", "a{sv}", {}))
        everything = ok(await call(client, "ClearFirmwareCacheWithOptions", "a{sv}",
                                   {"include_known_good": Variant("b", True)}))  # fmt: skip
        gone = await call(client, "Rollback", "u", NODE)
        status = ok(await call(client, "GetStatus", "u", NODE))
        running = scope.master.slave(NODE).running_image

    assert (only_one.message_type, only_one.error_name) == (MessageType.ERROR, names.NOT_FOUND)
    assert "no earlier image" in only_one.body[0]
    assert (never_updated.message_type, never_updated.error_name) == (MessageType.ERROR, names.NOT_FOUND)
    assert (kept["deleted"], kept["known_good_deleted"], kept["known_good_kept"]) == (1, 0, 2)
    assert (everything["known_good_deleted"], everything["known_good_kept"]) == (2, 0)
    assert (gone.message_type, gone.error_name) == (MessageType.ERROR, names.NOT_FOUND)
    assert "not kept any more" in gone.body[0]
    assert (status["upload_status"], running) == ("success", SECOND)  # nothing was started
    assert not await asyncio.to_thread(lambda: list((daemon.cache_dir / ".known-good").iterdir()))


async def test_an_update_that_disturbs_the_bus_is_rolled_back_by_itself(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: Signals,
    caddy: CaddyServer,
    tmp_path: Path,
) -> None:
    faults = NodeFaults(disturbing_image=sha256(SECOND))
    async with microscope_for(tmp_path, faults) as scope:
        await start(start_daemon, scope, caddy, CHECKED_UPDATE)
        await two_updates(client, signals, caddy)
        rollback = await signals.first(lambda status: status.get("rollback") == "unhealthy")
        final = await signals.wait_for(ended(signals, rollback["job_id"]))
        running = scope.master.slave(NODE).running_image
        history = ok(await call(client, "GetHistory", "u", NODE))

    assert final["upload_status"] == "success", final
    assert running == FIRST
    assert [(row["sha256"], row["state"], row.get("rollback")) for row in history] == [
        (sha256(FIRST), "success", "unhealthy"),
        (sha256(SECOND), "success", None),
        (sha256(FIRST), "success", None),
    ]


async def test_a_failed_verification_is_not_rolled_back(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: Signals,
    caddy: CaddyServer,
    tmp_path: Path,
) -> None:
    async with microscope_for(tmp_path) as scope:
        await start(start_daemon, scope, caddy, CHECKED_UPDATE)
        await serve(caddy, FIRST)
        await update(client, signals)
        slave = scope.master.slave(NODE)
        # the new image fails its first boot, and the old one disturbs the bus: the check after the update
        # would fail, but a failed update is never rolled back
        slave.faults = NodeFaults(boots_old_image=True, disturbing_image=sha256(FIRST))
        await serve(caddy, SECOND)
        failed = await update(client, signals, skip_checks=Variant("as", ["errors"]))
        history = ok(await call(client, "GetHistory", "u", NODE))
        running = slave.running_image

    assert (failed["upload_status"], failed["error_code"]) == ("failed", "verification_failed"), failed
    assert running == FIRST  # the board still runs its image: nothing to put back
    assert [row.get("rollback") for row in history] == [None, None]
    assert not any(status.get("rollback") for status in signals.statuses)


async def test_uc2otactl_rollback_follows_the_job_and_says_what_went_back(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: Signals,
    caddy: CaddyServer,
    private_bus: PrivateBus,
    tmp_path: Path,
) -> None:
    async with microscope_for(tmp_path) as scope:
        await start(start_daemon, scope, caddy)
        missing = await ctl(private_bus, "rollback", str(NODE))
        await two_updates(client, signals, caddy)
        document = await ctl_json(private_bus, "rollback", str(NODE))
        running = scope.master.slave(NODE).running_image
        code, stdout, _ = await ctl(private_bus, "rollback", str(NODE))
        cleared = await ctl_json(private_bus, "clear-cache", "--include-known-good")

    assert missing[0] == EXIT_NOT_FOUND and "no earlier image" in missing[2]
    assert (document["result"], document["exit_code"], document["sha256"]) == ("success", 0, sha256(FIRST))
    assert document["board"]["status"]["rollback"] == "requested"
    assert running == FIRST
    assert code == 0, stdout
    assert f"CAN {NODE}: going back to {MOTOR_IMAGE} (v2099.2.0)" in stdout
    assert stdout.rstrip().endswith(f"CAN {NODE}: rolled back")
    assert (cleared["known_good_deleted"], cleared["known_good_kept"]) == (2, 0)


async def test_a_legacy_board_is_rolled_back_over_wifi_with_the_stored_credentials(
    start_daemon: DaemonFactory, client: MessageBus, signals: Signals, caddy: CaddyServer, tmp_path: Path
) -> None:
    first, second = (
        build_app_image("esp32s3", version=f"v2099.{n}.0", segment_sizes=(0x2000, 0x400, 0x1000, 0x800 * n))
        for n in (1, 2)
    )
    async with wifi.legacy_scope(tmp_path) as scope:
        await wifi.start_for(start_daemon, scope, caddy.url)
        ok(await call(client, "SetWiFiCredentials", "ss", DEFAULT_SSID, DEFAULT_PASSWORD))
        for image in (first, second):
            await asyncio.to_thread((caddy.root / wifi.IMAGE_NAME).write_bytes, image)
            assert (await update(client, signals, force=Variant("b", True)))["upload_status"] == "success"
        accepted, final = await rollback(client, signals)
        running = scope.master.slave(NODE).running_image

    assert accepted["command_response"] == {"qid": 0, "success": 0}  # the master relayed the WiFi trigger
    assert (final["upload_status"], final["method"], final["rollback"]) == ("success", "wifi", "requested")
    assert running == first
