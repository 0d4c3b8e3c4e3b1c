"""Issue 15, D5: bursts of ScanDevices and StartOTA must not end in link timeouts.

The report: more than ~6 concurrent ScanDevices failed with "no reply to /can_act within 5.0 s", a
StartOTA during them the same, and 50 concurrent StartOTA for one board gave 44 such failures instead
of Busy. Two causes, both fixed in the link (uc2otad/links/): every caller sent its own scan (they took
turns, so the last waited for all the others), and the link wrote through the default executor that the
firmware server's fetches fill (6 threads on a 2-CPU host): a command waited for a thread, its reply
timeout running, and timed out before it was written. Now concurrent scans share one, the link writes
on its own thread, and no more commands await replies than the master queues (16 on FW-main, 5 on
legacy: ``max_in_flight``, 4), the wait for a place not counted in the reply timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import test_daemon_wifi as wifi
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import call, unwrap
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from test_daemon_update import FAST_UPDATE, microscope_for
from test_link_ota_stream import IMAGE, NODE
from test_serial_link_sim import FAST, MIXED_NODES, linked, running

from uc2otad.api import names
from uc2otad.errors import LinkTimeoutError
from uc2otad.links import commands
from uc2otad.links.serial_hat import DEFAULT_BAUD, LEGACY_BAUD
from uc2otad.sim.config import SimConfig
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.profiles import Profile

#: the words of a link timeout, which none of the burst's answers may be
LINK_TIMEOUT = "no reply to"
SCANS = 20
STARTS = 50
BOARDS = (10, 11, 20)


def sent(scope: VirtualMicroscope) -> list[dict[str, Any]]:
    """Every command the virtual master reads from now on."""
    seen: list[dict[str, Any]] = []
    scope.master.on_command = seen.append
    return seen


# ---- the link ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [Profile.FW_2026_09, Profile.LEGACY])
async def test_d5_concurrent_scans_share_one_scan(tmp_path: Path, profile: Profile) -> None:
    """D5: a burst of scans costs the master one /can_act; a probe scan is a scan of its own."""
    baud = LEGACY_BAUD if profile is Profile.LEGACY else DEFAULT_BAUD
    async with (
        running(tmp_path, nodes=MIXED_NODES, profile=profile) as scope,
        linked(scope.pty.url, baud=baud) as link,
    ):
        commands_read = sent(scope)
        results = await asyncio.gather(*(link.scan() for _ in range(SCANS)))
        assert all(result == results[0] for result in results)
        assert [command["task"] for command in commands_read] == ["/can_act"]
        # once it is over, the next call scans again
        await link.scan()
        assert len(commands_read) == 2
        if profile is Profile.FW_2026_09:
            plain, probed, *more = await asyncio.gather(
                link.scan(), link.scan(probe_range=(40, 45)), link.scan(), link.scan(probe_range=(40, 45))
            )
            assert more == [plain, probed] and probed.node(41) is not None and plain.node(41) is None
            assert len(commands_read) == 4


async def test_d5_a_cancelled_caller_leaves_the_shared_scan_to_the_others(tmp_path: Path) -> None:
    """D5: the scan is shared, not owned: one caller giving up does not fail the rest."""
    async with running(tmp_path, nodes=MIXED_NODES) as scope, linked(scope.pty.url) as link:
        first = asyncio.ensure_future(link.scan())
        second = asyncio.ensure_future(link.scan())
        await asyncio.sleep(0)
        first.cancel()
        assert (await second).node(10) is not None
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_d5_no_more_commands_in_flight_than_the_legacy_master_queues(tmp_path: Path) -> None:
    """D5: a burst of 30 commands at a legacy master (queue of 5) all answered; none dropped."""
    async with (
        running(tmp_path, profile=Profile.LEGACY) as scope,
        linked(scope.pty.url, baud=LEGACY_BAUD) as link,
    ):
        replies = await asyncio.gather(
            *(link.request(commands.state_command(), timeout=2.0) for _ in range(30))
        )
        assert len({reply["qid"] for reply in replies}) == 30


async def test_d5_a_command_waiting_for_a_place_keeps_its_whole_timeout(tmp_path: Path) -> None:
    """D5: at most ``max_in_flight`` commands on the wire; the ones behind them time out only after
    their own full timeout, counted from when they got a place."""
    async with running(tmp_path) as scope, linked(scope.pty.url) as link:
        loop = asyncio.get_running_loop()
        read_at: list[float] = []
        scope.master.on_command = lambda _command: read_at.append(loop.time())
        scope.master.set_muted(True)  # reads, never answers
        started = loop.time()
        ended: list[float] = []

        async def ask() -> None:
            with pytest.raises(LinkTimeoutError, match=r"within 0\.3s"):
                await link.request(commands.state_command(), timeout=0.3)
            ended.append(loop.time())

        places = FAST.max_in_flight
        await asyncio.gather(*(ask() for _ in range(2 * places)))
        assert len(read_at) == 2 * places
        # the fifth command went out only when one of the first four had had its 0.3 s
        assert read_at[places] - started >= 0.3
        # and the second four had 0.3 s of their own after that
        assert sorted(ended)[places] - started >= 0.6


# ---- the daemon ----------------------------------------------------------------------------------------


def scope_for(tmp_path: Path, profile: Profile) -> VirtualMicroscope:
    """The master's own timing: a legacy scan ~1.4 s after its acknowledgement, as on hardware."""
    config = SimConfig(nodes=tuple(default_node(can_id) for can_id in BOARDS), profile=profile,
                       serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0)  # fmt: skip
    return VirtualMicroscope(config)


@pytest.fixture(params=[Profile.LEGACY, Profile.FW_MAIN_2026_07])
async def scope(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    async with scope_for(tmp_path, request.param) as scope:
        yield scope


def failure(reply: Message) -> str:
    return f"{reply.error_name}: {reply.body}" if reply.message_type is MessageType.ERROR else ""


@pytest.mark.timeout(60)
async def test_d5_twenty_concurrent_scan_devices_all_answer(
    start_daemon: DaemonFactory, client: MessageBus, scope: VirtualMicroscope
) -> None:
    """D5: 20 concurrent ScanDevices (and a StartOTA among them) on a legacy master (queue 5, 115200
    baud) and a FW-main one: every ScanDevices answers with the same boards, nothing is a link timeout.

    The firmware server is absent (nothing listens at the default URL): each call's fetch of it, with
    retries, holds worker threads for seconds, which starved the link's writes before."""
    legacy = scope.master.command_queue_length == 5
    await start_daemon("--serial-port", str(scope.config.serial_link),
                       config="[serial]\nbaud = 115200\n" if legacy else "")  # fmt: skip
    commands_read = sent(scope)
    scans = [call(client, "ScanDevices") for _ in range(SCANS)]
    replies = await asyncio.gather(*scans, call(client, "StartOTA", "ua{sv}", NODE, {}))
    *scanned, started = replies
    assert [failure(reply) for reply in scanned] == [""] * SCANS
    boards = [[board["can_id"] for board in unwrap(reply.body[0])] for reply in scanned]
    # a legacy master's short scan leaves itself out
    assert boards == [[*BOARDS] if legacy else [1, *BOARDS]] * SCANS
    # the StartOTA fails, the server being absent, but not for want of a reply from the master
    assert LINK_TIMEOUT not in failure(started)
    assert sum(command["task"] == "/can_act" for command in commands_read) < SCANS


@pytest.mark.timeout(90)
async def test_d5_fifty_concurrent_start_ota_for_one_board_start_one_job(
    start_daemon: DaemonFactory, client: MessageBus, caddy: CaddyServer, tmp_path: Path
) -> None:
    """D5: 50 concurrent StartOTA for one board: one job, Busy for the other 49, no link timeout."""
    await asyncio.to_thread(
        (caddy.root / "esp32_UC2_canopen_slave_motor_release_motX.bin").write_bytes, IMAGE
    )
    async with await microscope_for(tmp_path, stall_at_percent=30.0) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", caddy.url,
                           config=FAST_UPDATE)  # fmt: skip
        replies = await asyncio.gather(*(call(client, "StartOTA", "ua{sv}", NODE, {}) for _ in range(STARTS)))
        accepted = [reply for reply in replies if reply.message_type is MessageType.METHOD_RETURN]
        refused = [failure(reply) for reply in replies if reply.message_type is MessageType.ERROR]
        assert len(accepted) == 1, refused
        assert "job_id" in unwrap(accepted[0].body[0])
        assert all(text.startswith(names.BUSY + ":") for text in refused), refused
        assert len(refused) == STARTS - 1
        assert (await call(client, "Cancel", "u", NODE)).message_type is MessageType.METHOD_RETURN


@pytest.mark.timeout(90)
async def test_d5_fifty_concurrent_wifi_start_ota_on_a_legacy_master_start_one_job(
    start_daemon: DaemonFactory, client: MessageBus, caddy: CaddyServer, tmp_path: Path
) -> None:
    """D5 on a legacy master (queue of 5, its scan 1.4 s after the command, as on hardware): 50
    concurrent StartOTA over WiFi share their scans; one job, Busy for the other 49."""
    await asyncio.to_thread((caddy.root / wifi.IMAGE_NAME).write_bytes, wifi.IMAGE)
    timing = replace(wifi.TIMING, legacy_scan_wait=MasterTiming().legacy_scan_wait)
    async with wifi.legacy_scope(tmp_path, timing=timing) as scope:
        await wifi.start_for(start_daemon, scope, caddy.url)
        commands_read = sent(scope)
        starts = (call(client, "StartOTA", "ua{sv}", wifi.NODE, wifi.credentials()) for _ in range(STARTS))
        replies = await asyncio.gather(*starts)
        accepted = [reply for reply in replies if reply.message_type is MessageType.METHOD_RETURN]
        refused = [failure(reply) for reply in replies if reply.message_type is MessageType.ERROR]
        assert len(accepted) == 1, refused
        assert all(text.startswith(names.BUSY + ":") for text in refused), refused
        assert len(refused) == STARTS - 1
        # shared: a few scans, not one per call (50 in turn, 70 s, before)
        assert sum(bool(command.get("scan")) for command in commands_read) <= 5
