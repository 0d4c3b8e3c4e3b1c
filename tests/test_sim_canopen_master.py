"""The virtual CANopen master's ``/ota_start`` byte by byte, through a raw client on its real pty.

No uc2otad client code: the test writes what ``uc2-stack.md`` §2.2 and §11 say a host writes and looks
for the exact bytes the firmware answers with (``ptypeer.PtyClient``), so the simulator is checked
against the spec on its own.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from espimage import build_app_image
from ptypeer import PtyClient

from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.timing import MasterTiming

NODE = 11
IMAGE = build_app_image("esp32s3", version="v2099.7.0", segment_sizes=(0x1000, 0x400, 0x800, 0x400))
TIMING = MasterTiming(sdo_time=0.0, reachable_timeout=0.1, ota_settle=0.0, ota_rx_timeout=0.2,
                      ota_reboot_delay=0.0, node_boot_time=0.05)  # fmt: skip


def preamble(size: int = len(IMAGE), crc32: object = None, node: object = NODE) -> bytes:
    """As UC2-REST writes it: ``json.dumps`` (with spaces), no qid, then a newline in the same write."""
    crc = f"0x{zlib.crc32(IMAGE):08X}" if crc32 is None else crc32
    return (
        json.dumps({"task": "/ota_start", "ota": {"nodeId": node, "size": size, "crc32": crc}}).encode()
        + b"\n"
    )


def contains(client: PtyClient, data: bytes) -> bool:
    return data in client.received


def bare(value: dict[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


@pytest.fixture
async def scope(tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    config = SimConfig(nodes=(default_node(NODE), replace(default_node(12), online=False)), timing=TIMING,
                       serial_link=tmp_path / "tty", socket=False, log_noise=False)  # fmt: skip
    async with VirtualMicroscope(config) as scope:
        yield scope


@pytest.fixture
async def client(scope: VirtualMicroscope) -> AsyncIterator[PtyClient]:
    client = PtyClient(scope.pty.path)
    yield client
    client.close()


async def stream(client: PtyClient, image: bytes) -> None:
    """The chunks, each after the previous one's ``ota_rx`` line."""
    for start in range(0, len(image), 4096):
        client.send(image[start : start + 4096])
        await client.wait_for(partial(contains, client, bare({"ota_rx": min(start + 4096, len(image))})))


async def test_ready_then_bare_acknowledgements_then_flashing_and_success(
    client: PtyClient, scope: VirtualMicroscope
) -> None:
    client.send(preamble())
    assert await client.reply() == {
        "ota_status": "ready",
        "size": len(IMAGE),
        "nodeId": NODE,
        "chunkSize": 4096,
    }
    await stream(client, IMAGE)
    ending = bare({"ota_status": "flashing"}) + bare({"ota_status": "success"})
    await client.wait_for(lambda: ending in client.received)
    acknowledgements = [
        bare({"ota_rx": min(end, len(IMAGE))}) for end in range(4096, len(IMAGE) + 4096, 4096)
    ]
    # the NUL that ends the "ready" frame (SerialProcess.cpp:283, 555 @063e5a6), then bare lines only
    assert bytes(client.received) == b"\x00" + b"".join(acknowledgements) + ending
    await scope.master.slave(NODE).wait_until(lambda slave: slave.running_image == IMAGE)


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b'{"task":"/ota_start"}', "missing_ota_object"),
        (b'{"task":"/ota_start","ota":{"nodeId":11}}', "missing_nodeId_or_size"),
        (preamble(node=0), "invalid_nodeId"),
        (preamble(node=128), "invalid_nodeId"),
        (preamble(size=0), "invalid_size"),
        (preamble(size=8 * 1024 * 1024 + 1), "invalid_size"),
        (preamble(node=12), "slave_unreachable"),
    ],
)
async def test_a_request_the_master_cannot_serve_gets_its_framed_error_and_no_binary_mode(
    client: PtyClient, request_bytes: bytes, code: str
) -> None:
    client.send(request_bytes)
    assert await client.reply() == {"ota_status": "error", "error": code}
    client.send(b'{"task":"/state_get","qid":3}')  # still reading JSON
    assert (await client.reply())["qid"] == 3


async def test_bytes_that_do_not_match_the_announced_crc_end_in_crc_mismatch(
    client: PtyClient, scope: VirtualMicroscope
) -> None:
    announced = zlib.crc32(IMAGE) ^ 1
    client.send(preamble(crc32=str(announced)))  # a decimal string is accepted too
    await client.reply()
    await stream(client, IMAGE)
    failure = {"ota_status": "error", "error": "crc_mismatch", "computed": f"0x{zlib.crc32(IMAGE):08X}",
               "expected": f"0x{announced:08X}"}  # fmt: skip
    await client.wait_for(lambda: b'"crc_mismatch"' in client.received)
    last = json.loads(client.received.splitlines()[-1])
    assert {key: last[key] for key in failure} == failure and last["comment"]
    assert scope.master.slave(NODE).running_image is None


async def test_a_host_that_falls_silent_gets_rx_timeout_and_the_master_reads_json_again(
    client: PtyClient, scope: VirtualMicroscope
) -> None:
    client.send(preamble(crc32=zlib.crc32(IMAGE)))  # a number is accepted too
    await client.reply()
    client.send(IMAGE[:1000])
    await client.wait_for(lambda: bare({"ota_status": "error", "error": "rx_timeout"}) in client.received)
    client.send(b'{"task":"/state_get","qid":4}')
    assert (await client.reply())["qid"] == 4
    assert scope.master.slave(NODE).running_image is None
