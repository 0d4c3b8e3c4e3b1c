"""Concurrent catalog fetches share one listing and one manifest request (issue 15, follow-up of D5).

Every ScanDevices, StartOTA and ListAvailableFirmware asks :meth:`FirmwareRepository.catalog`; a burst of
them used to send one listing and one manifest request each. Callers that arrive while a fetch runs now
share it: its result or its error. A caller that gives up (ScanDevices on a slow server) leaves the fetch
to the others, and nothing is kept after the fetch: the next call asks the server again.

Real HTTP on 127.0.0.1 (the test's fault server), real requests from the repository's HTTP client. The
server holds its answer to the listing until the test lets it go, so "while a fetch runs" is a fact the
test arranges, never a guess about timing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultserver import Answer, FaultServer, Reply

from uc2otad.errors import ListingError
from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.catalog import Catalog, ImageTable
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.server import FirmwareServer

LISTING = "/firmware/"
MANIFEST = "/firmware/version.json"
NAME = "esp32_UC2_canopen_slave_motor_release_motX.bin"
CALLERS = 10
#: seconds a held answer waits at most for the test to let it go (a failing test must not hang)
HOLD_TIMEOUT = 10.0


class HeldServer(FaultServer):
    """The fault server, whose answers for a held path wait until the test releases them.

    A request is counted as arrived before it waits (:meth:`FaultServer.wait_for_request` sees it).
    """

    def __init__(self) -> None:
        super().__init__()
        self._holds: dict[str, threading.Event] = {}

    def hold(self, path: str) -> threading.Event:
        """Hold the answers for ``path`` until the returned event is set."""
        release = threading.Event()
        self._holds[path] = release
        return release

    def release_all(self) -> None:
        for release in self._holds.values():
            release.set()

    def _next_answer(self, path: str) -> Answer:
        answer = super()._next_answer(path)
        release = self._holds.get(path)
        if release is not None:
            release.wait(HOLD_TIMEOUT)
        return answer


@pytest.fixture
def server() -> Iterator[HeldServer]:
    held = HeldServer()  # entered below: FaultServer.__enter__ is typed to return a FaultServer
    with held:
        entry = {"name": NAME, "size": 4096, "url": f"./{NAME}", "mode": 420,
                 "mod_time": "2026-11-01T10:00:00Z", "is_dir": False, "is_symlink": False}  # fmt: skip
        held.script(LISTING, Reply(200, json.dumps([entry]).encode()))
        manifest = {"version": "v2026.11.0", "files": {NAME: {"size": 4096, "sha256": "ab" * 32}}}
        held.script(MANIFEST, Reply(200, json.dumps(manifest).encode()))
        try:
            yield held
        finally:
            held.release_all()  # a failed test leaves no handler thread waiting


@pytest.fixture
async def repository(server: HeldServer, tmp_path: Path) -> FirmwareRepository:
    table = await asyncio.to_thread(ImageTable.standard)
    return FirmwareRepository(
        FirmwareServer(server.url + "/firmware"), FirmwareCache(tmp_path / "cache"), table
    )


async def _requests(server: HeldServer, path: str) -> int:
    """How many requests for ``path`` the server answered."""
    return len(await asyncio.to_thread(server.requests_for, path))


async def _arrived(server: HeldServer, path: str) -> None:
    """Return once a request for ``path`` reached the server (it may be held there)."""
    await asyncio.to_thread(server.wait_for_request, path)


async def test_ten_concurrent_calls_cost_one_listing_and_one_manifest_request(
    server: HeldServer, repository: FirmwareRepository
) -> None:
    """Ten catalog() calls while the listing is on its way: one request each for listing and manifest."""
    release = server.hold(LISTING)
    first = asyncio.create_task(repository.catalog())
    await _arrived(server, LISTING)  # the fetch is in flight, held by the server
    others = [asyncio.create_task(repository.catalog()) for _ in range(CALLERS - 1)]
    release.set()

    catalogs = await asyncio.gather(first, *others)

    assert all(catalog is catalogs[0] for catalog in catalogs)  # one snapshot, shared
    assert list(catalogs[0].listing.files) == [NAME]
    assert catalogs[0].manifest is not None and catalogs[0].manifest.version == "v2026.11.0"
    assert await _requests(server, LISTING) == 1
    assert await _requests(server, MANIFEST) == 1


async def test_the_next_call_after_a_fetch_ended_fetches_again(
    server: HeldServer, repository: FirmwareRepository
) -> None:
    """Nothing is kept once the fetch ended: a call after it gets a snapshot of the server as it is now."""
    before: Catalog = await repository.catalog()
    after: Catalog = await repository.catalog()

    assert after is not before
    assert await _requests(server, LISTING) == 2
    assert await _requests(server, MANIFEST) == 2


async def test_a_cancelled_caller_leaves_the_fetch_to_the_others(
    server: HeldServer, repository: FirmwareRepository
) -> None:
    """The caller that started the fetch gives up while it is in flight (ScanDevices' timeout): the others
    still get the catalog, from the same single request."""
    release = server.hold(LISTING)
    starter = asyncio.create_task(repository.catalog())
    await _arrived(server, LISTING)
    others = [asyncio.create_task(repository.catalog()) for _ in range(CALLERS - 1)]
    await asyncio.to_thread(server.wait_for_request, MANIFEST)  # both requests out before the cancel

    starter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starter
    assert not any(task.done() for task in others)  # still waiting: the fetch was not cancelled
    release.set()
    catalogs = await asyncio.gather(*others)

    assert all(catalog is catalogs[0] for catalog in catalogs)
    assert list(catalogs[0].listing.files) == [NAME]
    assert await _requests(server, LISTING) == 1
    assert await _requests(server, MANIFEST) == 1


async def test_when_every_caller_gave_up_the_next_call_fetches_afresh(
    server: HeldServer, repository: FirmwareRepository
) -> None:
    """The last caller cancelled takes the fetch with it (no request runs on for nobody, as before
    coalescing); the next call does not inherit the abandoned fetch, it sends its own requests."""
    release = server.hold(LISTING)
    lone = asyncio.create_task(repository.catalog())
    await _arrived(server, LISTING)
    lone.cancel()
    release.set()  # the abandoned request is answered, and dropped
    with pytest.raises(asyncio.CancelledError):
        await lone

    catalog = await repository.catalog()

    assert list(catalog.listing.files) == [NAME]
    assert await _requests(server, LISTING) == 2


async def test_an_error_reaches_every_caller(server: HeldServer, repository: FirmwareRepository) -> None:
    """The listing refused (403: no retry): every caller that shared the fetch gets that same error, and
    the task that ran the fetch leaves no unretrieved exception behind."""
    server.script(LISTING, Reply(403, b"forbidden\n"))
    release = server.hold(LISTING)
    first = asyncio.create_task(repository.catalog())
    await _arrived(server, LISTING)
    # the manifest is asked beside the listing: once the listing fails the fetch stops, and on a loaded
    # machine the manifest's request could be stopped before it was sent at all
    await _arrived(server, MANIFEST)
    others = [asyncio.create_task(repository.catalog()) for _ in range(CALLERS - 1)]
    release.set()

    results = await asyncio.gather(first, *others, return_exceptions=True)

    assert all(isinstance(result, ListingError) for result in results), results
    assert all(result is results[0] for result in results)
    assert "403" in str(results[0])
    assert await _requests(server, LISTING) == 1
    assert await _requests(server, MANIFEST) == 1
