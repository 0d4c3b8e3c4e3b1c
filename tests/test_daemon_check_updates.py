"""Issue 19, item 1: CheckUpdates — each board's firmware against the server's, and what follows from it.

Daemon subprocess on a private bus, real Caddy serving the images and their ``version.json``, and a
virtual microscope with one board of each kind the issue's acceptance names: current, older, a
developer's newer build, no image on the server, offline, and July boards (which report no release
string: "UC2-ESP v2.0") with and without the daemon's history of having given them the offered image.
The same states drive ScanDevices' ``update_available``, StartOTA's "already up to date" and its refusal
to downgrade, and ``uc2otactl update --all``, which updates only the boards with an update available.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from signals import StatusSignals
from test_ctl import ctl, ctl_json
from test_daemon_profiles import TIMING, daemon_config, july_image, september_image

from uc2otad.api import names
from uc2otad.ctl import schemas
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeSpec, default_node
from uc2otad.sim.private_bus import PrivateBus
from uc2otad.sim.profiles import UNVERSIONED, Profile

#: what the server offers every board
OFFERED = "v2026.2.0"
OLDER = "v2026.1.0"
#: a developer's build three commits after the offered tag
DEVELOPER = "v2026.2.0-3-gabcdef0-t20261201101500"
CURRENT, OLDER_ID, NEWER_ID, OFFLINE, JULY, JULY_OTHER, NO_IMAGE = 10, 11, 12, 13, 30, 40, 20
IMAGE_NAMES = {
    CURRENT: "esp32_UC2_canopen_slave_motor_release_motA.bin",
    OLDER_ID: "esp32_UC2_canopen_slave_motor_release_motX.bin",
    NEWER_ID: "esp32_UC2_canopen_slave_motor_release_motY.bin",
    OFFLINE: "esp32_UC2_canopen_slave_motor_release_motZ.bin",
    JULY: "esp32_UC2_canopen_slave_led_release.bin",
    JULY_OTHER: "esp32_UC2_canopen_slave_galvo_release.bin",
}
MOTOR_IMAGE = september_image(OFFERED)
#: the July boards are offered a July build: one that still reports no release string once it runs
JULY_IMAGE = july_image()


def nodes() -> tuple[NodeSpec, ...]:
    july = Profile.FW_MAIN_2026_07
    return (
        replace(default_node(CURRENT), version=OFFERED),
        replace(default_node(OLDER_ID), version=OLDER),
        replace(default_node(NEWER_ID), version=DEVELOPER),
        replace(default_node(OFFLINE), version=OLDER, online=False),
        default_node(NO_IMAGE),  # the server has no laser image
        replace(default_node(JULY), profile=july),
        replace(default_node(JULY_OTHER), profile=july),
    )


def publish(root: Path) -> None:
    """The images and ``version.json`` as the firmware build publishes them (uc2-stack.md §4.3)."""
    files = {}
    for can_id, name in IMAGE_NAMES.items():
        image = JULY_IMAGE if can_id in (JULY, JULY_OTHER) else MOTOR_IMAGE
        (root / name).write_bytes(image)
        files[name] = {"size": len(image), "sha256": hashlib.sha256(image).hexdigest()}
    (root / "version.json").write_text(json.dumps({"version": OFFERED, "files": files}))


@pytest.fixture
async def scope(
    tmp_path: Path, start_daemon: DaemonFactory, caddy: CaddyServer
) -> AsyncIterator[VirtualMicroscope]:
    """The microscope above (a September master), and uc2otad on it with Caddy as firmware server."""
    await asyncio.to_thread(publish, caddy.root)
    config = SimConfig(nodes=nodes(), profile=Profile.FW_2026_09, timing=TIMING,
                       serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0)  # fmt: skip
    async with VirtualMicroscope(config) as microscope:
        flags = ("--serial-port", str(config.serial_link), "--firmware-server", caddy.url)
        await start_daemon(*flags, config=daemon_config())
        yield microscope


async def check_updates(client: MessageBus) -> dict[int, dict[str, Any]]:
    reply = await call(client, "CheckUpdates")
    assert (reply.message_type, reply.signature) == (MessageType.METHOD_RETURN, "aa{sv}"), reply.body
    boards = unwrap(reply.body[0])
    assert boards[0]["can_id"] == 1  # the master first
    return {board["can_id"]: board for board in boards}


async def update(client: MessageBus, can_id: int, **options: Variant) -> dict[str, Any]:
    reply = await call(client, "StartOTA", "ua{sv}", can_id, options)
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    result: dict[str, Any] = unwrap(reply.body[0])
    return result


@pytest.mark.timeout(60)
async def test_each_board_gets_its_state_and_a_july_board_is_current_once_given_the_image(
    scope: VirtualMicroscope, client: MessageBus
) -> None:
    boards = await check_updates(client)

    assert {can_id: board["state"] for can_id, board in boards.items()} == {
        1: "no_firmware",  # no master image on this server
        CURRENT: "up_to_date",
        OLDER_ID: "update_available",
        NEWER_ID: "device_newer",
        OFFLINE: "unreachable",
        NO_IMAGE: "no_firmware",
        JULY: "unknown",  # "UC2-ESP v2.0" names no release, and the daemon never gave it this image
        JULY_OTHER: "unknown",
    }
    assert boards[OLDER_ID] == {
        "can_id": OLDER_ID,
        "role": "motor",
        "link": "master",
        "state": "update_available",
        "running_version": OLDER,
        "offered_version": OFFERED,
        "offered_image": IMAGE_NAMES[OLDER_ID],
    }
    assert boards[NEWER_ID]["running_version"] == DEVELOPER
    assert boards[JULY]["running_version"] == UNVERSIONED
    assert "offered_version" not in boards[NO_IMAGE] and "offered_image" not in boards[NO_IMAGE]
    # ScanDevices agrees: update_available only where the state says so, left out where unknown
    scanned = {board["can_id"]: board for board in unwrap((await call(client, "ScanDevices")).body[0])}
    assert {can_id: scanned[can_id].get("update_available") for can_id in boards} == {
        1: None, CURRENT: False, OLDER_ID: True, NEWER_ID: False, OFFLINE: None, NO_IMAGE: None,
        JULY: None, JULY_OTHER: None,
    }  # fmt: skip

    # the July board is given the offered image; it still reports no version, but the history knows
    signals = StatusSignals(client, JULY)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    assert "job_id" in await update(client, JULY)  # unknown is due when named
    final = await signals.until_final()
    assert final["upload_status"] == "success", final
    after = await check_updates(client)

    assert after[JULY]["state"] == "up_to_date"
    assert after[JULY]["running_version"] == UNVERSIONED
    assert after[JULY_OTHER]["state"] == "unknown"  # never given it by this daemon
    again = await update(client, JULY)
    assert (again["message"], "job_id" in again) == ("already up to date", False)
    assert scope.master.slave(JULY).running_image == JULY_IMAGE


@pytest.mark.timeout(60)
async def test_a_board_running_a_newer_build_is_not_downgraded_unless_asked(
    scope: VirtualMicroscope, client: MessageBus
) -> None:
    refused = await call(client, "StartOTA", "ua{sv}", NEWER_ID, {"force": Variant("b", True)})
    assert refused.error_name == names.INVALID_ARGUMENT, refused.body
    assert DEVELOPER in refused.body[0] and "allow_downgrade" in refused.body[0]

    reply = await call(client, "StartMultipleOTA", "aua{sv}", [CURRENT, NEWER_ID], {})
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    batch = unwrap(reply.body[0])
    assert batch["job_ids"] == {}
    assert batch["not_downgraded"] == {str(NEWER_ID): DEVELOPER}
    assert "1 already up to date" in batch["message"] and f"CAN {NEWER_ID} ({DEVELOPER})" in batch["message"]

    signals = StatusSignals(client, NEWER_ID)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    assert "job_id" in await update(client, NEWER_ID, allow_downgrade=Variant("b", True))
    assert (await signals.until_final())["upload_status"] == "success"
    assert (await check_updates(client))[NEWER_ID]["state"] == "up_to_date"
    assert scope.master.slave(NEWER_ID).running_image == MOTOR_IMAGE


@pytest.mark.timeout(60)
async def test_ctl_check_and_update_all_take_only_the_boards_with_an_update_available(
    scope: VirtualMicroscope, private_bus: PrivateBus
) -> None:
    checked = await ctl_json(private_bus, "check")
    assert [board["state"] for board in checked if board["can_id"] == OLDER_ID] == ["update_available"]
    code, stdout, stderr = await ctl(private_bus, "check")
    assert code == 0, stderr
    assert "update available" in stdout and "newer on the board" in stdout
    assert "1 board with an update available" in stdout

    code, stdout, stderr = await ctl(private_bus, "update", "--all", "--json")
    assert code == 0, (stdout, stderr)
    document = json.loads(stdout)
    jsonschema.validate(document, schemas.COMMANDS["update"])
    results = {int(can_id): board["result"] for can_id, board in document["boards"].items()}
    assert results == {
        CURRENT: "up_to_date", OLDER_ID: "success", NEWER_ID: "not_due", OFFLINE: "not_due",
        NO_IMAGE: "not_due", JULY: "not_due", JULY_OTHER: "not_due",
    }  # fmt: skip
    assert document["boards"][str(NEWER_ID)]["message"].startswith("device_newer: ")
    untouched = (NEWER_ID, JULY, JULY_OTHER, NO_IMAGE)
    assert all(scope.master.slave(can_id).running_image != MOTOR_IMAGE for can_id in untouched)
    assert scope.master.slave(OLDER_ID).running_image == MOTOR_IMAGE

    # the next scheduled run finds nothing due: exit 2
    code, stdout, stderr = await ctl(private_bus, "update", "--all", "--json")
    assert code == 2, (stdout, stderr)
    again = json.loads(stdout)
    jsonschema.validate(again, schemas.COMMANDS["update"])
    assert (again["result"], again["boards"][str(OLDER_ID)]["result"]) == ("nothing_to_do", "up_to_date")
