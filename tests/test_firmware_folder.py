"""A firmware folder as the firmware server (issue 21, ``firmware/directory.py``): listing, version.json
and downloads through the cache as from a server, links not followed, the cache's copy reused while
the file is unchanged; and through the daemon, an update served by a folder with no server at all."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from espimage import build_app_image
from signals import StatusSignals
from test_daemon_update import FAST_UPDATE
from test_link_ota_stream import NODE, TIMING

from uc2otad.api import names
from uc2otad.errors import ConfigError, DownloadCorruptError, FirmwareNotFoundError, ServerUnreachableError
from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.directory import FirmwareFolder, normalize_folder_url
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.source import normalize_source_url, open_source
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node

MOTOR = "esp32_UC2_canopen_slave_motor_release_motX.bin"
IMAGE = build_app_image("esp32s3", version="v2099.5.0", segment_sizes=(0x1000, 0x200, 0x800, 0x400))


def publish(folder: Path, image: bytes = IMAGE, *, manifest: bool = True) -> None:
    folder.mkdir(exist_ok=True)
    (folder / MOTOR).write_bytes(image)
    if manifest:
        files = {MOTOR: {"size": len(image), "sha256": hashlib.sha256(image).hexdigest()}}
        (folder / "version.json").write_text(json.dumps({"version": "v2099.5.0", "files": files}))


async def repository_of(url: str, cache_dir: Path) -> FirmwareRepository:
    table = await asyncio.to_thread(ImageTable.standard)  # reads images.toml
    return FirmwareRepository(FirmwareFolder(url), FirmwareCache(cache_dir), table)


def test_folder_urls_are_kept_as_file_urls() -> None:
    assert normalize_folder_url("/srv/uc2 firmware/") == "file:///srv/uc2%20firmware"
    assert normalize_folder_url("file:///srv/fw/../fw") == "file:///srv/fw"
    assert normalize_source_url("file://localhost/srv/fw") == "file:///srv/fw"
    assert normalize_source_url("http://127.0.0.1:8080/firmware/") == "http://127.0.0.1:8080/firmware"
    for bad in ("relative/folder", "file://otherhost/srv/fw", "file:///srv/fw?x=1"):
        with pytest.raises(ConfigError):
            normalize_source_url(bad)
    assert isinstance(open_source("/srv/fw"), FirmwareFolder)


async def test_a_folder_serves_the_catalog_and_the_cache_as_a_server_does(tmp_path: Path) -> None:
    folder = tmp_path / "firmware"
    await asyncio.to_thread(publish, folder)
    await asyncio.to_thread((folder / "notes.txt").write_text, "not an image")
    await asyncio.to_thread(os.symlink, "/etc/passwd", folder / "escape.bin")
    repository = await repository_of(str(folder), tmp_path / "cache")

    catalog = await repository.catalog()
    first = await repository.obtain(NODE)
    again = await repository.obtain(NODE)

    assert list(catalog.listing.files) == [MOTOR]
    assert catalog.listing.refusal_of("escape.bin") == "not a regular file (links are not followed)"
    assert (first.data, first.version, first.cached.verified_by) == (IMAGE, "v2099.5.0", "manifest")
    assert (first.cached.downloaded_bytes, again.cached.downloaded_bytes) == (len(IMAGE), 0)


async def test_without_a_manifest_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    folder = tmp_path / "firmware"
    await asyncio.to_thread(publish, folder, manifest=False)
    repository = await repository_of(f"file://{folder}", tmp_path / "cache")

    first = await repository.obtain(NODE)
    reused = await repository.obtain(NODE)
    newer = build_app_image("esp32s3", version="v2099.6.0", segment_sizes=(0x1000, 0x200, 0x800, 0x600))
    await asyncio.to_thread(publish, folder, newer, manifest=False)
    replaced = await repository.obtain(NODE)

    assert (first.cached.verified_by, first.cached.downloaded_bytes) == ("server", len(IMAGE))
    assert (reused.data, reused.cached.downloaded_bytes) == (IMAGE, 0)  # size and mtime unchanged
    assert (replaced.data, replaced.version) == (newer, "v2099.6.0")


async def test_a_missing_folder_file_or_a_bad_copy_are_the_servers_errors(tmp_path: Path) -> None:
    folder = tmp_path / "firmware"
    await asyncio.to_thread(publish, folder)
    missing = await repository_of(str(tmp_path / "not-mounted"), tmp_path / "c1")
    with pytest.raises(ServerUnreachableError, match="cannot be read"):
        await missing.catalog()

    repository = await repository_of(str(folder), tmp_path / "c2")
    with pytest.raises(FirmwareNotFoundError):
        await repository.obtain(NODE, name="absent.bin")
    await asyncio.to_thread((folder / MOTOR).write_bytes, IMAGE[:-1] + b"\0")  # not what version.json says
    with pytest.raises(DownloadCorruptError):
        await repository.obtain(NODE)


def microscope_for(tmp_path: Path) -> VirtualMicroscope:
    config = SimConfig(
        nodes=(default_node(NODE),), timing=TIMING, serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0
    )
    return VirtualMicroscope(config)


async def test_a_folder_serves_an_update_with_no_server_at_all(
    start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path
) -> None:
    folder = tmp_path / "stick"
    await asyncio.to_thread(publish, folder)
    signals = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    async with microscope_for(tmp_path) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server",
                           "http://127.0.0.1:9/none", config=FAST_UPDATE)  # fmt: skip
        relative = await call(client, "SetFirmwareServer", "s", "stick")
        assert (
            await call(client, "SetFirmwareServer", "s", str(folder))
        ).message_type is MessageType.METHOD_RETURN
        listed = unwrap((await call(client, "ListFirmware")).body[0])
        started = await call(client, "StartOTA", "ua{sv}", NODE, {})
        final = await signals.until("success")
        running = scope.master.slave(NODE).running_image
    signals.close()

    assert (relative.message_type, relative.error_name) == (MessageType.ERROR, names.INVALID_ARGUMENT)
    assert listed["firmware_server"] == f"file://{folder}"
    assert listed["firmware"][str(NODE)]["url"] == f"file://{folder}/{MOTOR}"
    assert started.message_type is MessageType.METHOD_RETURN, started.body
    assert (final["upload_status"], final["firmware_version"]) == ("success", "v2099.5.0")
    assert running == IMAGE
