"""Updating the whole microscope: StartMultipleOTA end to end, the Progress property, boards already current.

Daemon subprocess, private bus, a virtual microscope (legacy master for the WiFi batches, CANopen master
where boards report versions), real Caddy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from signals import SignalCollector
from test_daemon_wifi import IMAGE, IMAGE_NAME, credentials, legacy_scope, start_for
from test_link_ota_stream import IMAGE as CAN_IMAGE
from test_link_ota_stream import NEW_VERSION, TIMING

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node

MOTORS = (10, 11, 12)
#: seconds a batch may take to end
BATCH_TIMEOUT = 30.0


def _status_or_progress(message: Message) -> tuple[int, dict[str, Any]] | int | None:
    if message.member == "OTAStatusChanged":
        return (message.body[0], unwrap(message.body[1]))
    if message.member == "PropertiesChanged" and "Progress" in message.body[1]:
        progress: int = message.body[1]["Progress"].value
        return progress
    return None


class Observed(SignalCollector[tuple[int, dict[str, Any]] | int]):
    """Every OTAStatusChanged and Progress change, in the order they came."""

    def __init__(self, client: MessageBus) -> None:
        super().__init__(client, _status_or_progress)

    @property
    def statuses(self) -> list[tuple[int, dict[str, Any]]]:
        return [item for item in self.items if isinstance(item, tuple)]

    @property
    def progress(self) -> list[int]:
        return [item for item in self.items if isinstance(item, int)]

    async def until_done(self, can_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The final status of each board (after the daemon went idle: Progress back to 0)."""
        await self.wait_until(
            lambda: bool(self.progress and self.progress[-1] == 0 and set(can_ids) <= set(self.finals())),
            BATCH_TIMEOUT,
        )
        return self.finals()

    def finals(self) -> dict[int, dict[str, Any]]:
        return {
            can_id: status
            for can_id, status in self.statuses
            if status.get("upload_status") in ("success", "failed")
        }

    def most_at_once(self) -> int:
        """The most boards between their first step and their end at any moment (a queued board waits)."""
        running: set[int] = set()
        most = 0
        for can_id, status in self.statuses:
            if status.get("queued"):
                continue  # waiting for its turn (no upload_status yet)
            if status["upload_status"] in ("success", "failed"):
                running.discard(can_id)
            else:
                running.add(can_id)
            most = max(most, len(running))
        return most


@pytest.fixture
async def observed(client: MessageBus) -> AsyncIterator[Observed]:
    watcher = Observed(client)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='PropertiesChanged'")
    yield watcher


@pytest.fixture
async def served(caddy: CaddyServer) -> str:
    await asyncio.to_thread((caddy.root / IMAGE_NAME).write_bytes, IMAGE)
    return caddy.url


@pytest.mark.parametrize("parallel", [1, 2])
async def test_a_wifi_batch_updates_every_board_at_most_parallel_at_once(
    start_daemon: DaemonFactory,
    client: MessageBus,
    observed: Observed,
    served: str,
    tmp_path: Path,
    parallel: int,
) -> None:
    async with legacy_scope(tmp_path, *map(default_node, MOTORS)) as scope:
        await start_for(start_daemon, scope, served)
        options = {**credentials(), "parallel": Variant("u", parallel), "delay_between": Variant("u", 0)}
        reply = await call(client, "StartMultipleOTA", "aua{sv}", list(MOTORS), options)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        started = unwrap(reply.body[0])
        finals = await observed.until_done(list(MOTORS))
        running = {can_id: scope.master.slave(can_id).running_image for can_id in MOTORS}

    assert started["status"] == "success" and set(started["job_ids"]) == {str(can_id) for can_id in MOTORS}
    assert running == dict.fromkeys(MOTORS, IMAGE)
    for can_id, final in finals.items():
        assert (final["upload_status"], final["batch_id"]) == ("success", started["batch_id"])
        assert final["job_id"] == started["job_ids"][str(can_id)]
    assert observed.most_at_once() == parallel
    # the document's batch progress: never backwards while the batch runs, 100 at its end, then idle
    assert observed.progress == [*sorted(observed.progress[:-1]), 0]
    assert observed.progress[-2:] == [100, 0]
    history = unwrap((await call(client, "GetHistory", "u", 0)).body[0])
    assert sorted(job["can_id"] for job in history) == list(MOTORS)
    assert {job["batch_id"] for job in history} == {started["batch_id"]}


def manifest_for(image: bytes, version: str) -> str:
    files = {"esp32_UC2_canopen_slave_motor_release_motX.bin": {
        "size": len(image), "sha256": hashlib.sha256(image).hexdigest(), "version": version}}  # fmt: skip
    return json.dumps({"version": version, "files": files})


async def test_a_board_already_current_is_skipped_unless_forced(
    start_daemon: DaemonFactory, client: MessageBus, observed: Observed, caddy: CaddyServer, tmp_path: Path
) -> None:
    current = replace(default_node(11), version=NEW_VERSION)  # it already runs the served build
    await asyncio.to_thread(
        (caddy.root / "esp32_UC2_canopen_slave_motor_release_motX.bin").write_bytes, CAN_IMAGE
    )
    await asyncio.to_thread((caddy.root / "version.json").write_text, manifest_for(CAN_IMAGE, NEW_VERSION))
    settings = SimConfig(
        nodes=(current,), timing=TIMING, serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0
    )
    async with VirtualMicroscope(settings) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", caddy.url,
                           config="[update]\nverify_settle = 0.05\nverify_interval = 0.05\n")  # fmt: skip
        single = unwrap((await call(client, "StartOTA", "ua{sv}", 11, {})).body[0])
        batch = unwrap((await call(client, "StartMultipleOTA", "aua{sv}", [11], {})).body[0])
        untouched = scope.master.slave(11).running_image
        forced = unwrap((await call(client, "StartOTA", "ua{sv}", 11, {"force": Variant("b", True)})).body[0])
        finals = await observed.until_done([11])
        flashed = scope.master.slave(11).running_image

    assert (single["status"], single["message"]) == ("success", "already up to date")
    assert "job_id" not in single
    assert (batch["status"], batch["job_ids"]) == ("success", {})
    assert "1 already up to date" in batch["message"]
    assert untouched is None
    assert "job_id" in forced and finals[11]["upload_status"] == "success" and flashed == CAN_IMAGE
