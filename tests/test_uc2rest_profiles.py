"""UC2-REST 0.2.0.43 scans and streams against every CANopen firmware profile of the virtual microscope.

UC2-REST was written against real masters, so what it sees of each profile is what ImSwitch would see:

- the scan: fw-2026-09 boards report their release string (and image name), FW-main of July 2026
  reports the fixed "UC2-ESP v2.0" and no image name, and a July master passes on 39 characters of a
  September board's release string;
- the streaming update: on fw-2026-09 UC2-REST's blocking call succeeds at once; on FW-main the master
  waits 250 ms for the size write while the slave erases, so the first call returns False with the
  master's ``size_write_failed`` and a second call — what ImSwitch's three attempts do — succeeds, and
  the board runs the image. A scan afterwards shows what ImSwitch verifies by: the new release string
  on September firmware, only a new build on July firmware.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from espimage import build_app_image
from uc2rest_client import connect, uc2rest

from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import DEFAULT_BUILD, DEFAULT_VERSION, NodeSpec, default_node
from uc2otad.sim.profiles import UNVERSIONED, Profile, rodata_for
from uc2otad.sim.timing import MasterTiming

MOTOR = 11
#: a release string of 60 characters (FIRMWARE_VERSIONING.md allows 64)
LONG_RELEASE = "v2026.2.0-beta.4-6-g2108590-t20260930092622-pr1234-dirty-abc"
#: FW-main's master reads each scan string into ``char tmp[40]`` (CANopenModule.cpp:1492-1503 @063e5a6)
JULY_SCAN_LIMIT = 39
LED_IMAGE = "esp32_UC2_canopen_slave_led_release.bin"
NODES = (
    replace(default_node(10), version=LONG_RELEASE),
    default_node(MOTOR),
    replace(default_node(20), online=False),
    replace(default_node(30), image=LED_IMAGE),
)
#: delays shrunk; the size-write timeout stays the master profile's (250 ms on July, 20 s on September),
#: and the July slave's erase (partition_erase_time, 0.5 s by default) outlasts the 250 ms. The slave's
#: check and commit at the image's end (ota_commit_time) keeps its default too: without that gap between
#: "flashing" and "success" UC2-REST can read both with the last ack and drop the "success"
TIMING = MasterTiming(sdo_timeout=0.05, ota_settle=0.05, node_boot_time=0.05, ota_reboot_delay=0.05)
#: the release string of the September image streamed
RELEASE = "v2026.2.1"


@dataclass(frozen=True)
class Generations:
    """The firmware of the boards, and of the master where it differs."""

    boards: Profile
    master: Profile | None = None

    @property
    def master_profile(self) -> Profile:
        return self.master or self.boards


#: every CANopen profile, and the mixed microscope of issue 13 (a July master with September boards)
GENERATIONS = {
    "fw-2026-09": Generations(Profile.FW_2026_09),
    "fw-main-2026-07": Generations(Profile.FW_MAIN_2026_07),
    "july-master-september-boards": Generations(Profile.FW_2026_09, Profile.FW_MAIN_2026_07),
}


@pytest.fixture
def uc2rest_module() -> ModuleType:
    return uc2rest()


@asynccontextmanager
async def microscope(
    tmp_path: Path, generations: Generations, nodes: tuple[NodeSpec, ...]
) -> AsyncIterator[VirtualMicroscope]:
    config = SimConfig(nodes=nodes, profile=generations.boards, master_profile=generations.master,
                       timing=TIMING, serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0)  # fmt: skip
    async with VirtualMicroscope(config) as scope:
        yield scope


def connect_and_scan(module: ModuleType, device: str) -> dict[str, Any]:
    """What a UC2-REST user does: connect (requiring a master), scan, read the build info."""
    client = connect(module, device)
    try:
        return {
            "identity": dict(client.serial.firmware_info),
            "reply": client.can.scan(),
            "ids": client.can.get_can_ids(),
            "build_info": client.can.get_device_build_info(),
        }
    finally:
        client.close()


def expected_build_info(generations: Generations) -> dict[int, dict[str, str]]:
    """What each answering board reports through this master, from the firmware sources and documents."""
    july_master = generations.master_profile is Profile.FW_MAIN_2026_07
    september_boards = generations.boards is Profile.FW_2026_09
    expected: dict[int, dict[str, str]] = {}
    for node in NODES:
        if not node.online:
            continue
        version = node.version if september_boards else UNVERSIONED
        entry = {"build": node.build, "fwVersion": version[:JULY_SCAN_LIMIT] if july_master else version,
                 "mac": node.mac}  # fmt: skip
        if node.image and september_boards and not july_master:  # only 2026-09 masters read 0x2501
            entry["fwImage"] = node.image
        expected[node.can_id] = entry
    return expected


@pytest.mark.timeout(30)  # UC2-REST drains the port for at least a second while connecting
@pytest.mark.parametrize("generations", GENERATIONS.values(), ids=GENERATIONS.keys())
async def test_uc2rest_scans_every_canopen_profile(
    uc2rest_module: ModuleType, tmp_path: Path, generations: Generations
) -> None:
    async with microscope(tmp_path, generations, NODES) as scope:
        seen = await asyncio.to_thread(connect_and_scan, uc2rest_module, scope.pty.path)

    july_master = generations.master_profile is Profile.FW_MAIN_2026_07
    identity = seen["identity"]
    assert identity["isMaster"] is True
    # identifier_version exists only on 2026-09 firmware (State.cpp:213-220 @063e5a6 has none)
    assert identity["fwVersion"] == ("" if july_master else DEFAULT_VERSION)
    (reply,) = seen["reply"]
    assert reply["count"] == len(NODES)
    assert reply["master"]["fwVersion"] == (UNVERSIONED if july_master else DEFAULT_VERSION)
    assert seen["ids"] == [node.can_id for node in NODES]
    assert seen["build_info"] == expected_build_info(generations)
    if july_master and generations.boards is Profile.FW_2026_09:
        assert len(seen["build_info"][10]["fwVersion"]) == JULY_SCAN_LIMIT  # the 60 characters, cut


def stream_with_uc2rest(module: ModuleType, device: str, firmware: Path) -> dict[str, Any]:
    """UC2-REST's blocking streaming upload on ``device``, without a parent client (as in
    tests/test_uc2rest_ota.py: with one it would look the pty up in the system's port list)."""
    statuses: list[tuple[str, bool]] = []
    progress: list[int] = []
    done = module.canota.CANOTA(parent=None).start_can_streaming_ota_blocking(
        MOTOR,
        str(firmware),
        progress_callback=lambda _chunk, _chunks, sent, _speed: progress.append(sent),
        status_callback=lambda text, ok: statuses.append((text, ok)),
        port=device,
        baud=921600,
    )
    return {"done": done, "failures": [text for text, ok in statuses if not ok], "progress": progress}


def image_of(generation: Profile) -> bytes:
    """An image of ``generation``: a September one carries its release string, a July one the literal."""
    release = RELEASE if generation is Profile.FW_2026_09 else ""
    return build_app_image("esp32s3", version="v2099.6.0", date="Nov 27 2026", time="13:14:15",
                           segment_sizes=(0x2000, 0x400, 0x1000, 0x1000),
                           rodata=rodata_for(generation, release))  # fmt: skip


@pytest.mark.timeout(60)  # UC2-REST sleeps half a second before each stream and drains on connect
@pytest.mark.parametrize("generations", GENERATIONS.values(), ids=GENERATIONS.keys())
async def test_uc2rest_streams_against_every_canopen_profile(
    uc2rest_module: ModuleType, tmp_path: Path, generations: Generations
) -> None:
    image = image_of(generations.boards)
    firmware = tmp_path / "esp32_UC2_canopen_slave_motor_release_motX.bin"
    await asyncio.to_thread(firmware.write_bytes, image)
    nodes = (default_node(MOTOR),)
    july_master = generations.master_profile is Profile.FW_MAIN_2026_07
    # FW-main's slave erases before it answers the size write, longer than FW-main's master waits
    size_write_fails = generations.boards is Profile.FW_MAIN_2026_07 and july_master
    async with microscope(tmp_path, generations, nodes) as scope:
        slave = scope.master.slave(MOTOR)
        outcomes = [await asyncio.to_thread(stream_with_uc2rest, uc2rest_module, scope.pty.path, firmware)]
        if size_write_fails:  # ImSwitch calls again (it makes three attempts)
            assert slave.running_image is None
            outcomes.append(
                await asyncio.to_thread(stream_with_uc2rest, uc2rest_module, scope.pty.path, firmware)
            )
        async with asyncio.timeout(5):
            await slave.wait_until(lambda booted: booted.running_image is not None and booted.reachable)
        after = await asyncio.to_thread(connect_and_scan, uc2rest_module, scope.pty.path)
        running, generation = slave.running_image, slave.profile.name

    *failed, succeeded = outcomes
    if size_write_fails:
        (first,) = failed
        assert first["done"] is False and first["progress"] == []
        assert any("size_write_failed" in text for text in first["failures"]), first["failures"]
    else:
        assert failed == []
    assert succeeded["done"] is True, f"UC2-REST reports: {succeeded['failures']}"
    assert succeeded["progress"][-1] == len(image)
    assert running == image and generation is generations.boards

    # what ImSwitch verifies by: the release string where the firmware reports one, else only the build
    reported = after["build_info"][MOTOR]
    if generations.boards is Profile.FW_2026_09:
        assert reported["fwVersion"] == RELEASE
    else:
        assert reported["fwVersion"] == UNVERSIONED
    # the CANopen module's own compile time: a new one, never the image's app descriptor (13:14:15)
    assert reported["build"] not in (DEFAULT_BUILD, "Nov 27 2026 13:14:15")
