"""The serial link against the virtual master over a real pty (and TCP): every operation, every fault.

The virtual master is written from the spec, the link from the spec; neither imports the other. Here
they meet on a real pty, with the simulator's faults switched on while commands are in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from uc2otad.errors import (
    HandshakeError,
    LinkLostError,
    LinkTimeoutError,
    MasterError,
    MasterRebootedError,
)
from uc2otad.links.base import ConnectionEvent, LinkState
from uc2otad.links.commands import NodeInfo, ScanResult
from uc2otad.links.serial_hat import LEGACY_BAUD, HatSettings, SerialHatLink
from uc2otad.retry import RetryPolicy
from uc2otad.sim.config import SimConfig
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeSpec, default_node
from uc2otad.sim.profiles import UNVERSIONED, Profile

FAST_TIMING = MasterTiming(
    sdo_time=0.0005,
    sdo_timeout=0.05,  # a real SDO round trip on the virtual bus: ~1 ms, more on a loaded machine
    legacy_scan_wait=0.02,
    restart_delay=0.0,
    node_boot_time=0.3,
    master_boot_time=0.05,
    heartbeat_interval=0.05,
    node_liveness=0.3,  # the firmware's 5 s (CANopenModule.cpp:611-633 @063e5a6), shrunk
)
FAST = HatSettings(
    request_timeout=0.5,
    handshake_timeout=0.3,
    scan_timeout=0.5,
    bus_health_timeout=0.3,
    restart_timeout=0.3,
    read_interval=0.01,
    reconnect=RetryPolicy(attempts=1000, first_delay=0.01, factor=1.0, max_delay=0.01),
)
#: a bus with a node of each CANopen firmware generation, an offline laser and a node outside the routing
#: table (a CANopen board always reports: there is no node that reports nothing)
MIXED_NODES = (
    default_node(10),
    replace(default_node(11), profile=Profile.FW_MAIN_2026_07, version="v2025.12.0"),
    default_node(12),
    replace(default_node(20), online=False),
    replace(default_node(30), image="esp32_UC2_canopen_slave_led_release.bin"),
    replace(default_node(41), routed=False),
)


@asynccontextmanager
async def running(tmp_path: Path, **config: object) -> AsyncIterator[VirtualMicroscope]:
    settings = SimConfig(timing=FAST_TIMING, serial_link=tmp_path / "ttyHAT")
    async with VirtualMicroscope(replace(settings, **config)) as scope:  # type: ignore[arg-type]
        yield scope


def node_in(result: ScanResult, can_id: int) -> NodeInfo:
    node = result.node(can_id)
    assert node is not None, f"node {can_id} is not in the scan"
    return node


async def in_flight(scope: VirtualMicroscope, request: Awaitable[object]) -> asyncio.Task[object]:
    """Start ``request`` and return once the (muted) master has read it: it is in flight."""
    read = asyncio.Event()
    scope.master.on_command = lambda _command: read.set()
    scope.master.set_muted(True)
    task = asyncio.ensure_future(request)
    async with asyncio.timeout(2):
        await read.wait()
    return task


@asynccontextmanager
async def linked(url: str, **options: object) -> AsyncIterator[SerialHatLink]:
    link = SerialHatLink(url, settings=FAST, **options)  # type: ignore[arg-type]
    await link.open()
    try:
        yield link
    finally:
        await link.close()


@pytest.fixture
async def scope(tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    async with running(tmp_path, nodes=MIXED_NODES) as scope:
        yield scope


@pytest.fixture
async def link(scope: VirtualMicroscope) -> AsyncIterator[SerialHatLink]:
    async with linked(scope.pty.url) as link:
        yield link


async def test_identity_of_a_canopen_master(link: SerialHatLink, scope: VirtualMicroscope) -> None:
    identity = await link.get_identity()
    assert identity == link.identity
    assert (identity.is_canopen, identity.is_master, identity.version) == (
        True,
        True,
        scope.config.master_version,
    )
    # the firmware pastes __DATE__ "" __TIME__ (State.h:12 @063e5a6); the link puts the space back
    assert identity.build_date == scope.config.master_build


async def test_a_scan_lists_the_routed_nodes_with_what_each_reports(link: SerialHatLink) -> None:
    result = await link.scan()
    routed = [spec for spec in MIXED_NODES if spec.routed]
    assert [node.can_id for node in result.nodes] == [spec.can_id for spec in routed]
    for spec in routed:
        node = result.node(spec.can_id)
        assert node is not None
        assert (node.role, node.device_type, node.reachable) == (spec.role, spec.device_type, spec.online)
        reported = spec.online
        # July 2026 firmware reports the fixed "UC2-ESP v2.0" (CANopenModule.cpp:1248-1249 @063e5a6)
        expected_version = UNVERSIONED if spec.profile is Profile.FW_MAIN_2026_07 else spec.version
        assert node.answered == reported
        assert node.fw_version == (expected_version if reported else None)
        assert (node.build, node.mac) == ((spec.build, spec.mac) if reported else (None, None))
        assert node.fw_image == (spec.image or None if reported else None)
    assert node_in(result, 20).status == "unreachable"
    assert result.canopen and result.master is not None and result.master.can_id == 1


async def test_a_probing_scan_also_finds_a_node_outside_the_routing_table(link: SerialHatLink) -> None:
    assert (await link.scan()).node(41) is None
    found = (await link.scan(probe_range=(40, 45))).node(41)
    assert found is not None
    assert (found.role, found.device_type, found.reachable, found.mac) == (
        "unrouted",
        -1,
        True,
        default_node(41).mac,
    )


async def test_bus_health(link: SerialHatLink) -> None:
    health = await link.bus_health()
    assert (health.node_id, health.nmt_state_name, health.bus_state, health.tx_errors) == (
        1,
        "OPERATIONAL",
        "running",
        0,
    )


async def test_a_restarted_node_leaves_the_bus_and_comes_back(link: SerialHatLink) -> None:
    await link.restart_node(10)
    # the master heard it a moment ago: the firmware still lists it as idle (status 0) for its liveness
    # window, but its SDO reads fail (CANopenModule.cpp:611-633, 1581-1612 @063e5a6)
    gone = node_in(await link.scan(), 10)
    assert not gone.answered and gone.fw_version is None
    async with asyncio.timeout(2):  # scans take turns with the node's boot (0.3 s here)
        while not (node := node_in(await link.scan(), 10)).answered:
            pass
    assert node.reachable and node.fw_version == default_node(10).version


async def test_restarting_a_node_that_is_not_on_the_bus_is_a_master_error(link: SerialHatLink) -> None:
    with pytest.raises(MasterError, match="SDO write failed"):
        await link.restart_node(20)


async def test_a_node_switched_offline_and_back_shows_in_the_next_scans(
    link: SerialHatLink, scope: VirtualMicroscope
) -> None:
    scope.master.set_node_online(10, False)
    # at once its reads fail; unheard for node_liveness it is unreachable (CANopenModule.cpp:611-633)
    assert not node_in(await link.scan(), 10).answered
    async with asyncio.timeout(2):
        while node_in(await link.scan(), 10).reachable:
            pass
    scope.master.set_node_online(10, True)
    async with asyncio.timeout(2):  # heard again at its next heartbeat
        while not (node := node_in(await link.scan(), 10)).answered:
            pass
    assert node.reachable


async def test_a_legacy_master_is_told_apart_and_scans_in_the_short_form(tmp_path: Path) -> None:
    nodes = (default_node(11), default_node(20), default_node(40))
    async with (
        running(tmp_path, nodes=nodes, profile=Profile.LEGACY) as scope,
        linked(scope.pty.url, baud=LEGACY_BAUD) as link,  # the legacy HAT build's 115200 (PinConfig.h:31)
    ):
        assert link.identity is not None
        assert (link.identity.is_canopen, link.identity.version, link.identity.pindef) == (
            False,
            None,
            "UC2_3_CAN_HAT_Master",
        )
        result = await link.scan()
        assert not result.canopen
        # the legacy scan never probed 40: the galvo is invisible to it
        assert [(node.can_id, node.reachable, node.build) for node in result.nodes] == [
            (11, True, None),
            (20, True, None),
        ]
        with pytest.raises(LinkTimeoutError):  # /can_get is a CANopen endpoint
            await link.bus_health()


async def test_baud_probing_finds_an_old_master_at_115200(tmp_path: Path) -> None:
    async with running(tmp_path, baud=LEGACY_BAUD) as scope:
        with pytest.raises(HandshakeError, match="921600"):
            await SerialHatLink(scope.pty.url, settings=FAST).open()
        async with linked(scope.pty.url, probe_baud=True) as link:
            assert link.baud == LEGACY_BAUD
            assert len((await link.scan()).nodes) == len(scope.config.nodes)


async def test_the_port_vanishing_mid_command_fails_it_and_the_link_comes_back_with_the_port(
    link: SerialHatLink, scope: VirtualMicroscope
) -> None:
    events: list[ConnectionEvent] = []
    link.on_connection(events.append)
    scanning = await in_flight(scope, link.scan())
    await scope.pty.vanish()
    with pytest.raises(LinkLostError):
        await scanning
    assert link.state is LinkState.RECONNECTING
    scope.master.set_muted(False)
    await scope.pty.restore()
    await link.wait_connected(2)
    assert events == [ConnectionEvent.LOST, ConnectionEvent.CONNECTED]
    assert len((await link.scan()).nodes) == 5


async def test_a_master_reboot_at_921600_times_out_what_was_in_flight_and_the_link_goes_on(
    link: SerialHatLink, scope: VirtualMicroscope
) -> None:
    asking = await in_flight(scope, link.get_identity())
    await scope.master.reboot()  # the ROM banner comes at 115200: garbage at 921600
    with pytest.raises(LinkTimeoutError):
        await asking
    assert link.is_open
    assert len((await link.scan()).nodes) == 5


async def test_a_master_reboot_seen_at_115200_fails_what_was_in_flight_at_once(tmp_path: Path) -> None:
    async with running(tmp_path, baud=LEGACY_BAUD) as scope:
        slow = replace(FAST, request_timeout=30.0)
        link = SerialHatLink(scope.pty.url, baud=LEGACY_BAUD, settings=slow)
        await link.open()
        try:
            asking = await in_flight(scope, link.request({"task": "/state_get"}))
            async with asyncio.timeout(2):  # long before the request's own 30 s
                rebooting = asyncio.create_task(scope.master.reboot())
                with pytest.raises(MasterRebootedError):
                    await asking
                await rebooting
            assert (await link.get_identity()).is_canopen
        finally:
            await link.close()


async def test_garbage_on_the_line_does_not_disturb_the_next_command(
    link: SerialHatLink, scope: VirtualMicroscope
) -> None:
    scope.master.send_garbage()
    scope.master.send_garbage(b"\x00\xff" * 100 + b"\n\xfe++garbage")
    assert len((await link.scan()).nodes) == 5


async def test_a_hung_master_gives_a_typed_timeout(link: SerialHatLink, scope: VirtualMicroscope) -> None:
    scope.master.set_muted(True)
    with pytest.raises(LinkTimeoutError, match="/can_act"):
        await link.scan()


async def test_the_master_over_tcp_works_and_reconnects(scope: VirtualMicroscope) -> None:
    assert scope.socket is not None
    async with linked(scope.socket.url) as link:
        assert len((await link.scan()).nodes) == 5
        lost = asyncio.Event()
        link.on_connection(lambda event: lost.set() if event is ConnectionEvent.LOST else None)
        await scope.socket.vanish()
        async with asyncio.timeout(2):
            await lost.wait()
        await scope.socket.restore()
        await link.wait_connected(2)
        assert (await link.bus_health()).node_id == 1


async def test_reconnecting_gives_up_when_the_policy_says_so(scope: VirtualMicroscope) -> None:
    settings = replace(FAST, reconnect=RetryPolicy(attempts=3, first_delay=0.01, factor=1.0))
    link = SerialHatLink(scope.pty.url, settings=settings)
    await link.open()
    closed = asyncio.Event()
    link.on_connection(lambda event: closed.set() if event is ConnectionEvent.CLOSED else None)
    await scope.pty.vanish()
    async with asyncio.timeout(2):
        await closed.wait()
    assert link.state is LinkState.CLOSED
    await link.close()


async def test_a_node_with_its_own_spec_is_scanned_as_configured(tmp_path: Path) -> None:
    spec = NodeSpec(
        can_id=60, role="gpio", version="v1.2.3", build="Jan  1 2026 00:00:00", mac="AA:BB:CC:DD:EE:FF"
    )
    async with running(tmp_path, nodes=(spec,)) as scope, linked(scope.pty.url) as link:
        node = (await link.scan()).node(60)
        assert node is not None
        assert (node.role, node.fw_version, node.build, node.mac) == ("gpio", "v1.2.3", spec.build, spec.mac)
