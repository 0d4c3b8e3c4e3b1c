"""Listing, catalog and downloads against the real Caddy, configured as the UC2 firmware server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from caddy import CaddyServer
from espimage import build_app_image, flip_byte

from uc2otad.errors import DownloadCorruptError, ServerUnreachableError, WrongChipError
from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.server import FirmwareServer, HttpSettings
from uc2otad.retry import RetryPolicy

MOTOR_X = "esp32_UC2_canopen_slave_motor_release_motX.bin"
MOTOR_DOC = "esp32_seeed_xiao_esp32s3_can_slave_motor.bin"
MASTER = "esp32_UC2_canopen_master_release.bin"


def publish(caddy: CaddyServer, name: str, data: bytes, *, mtime: float | None = None) -> None:
    path = caddy.root / name
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def publish_manifest(caddy: CaddyServer, version: str, *, sha256_of: dict[str, bytes] | None = None) -> None:
    """Write version.json for every .bin in the root (or with the digests given in ``sha256_of``)."""
    files = {}
    for path in sorted(caddy.root.glob("*.bin")):
        data = (sha256_of or {}).get(path.name, path.read_bytes())
        files[path.name] = {"size": path.stat().st_size, "sha256": hashlib.sha256(data).hexdigest()}
    (caddy.root / "version.json").write_text(json.dumps({"version": version, "files": files}))


def publish_motor(caddy: CaddyServer, image: bytes, *, with_manifest: bool) -> None:
    publish(caddy, MOTOR_X, image)
    if with_manifest:
        publish_manifest(caddy, "v2026.1.0")


@pytest.fixture
def motor_image() -> bytes:
    return build_app_image("esp32s3", version="v2026.1.0", project="uc2-motor")


@pytest.fixture
def repository(caddy: CaddyServer, tmp_path: Path) -> Iterator[FirmwareRepository]:
    cache = FirmwareCache(tmp_path / "cache")
    yield FirmwareRepository(FirmwareServer(caddy.url), cache, ImageTable.standard())


async def test_listing_and_list_firmware_from_caddy(
    caddy: CaddyServer, repository: FirmwareRepository, motor_image: bytes
) -> None:
    def setup() -> None:
        publish(caddy, MOTOR_X, motor_image)
        publish(caddy, MASTER, build_app_image("esp32", project="uc2-master"))
        publish(caddy, "id_60_gpio.bin", build_app_image("esp32s3", project="gpio"))
        publish(caddy, "README.txt", b"not firmware")
        (caddy.root / "old").mkdir()
        publish_manifest(caddy, "v2026.1.0")

    await asyncio.to_thread(setup)
    catalog = await repository.catalog()
    assert set(catalog.listing.files) == {MOTOR_X, MASTER, "id_60_gpio.bin"}
    assert catalog.listing.files[MOTOR_X].size == len(motor_image)

    document = catalog.as_document()
    assert document["firmware_server"] == caddy.url
    assert set(document["firmware"]) == {"1", "11", "60"}
    assert document["firmware_count"] == 3
    entry = document["firmware"]["11"]
    assert entry["url"] == f"{caddy.url}/{MOTOR_X}"
    assert entry["size"] == len(motor_image)
    assert entry["sha256"] == hashlib.sha256(motor_image).hexdigest()
    assert entry["version"] == "v2026.1.0"
    assert len(entry["mod_time"]) == len("2025-12-03T16:31:06Z") and entry["mod_time"].endswith("Z")
    # always <server>/ with the slash: Caddy answers /firmware without it with an empty 200
    listing_requests = await asyncio.to_thread(caddy.requests_for, "")
    assert listing_requests[0].request_headers["Accept"] == ["application/json"]


async def test_trailing_slash_in_the_configured_url_changes_nothing(
    caddy: CaddyServer, motor_image: bytes
) -> None:
    await asyncio.to_thread(publish, caddy, MOTOR_X, motor_image)
    listing = await FirmwareServer(caddy.url + "/").list_files()
    assert list(listing.files) == [MOTOR_X]


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "conditional-get"])
async def test_second_resolution_downloads_zero_bytes(
    caddy: CaddyServer, repository: FirmwareRepository, motor_image: bytes, with_manifest: bool
) -> None:
    await asyncio.to_thread(publish_motor, caddy, motor_image, with_manifest=with_manifest)
    first = await repository.obtain(11)
    assert first.cached.downloaded_bytes == len(motor_image)
    assert first.version == "v2026.1.0"
    assert first.info.app_desc is not None and first.info.app_desc.project_name == "uc2-motor"
    assert await asyncio.to_thread(first.path.read_bytes) == motor_image

    second = await repository.obtain(11)
    assert second.cached.downloaded_bytes == 0
    assert second.cached.sha256 == hashlib.sha256(motor_image).hexdigest()

    image_requests = await asyncio.to_thread(caddy.requests_for, MOTOR_X)
    assert [entry.size for entry in image_requests if entry.status == 200] == [len(motor_image)]
    if with_manifest:
        assert len(image_requests) == 1  # the manifest's sha256 proved the cached copy: no request at all
    else:
        assert [entry.status for entry in image_requests] == [200, 304]
        assert image_requests[1].size == 0
        assert image_requests[1].request_headers.get("If-None-Match")


async def test_an_image_changed_on_the_server_is_downloaded_again(
    caddy: CaddyServer, repository: FirmwareRepository, motor_image: bytes
) -> None:
    await asyncio.to_thread(publish, caddy, MOTOR_X, motor_image, mtime=1_790_000_000)
    await repository.obtain(11)
    newer = build_app_image("esp32s3", version="v2026.2.0", project="uc2-motor")
    await asyncio.to_thread(publish, caddy, MOTOR_X, newer, mtime=1_790_000_600)

    updated = await repository.obtain(11)
    assert updated.version == "v2026.2.0"
    assert updated.cached.downloaded_bytes == len(newer)
    assert await asyncio.to_thread(updated.path.read_bytes) == newer


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "conditional-get"])
async def test_a_corrupt_cached_file_is_detected_and_replaced(
    caddy: CaddyServer, repository: FirmwareRepository, motor_image: bytes, with_manifest: bool
) -> None:
    await asyncio.to_thread(publish_motor, caddy, motor_image, with_manifest=with_manifest)
    first = await repository.obtain(11)
    damaged = flip_byte(motor_image, 0x400)
    await asyncio.to_thread(first.path.write_bytes, damaged)  # bit rot on the SD card

    again = await repository.obtain(11)
    assert again.cached.downloaded_bytes == len(motor_image)
    assert await asyncio.to_thread(again.path.read_bytes) == motor_image


async def test_wrong_sha256_in_the_manifest_keeps_nothing(
    caddy: CaddyServer, repository: FirmwareRepository, motor_image: bytes
) -> None:
    def setup() -> None:
        publish(caddy, MOTOR_X, motor_image)
        publish_manifest(caddy, "v2026.1.0", sha256_of={MOTOR_X: b"what the build really produced"})

    await asyncio.to_thread(setup)
    with pytest.raises(DownloadCorruptError, match="sha256") as caught:
        await repository.obtain(11)
    assert caught.value.error_code == "download_corrupt"
    cache_dir = repository.cache.directory
    assert await asyncio.to_thread(lambda: sorted(p.name for p in cache_dir.iterdir())) == [".meta"]


async def test_an_image_for_the_wrong_chip_is_refused_after_download(
    caddy: CaddyServer, repository: FirmwareRepository
) -> None:
    await asyncio.to_thread(publish, caddy, MOTOR_X, build_app_image("esp32", project="uc2-motor"))
    with pytest.raises(WrongChipError, match="esp32s3"):
        await repository.obtain(11)


async def test_document_names_are_served_when_the_server_has_only_those(
    caddy: CaddyServer, repository: FirmwareRepository, motor_image: bytes
) -> None:
    await asyncio.to_thread(publish, caddy, MOTOR_DOC, motor_image)
    image = await repository.obtain(13)
    assert image.name == MOTOR_DOC
    assert image.resolved.source == "standard"


async def test_https_server_with_a_private_ca(
    caddy_tls: CaddyServer, tmp_path: Path, motor_image: bytes
) -> None:
    await asyncio.to_thread(publish, caddy_tls, MOTOR_X, motor_image)
    trusted = FirmwareServer(caddy_tls.url, settings=HttpSettings(ca_file=str(caddy_tls.ca_file)))
    table = await asyncio.to_thread(ImageTable.standard)
    repository = FirmwareRepository(trusted, FirmwareCache(tmp_path / "cache"), table)
    image = await repository.obtain(11)
    assert image.cached.downloaded_bytes == len(motor_image)

    # the system trust store does not know Caddy's local CA; a certificate problem is not retried, so
    # with an hour of backoff before a second attempt the call still fails at once
    no_retry_expected = HttpSettings(retry=RetryPolicy(attempts=2, first_delay=3600))
    untrusting = FirmwareServer(caddy_tls.url, settings=no_retry_expected)
    with pytest.raises(ServerUnreachableError, match="certificate verify failed"):
        await untrusting.list_files()
