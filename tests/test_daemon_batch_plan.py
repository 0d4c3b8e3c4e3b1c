"""Issue 19, item 3: the batch's plan lives in the daemon (StartMultipleOTA's options and ``plan``).

Daemon subprocess on a private bus, a virtual microscope with CANopen boards, real Caddy serving the
images and their ``version.json``, and for the master the simulator's ROM loader with real esptool: a
failed board stops the batch and the rest end ``skipped`` with their firmware (unless the batch keeps
going), a dry run answers the plan and changes nothing, ``roles`` chooses boards by kind, and
``include_master`` flashes the master last, over USB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from espimage import build_app_image
from signals import SignalCollector
from test_link_ota_stream import IMAGE, NEW_VERSION, TIMING

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, NodeSpec, default_node

#: the boards' images on the server: three motors and a laser (uc2otad/firmware/images.toml)
SLAVE_IMAGES = {
    10: "esp32_UC2_canopen_slave_motor_release_motA.bin",
    11: "esp32_UC2_canopen_slave_motor_release_motX.bin",
    12: "esp32_UC2_canopen_slave_motor_release_motY.bin",
    20: "esp32_UC2_canopen_slave_laser_release.bin",
}
MASTER_NAME = "esp32_UC2_canopen_master_release.bin"
MASTER_VERSION = "v2099.9.0"
MASTER_APP = build_app_image("esp32", version=MASTER_VERSION, project="uc2-master", date="Nov 27 2026",
                             time="12:00:00", segment_sizes=(0x400, 0x100, 0x2000, 0x1000))  # fmt: skip
#: verification shrunk, no retries (a failed board fails at once), the master's reboot fast
CONFIG = (
    "[update]\nverify_settle = 0.05\nverify_window = 5.0\nverify_interval = 0.05\nretries = 0\n"
    "[firmware]\nattempts = 1\n[usb]\nreboot_wait = 0.05\nreconnect_window = 10.0\n"
)
#: seconds a batch, the master's flash included, may take
BATCH_TIMEOUT = 60.0
#: the write to a board that goes wrong: its CRC check refuses the image
CORRUPT = NodeFaults(corrupt_offset=100)

Event = tuple[str, int, dict[str, Any]]


def _event(message: Message) -> Event | None:
    if message.member == "OTAStatusChanged":
        return ("board", int(message.body[0]), unwrap(message.body[1]))
    if message.member == "USBFlashStatusChanged":
        return ("usb", 1, unwrap(message.body[0]))
    return None


class Events(SignalCollector[Event]):
    """Every board's status and the master's USB flash status, in the order they came."""

    def __init__(self, client: MessageBus) -> None:
        super().__init__(client, _event)

    def final(self, can_id: int) -> dict[str, Any] | None:
        return next((s for kind, c, s in self.items if kind == "board" and c == can_id and _ended(s)), None)

    def index(self, found: Callable[[Event], bool]) -> int:
        return next(i for i, item in enumerate(self.items) if found(item))

    async def finals(self, can_ids: list[int]) -> dict[int, dict[str, Any]]:
        await self.wait_until(lambda: all(self.final(can_id) for can_id in can_ids), BATCH_TIMEOUT)
        return {can_id: status for can_id in can_ids if (status := self.final(can_id)) is not None}

    def usb_ended(self) -> dict[str, Any] | None:
        ended = (s for kind, _, s in self.items if kind == "usb" and s["status"] in ("success", "failed"))
        return next(ended, None)

    async def usb_final(self) -> dict[str, Any]:
        return await self.wait_for(self.usb_ended, BATCH_TIMEOUT)

    def ended_at(self, can_id: int) -> int:
        """The index of the board's final status."""
        return self.index(lambda item: item[0] == "board" and item[1] == can_id and _ended(item[2]))


def _ended(status: dict[str, Any]) -> bool:
    return status.get("upload_status") in ("success", "failed") and "retry_in" not in status


@pytest.fixture
async def events(client: MessageBus) -> Events:
    watcher = Events(client)
    for member in ("OTAStatusChanged", "USBFlashStatusChanged"):
        await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='{member}'")
    return watcher


def publish(root: Path) -> None:
    """Every slave image and the master's app, with ``version.json`` saying what each is."""
    files = {}
    for name in SLAVE_IMAGES.values():
        (root / name).write_bytes(IMAGE)
        files[name] = {
            "size": len(IMAGE),
            "sha256": hashlib.sha256(IMAGE).hexdigest(),
            "version": NEW_VERSION,
        }
    (root / MASTER_NAME).write_bytes(MASTER_APP)
    files[MASTER_NAME] = {"size": len(MASTER_APP), "sha256": hashlib.sha256(MASTER_APP).hexdigest(),
                          "version": MASTER_VERSION}  # fmt: skip
    (root / "version.json").write_text(json.dumps({"version": NEW_VERSION, "files": files}))


Microscope = Callable[..., Awaitable[VirtualMicroscope]]


@pytest.fixture
async def microscope(
    tmp_path: Path, start_daemon: DaemonFactory, caddy: CaddyServer
) -> AsyncIterator[Microscope]:
    """``await microscope(*nodes)``: the virtual microscope (an ESP32 master with its ROM loader) and
    uc2otad on it, Caddy serving :func:`publish`'s images."""
    await asyncio.to_thread(publish, caddy.root)
    async with contextlib.AsyncExitStack() as stack:

        async def make(*nodes: NodeSpec) -> VirtualMicroscope:
            settings = SimConfig(nodes=nodes, timing=replace(TIMING, master_boot_time=0.05),
                                 serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0,
                                 master_chip="esp32")  # fmt: skip
            scope = await stack.enter_async_context(VirtualMicroscope(settings))
            # the HAT's flash holds the firmware it runs, as a real one does (tests/test_daemon_usb.py)
            scope.rom_loader.flash.load(0x10000, build_app_image("esp32", version=settings.master_version))
            await start_daemon("--serial-port", str(settings.serial_link), "--firmware-server", caddy.url,
                               config=CONFIG)  # fmt: skip
            return scope

        yield make


def node(can_id: int, **changes: Any) -> NodeSpec:
    return replace(default_node(can_id), **changes)


async def start_batch(client: MessageBus, can_ids: list[int], **options: Any) -> dict[str, Any]:
    """StartMultipleOTA with the boards one after another at once (no pause), and ``options`` typed."""
    types = {"stop_on_failure": "b", "include_master": "b", "dry_run": "b", "roles": "as", "master_port": "s"}
    variants = {"delay_between": Variant("u", 0)} | {
        key: Variant(types[key], value) for key, value in options.items()
    }
    reply = await call(client, "StartMultipleOTA", "aua{sv}", can_ids, variants)
    assert reply.message_type is MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    result: dict[str, Any] = unwrap(reply.body[0])
    return result


def actions(reply: dict[str, Any]) -> list[tuple[int, str]]:
    return [(entry["can_id"], entry["action"]) for entry in reply["plan"]]


async def test_a_failed_board_stops_the_batch_and_the_rest_are_skipped_with_their_firmware(
    microscope: Microscope, client: MessageBus, events: Events
) -> None:
    scope = await microscope(node(10), node(11, faults=CORRUPT), node(12))
    started = await start_batch(client, [10, 11, 12])
    finals = await events.finals([10, 11, 12])

    assert started["stop_on_failure"] is True  # the default for more than one board
    assert actions(started) == [(10, "update"), (11, "update"), (12, "update")]
    assert finals[10]["upload_status"] == "success"
    assert finals[11]["upload_status"] == "failed" and finals[11]["error_code"] != "skipped"
    skipped = finals[12]
    assert (skipped["status"], skipped["error_code"]) == ("failed", "skipped")
    assert "an earlier board of the batch failed" in skipped["message"]
    assert "board 11" in skipped["upload_error"]
    assert skipped["job_id"] == started["job_ids"]["12"]
    assert not any(kind == "board" and c == 12 and "upload_status" in s and s["upload_status"] != "failed"
                   for kind, c, s in events.items)  # fmt: skip  # never a step of its own
    assert scope.master.slave(10).running_image == IMAGE
    assert scope.master.slave(11).running_image != IMAGE
    assert scope.master.slave(12).running_image != IMAGE  # it keeps the firmware it had
    (job,) = unwrap((await call(client, "GetHistory", "u", 12)).body[0])
    assert (job["state"], job["error_code"], job["batch_id"]) == ("failed", "skipped", started["batch_id"])


async def test_a_batch_that_keeps_going_updates_the_boards_after_a_failed_one(
    microscope: Microscope, client: MessageBus, events: Events
) -> None:
    scope = await microscope(node(10), node(11, faults=CORRUPT), node(12))
    started = await start_batch(client, [10, 11, 12], stop_on_failure=False)
    finals = await events.finals([10, 11, 12])

    assert started["stop_on_failure"] is False
    assert [finals[can_id]["upload_status"] for can_id in (10, 11, 12)] == ["success", "failed", "success"]
    assert scope.master.slave(12).running_image == IMAGE


async def test_a_dry_run_answers_the_plan_and_changes_nothing(
    microscope: Microscope, client: MessageBus, events: Events
) -> None:
    scope = await microscope(node(10), node(11, version=NEW_VERSION), node(20))
    before = unwrap((await call(client, "GetAllStatus")).body[0])

    planned = await start_batch(client, [10, 11], dry_run=True, roles=["laser"], include_master=True,
                                master_port=scope.rom_loader.url)  # fmt: skip

    assert planned["dry_run"] is True and planned["job_ids"] == {} and "batch_id" not in planned
    assert actions(planned) == [(10, "update"), (11, "skip"), (20, "update"), (1, "flash_master")]
    by_id = {entry["can_id"]: entry for entry in planned["plan"]}
    assert (by_id[10]["role"], by_id[10]["link"], by_id[10]["state"]) == (
        "motor",
        "master",
        "update_available",
    )
    assert (by_id[11]["state"], by_id[11]["reason"]) == ("up_to_date", "already up to date")
    assert by_id[20]["role"] == "laser"
    assert (by_id[1]["state"], by_id[1]["port"]) == ("update_available", scope.rom_loader.url)
    assert planned["master"] == {"included": True, "port": scope.rom_loader.url, "state": "update_available"}
    assert unwrap((await call(client, "GetAllStatus")).body[0]) == before
    assert unwrap((await call(client, "GetHistory", "u", 0)).body[0]) == []
    assert [item for item in events.items if item[0] == "board"] == []
    assert all(scope.master.slave(can_id).running_image is None for can_id in (10, 11, 20))
    assert len(scope.rom_loader.writes) == 0


async def test_roles_choose_the_boards_after_the_ids_given_and_an_unknown_role_is_refused(
    microscope: Microscope, client: MessageBus, events: Events
) -> None:
    scope = await microscope(node(10), node(11), node(20))
    ordered = await start_batch(client, [20], roles=["motor"], dry_run=True)
    assert actions(ordered) == [(20, "update"), (10, "update"), (11, "update")]  # the ids, then by CAN id

    lasers = await start_batch(client, [], roles=["laser"])
    finals = await events.finals([20])
    unknown = await call(client, "StartMultipleOTA", "aua{sv}", [], {"roles": Variant("as", ["camera"])})

    assert set(lasers["job_ids"]) == {"20"} and actions(lasers) == [(20, "update")]
    assert finals[20]["upload_status"] == "success"
    assert scope.master.slave(20).running_image == IMAGE
    assert scope.master.slave(10).running_image is None and scope.master.slave(11).running_image is None
    assert (unknown.message_type, unknown.error_name) == (MessageType.ERROR, names.INVALID_ARGUMENT)
    assert "motor, laser, led, galvo" in unknown.body[0]


@pytest.mark.skipif(importlib.util.find_spec("esptool") is None, reason="esptool is not installed")
async def test_include_master_flashes_the_master_last_over_usb(
    microscope: Microscope, client: MessageBus, events: Events
) -> None:
    scope = await microscope(node(10), node(11))
    loader = scope.rom_loader
    absent = await start_batch(client, [10], include_master=True, dry_run=True, master_port="/dev/ttyNOTHERE")
    assert actions(absent) == [(10, "update"), (1, "skip")]
    assert absent["master"]["included"] is False and "no USB port" in absent["master"]["reason"]

    started = await start_batch(client, [10, 11], include_master=True, master_port=loader.url)
    finals = await events.finals([10, 11])
    flashed = await events.usb_final()

    assert actions(started) == [(10, "update"), (11, "update"), (1, "flash_master")]
    assert [finals[can_id]["upload_status"] for can_id in (10, 11)] == ["success", "success"]
    assert flashed["status"] == "success", flashed
    assert loader.flash.read(0x10000, len(MASTER_APP)) == MASTER_APP
    assert scope.master.identity.version == MASTER_VERSION
    (row,) = unwrap((await call(client, "GetHistory", "u", 1)).body[0])  # issue 20: the flash's own row
    assert (row["job_id"], row["method"], row["state"], row["firmware_version"]) == (
        flashed["job_id"], "usb", "success", MASTER_VERSION,
    )  # fmt: skip
    first_usb = events.index(lambda item: item[0] == "usb")
    assert (
        max(events.ended_at(10), events.ended_at(11)) < first_usb
    )  # the master only after every slave had ended


@pytest.mark.skipif(importlib.util.find_spec("esptool") is None, reason="esptool is not installed")
async def test_the_master_is_not_flashed_after_a_failed_board(
    microscope: Microscope, client: MessageBus, events: Events
) -> None:
    scope = await microscope(node(10, faults=CORRUPT))
    started = await start_batch(client, [10], include_master=True, master_port=scope.rom_loader.url)
    finals = await events.finals([10])
    skipped = await events.usb_final()

    assert started["stop_on_failure"] is True  # a slave and the master: two boards
    assert finals[10]["upload_status"] == "failed"
    assert (skipped["status"], skipped["message"], skipped["error_code"]) == (
        "failed",
        "Flash skipped",
        "skipped",
    )
    assert "board(s) 10 of the batch did not succeed" in skipped["details"]
    assert unwrap((await call(client, "GetUSBFlashStatus")).body[0]) == skipped
    assert unwrap((await call(client, "GetHistory", "u", 1)).body[0]) == []  # no flash, no row
    assert len(scope.rom_loader.writes) == 0


async def test_a_batch_board_is_checked_again_at_its_turn(
    microscope: Microscope, client: MessageBus, events: Events
) -> None:
    # board 10 pauses a moment halfway (less than the master's block timeout); meanwhile the bus goes
    # bus-off: board 11's turn finds it so, ends unhealthy without a command, and the batch stops there
    scope = await microscope(
        node(10, faults=NodeFaults(stall_at_percent=50.0, stall_seconds=0.2)), node(11), node(12)
    )
    started = await start_batch(client, [10, 11, 12])
    await events.first(
        lambda event: event[0] == "board" and event[1] == 10 and event[2].get("upload_status") == "uploading"
    )
    scope.master.set_bus_health(state="bus_off", tx_errors=255)
    finals = await events.finals([10, 11, 12])

    assert started["stop_on_failure"] is True
    assert finals[10]["upload_status"] == "success"
    assert (finals[11]["status"], finals[11]["error_code"]) == ("failed", "unhealthy")
    assert "bus-off" in finals[11]["upload_error"] and "check 'bus'" in finals[11]["upload_error"]
    assert not any(kind == "board" and c == 11 and s.get("upload_status") == "command_sent"
                   for kind, c, s in events.items)  # fmt: skip  # nothing was sent to it
    assert finals[12]["error_code"] == "skipped"
    assert scope.master.slave(11).running_image != IMAGE
