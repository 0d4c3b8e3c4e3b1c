"""Both OTA operations of the link against a master played byte by byte by the test (``ptypeer``).

The virtual master never sends some things a real master can: the errors for a preamble our link never
writes (no ``ota`` object, no size, a bad node id), a ``crc_mismatch`` (our link always announces the
right CRC), a status line left over from an earlier stream, an unknown code, a refusal of the WiFi
command. Here the test sends them in the spec's exact bytes (``uc2-stack.md`` §2.2, §2.3).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

import pytest
from ptypeer import PtyPeer, frame, line, state_reply

from uc2otad.errors import MasterError, WifiJoinError, WifiJoinTimeoutError
from uc2otad.links.base import TRAFFIC
from uc2otad.links.ota_stream import StreamSettings
from uc2otad.links.ota_wifi import WifiOtaSettings
from uc2otad.links.serial_hat import HatSettings, SerialHatLink

IMAGE = b"\xe9" + bytes(range(256)) * 40  # three chunks: 4096, 4096, 2049
#: (chunk size, total the master acknowledges after it)
CHUNKS = ((4096, 4096), (4096, 8192), (len(IMAGE) - 8192, len(IMAGE)))
PASSWORD = "peer-secret-9321"
SETTINGS = HatSettings(
    request_timeout=0.3,
    handshake_timeout=0.3,
    read_interval=0.01,
    stream=StreamSettings(ready_timeout=1.0, ack_timeout=1.0, flash_timeout=1.0, master_rx_timeout=0.2),
    wifi_ota=WifiOtaSettings(command_timeout=1.0, event_timeout=0.3),
)


@pytest.fixture
async def peer() -> AsyncIterator[PtyPeer]:
    peer = PtyPeer()
    yield peer
    peer.close()


async def open_link(peer: PtyPeer, pindef: str) -> SerialHatLink:
    link = SerialHatLink(peer.path, settings=SETTINGS)
    opening = asyncio.create_task(link.open())
    command = await peer.command()
    await peer.write(frame(state_reply(command["qid"], pindef=pindef)))
    await opening
    return link


@pytest.fixture
async def canopen_link(peer: PtyPeer) -> AsyncIterator[SerialHatLink]:
    link = await open_link(peer, "UC2_canopen_master")
    yield link
    await link.close()


@pytest.fixture
async def legacy_link(peer: PtyPeer) -> AsyncIterator[SerialHatLink]:
    link = await open_link(peer, "UC2_3_CAN_HAT_Master")
    yield link
    await link.close()


async def preamble(peer: PtyPeer) -> dict[str, object]:
    command = await peer.command()
    assert command == {
        "task": "/ota_start",
        "ota": {"nodeId": 11, "size": len(IMAGE), "crc32": f"0x{zlib.crc32(IMAGE):08X}"},
    }  # as UC2-REST writes it: no qid, the CRC as "0x%08X"
    return command


def ready() -> bytes:
    return frame({"ota_status": "ready", "size": len(IMAGE), "nodeId": 11, "chunkSize": 4096})


@pytest.mark.parametrize("code", ["missing_ota_object", "missing_nodeId_or_size", "invalid_nodeId"])
async def test_errors_before_ready_are_typed_with_the_master_code(
    canopen_link: SerialHatLink, peer: PtyPeer, code: str
) -> None:
    streaming = asyncio.create_task(canopen_link.stream_ota(11, IMAGE))
    await preamble(peer)
    await peer.write(frame({"ota_status": "error", "error": code}))
    with pytest.raises(MasterError) as caught:
        await streaming
    assert (caught.value.code, caught.value.node_id) == (code, 11)


async def test_a_crc_mismatch_carries_what_the_master_computed_and_expected(
    canopen_link: SerialHatLink, peer: PtyPeer
) -> None:
    streaming = asyncio.create_task(canopen_link.stream_ota(11, IMAGE))
    await preamble(peer)
    await peer.write(ready())
    for size, total in CHUNKS:
        await peer.raw(size)
        await peer.write(line({"ota_rx": total}))
    mismatch = {"computed": "0x12345678", "expected": f"0x{zlib.crc32(IMAGE):08X}", "comment": "retry"}
    await peer.write(line({"ota_status": "error", "error": "crc_mismatch", **mismatch}))
    with pytest.raises(MasterError, match="computed=0x12345678") as caught:
        await streaming
    assert (caught.value.code, caught.value.details) == ("crc_mismatch", mismatch)


async def test_a_status_line_left_over_from_an_earlier_stream_does_not_fail_this_one(
    canopen_link: SerialHatLink, peer: PtyPeer
) -> None:
    progress: list[int] = []
    streaming = asyncio.create_task(
        canopen_link.stream_ota(11, IMAGE, progress=lambda done, _: progress.append(done))
    )
    await preamble(peer)
    await peer.write(line({"ota_status": "error", "error": "rx_timeout"}))  # stale: no session id (§8 item 6)
    await peer.write(ready())
    for size, total in CHUNKS:
        assert len(await peer.raw(size)) == size
        await peer.write(line({"ota_rx": total}))
    await peer.write(line({"ota_status": "flashing"}) + line({"ota_status": "success"}))
    result = await streaming
    assert (result.chunks, progress) == (3, [4096, 8192, len(IMAGE)])


@pytest.mark.parametrize("code", ["rx_timeout", "a_code_from_newer_firmware"])
async def test_an_error_mid_stream_ends_it_with_the_code_and_the_link_is_free_at_once(
    canopen_link: SerialHatLink, peer: PtyPeer, code: str
) -> None:
    streaming = asyncio.create_task(canopen_link.stream_ota(11, IMAGE))
    await preamble(peer)
    await peer.write(ready())
    await peer.raw(4096)
    await peer.write(line({"ota_status": "error", "error": code}))
    with pytest.raises(MasterError) as caught:
        await streaming
    assert caught.value.code == code
    asking = asyncio.create_task(canopen_link.get_identity())  # no restore wait: the master ended it
    command = await peer.command()
    await peer.write(frame(state_reply(command["qid"], pindef="UC2_canopen_master")))
    await asking


async def test_the_wifi_command_goes_out_as_uc2_rest_sends_it_and_the_answer_is_the_result(
    legacy_link: SerialHatLink, peer: PtyPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(TRAFFIC)
    accepted: list[dict[str, object]] = []
    starting = asyncio.create_task(
        legacy_link.start_wifi_ota(11, "uc2-lab", PASSWORD, timeout_ms=600_000, on_accepted=accepted.append)
    )
    command = await peer.command()
    assert command == {
        "task": "/can_act",
        "ota": {"canid": 11, "ssid": "uc2-lab", "password": PASSWORD, "timeout": 600_000},
        "qid": command["qid"],
    }
    await peer.write(frame({"qid": 0, "success": 0}))
    answer = {"status": 0, "statusMsg": "Success", "ip": "192.168.2.137", "hostname": "UC2-CAN-B.local"}
    await peer.write(frame({"ota": {"canId": 20, **answer, "status": 1}}))  # another node's answer
    await peer.write(frame({"ota": {"canId": 11, **answer}}))
    result = await starting
    assert (result.can_id, result.status, result.ip, result.hostname) == (
        11,
        0,
        "192.168.2.137",
        "UC2-CAN-B.local",
    )
    assert accepted == [{"qid": 0, "success": 0}]
    assert PASSWORD not in caplog.text


async def test_a_refused_wifi_command_and_a_silent_slave_are_typed(
    legacy_link: SerialHatLink, peer: PtyPeer
) -> None:
    refused = asyncio.create_task(legacy_link.start_wifi_ota(11, "uc2-lab", PASSWORD))
    await peer.command()
    await peer.write(frame({"qid": -1, "success": -1}))
    with pytest.raises(MasterError, match="success=-1"):
        await refused
    silent = asyncio.create_task(legacy_link.start_wifi_ota(11, "uc2-lab", PASSWORD))
    await peer.command()
    await peer.write(frame({"qid": 0, "success": 0}))
    with pytest.raises(WifiJoinTimeoutError) as caught:
        await silent
    assert (caught.value.error_code, caught.value.can_id, caught.value.status) == ("wifi_failed", 11, None)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, WifiJoinError)


@pytest.mark.parametrize(
    ("ssid", "password", "message"),
    [("", "x" * 8, "SSID"), ("s" * 32, "x" * 8, "SSID"), ("uc2-lab", "x" * 64, "password")],
)
async def test_credentials_the_firmware_cannot_carry_are_refused_before_sending(
    legacy_link: SerialHatLink, ssid: str, password: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        await legacy_link.start_wifi_ota(11, ssid, password)
    assert password not in str(caught.value)
