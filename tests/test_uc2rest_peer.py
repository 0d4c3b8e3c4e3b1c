"""UC2-REST, the openUC2 host library written against the real firmware, talks to our virtual master.

UC2-REST is an independent reading of the same protocol (it was written against real HATs), so its
connect handshake and ``can.scan()`` working here is evidence that the simulator answers like the
firmware — not merely like our own client expects.

It may be skipped only where it cannot be installed (PyPI unreachable, outside CI); in CI it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from uc2rest_client import connect, uc2rest

from uc2otad.sim.config import SimConfig
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.profiles import UNVERSIONED, Profile

#: a board of each CANopen firmware generation and an offline one (a CANopen board always reports)
NODES = (
    default_node(10),
    replace(default_node(11), profile=Profile.FW_MAIN_2026_07),
    default_node(12),
    replace(default_node(20), online=False),
    default_node(30),
)


@pytest.fixture
def uc2rest_module() -> ModuleType:
    return uc2rest()


@pytest.fixture
async def scope(tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    config = SimConfig(nodes=NODES, timing=MasterTiming(sdo_timeout=0.05), serial_link=tmp_path / "ttyHAT")
    async with VirtualMicroscope(config) as scope:
        yield scope


def connect_and_scan(module: ModuleType, device: str) -> dict[str, Any]:
    """What a UC2-REST user does: connect (requiring a master), scan, read the build info."""
    client = connect(module, device)
    try:
        return {
            "connected": client.serial.is_connected,
            "identity": dict(client.serial.firmware_info),
            "reply": client.can.scan(),
            "ids": client.can.get_can_ids(),
            "build_info": client.can.get_device_build_info(),
        }
    finally:
        client.close()


@pytest.mark.timeout(30)  # UC2-REST drains the port for at least a second while connecting
async def test_uc2rest_connects_and_its_scan_lists_the_slaves_with_versions(
    uc2rest_module: ModuleType, scope: VirtualMicroscope
) -> None:
    seen = await asyncio.to_thread(connect_and_scan, uc2rest_module, scope.pty.path)
    assert seen["connected"]
    assert seen["identity"]["isMaster"] and seen["identity"]["fwVersion"] == scope.config.master_version

    reply = seen["reply"]
    assert isinstance(reply, list) and len(reply) == 1, f"no scan reply: {reply!r}"
    assert reply[0]["count"] == len(NODES)
    assert seen["ids"] == [node.can_id for node in NODES]
    expected = {
        node.can_id: {
            "build": node.build,
            # July 2026 firmware: the fixed "UC2-ESP v2.0" (CANopenModule.cpp:1248-1249 @063e5a6)
            "fwVersion": UNVERSIONED if node.profile is Profile.FW_MAIN_2026_07 else node.version,
            "mac": node.mac,
        }
        for node in NODES
        if node.online
    }
    assert seen["build_info"] == expected
