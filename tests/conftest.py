"""Fixtures shared by the whole suite: real external programs, and a guard against blocking the loop."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from caddy import CaddyServer
from faultserver import FaultServer


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


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[CaddyServer]:
    """The real Caddy serving an empty folder ``caddy.root`` as ``caddy.url`` (``…/firmware``)."""
    _require_program("caddy")
    workdir = tmp_path / "caddy"
    workdir.mkdir()
    server = CaddyServer(workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def caddy_tls(tmp_path: Path) -> Iterator[CaddyServer]:
    """The real Caddy over https, its certificate issued by its own local CA (``caddy_tls.ca_file``)."""
    _require_program("caddy")
    workdir = tmp_path / "caddy-tls"
    workdir.mkdir()
    server = CaddyServer(workdir, tls=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server
