"""The streaming method end to end: firmware server → cache → link → virtual master → CAN slave → scan.

What a client sees is the status sequence of CONTRACT.md §2 and, at the end, success with the evidence
the board gave (its release string, a build that changed since the scan before the update, or only the
transfer when the scan cannot tell).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from test_link_ota_stream import IMAGE, NEW_VERSION, NODE, TIMING, linked, microscope

from uc2otad.contract import StatusDict
from uc2otad.engine.jobs import JobContext
from uc2otad.engine.status import BoardStatus
from uc2otad.errors import BoardNotBackError
from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.server import FirmwareServer
from uc2otad.links.commands import NodeInfo
from uc2otad.links.serial_hat import SerialHatLink
from uc2otad.methods.can import CanStreamMethod
from uc2otad.methods.verify import VerifySettings
from uc2otad.sim.nodes import default_node
from uc2otad.sim.profiles import Profile

QUICK_VERIFY = VerifySettings(settle=0.05, window=3.0, interval=0.05)


class Recorder:
    def __init__(self) -> None:
        self.published: list[StatusDict] = []

    def __call__(self, status: StatusDict) -> None:
        self.published.append(status)


@pytest.fixture
async def repository(caddy: CaddyServer, tmp_path: Path) -> FirmwareRepository:
    await asyncio.to_thread(
        (caddy.root / "esp32_UC2_canopen_slave_motor_release_motX.bin").write_bytes, IMAGE
    )
    table = await asyncio.to_thread(ImageTable.standard)
    return FirmwareRepository(FirmwareServer(caddy.url), FirmwareCache(tmp_path / "cache"), table)


def method(
    link: SerialHatLink,
    repository: FirmwareRepository,
    verify: VerifySettings = QUICK_VERIFY,
    before: NodeInfo | None = None,
) -> Any:
    @asynccontextmanager
    async def use(_purpose: str) -> AsyncIterator[SerialHatLink]:
        yield link

    return CanStreamMethod(use, lambda: repository.obtain(NODE), verify, before=before)


# the board's firmware decides the evidence: 2026-09 reports the image's release string; July 2026
# firmware reports the fixed "UC2-ESP v2.0" and its CANopen module's build (CANopenModule.cpp:1248-1251
# @063e5a6), so only a build that changed since the scan before the update shows the new image — and
# without that scan only the transfer (the master's CRC check) speaks. The old "reports nothing" board
# has no firmware behind it: a CANopen board always reports.
@pytest.mark.parametrize(
    ("profile", "scanned_before", "evidence"),
    [
        (Profile.FW_2026_09, True, "version"),
        (Profile.FW_MAIN_2026_07, True, "build"),
        (Profile.FW_MAIN_2026_07, False, "transfer"),
    ],
)
async def test_a_streamed_update_walks_the_contracts_sequence_and_names_its_evidence(
    tmp_path: Path, repository: FirmwareRepository, profile: Profile, scanned_before: bool, evidence: str
) -> None:
    seen = Recorder()
    job = JobContext("job-1", NODE, BoardStatus(NODE, "can", seen), {})
    spec = replace(default_node(NODE), profile=profile)
    # a 2026-09 master (its 20 s size write outlasts a July slave's erase, so one attempt does it)
    timing = replace(TIMING, size_write_timeout=None)
    async with microscope(tmp_path, spec, timing=timing) as scope, linked(scope) as link:
        before = (await link.scan()).node(NODE) if scanned_before else None
        await method(link, repository, before=before).run(job)
        assert scope.master.slave(NODE).running_image == IMAGE

    steps = [(s["upload_status"], s["upload_progress"]) for s in seen.published]
    assert steps == [
        ("command_sent", 0), ("downloading", 0), *[("uploading", p) for p in range(0, 100, 10)],
        ("flashing", 100), ("verifying", 100), ("success", 100),
    ]  # fmt: skip
    final = seen.published[-1]
    assert (final["status"], final["verification"]) == ("success", evidence)
    assert final["firmware_version"] == NEW_VERSION
    assert final["firmware"] == "esp32_UC2_canopen_slave_motor_release_motX.bin"
    assert job.is_committed


async def test_a_board_that_does_not_come_back_is_board_not_back(
    tmp_path: Path, repository: FirmwareRepository
) -> None:
    async with microscope(tmp_path) as scope, linked(scope) as link:

        def unplug_at_verifying(status: StatusDict) -> None:
            if status["upload_status"] == "verifying":  # the board reboots, and never returns to the bus
                scope.master.set_node_online(NODE, False)

        job = JobContext("job-2", NODE, BoardStatus(NODE, "can", unplug_at_verifying), {})
        stream = method(link, repository, VerifySettings(settle=0.05, window=0.3, interval=0.05))
        with pytest.raises(BoardNotBackError) as caught:
            await stream.run(job)
    assert caught.value.error_code == "board_not_back"
    assert job.is_committed  # the transfer itself succeeded: too late to cancel
