"""Issue 15: a job's first status shows at once (D6), and an inhibit holds back a batch's queued boards (D7).

Daemon subprocess, private bus, virtual microscope, a firmware server that stalls (D6) or Caddy (D7).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from faultserver import FaultServer, Reply, Stall
from test_daemon_batch import BATCH_TIMEOUT, MOTORS, Observed
from test_daemon_update import FAST_UPDATE, microscope_for
from test_daemon_wifi import IMAGE, IMAGE_NAME, credentials, daemon_config, legacy_scope
from test_link_ota_stream import IMAGE as CAN_IMAGE
from test_link_ota_stream import NODE

from uc2otad.api import names
from uc2otad.sim.nodes import default_node

CAN_NAME = "esp32_UC2_canopen_slave_motor_release_motX.bin"
#: seconds the store's writer gets to put a published status into the file before a SIGKILL
WRITE_BEHIND = 0.5


def stalling_server(fault_server: FaultServer) -> str:
    """A firmware server that lists the CAN image but never finishes sending it."""
    listing = [
        {"name": CAN_NAME, "size": len(CAN_IMAGE), "is_dir": False, "mod_time": "2026-11-27T13:14:15Z"}
    ]
    fault_server.script(
        "/firmware/",
        Reply(body=json.dumps(listing).encode(), headers={"Content-Type": "application/json"}),
    )
    fault_server.script(f"/firmware/{CAN_NAME}", Stall(CAN_IMAGE, after=1024))
    return fault_server.url + "/firmware"


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


def steps(observed: Observed) -> list[tuple[int, str | None]]:
    return [(c, s.get("upload_status")) for c, s in observed.statuses]


async def until(observed: Observed, done: Callable[[], bool]) -> None:
    """Until ``done()`` holds, checked at each signal."""
    await observed.wait_until(done, BATCH_TIMEOUT)


async def status_of(client: MessageBus, can_id: int) -> dict[str, Any]:
    status: dict[str, Any] = unwrap((await call(client, "GetStatus", "u", can_id)).body[0])
    return status


async def test_a_streaming_job_shows_at_once_and_a_sigkill_while_downloading_is_interrupted(
    start_daemon: DaemonFactory, client: MessageBus, fault_server: FaultServer, tmp_path: Any
) -> None:
    """D6: GetStatus shows the CAN job from its start (not only once the image is downloaded), and a
    daemon killed while it downloads shows the board ``interrupted`` after its restart."""
    server = stalling_server(fault_server)
    async with await microscope_for(tmp_path) as scope:
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", server)
        daemon = await start_daemon(*flags, config=FAST_UPDATE + "read_timeout = 60.0\n")
        reply = await call(client, "StartOTA", "ua{sv}", NODE, {})
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        accepted = unwrap(reply.body[0])
        await asyncio.to_thread(fault_server.wait_for_request, f"/firmware/{CAN_NAME}")
        during = await status_of(client, NODE)
        await asyncio.sleep(WRITE_BEHIND)
        await asyncio.to_thread(daemon.kill)
        await asyncio.to_thread(daemon.start)
        after = await status_of(client, NODE)
        (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
    assert during.get("job_id") == accepted["job_id"], during
    assert (during["status"], during["upload_status"], during["upload_progress"]) == (
        "initiated",
        "downloading",
        0,
    )
    assert (job["state"], job["error_code"]) == ("failed", "interrupted")
    assert (after["job_id"], after["status"], after["error_code"]) == (
        accepted["job_id"],
        "failed",
        "interrupted",
    )


async def start_batch(start_daemon: DaemonFactory, scope: Any, served_url: str) -> Any:
    return await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", served_url,
                              config=daemon_config(scope.config.ota_port))  # fmt: skip


async def test_queued_batch_boards_show_queued_and_are_interrupted_by_a_sigkill(
    start_daemon: DaemonFactory,
    client: MessageBus,
    observed: Observed,
    served: str,
    tmp_path: Any,
) -> None:
    """D6: a batch board waiting for its turn shows it is queued, and a SIGKILL leaves it ``interrupted``."""
    async with legacy_scope(tmp_path, *map(default_node, MOTORS)) as scope:
        daemon = await start_batch(start_daemon, scope, served)
        options = {**credentials(), "parallel": Variant("u", 1), "delay_between": Variant("u", 30)}
        reply = await call(client, "StartMultipleOTA", "aua{sv}", list(MOTORS), options)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        started = unwrap(reply.body[0])
        waiting = await status_of(client, MOTORS[2])
        await asyncio.sleep(WRITE_BEHIND)
        await asyncio.to_thread(daemon.kill)
        await asyncio.to_thread(daemon.start)
        after = await status_of(client, MOTORS[2])
    assert waiting.get("job_id") == started["job_ids"][str(MOTORS[2])], waiting
    assert (waiting["status"], waiting["queued"], waiting["batch_id"]) == (
        "initiated",
        True,
        started["batch_id"],
    )
    assert "upload_status" not in waiting
    assert (after["job_id"], after["status"], after["error_code"]) == (
        waiting["job_id"],
        "failed",
        "interrupted",
    )


async def test_an_inhibit_holds_back_the_boards_still_queued_in_a_batch(
    start_daemon: DaemonFactory,
    client: MessageBus,
    observed: Observed,
    served: str,
    tmp_path: Any,
) -> None:
    """D7: Inhibit while a batch's first board uploads; the queued boards do not start until Uninhibit."""
    async with legacy_scope(tmp_path, *map(default_node, MOTORS)) as scope:
        await start_batch(start_daemon, scope, served)
        options = {**credentials(), "parallel": Variant("u", 1), "delay_between": Variant("u", 1)}
        reply = await call(client, "StartMultipleOTA", "aua{sv}", list(MOTORS), options)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        first = MOTORS[0]
        await until(observed, lambda: (first, "uploading") in steps(observed))
        (cookie,) = (await call(client, "Inhibit", "s", "lab course until 16:00")).body
        await until(observed, lambda: first in observed.finals())
        await asyncio.sleep(3.0)  # longer than delay_between: the next board's turn has come
        held_back = [(c, s.get("upload_status")) for c, s in observed.statuses if c != first]
        untouched = [scope.master.slave(c).running_image for c in MOTORS[1:]]
        mark = len(observed.statuses)
        assert (await call(client, "Uninhibit", "s", cookie)).message_type is MessageType.METHOD_RETURN
        finals = await observed.until_done(list(MOTORS))
        flashed = {c: scope.master.slave(c).running_image for c in MOTORS}
    assert all(step is None for _, step in held_back), held_back  # at most the queued status
    assert untouched == [None, None]
    assert {c: f["upload_status"] for c, f in finals.items()} == dict.fromkeys(MOTORS, "success")
    assert flashed == dict.fromkeys(MOTORS, IMAGE)
    later = [c for c, s in observed.statuses[mark:] if s.get("upload_status") == "command_sent"]
    assert later == list(MOTORS[1:])
