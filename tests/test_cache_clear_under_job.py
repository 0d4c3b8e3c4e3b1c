"""ClearFirmwareCache between a job's fetch and its read takes nothing from the job (issue 15, D4)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from espimage import build_app_image
from faultserver import FaultServer, Reply

from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.repository import FirmwareRepository, VerifiedImage
from uc2otad.firmware.server import FirmwareServer
from uc2otad.methods.base import Phase
from uc2otad.methods.can import CanStreamMethod

CAN_ID = 11
NAME = "esp32_UC2_canopen_slave_motor_release_motX.bin"


class _Status:
    def __init__(self) -> None:
        self.phases: list[Phase] = []

    def advance(self, phase: Phase, **fields: Any) -> None:
        self.phases.append(phase)

    def progress(self, percent: float) -> None:
        pass

    def succeed(self, *, verification: str, firmware_version: str | None = None) -> None:
        pass


class _Job:
    can_id = CAN_ID

    def __init__(self) -> None:
        self.status = _Status()
        self.image: VerifiedImage | None = None

    def obtained(self, image: VerifiedImage) -> None:
        self.image = image

    def accepted(self, command_response: Mapping[str, Any]) -> None:
        pass

    def committed(self) -> None:
        pass


class _StreamedError(Exception):
    """The link got the bytes: the test has seen what it needs."""


class _Link:
    def __init__(self) -> None:
        self.sent: bytes | None = None

    async def stream_ota(self, can_id: int, data: bytes, **_: Any) -> None:
        self.sent = bytes(data)
        raise _StreamedError


async def test_clearing_the_cache_after_the_fetch_leaves_the_job_its_image(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """D4: ClearFirmwareCache after a job's fetch and before its read deleted the image under it: the
    read raised FileNotFoundError (no error code: an unretrieved task exception, status ``idle``, history
    ``running`` until restart). The job holds the bytes it verified; the clear takes the file only."""
    image = build_app_image("esp32s3", segment_sizes=(0x4000, 0x1000, 0x4000, 0x8000))
    table = await asyncio.to_thread(ImageTable.standard)
    repository = FirmwareRepository(
        FirmwareServer(fault_server.url + "/firmware"), FirmwareCache(tmp_path / "cache"), table
    )
    entry = {"name": NAME, "size": len(image), "url": f"./{NAME}", "mode": 420,
             "mod_time": "2026-11-01T10:00:00Z", "is_dir": False, "is_symlink": False}  # fmt: skip
    fault_server.script("/firmware/", Reply(200, json.dumps([entry]).encode()))
    fault_server.script(f"/firmware/{NAME}", Reply(200, image))
    catalog = await repository.catalog()
    cleared: list[int] = []

    async def obtain_then_clear() -> VerifiedImage:
        verified = await repository.obtain(CAN_ID, name=NAME, catalog=catalog)
        cleared.append(await repository.cache.clear())  # ClearFirmwareCache, between fetch and read
        return verified

    link = _Link()

    @contextlib.asynccontextmanager
    async def use_link(_why: str) -> AsyncIterator[_Link]:
        yield link

    method = CanStreamMethod(use_link, obtain_then_clear)  # type: ignore[arg-type]
    job = _Job()
    with contextlib.suppress(_StreamedError):
        await method.run(job)
    assert cleared == [1]
    assert not await asyncio.to_thread((tmp_path / "cache" / NAME).exists)
    assert link.sent == image
    assert job.image is not None and hashlib.sha256(link.sent).hexdigest() == job.image.cached.sha256
