"""The direct CAN link itself: opening the bus, its state, and the commands of the update protocol.

What each command does on the bus is FW-main's master's (youseetoo/uc2-esp32 @063e5a6), cited where it
is done; the package's docstring has the overview. This module owns the link's life — opening the bus
and its reader, closing them whatever became of the interface — and its checks before a command (closed,
held, lost, another client on the node); it hands the controller's state to :mod:`.bus_state`, the SDO
work to :mod:`.sdo`, a scan's reads to :mod:`.discovery`, the image to :mod:`.stream`, what was heard to
:mod:`.hearing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import can

from uc2otad.errors import (
    LinkBusyError,
    LinkClosedError,
    LinkOpenError,
    MasterUnsupportedError,
)
from uc2otad.links.can_direct.bus_state import ControllerState
from uc2otad.links.can_direct.discovery import probe_frames, read_node
from uc2otad.links.can_direct.hearing import Hearing
from uc2otad.links.can_direct.objects import (
    BOOT_UP,
    HEARTBEAT_BASE,
    PROOF_OF_LIFE,
    REBOOT,
    SDO_REQUEST_BASE,
)
from uc2otad.links.can_direct.reader import BusReader
from uc2otad.links.can_direct.sdo import SdoChannel, SdoFailedError
from uc2otad.links.can_direct.settings import CLOSE_TIMEOUT, NOTIFIER_TIMEOUT, CanSettings
from uc2otad.links.can_direct.stream import ImageStream, StreamTarget
from uc2otad.links.commands import MAX_NODE_ID, BusHealth, MasterIdentity, ScanResult
from uc2otad.links.holder import LinkHolder
from uc2otad.links.ota_wifi import DEFAULT_WINDOW_MS
from uc2otad.links.protocol import LinkCapability, Progress, StreamResult, WifiOtaResult
from uc2otad.links.replies import JsonObject

_LOGGER = logging.getLogger(__name__)


class CanDirectLink:
    """The CAN bus of :attr:`settings`, with the daemon as its SDO client; :meth:`open` before use.

    Implements :class:`~uc2otad.links.protocol.WifiTriggerLink` without a master: :attr:`identity` is
    always None, :meth:`get_identity` and :meth:`start_wifi_ota` refuse; a scan's ``master`` is None.
    """

    def __init__(self, settings: CanSettings | None = None) -> None:
        self.settings = settings or CanSettings()
        self._bus: can.BusABC | None = None
        self._reader: BusReader | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened_at = 0.0
        self._hearing = Hearing(self.name)
        self._holder = LinkHolder()
        self._controller = ControllerState(self.name, self._on_lost, self._on_change)
        self._sdo = SdoChannel(self.name, lambda: self._controller.lost, self._controller.interface_failed)

    # ---- the UpdateLink protocol ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"can:{self.settings.interface}:{self.settings.channel}"

    @property
    def identity(self) -> MasterIdentity | None:
        """Always None: no master is in the path."""
        return None

    @property
    def capabilities(self) -> frozenset[LinkCapability]:
        return frozenset({LinkCapability.STREAM}) if self.is_open else frozenset()

    @property
    def is_open(self) -> bool:
        return self._bus is not None

    async def get_identity(self) -> MasterIdentity:
        """:raises MasterUnsupportedError: there is no master to ask"""
        raise MasterUnsupportedError(f"{self.name}: no master on a direct CAN link", port=self.name,
                                     code="no_master")  # fmt: skip

    async def open(self) -> None:
        """Open the bus and start listening; no-op when open.

        :raises LinkOpenError: python-can cannot open it (unknown interface, no such channel, no
            permission, no server behind a ``remote`` channel)
        """
        if self._bus is not None:
            return
        settings = self.settings
        loop = asyncio.get_running_loop()
        try:
            bus = await asyncio.to_thread(
                can.Bus, interface=settings.interface, channel=settings.channel, bitrate=settings.bitrate
            )
        except (can.CanError, OSError, ImportError, ValueError, NotImplementedError) as err:
            raise LinkOpenError(f"{self.name}: cannot open the bus: {err}", port=self.name) from err
        network = self._sdo.attach(bus)
        self._loop, self._bus = loop, bus
        self._opened_at = loop.time()
        self._controller.reset()
        self._hearing.clear()
        # canopen's listeners run in the reader thread, where its blocked client waits for them
        self._reader = BusReader(
            bus,
            [*network.listeners, self._on_message],
            self._controller.interface_failed,
            timeout=NOTIFIER_TIMEOUT,
        )
        self._reader.start()
        _LOGGER.info("%s: open at %d bit/s", self.name, settings.bitrate)

    async def close(self) -> None:
        """Leave the bus; safe twice, and never raises: an interface that failed (a python-can-remote
        server gone) is shut down as far as it goes, and one that does not return is left behind after
        :data:`~uc2otad.links.can_direct.settings.CLOSE_TIMEOUT`."""
        bus, reader, self._bus, self._reader = self._bus, self._reader, None, None
        self._sdo.detach()
        if bus is None:
            return
        if reader is not None:
            await asyncio.to_thread(reader.stop, CLOSE_TIMEOUT)
        try:
            await asyncio.wait_for(asyncio.to_thread(_shut_down, bus), CLOSE_TIMEOUT)
        except TimeoutError:
            _LOGGER.warning("%s: the interface did not shut down within %ss", self.name, CLOSE_TIMEOUT)
        _LOGGER.info("%s: closed", self.name)

    async def __aenter__(self) -> CanDirectLink:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def exclusive(self, purpose: str) -> AsyncIterator[None]:
        """Hold the link for one task: meanwhile other tasks' commands raise LinkBusyError.

        :raises LinkBusyError: another task holds the link
        """
        async with self._holder.hold(self.name, purpose):
            yield

    async def scan(self, *, probe_range: tuple[int, int] | None = None) -> ScanResult:
        """The nodes heard within ``node_liveness`` (listening at least ``discovery_wait`` after opening),
        and those of ``probe_range`` that answer an SDO read of 0x1000; each one's objects read.

        :raises ValueError: a probe range outside 1..127
        :raises LinkError: the link is closed, held or lost
        """
        if probe_range is not None and not 1 <= probe_range[0] <= probe_range[1] <= MAX_NODE_ID:
            raise ValueError(f"probe range must lie within 1..{MAX_NODE_ID}, not {probe_range}")
        self._check_usable()
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._opened_at + self.settings.discovery_wait - loop.time()))
        if probe_range is not None:  # who answers is heard (a 0x580 frame) within one SDO timeout
            frames = probe_frames(range(probe_range[0], probe_range[1] + 1))
            await self._sdo.send_and_listen(frames, self.settings.sdo_timeout)
        nodes = []
        for node_id in self._hearing.nodes():
            heard, timeout = self.heard(node_id), self.settings.sdo_timeout
            nodes.append(await read_node(self._sdo, node_id, heard=heard, timeout=timeout))
        return ScanResult(nodes=tuple(nodes), master=None)

    async def restart_node(self, node_id: int) -> None:
        """1 into 0x2507 (``CANopenModule.cpp:1691-1695``); the node answers, then reboots.

        :raises ValueError: ``node_id`` outside 0..127
        :raises MasterUnsupportedError: node 0, the master itself: there is none
        :raises MasterError: the write did not go through (code "SDO write failed", as the master says)
        :raises LinkError: the link is closed, held or lost
        """
        if not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id must be 0..{MAX_NODE_ID}, not {node_id}")
        if node_id == 0:
            raise MasterUnsupportedError(f"{self.name}: no master to restart", port=self.name,
                                         code="no_master", node_id=0)  # fmt: skip
        self._check_usable()
        try:
            await self._sdo.run(
                node_id, self.settings.restart_timeout, lambda sdo: sdo.download(REBOOT, 0, b"\x01")
            )
        except SdoFailedError as failure:
            raise failure.as_error(
                self.name, "SDO write failed", "the node did not take the restart command"
            ) from None
        _LOGGER.info("%s: node %d restarting", self.name, node_id)

    async def bus_health(self) -> BusHealth:
        """The controller's state as error frames or the interface report it. ``node_id`` is 0: the
        daemon has no node id on the bus, it is a client only.

        :raises LinkClosedError: the link is not open
        """
        bus = self._bus
        if bus is None:
            raise LinkClosedError(f"{self.name}: link is closed", port=self.name)
        self._controller.poll(bus)
        return self._controller.health()

    async def stream_ota(
        self,
        node_id: int,
        image: bytes,
        *,
        progress: Progress | None = None,
        on_flashing: Callable[[], None] | None = None,
    ) -> StreamResult:
        """CRC, size, then the image by SDO block download into node ``node_id``; see :mod:`.stream`.

        While another CANopen client is heard talking to the node (see :meth:`other_client_talking`),
        it waits up to ``reachable_timeout`` for that client to fall quiet, and refuses if it does not,
        before anything is sent. Cancelling stops between chunks: the transfer is aborted and size 0
        written (the slave's reset, ``CanOpenOTA.cpp:172-176``), so the node keeps its old image.

        :raises ValueError: a node id outside 1..127, an empty image
        :raises MasterError: the node refused a step (``.code``: the master's code for that step;
            ``.details``: the abort code, the slave's 0x2F03/0x2F05 where it answered)
        :raises NodeTimeoutError: the node did not answer a step in time (a MasterError too)
        :raises LinkBusyError: another task holds the link, or another CANopen client talks to the node
        :raises LinkLostError: bus-off, error-passive or the interface failed meanwhile
        :raises LinkError: the link is closed
        """
        if not 1 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id must be 1..{MAX_NODE_ID}, not {node_id}")
        if not image:
            raise ValueError("the image is empty")
        self._check_usable()
        # a scan of the master's reads the node for a moment; a stream of the master's never pauses
        # that long: wait for quiet, then refuse if it is not
        await self.wait_other_client(node_id, self.settings.reachable_timeout, talking=False)
        self._check_may_stream(node_id)
        crc32 = await asyncio.to_thread(zlib.crc32, image)
        async with self.exclusive(f"streaming to node {node_id}"):
            target = StreamTarget(
                self.name, self.settings, self._sdo, self.wait_heard, self._check_may_stream
            )
            return await ImageStream(target, node_id, image, crc32).run(progress, on_flashing)

    # ---- the WifiTriggerLink protocol: refused -----------------------------------------------------

    async def start_wifi_ota(
        self,
        can_id: int,
        ssid: str,
        password: str,
        *,
        timeout_ms: int = DEFAULT_WINDOW_MS,
        on_accepted: Callable[[JsonObject], None] | None = None,
    ) -> WifiOtaResult:
        """:raises MasterUnsupportedError: the WiFi trigger is a legacy master's command (``uc2-stack.md``
        §2.3), relayed by no CANopen node: there is no master here to relay it; nothing is sent"""
        del ssid, password, timeout_ms, on_accepted  # never logged, never sent
        raise MasterUnsupportedError(
            f"{self.name}: node {can_id}: no master on a direct CAN link to relay the WiFi trigger",
            port=self.name,
            code="no_master",
            node_id=can_id,
        )

    # ---- beyond the protocol ------------------------------------------------------------------------

    def heard(self, node_id: int) -> bool:
        """Heard within ``node_liveness``: the master's ``isNodeReachable``."""
        return self._hearing.heard_within(node_id, self.settings.node_liveness)

    def other_client_talking(self, node_id: int) -> bool:
        """Another CANopen client (the master CAN HAT, a PC tool) sent the node an SDO request within
        ``foreign_sdo_quiet``: the link's own requests are never heard, so any is another's."""
        return self._hearing.other_client_within(node_id, self.settings.foreign_sdo_quiet)

    async def wait_other_client(self, node_id: int, timeout: float, *, talking: bool = True) -> bool:  # noqa: ASYNC109
        """True once :meth:`other_client_talking` is ``talking`` for the node, False after ``timeout``."""
        quiet = self.settings.foreign_sdo_quiet
        try:
            async with asyncio.timeout(timeout):
                if talking:
                    while not self.other_client_talking(node_id):
                        await self._hearing.wait_changed()
                else:
                    await self._hearing.wait_other_client_quiet(node_id, quiet)
        except TimeoutError:
            return False
        return True

    async def wait_heard(self, node_id: int, timeout: float) -> bool:  # noqa: ASYNC109 - the wait is the question
        """True once the node is heard (``waitForNodeReachable``), False after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self.heard(node_id):
                    await self._hearing.wait_changed()
        except TimeoutError:
            return False
        return True

    async def wait_for_boot(self, node_id: int, timeout: float, *, since: float | None = None) -> bool:  # noqa: ASYNC109
        """True once node ``node_id`` sent its boot-up message (0x700 + id, data 0x00) at or after loop
        time ``since`` (default: now); False after ``timeout``. The reboot's evidence: take ``since``
        before the command or stream that makes the node reboot, so a quick boot-up is not missed."""
        start = asyncio.get_running_loop().time() if since is None else since
        try:
            async with asyncio.timeout(timeout):
                while not self._hearing.booted_since(node_id, start):
                    await self._hearing.wait_changed()
        except TimeoutError:
            return False
        return True

    @property
    def lost(self) -> str | None:
        """Why commands are refused with LinkLostError now (bus-off, error-passive, the interface
        failed); None while the bus is usable."""
        return self._controller.lost

    async def wait_lost(self, timeout: float) -> str | None:  # noqa: ASYNC109 - the wait is the question
        """The reason once the bus is lost (:attr:`lost`), None when it is still usable after ``timeout``:
        a daemon watching an idle link learns of a failed interface without sending."""
        try:
            async with asyncio.timeout(timeout):
                while self._controller.lost is None:
                    await self._hearing.wait_changed()
        except TimeoutError:
            return None
        return self._controller.lost

    async def wait_failed(self) -> str:
        """Until the interface fails (a USB adapter unplugged, ``can0`` gone, a python-can-remote server
        stopped), which only reopening the link cures, unlike bus-off; the reason. Wakes on the link's
        own changes only, so an owner may wait for it for as long as the link is open."""
        while not self._controller.failed:
            await self._hearing.wait_changed()
        return self._controller.lost or "the CAN interface failed"

    async def wait_usable(self, timeout: float) -> bool:  # noqa: ASYNC109 - the wait is the question
        """True once the bus is not lost (the controller reported error-active again), False after
        ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while self._controller.lost is not None:
                    await self._hearing.wait_changed()
        except TimeoutError:
            return False
        return True

    # ---- inside --------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._bus is None:
            raise LinkClosedError(f"{self.name}: link is closed", port=self.name)
        self._holder.check(self.name)
        self._controller.poll(self._bus)
        self._sdo.raise_if_lost()

    def _check_may_stream(self, node_id: int) -> None:
        """:meth:`_check_usable`, and the bus etiquette: never stream to a node another client talks to."""
        self._check_usable()
        age = self._hearing.other_client_age(node_id)
        if age is not None and age < self.settings.foreign_sdo_quiet:
            raise LinkBusyError(
                f"{self.name}: node {node_id}: another CANopen client is talking to it (an SDO request "
                f"{age:.1f}s ago, not ours); not streaming until it has been quiet for "
                f"{self.settings.foreign_sdo_quiet}s",
                port=self.name,
            )

    def _on_message(self, message: can.Message) -> None:
        """Every frame but the link's own, in the reader thread."""
        if message.is_error_frame:
            self._controller.error_frame(message)
            return
        if message.is_extended_id:
            return
        can_id = message.arbitration_id
        base, node_id = can_id & 0x780, can_id & 0x7F
        if not node_id:
            return
        if base in PROOF_OF_LIFE:
            boot = base == HEARTBEAT_BASE and bytes(message.data) == BOOT_UP
            self._call_on_loop(self._hearing.on_heard, node_id, boot)
        elif base == SDO_REQUEST_BASE:
            self._call_on_loop(self._hearing.on_other_client, node_id)

    def _on_lost(self) -> None:
        """The bus was just lost (any thread): wake a client waiting for an answer that will not come."""
        self._sdo.wake()

    def _on_change(self) -> None:
        """The controller's state changed (any thread): wake the waits on the loop."""
        self._call_on_loop(self._hearing.notify)

    def _call_on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(callback, *args)


def _shut_down(bus: can.BusABC) -> None:
    """``bus.shutdown()``, never raising: python-can-remote 0.3.0's client cannot close a connection its
    server closed (``BrokenPipeError`` sending its close, ``ValueError``/``OSError`` waiting on the socket
    it closed); what it failed to close is closed here, and the bus marked shut down."""
    try:
        bus.shutdown()
    except Exception as err:  # whatever the interface raises: leaving must not fail
        _LOGGER.info("CAN interface did not shut down cleanly: %s: %s", type(err).__name__, err)
        socket: Any = getattr(bus, "socket", None)  # python-can-remote's RemoteBus.socket
        if socket is not None:
            with contextlib.suppress(OSError):
                socket.close()
        with contextlib.suppress(Exception):
            can.BusABC.shutdown(bus)  # marks it shut down, so that its __del__ does not try again
