"""The firmware profiles of the virtual microscope, byte by byte through a raw client on its pty.

Each test checks one behaviour of a firmware generation against the source it cites
(``uc2otad/sim/profiles.py``): what a scan and ``/state_get`` report on July 2026 firmware
(youseetoo/uc2-esp32 063e5a6) and on the 2026-09 firmware (from ImSwitch's documentation), the 5 s
liveness that hides a short reboot, and the profile a board takes when it boots another generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from espimage import build_app_image
from ptypeer import PtyClient

from uc2otad.errors import ConfigError
from uc2otad.sim.app_desc import module_build
from uc2otad.sim.config import SimConfig, load_config
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.profiles import UNVERSIONED, Profile, generation_of, release_of, rodata_for
from uc2otad.sim.timing import MasterTiming

NODE = 11
TIMING = MasterTiming(sdo_time=0.0, sdo_timeout=0.5, restart_delay=0.0, node_boot_time=0.3,
                      heartbeat_interval=0.05, node_liveness=5.0)  # fmt: skip
RELEASE = "v2026.2.0-beta.4-6-g2108590-t20260930092622-pr1234-dirty-000"


@asynccontextmanager
async def scope_and_client(
    tmp_path: Path, **config: Any
) -> AsyncIterator[tuple[VirtualMicroscope, PtyClient]]:
    settings = SimConfig(
        timing=TIMING, nodes=(default_node(NODE),), serial_link=tmp_path / "ttyHAT", socket=False
    )
    async with VirtualMicroscope(replace(settings, **config)) as scope:
        client = PtyClient(scope.pty.path, scope.master.baud)
        try:
            yield scope, client
        finally:
            client.close()


async def ask(client: PtyClient, command: bytes) -> dict[str, Any]:
    client.send(command)
    reply: dict[str, Any] = await client.reply()
    return reply


async def scan_entry(client: PtyClient) -> dict[str, Any]:
    reply = await ask(client, b'{"task":"/can_act","scan":true,"qid":3}\n')
    entry: dict[str, Any] = next(node for node in reply["scan"] if node["canId"] == NODE)
    return entry


async def test_july_firmware_reports_no_release_string_and_its_state_date_has_no_space(
    tmp_path: Path,
) -> None:
    async with scope_and_client(tmp_path, profile=Profile.FW_MAIN_2026_07) as (_scope, client):
        state = (await ask(client, b'{"task":"/state_get","qid":1}\n'))["state"]
        scan = await ask(client, b'{"task":"/can_act","scan":true,"qid":2}\n')
    assert "identifier_version" not in state and "identifier_image" not in state  # State.cpp:213-220
    assert state["identifier_date"] == "Oct  1 202609:26:22"  # State.h:12: __DATE__ "" __TIME__
    assert scan["master"]["fwVersion"] == UNVERSIONED
    entry = next(node for node in scan["scan"] if node["canId"] == NODE)
    assert entry["fwVersion"] == UNVERSIONED and "fwImage" not in entry


async def test_september_firmware_reports_its_release_string(tmp_path: Path) -> None:
    async with scope_and_client(tmp_path, profile=Profile.FW_2026_09, master_version=RELEASE) as (
        _scope,
        client,
    ):
        state = (await ask(client, b'{"task":"/state_get","qid":1}\n'))["state"]
        scan = await ask(client, b'{"task":"/can_act","scan":true,"qid":2}\n')
    assert state["identifier_version"] == RELEASE
    assert scan["master"]["fwVersion"] == RELEASE


@pytest.mark.parametrize(("master", "reported"), [(Profile.FW_MAIN_2026_07, 39), (Profile.FW_2026_09, 60)])
async def test_a_july_master_passes_on_39_characters_of_a_booted_release_string(
    tmp_path: Path, master: Profile, reported: int
) -> None:
    image = build_app_image(version="v2026.2.0", rodata=rodata_for(Profile.FW_2026_09, RELEASE))
    node = replace(default_node(NODE), profile=Profile.FW_MAIN_2026_07)
    async with scope_and_client(tmp_path, master_profile=master, nodes=(node,)) as (scope, client):
        slave = scope.master.slave(NODE)
        slave._boot_partition = image  # committed: booted at the next boot
        await ask(client, b'{"task":"/can_act","restart":11,"qid":4}\n')
        async with asyncio.timeout(5):
            await slave.wait_until(lambda booted: booted.boots == 2 and booted.reachable)
        entry = await scan_entry(client)
    assert slave.profile.name is Profile.FW_2026_09  # it booted a September image
    assert len(RELEASE) == 60
    assert entry["fwVersion"] == RELEASE[:reported]


async def test_a_july_board_reports_its_modules_build_not_the_images_descriptor(tmp_path: Path) -> None:
    image = build_app_image(version="v2026.2.0", date="Dec  1 2026", time="10:00:00",
                            rodata=rodata_for(Profile.FW_MAIN_2026_07, ""))  # fmt: skip
    async with scope_and_client(tmp_path, profile=Profile.FW_MAIN_2026_07) as (scope, client):
        slave = scope.master.slave(NODE)
        slave._boot_partition = image  # committed: booted at the next boot
        await ask(client, b'{"task":"/can_act","restart":11,"qid":4}\n')
        async with asyncio.timeout(5):
            await slave.wait_until(lambda booted: booted.boots == 2 and booted.reachable)
        entry = await scan_entry(client)
    assert entry["build"] == module_build(image)
    assert entry["build"] != "Dec  1 2026 10:00:00"  # CANopenModule.cpp:1250-1251: another unit's time
    assert entry["fwVersion"] == UNVERSIONED


async def test_a_node_in_a_short_reboot_stays_idle_in_a_scan_without_its_identity(tmp_path: Path) -> None:
    # a boot the scan cannot miss even on a loaded machine; its reads are meant to go unanswered
    timing = replace(TIMING, node_boot_time=3.0, sdo_timeout=0.05)
    async with scope_and_client(tmp_path, timing=timing) as (scope, client):
        slave = scope.master.slave(NODE)
        await ask(client, b'{"task":"/can_act","restart":11,"qid":4}\n')
        async with asyncio.timeout(5):
            await slave.wait_until(lambda rebooting: not rebooting.reachable)
        entry = await scan_entry(client)
    # heard within 5 s (CANopenModule.cpp:611-633): status 0, but the SDO reads went unanswered
    assert entry["status"] == 0
    assert "build" not in entry and "fwVersion" not in entry and "mac" not in entry


async def test_a_node_unheard_for_the_liveness_window_is_unreachable(tmp_path: Path) -> None:
    # (that it is still listed within the window: the short-reboot test above)
    timing = replace(TIMING, node_liveness=0.3)
    async with scope_and_client(tmp_path, timing=timing) as (scope, client):
        scope.master.set_node_online(NODE, False)
        await asyncio.sleep(timing.node_liveness)  # the firmware's window itself, not a synchronisation
        entry = await scan_entry(client)
    assert entry["status"] == 1 and entry["statusStr"] == "unreachable"


def test_images_say_their_generation() -> None:
    september = build_app_image(version="v1", rodata=rodata_for(Profile.FW_2026_09, RELEASE))
    july = build_app_image(version="v1", rodata=rodata_for(Profile.FW_MAIN_2026_07, ""))
    assert generation_of(september) is Profile.FW_2026_09 and release_of(september) == RELEASE
    assert generation_of(july) is Profile.FW_MAIN_2026_07 and release_of(july) is None
    assert generation_of(build_app_image(version="v1")) is None


def test_the_config_file_sets_the_profiles_of_the_microscope_the_master_and_each_node(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        'profile = "fw-main-2026-07"\n[master]\nprofile = "fw-2026-09"\n'
        '[[nodes]]\nid = 11\n[[nodes]]\nid = 20\nprofile = "fw-2026-09"\n'
    )
    config = load_config(path)
    assert config.profile is Profile.FW_MAIN_2026_07 and config.master_profile is Profile.FW_2026_09
    assert [node.profile for node in config.nodes] == [None, Profile.FW_2026_09]
    path.write_text('[[nodes]]\nid = 11\nprofile = "fw-2025"\n')
    with pytest.raises(ConfigError, match=r"nodes\[1\]\.profile"):
        load_config(path)
