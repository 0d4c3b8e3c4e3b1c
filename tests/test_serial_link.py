"""The serial link over a real pty, the test playing the master byte by byte (see ``ptypeer``).

What the firmware may do to a UART and the link must survive: replies in single bytes, merged writes,
log lines in frames, 8 KiB frames, invalid JSON, unknown keys, stale status lines, int replies that
look like qid echoes, an unplugged port, a reboot. Every failure arrives as a typed error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from ptypeer import PtyPeer, frame, line, state_reply

from uc2otad.errors import (
    EventOverflowError,
    HandshakeError,
    LinkBusyError,
    LinkClosedError,
    LinkLostError,
    LinkOpenError,
    LinkProtocolError,
    LinkTimeoutError,
    MasterError,
    MasterRebootedError,
)
from uc2otad.links.base import TRAFFIC, ConnectionEvent, LinkState
from uc2otad.links.commands import INT_REPLY, ota_start_reply
from uc2otad.links.frames import MAX_FRAME_BYTES
from uc2otad.links.serial_hat import HatSettings, SerialHatLink
from uc2otad.retry import RetryPolicy

#: every wait shrunk so that a missing reply shows in a fraction of a second
FAST = HatSettings(
    request_timeout=0.3,
    handshake_timeout=0.3,
    scan_timeout=0.3,
    bus_health_timeout=0.3,
    restart_timeout=0.3,
    read_interval=0.01,
    close_timeout=1.0,
    reconnect=RetryPolicy(attempts=1000, first_delay=0.01, factor=1.0, max_delay=0.01),
)
ROM_BANNER = b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"


async def open_with_handshake(link: SerialHatLink, peer: PtyPeer, **state: Any) -> None:
    opening = asyncio.create_task(link.open())
    command = await peer.command()
    assert command == {"task": "/state_get", "qid": command["qid"]}
    await peer.write(frame(state_reply(command["qid"], **state)))
    await opening


@pytest.fixture
async def peer() -> AsyncIterator[PtyPeer]:
    peer = PtyPeer()
    yield peer
    peer.close()


@pytest.fixture
async def link(peer: PtyPeer) -> AsyncIterator[SerialHatLink]:
    link = SerialHatLink(peer.path, settings=FAST)
    await open_with_handshake(link, peer, identifier_version="v2026.1.0")
    yield link
    await link.close()


async def test_opening_asks_the_master_who_it_is(link: SerialHatLink) -> None:
    assert link.is_open
    assert link.identity is not None
    assert (link.identity.pindef, link.identity.version, link.identity.is_canopen) == (
        "UC2_canopen_master",
        "v2026.1.0",
        True,
    )


async def test_a_reply_written_one_byte_at_a_time_is_read(link: SerialHatLink, peer: PtyPeer) -> None:
    asking = asyncio.create_task(link.get_identity())
    command = await peer.command()
    await peer.write_slowly(frame(state_reply(command["qid"], identifier_version="v9")), piece=1)
    assert (await asking).version == "v9"


async def test_two_replies_in_one_write_reach_their_own_commands(link: SerialHatLink, peer: PtyPeer) -> None:
    first = asyncio.create_task(link.request({"task": "/state_get", "n": 1}))
    first_qid = (await peer.command())["qid"]
    second = asyncio.create_task(link.request({"task": "/state_get", "n": 2}))
    second_qid = (await peer.command())["qid"]
    await peer.write(frame({"answer": 2, "qid": second_qid}) + frame({"answer": 1, "qid": first_qid}))
    assert ((await first)["answer"], (await second)["answer"]) == (1, 2)


async def test_log_lines_inside_and_around_a_frame_do_not_disturb_the_reply(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    asking = asyncio.create_task(link.get_identity())
    qid = (await peer.command())["qid"]
    body = json.dumps(state_reply(qid, identifier_version="v7")).encode()
    await peer.write(
        b"[I][SerialProcess.cpp:391] jsonProcessor(): /state_get\n++\n"
        b"I (1234) UC2_CO: heartbeat from node 11\n" + body + b"\n[W][CANopenModule.cpp:733] slow\n--\n"
    )
    assert (await asking).version == "v7"


async def test_an_8_kib_reply_arrives_and_a_larger_one_is_dropped_as_the_firmware_would_never_send_it(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    def padded(qid: int, size: int) -> bytes:
        reply = state_reply(qid, pad="")
        reply["state"]["pad"] = "x" * (size - len(json.dumps(reply, separators=(",", ":"))))
        return frame(reply)

    asking = asyncio.create_task(link.get_identity())
    await peer.write(padded((await peer.command())["qid"], MAX_FRAME_BYTES))
    assert len((await asking).pindef) > 0

    asking = asyncio.create_task(link.get_identity())
    await peer.write(padded((await peer.command())["qid"], MAX_FRAME_BYTES + 1))
    with pytest.raises(LinkTimeoutError):
        await asking

    asking = asyncio.create_task(link.get_identity())
    await peer.write(frame(state_reply((await peer.command())["qid"])))
    assert (await asking).pindef == "UC2_canopen_master"


async def test_invalid_json_is_reported_and_skipped(
    link: SerialHatLink, peer: PtyPeer, caplog: pytest.LogCaptureFixture
) -> None:
    asking = asyncio.create_task(link.get_identity())
    qid = (await peer.command())["qid"]
    await peer.write(b'++\n{"state":{"pindef":\n--\n{"ota_rx":\n' + frame(state_reply(qid)))
    assert (await asking).pindef == "UC2_canopen_master"
    assert [r.message for r in caplog.records if "unusable input" in r.message][:1] != []


async def test_unknown_keys_reach_subscribers_and_do_not_disturb_replies(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    heard: list[dict[str, Any]] = []
    link.subscribe("emergency", heard.append)
    asking = asyncio.create_task(link.get_identity())
    qid = (await peer.command())["qid"]
    await peer.write(
        frame({"emergency": {"active": 1, "reason": "estop"}, "qid": 0})
        + frame({**state_reply(qid, newField=[1, 2]), "future": {"x": 1}})
    )
    assert (await asking).pindef == "UC2_canopen_master"
    assert heard == [{"emergency": {"active": 1, "reason": "estop"}, "qid": 0}]


async def test_a_stale_ota_status_line_is_not_taken_for_the_answer_to_ota_start(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    statuses: list[dict[str, Any]] = []
    link.subscribe("ota_status", statuses.append)
    starting = asyncio.create_task(
        link.request(
            {"task": "/ota_start", "ota": {"nodeId": 11, "size": 798432, "crc32": "0xD2A5FB80"}},
            reply=ota_start_reply(11, 798432),
            send_qid=False,
        )
    )
    command = await peer.command()
    assert "qid" not in command  # as UC2-REST sends it
    stale = {"ota_status": "error", "error": "rx_timeout"}
    ready = {"ota_status": "ready", "size": 798432, "nodeId": 11, "chunkSize": 4096}
    await peer.write(line(stale) + frame(ready))
    assert await starting == ready
    assert statuses == [stale, ready]


async def test_an_int_reply_is_not_mistaken_for_the_echo_of_a_pending_qid(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    asking = asyncio.create_task(link.get_identity())
    qid = (await peer.command())["qid"]
    # {"qid": <handler result>, "success": 1}: the same number, but not this command's reply
    await peer.write(frame({"qid": qid, "success": 1}) + frame(state_reply(qid, identifier_version="v5")))
    assert (await asking).version == "v5"


async def test_an_int_reply_answers_a_command_that_expects_one(link: SerialHatLink, peer: PtyPeer) -> None:
    triggering = asyncio.create_task(
        link.request(
            {"task": "/can_act", "ota": {"canid": 11, "ssid": "lab", "timeout": 300000}}, reply=INT_REPLY
        )
    )
    await peer.command()
    await peer.write(frame({"qid": 0, "success": 0}))
    assert await triggering == {"qid": 0, "success": 0}


async def test_commands_answered_by_shape_take_turns(link: SerialHatLink, peer: PtyPeer) -> None:
    health = {"nodeId": 1, "canRole": 1, "nmtState": 5, "bus": {"state": "running", "txErr": 3}}
    first = asyncio.create_task(link.bus_health())
    second = asyncio.create_task(link.bus_health())
    assert (await peer.command())["task"] == "/can_get"
    with pytest.raises(TimeoutError):  # the second waits for the first's reply before it is sent
        async with asyncio.timeout(0.05):
            await peer.command()
    await peer.write(frame(health))
    assert (await peer.command())["task"] == "/can_get"
    await peer.write(frame({**health, "bus": {"state": "bus_off", "txErr": 255}}))
    assert [(await first).bus_state, (await second).bus_state] == ["running", "bus_off"]
    assert (await second).tx_errors == 255


async def test_a_reply_without_what_the_protocol_promises_is_a_protocol_error(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    scanning = asyncio.create_task(link.scan())
    await peer.write(frame({"qid": (await peer.command())["qid"], "count": 0}))  # no "scan" list
    with pytest.raises(LinkProtocolError, match="no scan list"):
        await scanning


async def test_a_listener_that_falls_behind_learns_that_it_lost_events(peer: PtyPeer) -> None:
    link = SerialHatLink(peer.path, settings=replace(FAST, event_queue_size=2))
    await open_with_handshake(link, peer)
    try:
        async with link.listen("ota_rx") as events:
            await peer.write(b"".join(line({"ota_rx": 4096 * n}) for n in range(1, 4)))
            assert [await events.get(), await events.get()] == [{"ota_rx": 4096}, {"ota_rx": 8192}]
            with pytest.raises(EventOverflowError):
                await events.get()
    finally:
        await link.close()


async def test_restart_acknowledged_or_refused_by_the_master(link: SerialHatLink, peer: PtyPeer) -> None:
    restarting = asyncio.create_task(link.restart_node(11))
    assert (await peer.command())["restart"] == 11
    await peer.write(frame({"status": "ok", "nodeId": 11}))
    await restarting

    restarting = asyncio.create_task(link.restart_node(12))
    await peer.command()
    await peer.write(frame({"status": "error", "error": "SDO write failed", "nodeId": 12}))
    with pytest.raises(MasterError) as failure:
        await restarting
    assert (failure.value.code, failure.value.error_code) == ("SDO write failed", "master_error")


async def test_no_reply_is_a_typed_timeout_and_a_late_reply_harms_nothing(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    asking = asyncio.create_task(link.get_identity())
    late_qid = (await peer.command())["qid"]
    with pytest.raises(LinkTimeoutError, match="/state_get"):
        await asking
    asking = asyncio.create_task(link.get_identity())
    qid = (await peer.command())["qid"]
    await peer.write(frame(state_reply(late_qid, identifier_version="late")) + frame(state_reply(qid)))
    assert (await asking).version is None


async def test_the_port_closed_mid_command_fails_it_as_link_lost(link: SerialHatLink, peer: PtyPeer) -> None:
    events: list[ConnectionEvent] = []
    link.on_connection(events.append)
    scanning = asyncio.create_task(link.scan())
    await peer.command()
    peer.close()
    with pytest.raises(LinkLostError) as failure:
        await scanning
    assert failure.value.error_code == "link_lost"
    assert events[0] is ConnectionEvent.LOST
    assert link.state is LinkState.RECONNECTING
    with pytest.raises(LinkClosedError):
        await link.scan()


async def test_the_rom_banner_of_a_rebooting_master_fails_commands_in_flight(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    events: list[ConnectionEvent] = []
    link.on_connection(events.append)
    asking = asyncio.create_task(link.get_identity())
    await peer.command()
    await peer.write(ROM_BANNER)
    with pytest.raises(MasterRebootedError):
        await asking
    assert events == [ConnectionEvent.MASTER_REBOOTED]
    asking = asyncio.create_task(link.get_identity())
    await peer.write(frame(state_reply((await peer.command())["qid"])))
    assert (await asking).pindef == "UC2_canopen_master"


async def test_secrets_never_reach_the_log(
    link: SerialHatLink, peer: PtyPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(TRAFFIC, logger="uc2otad.links")
    command = {"task": "/can_act", "ota": {"canid": 11, "ssid": "lab", "password": "s3cret-pw", "timeout": 1}}
    triggering = asyncio.create_task(link.request(command, reply=INT_REPLY))
    assert (await peer.command())["ota"]["password"] == "s3cret-pw"  # the master does get it
    await peer.write(b'[I][can_controller.cpp:1505] act(): {"ssid":"lab","password":"s3cret-pw"}\n')
    await peer.write(frame({"qid": 0, "success": 0}))
    await triggering
    assert "s3cret-pw" not in caplog.text
    assert caplog.text.count('"password":"***"') == 2


async def test_a_listener_stream_gets_its_keys_and_ends_when_the_port_is_lost(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    async with link.listen("ota_rx", "ota_status") as events:
        await peer.write(line({"ota_rx": 4096}) + line({"other": 1}) + frame({"ota_status": "flashing"}))
        assert [await events.get(), await events.get()] == [{"ota_rx": 4096}, {"ota_status": "flashing"}]
        peer.close()
        with pytest.raises(LinkLostError):
            await events.get()


async def test_a_held_link_refuses_other_tasks_but_serves_its_holder(
    link: SerialHatLink, peer: PtyPeer
) -> None:
    held = asyncio.Event()

    async def another_task_scans() -> None:
        await held.wait()
        await link.scan()

    other = asyncio.create_task(another_task_scans())  # started outside the holder's block
    async with link.exclusive("streaming to node 11"):
        held.set()
        with pytest.raises(LinkBusyError, match="streaming to node 11"):
            await other
        await link.write_raw(b"\xe9\x00raw image bytes")
        assert await peer.raw(17) == b"\xe9\x00raw image bytes"
    asking = asyncio.create_task(link.get_identity())
    await peer.write(frame(state_reply((await peer.command())["qid"])))
    await asking


async def test_a_closed_link_refuses_commands_and_closes_twice(link: SerialHatLink) -> None:
    await link.close()
    await link.close()
    assert link.state is LinkState.CLOSED
    with pytest.raises(LinkClosedError):
        await link.get_identity()


async def test_a_missing_port_is_a_typed_open_error(tmp_path: Any) -> None:
    link = SerialHatLink(str(tmp_path / "ttyUSB9"), settings=FAST)
    with pytest.raises(LinkOpenError, match="ttyUSB9"):
        await link.open()
    assert link.state is LinkState.CLOSED


async def test_a_port_whose_board_stays_silent_is_not_a_master(peer: PtyPeer) -> None:
    link = SerialHatLink(peer.path, settings=FAST)
    with pytest.raises(HandshakeError, match="no UC2 master answered /state_get at 921600 baud"):
        await link.open()
    assert link.state is LinkState.CLOSED
    assert (await peer.command())["task"] == "/state_get"
    await open_with_handshake(link, peer)  # the port was closed again: it opens anew
    await link.close()


async def test_a_second_link_cannot_take_a_port_in_use(link: SerialHatLink, peer: PtyPeer) -> None:
    with pytest.raises(LinkOpenError):
        await SerialHatLink(peer.path, settings=FAST).open()


async def test_a_board_that_is_not_a_master_is_reported(
    peer: PtyPeer, caplog: pytest.LogCaptureFixture
) -> None:
    link = SerialHatLink(peer.path, settings=FAST)
    await open_with_handshake(link, peer, pindef="UC2_canopen_slave_motor")
    assert link.identity is not None and not link.identity.is_master
    assert "not a master build" in caplog.text
    await link.close()


async def test_master_log_lines_go_to_the_debug_log(
    link: SerialHatLink, peer: PtyPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="uc2otad.links")
    asking = asyncio.create_task(link.get_identity())
    qid = (await peer.command())["qid"]
    await peer.write(b"[I][main.cpp:88] setup(): UC2 master ready\n" + frame(state_reply(qid)))
    await asking
    assert "master log: [I][main.cpp:88] setup(): UC2 master ready" in caplog.text
