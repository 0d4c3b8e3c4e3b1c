"""Issue 14, D2: the link that finds the master still in binary mode, left there by a host that stopped.

In binary mode the firmware takes every byte for firmware and ends the stream only after ``rx_timeout``
of silence (``OtaBinaryReceive.cpp:207, 236`` @063e5a6; the simulator's ``ota_rx_timeout``). A pty has no
modem lines, so there the link waits that out without writing; where the port can reset the board, it
does. The virtual master cannot be reset through a pty, so the reset path runs with a link whose modem
lines are modelled as the HAT's auto-reset circuit: the pulse reboots the virtual master.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from ptypeer import PtyPeer
from test_link_ota_stream import IMAGE, NODE, OLD_VERSION, TIMING

from uc2otad.errors import HandshakeError, LinkIOError, LinkLostError
from uc2otad.links.ota_stream import StreamSettings
from uc2otad.links.replies import JsonObject
from uc2otad.links.serial_hat import HatSettings, SerialHatLink
from uc2otad.retry import RetryPolicy
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node

#: the master's rx_timeout, shrunk from 30 s
RX_TIMEOUT = 1.0
#: the link's pace: a handshake every ~0.3 s, well inside the master's rx_timeout, as the daemon's
#: defaults (≤ 4 s + 10 s) are inside the firmware's 30 s
LINK = HatSettings(
    handshake_timeout=0.2,
    read_interval=0.01,
    reconnect=RetryPolicy(attempts=1000, first_delay=0.05, factor=1.0, max_delay=0.1),
    stream=StreamSettings(
        ready_timeout=2.0,
        ack_timeout=2.0,
        flash_timeout=2.0,
        master_rx_timeout=RX_TIMEOUT,
        recovery_margin=1.0,
        reset_boot_timeout=2.0,
    ),
)


@asynccontextmanager
async def microscope(tmp_path: Path) -> AsyncIterator[VirtualMicroscope]:
    config = SimConfig(nodes=(default_node(NODE),), timing=replace(TIMING, ota_rx_timeout=RX_TIMEOUT),
                       serial_link=tmp_path / "tty", socket=False, ota_port=0)  # fmt: skip
    async with VirtualMicroscope(config) as scope:
        yield scope


class ResettableLink(SerialHatLink):
    """A link on a port with modem lines: the pulse resets the virtual master, as RTS pulls the HAT's
    EN low through its auto-reset circuit (uc2-stack.md §2.1: UC2-REST's DTR/RTS pulse resets the board)."""

    def __init__(self, scope: VirtualMicroscope) -> None:
        super().__init__(scope.pty.url, settings=LINK)
        self.resets = 0
        self._scope = scope
        self._boots: set[asyncio.Task[None]] = set()

    async def _reset_through_modem_lines(self) -> bool:
        self._open_port_now()
        self.resets += 1
        boot = asyncio.create_task(self._scope.master.reboot())  # the board boots after the pulse
        self._boots.add(boot)
        boot.add_done_callback(self._boots.discard)
        return True


async def stream_in_flight(link: SerialHatLink) -> asyncio.Task[Any]:
    """A stream of IMAGE to NODE over ``link``, once the master acknowledged its first chunk."""
    acknowledged = asyncio.Event()
    streaming = asyncio.create_task(
        link.stream_ota(NODE, IMAGE, progress=lambda done, size: acknowledged.set())
    )
    async with asyncio.timeout(2):
        await acknowledged.wait()
    return streaming


async def left_in_binary_mode(scope: VirtualMicroscope) -> None:
    """A host that dies mid-stream: "ready", a chunk acknowledged, then its process is gone (no restore)."""
    host = SerialHatLink(scope.pty.url, settings=LINK, reconnect=False)
    await host.open()
    streaming = await stream_in_flight(host)
    host.force_close()  # what SIGKILL leaves: the port closed, nothing more written
    streaming.cancel()
    with contextlib.suppress(asyncio.CancelledError, LinkLostError):
        await streaming
    await host.close()


def last_words(link: SerialHatLink) -> list[Any]:
    """The master's ``ota_status`` errors the link hears from now on."""
    heard: list[Any] = []

    def on_status(message: JsonObject) -> None:
        if message.get("ota_status") == "error":
            heard.append(message.get("error"))

    link.subscribe("ota_status", on_status)
    return heard


async def still_old_and_updatable(scope: VirtualMicroscope, link: SerialHatLink) -> None:
    async with asyncio.timeout(2):  # once the slave has heard the end of the abandoned transfer
        await scope.master.slave(NODE).wait_until(lambda slave: not slave.busy and not slave.transferring)
    node = (await link.scan()).node(NODE)
    assert node is not None and (node.reachable, node.fw_version) == (True, OLD_VERSION)
    await link.stream_ota(NODE, IMAGE)
    async with asyncio.timeout(2):
        await scope.master.slave(NODE).wait_until(lambda booted: booted.running_image == IMAGE)


async def test_without_modem_lines_the_link_stays_silent_past_the_masters_rx_timeout_and_opens(
    tmp_path: Path,
) -> None:
    """D2 The master stays stuck after a crash mid-stream: on a pty, waited out in silence once."""
    async with microscope(tmp_path) as scope:
        await left_in_binary_mode(scope)
        link = SerialHatLink(scope.pty.url, settings=LINK)
        heard = last_words(link)
        with pytest.raises(HandshakeError):
            await link.open()  # the master takes /state_get for firmware: the defect's symptom
        await link.open(recover=True)
        try:
            await still_old_and_updatable(scope, link)
        finally:
            await link.close()
    # the master ended the stream by its own rx_timeout: nothing the link wrote restarted its clock
    assert heard == ["rx_timeout"]


async def test_with_modem_lines_the_link_resets_the_master_and_opens_at_once(tmp_path: Path) -> None:
    """D2 The master stays stuck after a crash mid-stream: where the port has modem lines, a reset."""
    async with microscope(tmp_path) as scope:
        await left_in_binary_mode(scope)
        link = ResettableLink(scope)
        heard = last_words(link)
        await link.open(recover=True)
        try:
            await still_old_and_updatable(scope, link)
        finally:
            await link.close()
    assert link.resets == 1
    assert heard == []  # reset, not waited out


async def test_the_recovery_runs_once_and_a_silent_port_then_fails_at_the_usual_pace() -> None:
    """D2: a board that never answers costs one recovery's wait, not one per reconnect attempt."""
    peer = PtyPeer()
    link = SerialHatLink(peer.path, settings=LINK)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(HandshakeError):
            await link.open(recover=True)
        first = loop.time() - started
        started = loop.time()
        with pytest.raises(HandshakeError):
            await link.open(recover=True)
        second = loop.time() - started
    finally:
        await link.close()
        peer.close()
    assert first >= RX_TIMEOUT + LINK.stream.recovery_margin
    assert second < RX_TIMEOUT


async def test_a_stream_that_loses_the_port_arms_the_recovery_for_the_links_own_reconnect(
    tmp_path: Path,
) -> None:
    """D2: the port gone mid-stream (a USB glitch) leaves the master streaming; the link recovers it."""
    async with microscope(tmp_path) as scope:
        link = SerialHatLink(scope.pty.url, settings=LINK)
        await link.open()
        heard = last_words(link)
        try:
            streaming = await stream_in_flight(link)
            await scope.pty.vanish()
            with pytest.raises(LinkIOError):  # LinkLostError, or the write that found the port gone
                await streaming
            await scope.pty.restore()
            await link.wait_connected(RX_TIMEOUT + LINK.stream.recovery_margin + 2)
            await still_old_and_updatable(scope, link)
        finally:
            await link.close()
    assert heard == ["rx_timeout"]


async def test_a_stream_stopped_while_the_daemon_leaves_resets_the_master_and_waits_for_nothing(
    tmp_path: Path,
) -> None:
    """D9 SIGTERM mid-stream: where the port has modem lines, the leaving link resets the master and
    ends the stream without waiting for the master to boot (the next start's handshake waits for it)."""
    async with microscope(tmp_path) as scope:
        link = ResettableLink(scope)
        await link.open()
        try:
            streaming = await stream_in_flight(link)
            link.leave()
            streaming.cancel()
            with pytest.raises(asyncio.CancelledError):
                await streaming
            stopped_with_master_streaming = scope.master.in_binary_mode
        finally:
            await link.close()
    assert link.resets == 1
    # the reset's reboot had not ended the binary mode yet: the link asked nothing of the booting master
    assert stopped_with_master_streaming
