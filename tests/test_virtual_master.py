"""The virtual master, byte by byte against ``uc2-stack.md`` §2, through a raw client on its real pty.

No uc2otad client code here: the test writes commands as UC2-REST writes them and reads frames with
its own few lines (``ptypeer.PtyClient``), so the simulator is checked against the spec on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from ptypeer import PtyClient

from uc2otad.sim.config import SimConfig
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.profiles import PROFILES, Profile
from uc2otad.sim.wire import INPUT_BUFFER_BYTES, garbled

TIMING = MasterTiming(sdo_time=0.0005, sdo_timeout=0.05, legacy_scan_wait=0.01, restart_delay=0.0,
                      node_boot_time=0.2, master_boot_time=0.02)  # fmt: skip
NODES = (default_node(11), replace(default_node(20), online=False), default_node(30))


@asynccontextmanager
async def running(tmp_path: Path, **config: Any) -> AsyncIterator[VirtualMicroscope]:
    settings = replace(SimConfig(timing=TIMING, nodes=NODES, serial_link=tmp_path / "ttyHAT"), **config)
    async with VirtualMicroscope(settings) as scope:
        yield scope


@asynccontextmanager
async def client_of(path: str, baud: int = 921600) -> AsyncIterator[PtyClient]:
    client = PtyClient(path, baud)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def scope(tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    async with running(tmp_path) as scope:
        yield scope


@pytest.fixture
async def client(scope: VirtualMicroscope) -> AsyncIterator[PtyClient]:
    async with client_of(scope.pty.path) as client:
        yield client


async def test_a_command_needs_no_newline_and_a_late_newline_adds_nothing(client: PtyClient) -> None:
    client.send(b'{"task":"/state_get","qid":5}')
    assert (await client.reply())["qid"] == 5
    # UC2-REST's connect: the object, then "\n" in a separate write; and a request without qid
    client.send(b'{"task": "/state_get"}')
    client.send(b"\n")
    client.send(b'{"task":"/state_get","qid":6}\n')
    assert [(await client.reply())["qid"], (await client.reply())["qid"]] == [0, 6]


async def test_commands_split_and_merged_arbitrarily_are_all_answered(client: PtyClient) -> None:
    data = (
        b'{"task":"/state_get","qid":1}{"task":"/state_get",' + b'"qid":2}\r\n{"task":"/state_get","qid":3}'
    )
    for index in range(0, len(data), 7):
        client.send(data[index : index + 7])
    assert [(await client.reply())["qid"] for _ in range(3)] == [1, 2, 3]


async def test_replies_are_framed_exactly_as_the_firmware_frames_them(tmp_path: Path) -> None:
    async with running(tmp_path, log_noise=False) as scope, client_of(scope.pty.path) as client:
        client.send(b'{"task":"/state_get","qid":9}\n')
        await client.wait_for(lambda: client.received.endswith(b"\n--\n\x00"))
        reply = bytes(client.received)
        # the NUL: the firmware writes strlen + 1 bytes (SerialProcess.cpp:283, 555 @063e5a6)
        assert reply.startswith(b'++\n{"state":{') and reply.endswith(b',"qid":9}\n--\n\x00')
        body = reply[len(b"++\n") : -len(b"\n--\n\x00")]
        assert body == json.dumps(json.loads(body), separators=(",", ":")).encode()  # as cJSON prints


async def test_broken_and_oversized_objects_get_the_firmware_s_error_answers(client: PtyClient) -> None:
    client.send(b'{"task":"/state_get",}\n')
    assert await client.reply() == {"error": "Failed to parse JSON"}
    client.send(b'{"task":"/state_get","pad":"' + b"x" * INPUT_BUFFER_BYTES + b'"}\n')
    assert await client.reply() == {"error": "Input buffer overflow"}
    client.send(b'{"task":"/state_get","qid":4}')
    assert (await client.reply())["qid"] == 4


async def test_an_int_result_goes_into_qid_whatever_the_request_s_qid(client: PtyClient) -> None:
    client.send(b'{"task":"/state_act","isBusy":0,"qid":9}')
    assert await client.reply() == {"qid": 1, "success": 1}


async def test_an_unknown_task_is_answered_with_the_int_result_minus_one(client: PtyClient) -> None:
    # jsonProcessor's last branch, serialize(-1) (SerialProcess.cpp:831 @063e5a6, :720 @14fa3e3)
    client.send(b'{"task":"/nonexistent_get","qid":3}{"task":"/state_get","qid":4}')
    assert await client.reply() == {"qid": -1, "success": -1}
    assert (await client.reply())["qid"] == 4
    client.send(b'{"qid":5}{"task":7,"qid":6}{"task":"/state_get","qid":8}')  # no task: no answer at all
    assert (await client.reply())["qid"] == 8


async def test_the_identity_of_each_firmware_generation(tmp_path: Path) -> None:
    # release string and image name only on 2026-09 firmware: July 2026's State::get has name, id, date
    # and author (State.cpp:213-220 @063e5a6), and so has the legacy one
    for profile, pindef, has_version in ((Profile.FW_2026_09, "UC2_canopen_master", True),
                                         (Profile.FW_MAIN_2026_07, "UC2_canopen_master", False),
                                         (Profile.LEGACY, "UC2_3_CAN_HAT_Master", False)):  # fmt: skip
        async with (
            running(tmp_path, profile=profile) as scope,
            client_of(scope.pty.path, scope.master.baud) as client,
        ):
            client.send(b'{"task":"/state_get","qid":2}')
            state = (await client.reply())["state"]
            assert state["pindef"] == pindef
            assert ("identifier_version" in state, "identifier_image" in state) == (has_version, has_version)


async def test_a_canopen_scan_has_the_spec_s_entries(client: PtyClient) -> None:
    client.send(b'{"task":"/can_act","scan":true,"qid":7}')
    reply = await client.reply()
    assert (reply["qid"], reply["count"], set(reply["master"])) == (
        7,
        3,
        {"canId", "build", "fwVersion", "mac"},
    )
    entries = {entry["canId"]: entry for entry in reply["scan"]}
    common = {"canId", "deviceType", "deviceTypeStr", "status", "statusStr"}
    assert set(entries[11]) == common | {"build", "fwVersion", "mac"}
    assert (entries[11]["status"], entries[11]["statusStr"]) == (0, "idle")
    assert set(entries[20]) == common  # unreachable: no build, version or MAC
    assert (entries[20]["status"], entries[20]["statusStr"]) == (1, "unreachable")


async def test_a_legacy_master_scans_only_its_id_ranges_and_acknowledges_ota_with_an_int(
    tmp_path: Path,
) -> None:
    nodes = (default_node(11), default_node(20), default_node(30), default_node(40))
    async with (
        running(tmp_path, profile=Profile.LEGACY, nodes=nodes) as scope,
        client_of(scope.pty.path, PROFILES[Profile.LEGACY].baud) as client,
    ):
        client.send(b'{"task":"/can_act","scan":true,"qid":3}')
        # the int reply at once, the scan frame legacy_scan_wait later (can_controller.cpp:1564, 2659-2681
        # @14fa3e3); types by id range, named by the master (:829-838, 2631-2638)
        assert await client.reply() == {"qid": 3, "success": 1}
        reply = await client.reply()
        assert (reply["qid"], reply["count"]) == (3, 3)
        assert reply["scan"] == [
            {"canId": can_id, "deviceType": number, "status": 0, "deviceTypeStr": name, "statusStr": "idle"}
            for can_id, number, name in ((11, 0, "motor"), (20, 1, "laser"), (30, 2, "led"))
        ]
        client.send(b'{"task":"/can_act","restart":11,"qid":7}')  # act() ends with `return qid` (:1610)
        assert await client.reply() == {"qid": 7, "success": 1}
        ota = {"canid": 11, "ssid": "uc2-lab", "password": "uc2-lab-pass", "timeout": 300000}
        client.send(json.dumps({"task": "/can_act", "ota": ota, "qid": 8}).encode())
        assert await client.reply() == {"qid": 0, "success": 0}
        client.send(b'{"task":"/can_act","ota":{"canid":11},"qid":9}')
        assert await client.reply() == {"qid": -1, "success": -1}


async def test_a_legacy_master_forgets_a_scan_asked_for_while_one_runs(tmp_path: Path) -> None:
    # loop() clears the pending flag after the running scan (can_controller.cpp:2757-2761 @14fa3e3)
    timing = replace(TIMING, legacy_scan_wait=0.2)
    async with (
        running(tmp_path, profile=Profile.LEGACY, timing=timing) as scope,
        client_of(scope.pty.path, PROFILES[Profile.LEGACY].baud) as client,
    ):
        client.send(b'{"task":"/can_act","scan":true,"qid":3}{"task":"/can_act","scan":true,"qid":4}')
        replies = [await client.reply() for _ in range(3)]
        client.send(b'{"task":"/can_act","scan":true,"qid":6}')
        replies += [await client.reply() for _ in range(2)]
    assert [(reply["qid"], "scan" in reply) for reply in replies] == [
        (3, False), (4, False), (3, True), (6, False), (6, True)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "depth"),
    [(Profile.FW_MAIN_2026_07, 16), (Profile.LEGACY, 5)],
    ids=["FW-main 16", "FW-legacy 5"],
)
async def test_more_commands_at_once_than_the_firmware_queue_holds_are_dropped(
    tmp_path: Path, profile: Profile, depth: int
) -> None:
    # serialMSGQueue = xQueueCreate(16, …) (SerialProcess.cpp:350 @063e5a6); xQueueCreate(5, …)
    # (:326 @14fa3e3)
    baud = PROFILES[profile].baud
    async with running(tmp_path, profile=profile) as scope, client_of(scope.pty.path, baud) as client:
        client.send(b"".join(b'{"task":"/state_get","qid":%d}' % qid for qid in range(1, depth + 4)))
        await client.wait_for(lambda: client.received.count(b"Serial queue full") == 3)
        assert [(await client.reply())["qid"] for _ in range(depth)] == list(range(1, depth + 1))
        client.send(b'{"task":"/state_get","qid":200}')
        assert (await client.reply())["qid"] == 200  # the last three were dropped


async def test_restart_of_node_0_restarts_the_master_without_a_word(tmp_path: Path) -> None:
    # CANopenModule.cpp:1679-1684 @063e5a6: the reply is built, then esp_restart() after 300 ms
    timing = replace(TIMING, master_restart_delay=0.05)
    async with running(tmp_path, timing=timing) as scope, client_of(scope.pty.path) as client:
        client.send(b'{"task":"/can_act","restart":0,"qid":4}{"task":"/state_get","qid":5}')
        # the ROM's banner, at 115200 baud: garbage at the client's 921600
        banner = garbled(b"rst:0xc (SW_CPU_RESET)")
        await client.wait_for(lambda: banner in client.received)
        after = client.received.index(banner)
        # then the app runs again
        await client.wait_for(lambda: client.received.find(b"setup(): UC2 master ready", after) > 0)
        assert b"++" not in client.received  # neither the restart nor the command after it was answered
        client.send(b'{"task":"/state_get","qid":6}')
        assert (await client.reply())["qid"] == 6


async def test_restart_acknowledges_then_the_node_answers_no_reads_until_it_has_booted(
    tmp_path: Path,
) -> None:
    identity = {"build", "fwVersion", "mac"}
    slow_boot = replace(TIMING, node_boot_time=1.0)  # the scan's failing reads end well before the boot
    async with running(tmp_path, timing=slow_boot) as scope, client_of(scope.pty.path) as client:
        client.send(b'{"task":"/can_act","restart":11}')
        assert await client.reply() == {"status": "ok", "nodeId": 11}
        client.send(b'{"task":"/can_act","scan":true,"qid":1}')
        # heard within the last 5 s, so still "idle", but its SDO reads go unanswered: no build, version
        # or MAC (isNodeReachable and scan, CANopenModule.cpp:611-633, 1581-1612 @063e5a6)
        gone = (await client.reply())["scan"][0]
        assert gone["statusStr"] == "idle" and not identity & set(gone)
        await client.wait_for(lambda: b"node 11 boot-up" in client.received)
        client.send(b'{"task":"/can_act","scan":true,"qid":2}')
        back = (await client.reply())["scan"][0]
        assert back["statusStr"] == "idle" and identity <= set(back)
        client.send(b'{"task":"/can_act","restart":20}')
        assert await client.reply() == {"status": "error", "error": "SDO write failed", "nodeId": 20}


async def test_bus_health(client: PtyClient) -> None:
    client.send(b'{"task":"/can_get"}')
    reply = await client.reply()
    assert (reply["nodeId"], reply["nmtStateStr"], reply["bus"]["state"]) == (1, "OPERATIONAL", "running")
    assert "qid" not in reply


async def test_a_client_at_the_wrong_baud_rate_reads_garbage_except_the_rom_banner(
    scope: VirtualMicroscope,
) -> None:
    banner_end = b"entry 0x400805f0\r\n"  # the ROM's last line, then the app starts and logs
    async with client_of(scope.pty.path, baud=115200) as client:
        await scope.master.reboot()
        await client.wait_for(
            lambda: banner_end in client.received and not client.received.endswith(banner_end)
        )
        assert b"rst:0xc (SW_CPU_RESET)" in client.received  # the ROM talks at 115200
        app_output = client.received[client.received.index(banner_end) + len(banner_end) :]
        assert all(byte >= 0x80 for byte in app_output)  # the app, at 921600, is garbage to us
    async with client_of(scope.pty.path) as client:
        client.send(b'{"task":"/state_get","qid":2}')
        assert (await client.reply())["qid"] == 2


async def test_the_port_vanishes_and_returns_behind_its_stable_path(scope: VirtualMicroscope) -> None:
    link_path = scope.pty.url
    async with client_of(link_path) as client:
        await scope.pty.vanish()
        await client.wait_for(lambda: client.hung_up)
        assert not await asyncio.to_thread(os.path.lexists, link_path)
    await scope.pty.restore()
    assert await asyncio.to_thread(os.path.realpath, link_path) == scope.pty.path
    async with client_of(link_path) as client:
        client.send(b'{"task":"/state_get","qid":3}')
        assert (await client.reply())["qid"] == 3


async def test_the_master_answers_over_tcp_to_one_client_at_a_time(scope: VirtualMicroscope) -> None:
    assert scope.socket is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", scope.socket.port)
    try:
        writer.write(b'{"task":"/state_get","qid":12}\n')
        async with asyncio.timeout(2):
            while b"--\n" not in (data := await reader.readuntil(b"--\n")):
                pass
        assert b'"qid":12}\n--\n' in data
        second_reader, second_writer = await asyncio.open_connection("127.0.0.1", scope.socket.port)
        async with asyncio.timeout(2):
            assert await second_reader.read() == b""  # closed at once: the port is in use
        second_writer.close()
    finally:
        writer.close()
