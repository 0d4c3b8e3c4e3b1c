"""Fixtures shared by the whole suite: real external programs, and a guard against blocking the loop."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import can
import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from caddy import CaddyServer
from daemon_process import DaemonProcess
from dbus_fast.aio import MessageBus
from faultserver import FaultServer
from lossy_bus import LOSS, LOSSY

from uc2otad.sim.private_bus import PrivateBus


def _require_program(name: str) -> None:
    """Locally a missing program skips its tests; in CI (CI=true) it fails them: CI must install it."""
    if shutil.which(name) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not on PATH; .ci/run must install it")
        pytest.skip(f"{name} not on PATH")


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test whose event loop thread makes a blocking call (file or socket I/O, sleep)."""
    with blockbuster_ctx() as detector:
        yield detector


def _run_caddy(tmp_path: Path, *, tls: bool) -> Iterator[CaddyServer]:
    _require_program("caddy")
    workdir = tmp_path / ("caddy-tls" if tls else "caddy")
    workdir.mkdir()
    server = CaddyServer(workdir, tls=tls)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[CaddyServer]:
    """The real Caddy serving an empty folder ``caddy.root`` as ``caddy.url`` (``…/firmware``)."""
    yield from _run_caddy(tmp_path, tls=False)


@pytest.fixture
def caddy_tls(tmp_path: Path) -> Iterator[CaddyServer]:
    """The real Caddy over https, its certificate issued by its own local CA (``caddy_tls.ca_file``)."""
    yield from _run_caddy(tmp_path, tls=True)


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def private_bus(tmp_path: Path) -> Iterator[PrivateBus]:
    """A dbus-daemon of our own: the daemon under test and its clients meet there."""
    _require_program("dbus-daemon")
    folder = tmp_path / "bus"
    folder.mkdir()
    bus = PrivateBus(folder)
    bus.start()
    yield bus
    bus.stop()


DaemonFactory = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
def start_daemon(tmp_path: Path, private_bus: PrivateBus) -> Iterator[DaemonFactory]:
    """``await start_daemon(*flags, config="...", env={...})`` runs uc2otad until READY=1.

    Every daemon of the test shares one work folder (state survives a restart); all are stopped at
    teardown. Starting blocks on the notify socket, so it runs off the event loop.
    """
    started: list[DaemonProcess] = []

    def start(args: tuple[str, ...], config: str, env: dict[str, str] | None) -> DaemonProcess:
        workdir = tmp_path / "daemon"
        workdir.mkdir(exist_ok=True)
        daemon = DaemonProcess(workdir, private_bus.address, args=args, env=env)
        daemon.config.write_text(config)
        daemon.start()
        started.append(daemon)
        return daemon

    async def start_async(*args: str, config: str = "", env: dict[str, str] | None = None) -> DaemonProcess:
        return await asyncio.to_thread(start, args, config, env)

    yield start_async
    for daemon in started:
        daemon.close()


@pytest.fixture
async def client(private_bus: PrivateBus) -> AsyncIterator[MessageBus]:
    """A second, independent D-Bus connection: how ImSwitch or uc2otactl would talk to the daemon."""
    bus = await MessageBus(bus_address=private_bus.address).connect()
    yield bus
    bus.disconnect()


@pytest.fixture
def lossy(monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[[can.Message], bool] | None]:
    """The lossy interface (``lossy_bus.py``), registered with python-can under ``LOSSY``; set a
    predicate for "send" or "receive" to lose the next frame it picks."""
    monkeypatch.setitem(can.interfaces.BACKENDS, LOSSY, ("lossy_bus", "LossyVirtualBus"))
    monkeypatch.setattr("can.util.VALID_INTERFACES", can.interfaces.VALID_INTERFACES | {LOSSY})
    monkeypatch.setitem(LOSS, "send", None)
    monkeypatch.setitem(LOSS, "receive", None)
    return LOSS


@pytest.fixture
async def served_image(caddy: CaddyServer) -> str:
    """Caddy serving the streaming tests' motor image (``test_link_ota_stream.IMAGE``) as node 11's."""
    from test_link_ota_stream import IMAGE  # noqa: PLC0415 - that module builds an image on import

    await asyncio.to_thread(
        (caddy.root / "esp32_UC2_canopen_slave_motor_release_motX.bin").write_bytes, IMAGE
    )
    return caddy.url
