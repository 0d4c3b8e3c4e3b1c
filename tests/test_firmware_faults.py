"""A misbehaving firmware server: each fault gives its typed error, and the cache keeps nothing wrong."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from pathlib import Path

import pytest
from espimage import build_app_image
from faultserver import FaultServer, LoggedRequest, Reply, Reset, Stall, Trickle, Truncate

from uc2otad.errors import (
    CacheBusyError,
    DownloadCorruptError,
    DownloadTimeoutError,
    FirmwareNotFoundError,
    ListingError,
    ManifestError,
    ServerUnreachableError,
    UnsafeFileNameError,
)
from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.listing import FirmwareFile
from uc2otad.firmware.manifest import ManifestFile
from uc2otad.firmware.server import FirmwareServer, HttpSettings
from uc2otad.retry import RetryPolicy

NAME = "esp32_UC2_canopen_slave_motor_release_motX.bin"
IMAGE = build_app_image("esp32s3", segment_sizes=(0x4000, 0x1000, 0x4000, 0x8000))
PATH = f"/firmware/{NAME}"
#: timeouts shrunk so that every fault shows within a second
FAST = HttpSettings(
    connect_timeout=1.0,
    read_timeout=0.3,
    transfer_timeout=1.0,
    retry=RetryPolicy(attempts=3, first_delay=0.01, factor=1.0),
)


@pytest.fixture
def server(fault_server: FaultServer) -> FirmwareServer:
    return FirmwareServer(fault_server.url + "/firmware", settings=FAST)


@pytest.fixture
def cache(tmp_path: Path) -> FirmwareCache:
    return FirmwareCache(tmp_path / "cache")


def listed(data: bytes = IMAGE) -> FirmwareFile:
    return FirmwareFile(NAME, len(data))


def promise_of(data: bytes) -> ManifestFile:
    return ManifestFile(size=len(data), sha256=hashlib.sha256(data).hexdigest())


def cache_contents(cache: FirmwareCache) -> list[str]:
    """Every file under the cache folder (hidden ones too), as relative paths."""
    if not cache.directory.exists():
        return []
    return sorted(
        str(path.relative_to(cache.directory)) for path in cache.directory.rglob("*") if path.is_file()
    )


async def answered(fault_server: FaultServer) -> list[LoggedRequest]:
    """The server's answered requests for the image (waiting on its log off the event loop)."""
    return await asyncio.to_thread(fault_server.requests_for, PATH)


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize(
    ("answer", "error", "match", "error_code", "attempts"),
    [
        (None, FirmwareNotFoundError, "404", "firmware_not_found", 1),
        (Reply(403, b"forbidden"), FirmwareNotFoundError, "403", "firmware_not_found", 1),
        (Reply(502), ServerUnreachableError, "502", "download_timeout", FAST.retry.attempts),
        (
            Reset(IMAGE, after=len(IMAGE) // 2),
            ServerUnreachableError,
            "lost",
            "download_timeout",
            FAST.retry.attempts,
        ),
        (
            Truncate(IMAGE, after=1000),
            DownloadCorruptError,
            "truncated",
            "download_corrupt",
            FAST.retry.attempts,
        ),
        (Stall(IMAGE, after=4096), DownloadTimeoutError, "stalled", "download_timeout", 1),
        (
            Trickle(IMAGE, piece=256, interval=0.02),
            DownloadTimeoutError,
            "longer than",
            "download_timeout",
            1,
        ),
    ],
    ids=["404", "403", "5xx", "reset", "truncated", "stall", "trickle"],
)
async def test_a_failed_download_is_a_typed_error_retried_only_when_it_may_pass(
    fault_server: FaultServer,
    server: FirmwareServer,
    cache: FirmwareCache,
    answer: Reply | Reset | Truncate | Stall | Trickle | None,
    error: type[Exception],
    match: str,
    error_code: str,
    attempts: int,
) -> None:
    if answer is not None:  # None: nothing scripted, the server answers 404
        fault_server.script(PATH, answer)
    with pytest.raises(error, match=match) as caught:
        await cache.fetch(server, listed(), None)
    assert getattr(caught.value, "error_code", None) == error_code
    assert await asyncio.to_thread(cache_contents, cache) == []  # no partial or wrong file, no temp file
    if not isinstance(answer, Stall | Trickle):  # a stalled answer is logged only when the server stops
        assert len(await answered(fault_server)) == attempts


async def test_500_then_success_is_retried(
    fault_server: FaultServer, server: FirmwareServer, cache: FirmwareCache
) -> None:
    fault_server.script(PATH, Reply(500), Reply(503), Reply(200, IMAGE))
    image = await cache.fetch(server, listed(), promise_of(IMAGE))
    assert image.downloaded_bytes == len(IMAGE)
    assert [entry.status for entry in await answered(fault_server)] == [500, 503, 200]
    assert await asyncio.to_thread(image.path.read_bytes) == IMAGE


async def test_reset_mid_body_is_retried_and_recovers(
    fault_server: FaultServer, server: FirmwareServer, cache: FirmwareCache
) -> None:
    fault_server.script(PATH, Reset(IMAGE, after=len(IMAGE) // 2), Reply(200, IMAGE))
    image = await cache.fetch(server, listed(), promise_of(IMAGE))
    assert await asyncio.to_thread(image.path.read_bytes) == IMAGE
    assert len(await answered(fault_server)) == 2


async def test_wrong_sha256_is_corrupt_and_keeps_the_previous_good_copy(
    fault_server: FaultServer, server: FirmwareServer, cache: FirmwareCache
) -> None:
    fault_server.script(PATH, Reply(200, IMAGE))
    good = await cache.fetch(server, listed(), promise_of(IMAGE))
    tampered = IMAGE[:-1] + bytes([IMAGE[-1] ^ 1])
    new_build = build_app_image(
        "esp32s3", version="v2026.2.0", segment_sizes=(0x4000, 0x1000, 0x4000, 0x8000)
    )
    fault_server.script(PATH, Reply(200, tampered))
    # the manifest now announces a new build; the server sends tampered bytes of the old one's size
    with pytest.raises(DownloadCorruptError, match="sha256"):
        await cache.fetch(server, FirmwareFile(NAME, len(new_build)), promise_of(new_build))
    assert await asyncio.to_thread(good.path.read_bytes) == IMAGE
    assert await asyncio.to_thread(cache_contents, cache) == [".meta/" + NAME + ".json", NAME]


async def test_size_differing_from_the_listing_is_corrupt(
    fault_server: FaultServer, server: FirmwareServer, cache: FirmwareCache
) -> None:
    fault_server.script(PATH, Reply(200, IMAGE))
    with pytest.raises(DownloadCorruptError, match="listing says"):
        await cache.fetch(server, FirmwareFile(NAME, len(IMAGE) + 1), None)
    assert await asyncio.to_thread(cache_contents, cache) == []


async def test_body_over_the_size_limit_is_refused(
    fault_server: FaultServer, server: FirmwareServer, tmp_path: Path
) -> None:
    small_cache = FirmwareCache(tmp_path / "cache", max_image_size=len(IMAGE) - 1)
    fault_server.script(PATH, Reply(200, IMAGE))
    with pytest.raises(DownloadCorruptError, match="over the limit"):  # announced too large
        await small_cache.fetch(server, listed(), None)
    fault_server.script(PATH, Reply(200, IMAGE, announce_length=False))
    with pytest.raises(DownloadCorruptError, match="more than the limit"):  # found out while reading
        await small_cache.fetch(server, listed(), None)
    assert await asyncio.to_thread(cache_contents, small_cache) == []


async def test_refused_connection_is_unreachable(cache: FirmwareCache) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = FirmwareServer(f"http://127.0.0.1:{port}/firmware", settings=FAST)
    with pytest.raises(ServerUnreachableError, match="refused"):
        await server.list_files()
    with pytest.raises(ServerUnreachableError, match="refused"):
        await cache.fetch(server, listed(), None)


async def test_cancel_mid_download_leaves_no_temporary_file(
    fault_server: FaultServer, server: FirmwareServer, cache: FirmwareCache
) -> None:
    fault_server.script(PATH, Stall(IMAGE, after=len(IMAGE) // 2))
    fetch = asyncio.create_task(cache.fetch(server, listed(), None))
    await asyncio.to_thread(fault_server.wait_for_request, PATH)
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    assert await asyncio.to_thread(cache_contents, cache) == []
    assert not cache.in_use


async def test_hostile_listing_entries_are_refused_and_nothing_is_written_outside_the_cache(
    fault_server: FaultServer, server: FirmwareServer, cache: FirmwareCache, tmp_path: Path
) -> None:
    entries = [
        {"name": "../../etc/passwd", "size": 100, "is_dir": False},
        {"name": "..%2F..%2Fescape.bin", "size": 100, "is_dir": False},
        {"name": "dir/inside.bin", "size": 100, "is_dir": False},
        {"name": "huge.bin", "size": 10 * 1024**3, "is_dir": False},
        {"name": NAME, "size": len(IMAGE), "is_dir": False},
    ]
    fault_server.script("/firmware/", Reply(200, json.dumps(entries).encode()))
    fault_server.script(PATH, Reply(200, IMAGE))
    before = await asyncio.to_thread(tree, tmp_path)

    listing = await server.list_files()
    assert list(listing.files) == [NAME]
    refused = {entry.name for entry in listing.refused}
    assert refused == {"../../etc/passwd", "..%2F..%2Fescape.bin", "dir/inside.bin", "huge.bin"}
    with pytest.raises(UnsafeFileNameError):
        await cache.fetch(server, FirmwareFile("../../etc/passwd", 100), None)
    await cache.fetch(server, listing.files[NAME], None)

    after = await asyncio.to_thread(tree, tmp_path)
    assert {path for path in after - before if not path.startswith("cache")} == set()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<!DOCTYPE html><html><body><a href='a.bin'>a.bin</a></body></html>", "text/html; charset=utf-8"),
        (b"this is not json", "text/plain"),
        (b'{"name": "a.bin"}', "application/json"),
    ],
    ids=["html", "text", "object"],
)
async def test_a_listing_that_is_not_a_json_list_is_a_listing_error(
    fault_server: FaultServer, server: FirmwareServer, body: bytes, content_type: str
) -> None:
    fault_server.script("/firmware/", Reply(200, body, headers={"Content-Type": content_type}))
    with pytest.raises(ListingError):
        await server.list_files()


async def test_missing_manifest_is_none_and_a_broken_one_is_an_error(
    fault_server: FaultServer, server: FirmwareServer
) -> None:
    assert await server.get_manifest() is None
    fault_server.script("/firmware/version.json", Reply(200, b"{broken"))
    with pytest.raises(ManifestError, match="not JSON"):
        await server.get_manifest()


async def test_leftover_transfers_are_removed_on_open_and_clear_empties_the_cache(
    fault_server: FaultServer, server: FirmwareServer, cache: FirmwareCache
) -> None:
    fault_server.script(PATH, Reply(200, IMAGE))
    await cache.fetch(server, listed(), None)
    leftover = cache.directory / ".tmp-killed-mid-download"
    await asyncio.to_thread(leftover.write_bytes, b"partial")

    reopened = FirmwareCache(cache.directory)
    await reopened.open()
    assert await asyncio.to_thread(cache_contents, reopened) == [".meta/" + NAME + ".json", NAME]

    async with reopened.use():
        with pytest.raises(CacheBusyError):
            await reopened.clear()
    assert await reopened.clear() == 1
    assert await asyncio.to_thread(cache_contents, reopened) == []
