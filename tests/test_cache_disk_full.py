"""A full disk under the firmware cache is its own error (issue 15, D13): ``disk_full``, naming the cache's
folder, not retried, and the cache keeps no partial file."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from espimage import build_app_image
from faultserver import FaultServer, Reply

from uc2otad.contract import ErrorCode, StatusDict
from uc2otad.engine.status import BoardStatus
from uc2otad.errors import CacheError
from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.listing import FirmwareFile
from uc2otad.firmware.manifest import ManifestFile
from uc2otad.firmware.server import FirmwareServer

NAME = "esp32_UC2_canopen_slave_motor_release_motX.bin"
IMAGE = build_app_image("esp32s3", segment_sizes=(0x4000, 0x1000, 0x4000, 0x8000))
PATH = f"/firmware/{NAME}"


class _FullDisk:
    """A file on a disk with ``room`` bytes left: writes past it fail with ENOSPC, as the kernel's do."""

    def __init__(self, real: Any, room: int) -> None:
        self._real = real
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return int(self._real.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        return _FullDisk(real_fdopen(fd, *args, **kwargs), room=4096)

    monkeypatch.setattr(os, "fdopen", fdopen)  # the cache opens its files with os.fdopen


async def test_a_full_cache_disk_is_disk_full_naming_the_folder(
    fault_server: FaultServer, tmp_path: Path, full_disk: None
) -> None:
    """D13: ENOSPC while the image is written used to end the job as error_code "failed", message
    "❌ failed". Now it is ``disk_full``, and the texts say which disk: the firmware cache's, by folder."""
    fault_server.script(PATH, Reply(200, IMAGE))
    cache = FirmwareCache(tmp_path / "cache")
    server = FirmwareServer(fault_server.url + "/firmware")
    promise = ManifestFile(size=len(IMAGE), sha256=hashlib.sha256(IMAGE).hexdigest())
    with pytest.raises(CacheError) as caught:
        await cache.fetch(server, FirmwareFile(NAME, len(IMAGE)), promise)
    error = caught.value
    assert error.error_code == "disk_full"
    assert not ErrorCode.DISK_FULL.transient  # freeing space takes a person: no retry
    assert str(cache.directory) in str(error) and "No space left" in str(error)
    leftovers = await asyncio.to_thread(lambda: [p.name for p in cache.directory.iterdir() if p.is_file()])
    assert leftovers == []

    published: list[StatusDict] = []
    status = BoardStatus(11, "wifi", published.append)
    status.fail(error.error_code, detail=str(error))
    assert published[-1]["error_code"] == "disk_full"
    assert published[-1]["message"].startswith("❌ Disk full")
    assert "firmware cache" in published[-1]["message"]
    assert str(cache.directory) in published[-1]["upload_error"]
