"""The simulator's firmware server answers like the UC2 Caddy: compared with the real Caddy, byte for byte.

The same folder is served by both; listing, headers, conditional GETs and odd paths must agree. Then
the daemon's own firmware client resolves and caches an image from the simulator's server.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from caddy import CaddyServer
from espimage import build_app_image

from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.server import FirmwareServer
from uc2otad.sim.firmware_server import SimFirmwareServer

MOTOR_X = "esp32_UC2_canopen_slave_motor_release_motX.bin"
MOTOR_IMAGE = build_app_image("esp32s3", version="v2026.1.0", project="uc2-motor")


@pytest.fixture
async def served(caddy: CaddyServer) -> AsyncIterator[tuple[str, str]]:
    """(Caddy's URL, the simulator's URL), both serving the same folder."""

    def publish() -> None:
        (caddy.root / MOTOR_X).write_bytes(MOTOR_IMAGE)
        os.utime(caddy.root / MOTOR_X, (1_790_000_000.123456789, 1_790_000_000.123456789))
        (caddy.root / "version.json").write_text(json.dumps({"version": "v2026.1.0", "files": {}}))
        (caddy.root / "old").mkdir()

    await asyncio.to_thread(publish)
    sim = SimFirmwareServer(caddy.root)
    await sim.start()
    try:
        yield caddy.url, sim.url
    finally:
        await sim.stop()


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw GET (http.client sends the path exactly as given)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {key.lower(): value for key, value in response.getheaders()}, response.read()
    finally:
        connection.close()


async def both(served: tuple[str, str], path: str, **headers: str) -> list[tuple[int, dict[str, str], bytes]]:
    return [await asyncio.to_thread(get, url, path, headers) for url in served]


async def test_the_json_listing_is_caddy_s(served: tuple[str, str]) -> None:
    caddy, sim = await both(served, "/firmware/", Accept="application/json")
    assert (sim[0], json.loads(sim[2])) == (caddy[0], json.loads(caddy[2]))
    assert sim[1]["content-type"].startswith("application/json")


async def test_a_file_has_caddy_s_validators_and_a_conditional_get_gets_304(served: tuple[str, str]) -> None:
    caddy, sim = await both(served, f"/firmware/{MOTOR_X}")
    assert (sim[0], sim[2]) == (caddy[0], caddy[2]) == (200, MOTOR_IMAGE)
    for header in ("etag", "last-modified", "content-length"):
        assert sim[1][header] == caddy[1][header]
    for condition in ({"If-None-Match": caddy[1]["etag"]}, {"If-Modified-Since": caddy[1]["last-modified"]}):
        caddy_again, sim_again = await both(served, f"/firmware/{MOTOR_X}", **condition)
        assert (sim_again[0], sim_again[2]) == (caddy_again[0], caddy_again[2]) == (304, b"")


@pytest.mark.parametrize(
    "path", ["/firmware", "/firmware/missing.bin", "/firmware/../firmware/" + MOTOR_X, "/elsewhere/"]
)
async def test_odd_paths_are_answered_as_caddy_answers_them(served: tuple[str, str], path: str) -> None:
    caddy, sim = await both(served, path)
    assert (sim[0], len(sim[2]) if sim[0] == 200 else None) == (
        caddy[0],
        len(caddy[2]) if caddy[0] == 200 else None,
    )


async def test_the_html_listing_is_served_without_the_json_header(served: tuple[str, str]) -> None:
    caddy, sim = await both(served, "/firmware/")
    assert sim[1]["content-type"].startswith("text/html") and caddy[1]["content-type"].startswith("text/html")
    assert MOTOR_X.encode() in sim[2]


async def test_the_daemon_s_firmware_client_works_against_the_simulator_s_server(
    served: tuple[str, str], tmp_path: Path
) -> None:
    table = await asyncio.to_thread(ImageTable.standard)
    repository = FirmwareRepository(FirmwareServer(served[1]), FirmwareCache(tmp_path / "cache"), table)
    first = await repository.obtain(11)
    assert (first.version, first.cached.downloaded_bytes) == ("v2026.1.0", len(MOTOR_IMAGE))
    assert (await repository.obtain(11)).cached.downloaded_bytes == 0  # 304 from the simulator
