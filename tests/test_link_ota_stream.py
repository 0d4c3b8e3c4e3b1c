"""Streaming an image through the master: the link against the virtual microscope over a real pty.

The link (``uc2otad.links.ota_stream``) and the virtual master and slave (``uc2otad.sim``) are written
from the spec independently; here they meet on a pty, and the slave on the virtual CAN bus is a
CANopen node whose SDO server the master's python-canopen client feeds. Each case ends with what a user
relies on: the bytes the slave boots, what the next scan reports, the master ready for the next command.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from espimage import build_app_image

from uc2otad.errors import LinkBusyError, LinkTimeoutError, MasterError, MasterUnsupportedError
from uc2otad.links.ota_stream import StreamSettings
from uc2otad.links.protocol import StreamResult
from uc2otad.links.serial_hat import HatSettings, SerialHatLink
from uc2otad.sim.app_desc import module_build
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, NodeSpec, default_node
from uc2otad.sim.ota_objects import OtaStatus
from uc2otad.sim.profiles import UNVERSIONED, Profile
from uc2otad.sim.timing import MasterTiming

NODE = 11
OLD_VERSION = default_node(NODE).version
NEW_VERSION = "v2099.4.0"
#: about 20 KB: four chunks of 4096 and a partial one
IMAGE = build_app_image("esp32s3", version=NEW_VERSION, date="Nov 27 2026", time="13:14:15",
                        segment_sizes=(0x2000, 0x400, 0x1000, 0x1800))  # fmt: skip
#: the build a CANopen board reports once it runs IMAGE: its CANopen module's compile time, never the app
#: descriptor's "Nov 27 2026 13:14:15" (CANopenModule.cpp:1250-1251 @063e5a6; uc2otad.sim.app_desc)
NEW_BUILD = module_build(IMAGE)
#: the firmware's delays, shrunk: every fault shows within a fraction of a second
TIMING = MasterTiming(
    sdo_time=0.0,
    sdo_timeout=0.2,
    restart_delay=0.0,
    node_boot_time=0.05,
    reachable_timeout=0.2,
    sdo_write_timeout=0.2,
    size_write_timeout=0.2,
    ota_settle=0.0,
    block_timeout=0.3,
    ota_rx_timeout=0.3,
    size_write_time=0.0,
    partition_erase_time=0.5,
    ota_reboot_delay=0.0,
)
#: the host's waits longer than the master's, so that the master's own error is what arrives
LINK = HatSettings(
    read_interval=0.01,
    stream=StreamSettings(
        ready_timeout=2.0, ack_timeout=2.0, flash_timeout=2.0, master_rx_timeout=0.3, recovery_margin=1.0
    ),
)


@asynccontextmanager
async def microscope(tmp_path: Path, *nodes: NodeSpec, **config: object) -> AsyncIterator[VirtualMicroscope]:
    settings = SimConfig(nodes=nodes or (default_node(NODE),), timing=TIMING, serial_link=tmp_path / "tty",
                         socket=False, ota_port=0)  # fmt: skip
    async with VirtualMicroscope(replace(settings, **config)) as scope:  # type: ignore[arg-type]
        yield scope


@asynccontextmanager
async def linked(scope: VirtualMicroscope) -> AsyncIterator[SerialHatLink]:
    link = SerialHatLink(scope.pty.url, baud=scope.master.baud, settings=LINK)  # legacy HATs: 115200
    await link.open()
    try:
        yield link
    finally:
        await link.close()


async def still_old(scope: VirtualMicroscope, link: SerialHatLink) -> None:
    """The master answers the next command, and the slave runs and reports its old image."""
    async with asyncio.timeout(2):  # once the slave has heard the end of the failed transfer
        await scope.master.slave(NODE).wait_until(
            lambda slave: slave.reachable and not slave.busy and not slave.transferring
        )
    node = (await link.scan()).node(NODE)
    assert node is not None and (node.reachable, node.fw_version) == (True, OLD_VERSION)
    assert scope.master.slave(NODE).running_image is None


# a CANopen board always reports: the former "reports nothing" case has no firmware behind it
@pytest.mark.parametrize(
    ("profile", "fw_version", "build"),
    [(Profile.FW_2026_09, NEW_VERSION, NEW_BUILD), (Profile.FW_MAIN_2026_07, UNVERSIONED, NEW_BUILD)],
)
async def test_the_image_arrives_intact_and_after_its_reboot_the_slave_reports_it_in_its_style(
    tmp_path: Path, profile: Profile, fw_version: str, build: str
) -> None:
    progress: list[tuple[int, int]] = []
    flashing: list[bool] = []
    timing = replace(TIMING, size_write_timeout=None)  # the master's own: 20 s, or 250 ms in July 2026
    async with microscope(tmp_path, profile=profile, timing=timing) as scope, linked(scope) as link:
        slave = scope.master.slave(NODE)

        async def stream() -> StreamResult:
            return await link.stream_ota(
                NODE,
                IMAGE,
                progress=lambda done, total: progress.append((done, total)),
                on_flashing=lambda: flashing.append(True),
            )

        try:
            result = await stream()
        except MasterError as err:
            # July 2026 firmware: the first size write after a boot outlasts the master's 250 ms
            # (CanOpenOTA.cpp:202-208, CANopenModule.h:61 @063e5a6); the host's retry succeeds
            if profile is not Profile.FW_MAIN_2026_07 or err.code != "size_write_failed":
                raise
            async with asyncio.timeout(2):
                await slave.wait_until(lambda erased: not erased.busy)
            result = await stream()
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image is not None and booted.reachable)
        node = (await link.scan()).node(NODE)
    assert slave.running_image == IMAGE  # byte for byte, checked by the master's and the slave's CRC-32
    assert (result.node_id, result.size, result.chunks) == (NODE, len(IMAGE), -(-len(IMAGE) // 4096))
    assert [done for done, _total in progress] == [*range(4096, len(IMAGE), 4096), len(IMAGE)]
    assert flashing == [True]
    assert node is not None and (node.reachable, node.fw_version, node.build) == (True, fw_version, build)


async def test_while_a_stream_runs_the_link_is_held_for_it(tmp_path: Path) -> None:
    started = asyncio.Event()
    async with microscope(tmp_path) as scope, linked(scope) as link:
        streaming = asyncio.create_task(link.stream_ota(NODE, IMAGE, progress=lambda *_: started.set()))
        async with asyncio.timeout(2):
            await started.wait()
        with pytest.raises(LinkBusyError, match="streaming to node 11"):
            await link.scan()
        await streaming
        assert (await link.scan()).node(NODE) is not None


@dataclass(frozen=True)
class Failure:
    """A way for a stream to fail in the master, and the master's code for it."""

    code: str
    faults: NodeFaults = field(default_factory=NodeFaults)
    image: bytes = IMAGE
    timing: MasterTiming = TIMING
    #: runs while the stream starts (takes the node off the bus at the right moment)
    meanwhile: Callable[[VirtualMicroscope], Awaitable[None]] | None = None
    #: the node streamed to
    node: int = NODE


async def unplug_now(scope: VirtualMicroscope) -> None:
    scope.master.set_node_online(NODE, False)


async def unplug_after_the_size_write(scope: VirtualMicroscope) -> None:
    slave = scope.master.slave(NODE)
    await slave.wait_until(lambda receiving: receiving.ota_status is OtaStatus.RECEIVING)
    slave.set_online(False)  # during the settle pause, before the block download's initiate


FAILURES = [
    Failure("slave_unreachable", node=12),
    Failure("invalid_size", image=b"\xe9" + bytes(8 * 1024 * 1024)),
    Failure("crc_write_failed", meanwhile=unplug_now),
    Failure(
        "sdo_begin_failed", timing=replace(TIMING, ota_settle=0.5), meanwhile=unplug_after_the_size_write
    ),
    Failure("sdo_chunk_failed", faults=NodeFaults(drop_at_percent=40)),
    Failure("sdo_chunk_failed", faults=NodeFaults(stall_at_percent=40, stall_seconds=1.0)),
    Failure("sdo_end_failed", faults=NodeFaults(corrupt_offset=10_000)),
]


@pytest.mark.parametrize(
    "failure",
    FAILURES,
    ids=["unreachable", "too large", "crc write", "begin", "brown-out", "stall", "slave's crc check"],
)
async def test_every_failure_in_the_master_is_a_typed_master_error_and_nothing_changes(
    tmp_path: Path, failure: Failure
) -> None:
    offline = replace(default_node(12), online=False, routed=False)  # never heard; scans skip it
    spec = replace(default_node(NODE), faults=failure.faults)
    async with microscope(tmp_path, spec, offline, timing=failure.timing) as scope, linked(scope) as link:
        streaming = asyncio.ensure_future(link.stream_ota(failure.node, failure.image))
        if failure.meanwhile is not None:
            async with asyncio.timeout(2):
                await failure.meanwhile(scope)
        with pytest.raises(MasterError) as caught:
            await streaming
        scope.master.set_node_online(NODE, True)
        await still_old(scope, link)
    error = caught.value
    assert (error.code, error.node_id, error.error_code) == (failure.code, failure.node, "master_error")
    assert f"error={failure.code}" in str(error)


async def test_a_first_attempt_that_fails_the_size_write_is_followed_by_a_retry_that_succeeds(
    tmp_path: Path,
) -> None:
    # July 2026 firmware (fw-main-2026-07): the slave's esp_ota_begin erases before it answers the size
    # write (CanOpenOTA.cpp:202-208 @063e5a6), the master waits only writeSDO_u32's 250 ms
    # (CANopenModule.h:61 @063e5a6); the master's timeout comes from its profile here
    timing = replace(TIMING, size_write_timeout=None)
    async with (
        microscope(tmp_path, profile=Profile.FW_MAIN_2026_07, timing=timing) as scope,
        linked(scope) as link,
    ):
        with pytest.raises(MasterError) as caught:
            await link.stream_ota(NODE, IMAGE)
        assert caught.value.code == "size_write_failed"
        slave = scope.master.slave(NODE)
        async with asyncio.timeout(2):  # a daemon retries after a pause (ImSwitch: 5 s); the erase ends
            await slave.wait_until(lambda erased: not erased.busy)
        await link.stream_ota(NODE, IMAGE)
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image == IMAGE)


async def test_cancelling_mid_stream_keeps_the_old_image_and_leaves_the_master_ready(tmp_path: Path) -> None:
    halfway = asyncio.Event()
    async with microscope(tmp_path) as scope, linked(scope) as link:

        def on_progress(done: int, total: int) -> None:
            if done * 2 >= total:
                halfway.set()

        streaming = asyncio.create_task(link.stream_ota(NODE, IMAGE, progress=on_progress))
        async with asyncio.timeout(2):
            await halfway.wait()
        streaming.cancel()
        with pytest.raises(asyncio.CancelledError):
            await streaming
        # returned only once the master had ended the stream (a pty cannot reset it: its rx_timeout)
        await still_old(scope, link)
        await link.stream_ota(NODE, IMAGE)
        async with asyncio.timeout(2):
            await scope.master.slave(NODE).wait_until(lambda booted: booted.running_image == IMAGE)


async def test_a_master_that_stops_answering_mid_stream_is_a_timeout_and_the_link_is_restored(
    tmp_path: Path,
) -> None:
    spec = replace(default_node(NODE), faults=NodeFaults(stall_at_percent=40))  # stalls for good
    timing = replace(TIMING, block_timeout=1.0)  # the master waits longer than the host
    settings = replace(LINK, stream=replace(LINK.stream, ack_timeout=0.3))
    async with microscope(tmp_path, spec, timing=timing) as scope:
        link = SerialHatLink(scope.pty.url, settings=settings)
        await link.open()
        try:
            with pytest.raises(LinkTimeoutError, match="no ota_rx"):
                await link.stream_ota(NODE, IMAGE)
            assert (await link.bus_health()).node_id == 1  # the master reads JSON again
        finally:
            await link.close()


async def test_a_legacy_master_is_not_asked_to_stream(tmp_path: Path) -> None:
    commands: list[object] = []
    async with microscope(tmp_path, profile=Profile.LEGACY) as scope, linked(scope) as link:
        scope.master.on_command = commands.append
        with pytest.raises(MasterUnsupportedError, match="legacy master"):
            await link.stream_ota(NODE, IMAGE)
    assert commands == []


async def test_a_pty_has_no_modem_lines_to_reset_the_master_with(tmp_path: Path) -> None:
    async with microscope(tmp_path, socket=True) as scope, linked(scope) as link:
        assert not await link.pulse_reset()
        assert scope.socket is not None
        over_tcp = SerialHatLink(scope.socket.url, settings=LINK)
        await over_tcp.open()
        try:
            assert not await over_tcp.pulse_reset()
        finally:
            await over_tcp.close()
