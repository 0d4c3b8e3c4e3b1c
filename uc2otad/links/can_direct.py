"""A direct CAN link: the daemon on the CAN bus itself, a CANopen SDO client, no master in the path.

The same updates as through the master CAN HAT (``uc2-stack.md`` §2.2, §3.1), but the daemon speaks
CANopen itself: python-can opens the bus by interface name (``socketcan``/``can0`` on a Pi with an
MCP2515 HAT or a USB adapter; ``virtual`` in tests), the ``canopen`` package is the SDO client. What it
does is what FW-main's master does on the bus, read from its source (youseetoo/uc2-esp32 @063e5a6):

- discovery: a node is there when it was heard — its boot-up (0x700 + id, data 0x00) or its heartbeat
  (every 1 s: producer heartbeat time 0x03E8, ``lib/uc2_od/OD.c:38``) — within the last 5 s, the
  master's ``isNodeReachable`` (``main/src/canopen/CANopenModule.cpp:611-633``); then each node's
  SDO reads as the master's scan does them, one by one (``readNodeString``, ``CANopenModule.cpp:1492-1503,
  1605-1610``): build 0x2508, version 0x2500, MAC 0x2509, here after 0x1000 (the one object CiA 301
  makes mandatory: "does it speak CANopen") and with 0x2501 (image name) where the node has it;
- restart: 1 written (U8) to 0x2507 with a 1 s timeout (``CANopenModule.cpp:1691-1695``), "SDO write
  failed" when it does not go through, as the master's reply says;
- an image (``OtaBinaryReceive.cpp:70-118, 263-274``): the node must have been heard within 10 s
  (``:155``, ``slave_unreachable``); CRC-32 into 0x2F02 (``:78``, ``crc_write_failed``), size into
  0x2F01 (``:88``, ``size_write_failed``) — the slave runs ``esp_ota_begin`` inside the write and so
  answers only after erasing the partition (``CanOpenOTA.cpp:202-215``), hence
  :attr:`CanSettings.size_write_timeout` (20 s) instead of canopen's 0.3 s or FW-main's 250 ms
  (``CANopenModule.h:39-45``); a 500 ms settle (``OtaBinaryReceive.cpp:93-96``); the SDO **block**
  download of the image into 0x2F00 with a 15 s timeout (``CANopenModule.cpp:814-816, 854-859``,
  ``sdo_begin_failed``, ``sdo_chunk_failed``); the end of the transfer, in which the slave checks the
  CRC, commits the image and sets the boot partition before it answers (``CanOpenOTA.cpp:296-357``,
  ``sdo_end_failed``); it reboots 2 s later (``:344-354``) with a boot-up message, the evidence
  :meth:`CanDirectLink.wait_for_boot` waits for;
- after a failure, the slave's own status 0x2F03 and error code 0x2F05 (``CanOpenOTA.h:21-40``;
  ``setError`` keeps them readable, ``CanOpenOTA.cpp:150-154``) are read back as FW-main's PC tool
  does (``tools/canopen/uc2_ota_can.py:143-162``) and go into the error's details; after success
  0x2F03 is read once more while the node has not rebooted yet (3, complete; only 0xFF refutes it).

Errors carry the master's codes (``MASTER_ERROR_TEXT`` of :mod:`~uc2otad.links.ota_stream`), so a job's
``error_code`` and ``upload_error`` read the same on either path; an SDO timeout is a
:class:`~uc2otad.errors.NodeTimeoutError` (a ``MasterError`` and a ``TimeoutError``). Bus-off and
error-passive — python-can error frames as SocketCAN delivers them (``linux/can/error.h``), or the
bus's own state where the interface reports one — end what runs with
:class:`~uc2otad.errors.LinkLostError` (``link_lost``) naming the reason, and refuse commands until the
controller reports error-active again or the link is reopened.

Where the sources disagree, the code the master runs wins: the comments ``CanOpenOTA.cpp:10-12``,
``CanOpenOTA.h:10`` and ``CanOpenOTAStreaming.h:28-31`` say size first, then CRC, but the master writes
the CRC first (``OtaBinaryReceive.cpp:77-92``), as ``uc2-stack.md`` §3.1 says; §3.1's "read 0x2F03"
after the transfer is the PC tool's step (and ``CanOpenOTAStreaming.h:31``), the master itself reads
nothing back and trusts the end of the block download (``OtaBinaryReceive.cpp:265-274``); and FW-main's
master writes the size with the 250 ms default (``OtaBinaryReceive.cpp:88``, ``CANopenModule.h:59-61``)
though its own comment asks for more for an erasing handler (``CANopenModule.h:39-42``) — the 20 s here
is the 2026-09 master's, which §3.1 knows from documentation only.

Main constraint: canopen's calls block (a response queue with a timeout), so each runs in a worker
thread (:func:`~uc2otad.aio.run_stoppable`), one SDO transfer at a time like the firmware's single SDO
client; python-can's notifier reads the bus in its own thread and hands what matters to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import logging
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import can
import canopen
from canopen.sdo.exceptions import SdoAbortedError, SdoCommunicationError

from uc2otad.aio import StoppedError, run_stoppable
from uc2otad.errors import (
    ConfigError,
    LinkBusyError,
    LinkClosedError,
    LinkLostError,
    LinkOpenError,
    MasterError,
    MasterUnsupportedError,
    NodeTimeoutError,
)
from uc2otad.links.commands import MAX_NODE_ID, BusHealth, MasterIdentity, NodeInfo, ScanResult
from uc2otad.links.ota_stream import CHUNK_SIZE, MASTER_ERROR_TEXT
from uc2otad.links.protocol import LinkCapability, Progress, StreamResult

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

# ---- settings ------------------------------------------------------------------------------------------

DEFAULT_INTERFACE = "socketcan"
DEFAULT_CHANNEL = "can0"
#: the UC2 bus: 500 kbit/s (``TWAI_TIMING_CONFIG_500KBITS()``, ``uc2-stack.md`` §3.1)
DEFAULT_BITRATE = 500_000
#: an SDO answer: the master's default 250 ms (``CANopenModule.h:39-45`` @063e5a6)
SDO_TIMEOUT = 0.25
#: the size write: the slave erases the partition before it answers (``CanOpenOTA.cpp:202-215``);
#: 20 s, the 2026-09 master's ``SIZE_WRITE_TIMEOUT_MS`` (``uc2-stack.md`` §3.1 via the simulator's profiles)
SIZE_WRITE_TIMEOUT = 20.0
#: the reboot write to 0x2507: ``writeSDO_u8(…, 0x2507, 0, 1, 1000)`` (``CANopenModule.cpp:1691-1692``)
RESTART_TIMEOUT = 1.0
#: every answer of the block download: ``SDO_STREAM_TIMEOUT_MS`` (``CANopenModule.cpp:814-816``)
BLOCK_TIMEOUT = 15.0
#: the pause after the size write (``OtaBinaryReceive.cpp:93-96``): "for the CAN stack to recover"
OTA_SETTLE = 0.5
#: how long a stream waits for a node it has not heard: ``waitForNodeReachable(nodeId, 10000)``
#: (``OtaBinaryReceive.cpp:155``)
REACHABLE_TIMEOUT = 10.0
#: heard within this long counts as there (``isNodeReachable``, ``CANopenModule.cpp:611-633``)
NODE_LIVENESS = 5.0
#: a scan listens at least this long after the link opened: one heartbeat period (1 s, ``OD.c:38``)
#: and a margin
DISCOVERY_WAIT = 1.5
#: seconds the notifier thread blocks per read: bounds how long closing waits for it
NOTIFIER_TIMEOUT = 0.1

# ---- the bus ---------------------------------------------------------------------------------------------

BOOT_UP = b"\x00"
_HEARTBEAT_BASE = 0x700
_SDO_RESPONSE_BASE = 0x580
_SDO_REQUEST_BASE = 0x600
_TPDO1_BASE = 0x180
#: COB-ID bases whose frames prove a node is there (the master's proof of life, §3.1)
_PROOF_OF_LIFE = (_TPDO1_BASE, _SDO_RESPONSE_BASE, _HEARTBEAT_BASE)
#: an SDO upload initiate request (client command specifier 2), as a probe sends it
_UPLOAD_INITIATE = 0x40
#: data bytes per segment of a block download (CiA 301)
SEGMENT_BYTES = 7
#: what canopen says when an answer did not come in time (``SdoClient.read_response``)
_NO_RESPONSE = "No SDO response received"
#: a general-error abort frame put into a waiting SDO client to wake it when the bus is lost
_WAKE_ABORT = bytes([0x80, 0, 0, 0]) + struct.pack("<I", 0x08000000)

# SocketCAN error frames (linux/can/error.h): error classes in the identifier, details in the data
CAN_ERR_CRTL = 0x004
CAN_ERR_BUSOFF = 0x040
CAN_ERR_RESTARTED = 0x100
CAN_ERR_CNT = 0x200
CAN_ERR_CRTL_RX_WARNING = 0x04
CAN_ERR_CRTL_TX_WARNING = 0x08
CAN_ERR_CRTL_RX_PASSIVE = 0x10
CAN_ERR_CRTL_TX_PASSIVE = 0x20
CAN_ERR_CRTL_ACTIVE = 0x40

# ---- the objects (UC2_OD_Indices.h:190-198, CANopenModule.cpp:1248-1254 @063e5a6) ---------------------

DEVICE_TYPE = 0x1000
FIRMWARE_VERSION = 0x2500
IMAGE_NAME = 0x2501
REBOOT = 0x2507
BUILD_TIME = 0x2508
MAC_ADDRESS = 0x2509
OTA_DATA = 0x2F00
OTA_SIZE = 0x2F01
OTA_CRC = 0x2F02
OTA_STATUS = 0x2F03
OTA_RECEIVED = 0x2F04
OTA_ERROR = 0x2F05
#: 0x2F03 (``CanOpenOTA.h:21-28``)
OTA_STATUS_NAMES = {0x00: "idle", 0x01: "receiving", 0x02: "verifying", 0x03: "complete", 0xFF: "error"}
OTA_COMPLETE = 0x03
OTA_STATUS_ERROR = 0xFF
#: 0x2F05 (``CanOpenOTA.h:30-40``)
OTA_ERROR_NAMES = {
    0x00: "none",
    0x01: "no_partition",
    0x02: "begin_failed",
    0x03: "write_failed",
    0x04: "crc_mismatch",
    0x05: "commit_failed",
    0x06: "size_zero",
    0x07: "size_too_large",
}

#: roles by address (``uc2-stack.md`` §3.2) and the master's ``deviceType`` numbers for them
#: (``RoutingTable.h:16``, ``CANopenModule.cpp:1563, 1571, 1590`` @063e5a6); a direct link has no
#: routing table, so the address is all it goes by
_ROLES: tuple[tuple[range, str, int], ...] = (
    (range(10, 20), "motor", 1),
    (range(20, 25), "laser", 2),
    (range(30, 32), "led", 3),
    (range(40, 50), "galvo", 4),
    (range(60, 61), "gpio", 9),
    (range(61, 62), "ptz", 100),
)
#: what a node outside those ranges is called, as the master's probed nodes (``deviceType`` -1)
UNROUTED = ("unrouted", -1)

_HOLDER: contextvars.ContextVar[object | None] = contextvars.ContextVar("can_direct_holder", default=None)


@dataclass(frozen=True)
class CanSettings:
    """The ``[can]`` section: which bus, and every timeout of the exchange (the defaults: the firmware's)."""

    #: any python-can interface by name: ``socketcan``, ``pcan``, ``gs_usb``, ``slcan``, ``virtual``…
    interface: str = DEFAULT_INTERFACE
    channel: str = DEFAULT_CHANNEL
    bitrate: int = DEFAULT_BITRATE
    sdo_timeout: float = SDO_TIMEOUT
    size_write_timeout: float = SIZE_WRITE_TIMEOUT
    restart_timeout: float = RESTART_TIMEOUT
    block_timeout: float = BLOCK_TIMEOUT
    ota_settle: float = OTA_SETTLE
    reachable_timeout: float = REACHABLE_TIMEOUT
    node_liveness: float = NODE_LIVENESS
    discovery_wait: float = DISCOVERY_WAIT

    def __post_init__(self) -> None:
        if not self.interface:
            raise ConfigError("can.interface", "must name a python-can interface")
        if self.bitrate <= 0:
            raise ConfigError("can.bitrate", f"must be positive, not {self.bitrate}")
        for key in ("sdo_timeout", "size_write_timeout", "restart_timeout", "block_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"can.{key}", f"must be positive, not {getattr(self, key)}")
        for key in ("ota_settle", "reachable_timeout", "node_liveness", "discovery_wait"):
            if getattr(self, key) < 0:
                raise ConfigError(f"can.{key}", f"must not be negative, not {getattr(self, key)}")


@dataclass(frozen=True)
class BusError:
    """What an error frame said about the controller: its state and, when it sends them, its counters."""

    #: "bus_off", "error_passive", "error_warning", "error_active", "restarted", or None (no state news)
    state: str | None
    tx_errors: int | None = None
    rx_errors: int | None = None


def decode_error_frame(message: can.Message) -> BusError:
    """A SocketCAN error frame (``linux/can/error.h``) as the controller state it reports."""
    classes, data = message.arbitration_id, bytes(message.data)
    counters = (data[6], data[7]) if classes & CAN_ERR_CNT and len(data) >= 8 else (None, None)
    state: str | None = None
    if classes & CAN_ERR_BUSOFF:
        state = "bus_off"
    elif classes & CAN_ERR_CRTL and len(data) > 1:
        status = data[1]
        if status & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
            state = "error_passive"
        elif status & CAN_ERR_CRTL_ACTIVE:
            state = "error_active"
        elif status & (CAN_ERR_CRTL_RX_WARNING | CAN_ERR_CRTL_TX_WARNING):
            state = "error_warning"
    elif classes & CAN_ERR_RESTARTED:
        state = "restarted"
    return BusError(state, *counters)


def role_for(can_id: int) -> tuple[str, int]:
    """The role and the master's ``deviceType`` the address gives ``can_id``."""
    return next(((role, number) for ids, role, number in _ROLES if can_id in ids), UNROUTED)


class CanDirectLink:
    """The CAN bus of :attr:`settings`, with the daemon as its SDO client; :meth:`open` before use.

    Implements :class:`~uc2otad.links.protocol.UpdateLink` without a master: :attr:`identity` is always
    None and :meth:`get_identity` refuses; a scan's ``master`` is None.
    """

    def __init__(self, settings: CanSettings | None = None) -> None:
        self.settings = settings or CanSettings()
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._network: canopen.Network | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened_at = 0.0
        #: node id → loop time it was last heard
        self._heard: dict[int, float] = {}
        #: node id → loop times of its boot-up messages since the link opened
        self._boots: dict[int, list[float]] = {}
        self._changed = asyncio.Event()
        #: why the bus is unusable (bus-off, error-passive); written by the notifier thread too
        self._lost: str | None = None
        self._bus_state = "error_active"
        self._tx_errors: int | None = None
        self._rx_errors: int | None = None
        self._bus_off_count = 0
        self._holder: tuple[str, object] | None = None
        self._sdo_lock = asyncio.Lock()
        #: the node whose SDO transfer is under way (worker thread), to wake it when the bus is lost
        self._transfer_node: Any = None

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

        :raises LinkOpenError: python-can cannot open it (unknown interface, no such channel, no permission)
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
        network = canopen.Network(bus)
        self._loop, self._network, self._bus = loop, network, bus
        self._opened_at = loop.time()
        self._lost = None
        self._bus_state = "error_active"
        # no loop: canopen's listeners run in the notifier thread, where its blocked client waits for them
        self._notifier = can.Notifier(bus, [*network.listeners, self._on_message], timeout=NOTIFIER_TIMEOUT)
        _LOGGER.info("%s: open at %d bit/s", self.name, settings.bitrate)

    async def close(self) -> None:
        """Leave the bus; safe twice."""
        bus, notifier, self._bus, self._notifier, self._network = self._bus, self._notifier, None, None, None
        if bus is None:
            return
        if notifier is not None:
            await asyncio.to_thread(notifier.stop, 2.0)
        await asyncio.to_thread(bus.shutdown)
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
        if self._holder is not None:
            raise LinkBusyError(f"{self.name}: link is held for {self._holder[0]}", port=self.name)
        token = object()
        self._holder = (purpose, token)
        context = _HOLDER.set(token)
        try:
            yield
        finally:
            _HOLDER.reset(context)
            self._holder = None

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
        if probe_range is not None:
            await self._probe(range(probe_range[0], probe_range[1] + 1))
        nodes = []
        for node_id in sorted(self._heard):
            nodes.append(await self._scan_entry(node_id))
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
            await self._sdo(
                node_id, self.settings.restart_timeout, lambda sdo: sdo.download(REBOOT, 0, b"\x01")
            )
        except _SdoFailedError as failure:
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
        self._poll_state(bus)
        return BusHealth(
            node_id=0,
            can_role=None,
            nmt_state=None,
            nmt_state_name=None,
            bus_state=self._bus_state,
            tx_errors=self._tx_errors,
            rx_errors=self._rx_errors,
            tx_failed=None,
            bus_off_count=self._bus_off_count,
        )

    async def stream_ota(
        self,
        node_id: int,
        image: bytes,
        *,
        progress: Progress | None = None,
        on_flashing: Callable[[], None] | None = None,
    ) -> StreamResult:
        """CRC, size, then the image by SDO block download into node ``node_id``; see the module.

        Cancelling stops between chunks: the transfer is aborted and size 0 written (the slave's reset,
        ``CanOpenOTA.cpp:172-176``), so the node keeps its old image.

        :raises ValueError: a node id outside 1..127, an empty image
        :raises MasterError: the node refused a step (``.code``: the master's code for that step;
            ``.details``: the abort code, the slave's 0x2F03/0x2F05 where it answered)
        :raises NodeTimeoutError: the node did not answer a step in time (a MasterError too)
        :raises LinkBusyError: another task holds the link
        :raises LinkLostError: bus-off or error-passive meanwhile
        :raises LinkError: the link is closed
        """
        if not 1 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id must be 1..{MAX_NODE_ID}, not {node_id}")
        if not image:
            raise ValueError("the image is empty")
        self._check_usable()
        crc32 = await asyncio.to_thread(zlib.crc32, image)
        async with self.exclusive(f"streaming to node {node_id}"):
            stream = _Stream(self, node_id, image, crc32)
            return await stream.run(progress, on_flashing)

    # ---- beyond the protocol ------------------------------------------------------------------------

    def heard(self, node_id: int) -> bool:
        """Heard within ``node_liveness``: the master's ``isNodeReachable``."""
        heard = self._heard.get(node_id)
        return heard is not None and asyncio.get_running_loop().time() - heard < self.settings.node_liveness

    async def wait_heard(self, node_id: int, timeout: float) -> bool:  # noqa: ASYNC109 - the wait is the question
        """True once the node is heard (``waitForNodeReachable``), False after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self.heard(node_id):
                    await self._wait_changed()
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
                while not any(booted >= start for booted in self._boots.get(node_id, ())):
                    await self._wait_changed()
        except TimeoutError:
            return False
        return True

    async def wait_usable(self, timeout: float) -> bool:  # noqa: ASYNC109 - the wait is the question
        """True once the bus is not lost (the controller reported error-active again), False after
        ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while self._lost is not None:
                    await self._wait_changed()
        except TimeoutError:
            return False
        return True

    # ---- inside --------------------------------------------------------------------------------------

    async def _wait_changed(self) -> None:
        changed = self._changed
        await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _check_usable(self) -> None:
        if self._bus is None:
            raise LinkClosedError(f"{self.name}: link is closed", port=self.name)
        if self._holder is not None and _HOLDER.get() is not self._holder[1]:
            raise LinkBusyError(f"{self.name}: link is held for {self._holder[0]}", port=self.name)
        self._poll_state(self._bus)
        if self._lost is not None:
            raise LinkLostError(f"{self.name}: {self._lost}", port=self.name)

    def _poll_state(self, bus: can.BusABC) -> None:
        """The interface's own state, where it reports one (python-can's default says ACTIVE)."""
        try:
            state = bus.state
        except (can.CanError, NotImplementedError):
            return
        if state is can.BusState.ERROR and self._lost is None:
            self._set_lost("bus_off", "the interface reports the bus in ERROR state (bus-off)")

    def _on_message(self, message: can.Message) -> None:
        """Every frame, in the notifier thread."""
        if message.is_error_frame:
            error = decode_error_frame(message)
            if error.state in ("bus_off", "error_passive"):
                text = "bus-off" if error.state == "bus_off" else "error-passive"
                self._set_lost(
                    error.state,
                    f"the CAN controller went {text} (error frame 0x{message.arbitration_id:03X})",
                )
            self._call_on_loop(self._on_bus_error, error)
            return
        can_id = message.arbitration_id
        base, node_id = can_id & 0x780, can_id & 0x7F
        if base in _PROOF_OF_LIFE and node_id and not message.is_extended_id:
            boot = base == _HEARTBEAT_BASE and bytes(message.data) == BOOT_UP
            self._call_on_loop(self._on_heard, node_id, boot)

    def _set_lost(self, state: str, reason: str) -> None:
        """Bus-off or error-passive (any thread): what runs ends, commands refuse until error-active."""
        self._lost = reason
        _LOGGER.error("%s: %s", self.name, reason)
        node = self._transfer_node
        if node is not None:  # wake a client that waits for an answer that will not come
            node.sdo.responses.put(_WAKE_ABORT)
        self._call_on_loop(self._on_state, state)

    def _call_on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(callback, *args)

    def _on_state(self, state: str) -> None:
        if state == "bus_off":
            self._bus_off_count += 1
        self._bus_state = state
        self._notify()

    def _on_bus_error(self, error: BusError) -> None:
        if error.tx_errors is not None:
            self._tx_errors, self._rx_errors = error.tx_errors, error.rx_errors
        if error.state in ("error_active", "restarted"):
            self._bus_state = "error_active"
            if self._lost is not None:
                _LOGGER.info("%s: the controller is error-active again", self.name)
            self._lost = None
        elif error.state == "error_warning":
            self._bus_state = error.state
        self._notify()

    def _on_heard(self, node_id: int, boot: bool) -> None:
        now = asyncio.get_running_loop().time()
        self._heard[node_id] = now
        if boot:
            _LOGGER.info("%s: boot-up of node %d", self.name, node_id)
            self._boots.setdefault(node_id, []).append(now)
        self._notify()

    async def _probe(self, node_ids: Sequence[int]) -> None:
        """Ask every id at once for 0x1000 and wait one SDO timeout: who answers is heard (a 0x580 frame)."""
        network = self._network
        assert network is not None
        request = bytes([_UPLOAD_INITIATE]) + struct.pack("<HB", DEVICE_TYPE, 0) + bytes(4)
        async with self._sdo_lock:
            await asyncio.to_thread(
                _send_each, network, [(_SDO_REQUEST_BASE + node_id, request) for node_id in node_ids]
            )
            await asyncio.sleep(self.settings.sdo_timeout)

    async def _scan_entry(self, node_id: int) -> NodeInfo:
        role, device_type = role_for(node_id)
        if not self.heard(node_id):
            return NodeInfo(node_id, device_type, role, reachable=False, status="unreachable")
        texts: dict[int, str | None] = {}
        speaks_canopen = False
        try:
            await self._sdo(node_id, self.settings.sdo_timeout, lambda sdo: sdo.upload(DEVICE_TYPE, 0))
        except _SdoFailedError as failure:
            _LOGGER.info("%s: node %d heard but no CANopen answer: %s", self.name, node_id, failure)
        else:
            speaks_canopen = True
            for index in (BUILD_TIME, FIRMWARE_VERSION, MAC_ADDRESS, IMAGE_NAME):
                texts[index] = await self._read_text(node_id, index)
        return NodeInfo(
            can_id=node_id,
            device_type=device_type,
            role=role,
            reachable=True,
            status="idle",
            build=texts.get(BUILD_TIME),
            fw_version=texts.get(FIRMWARE_VERSION),
            fw_image=texts.get(IMAGE_NAME),
            mac=texts.get(MAC_ADDRESS),
            answered=any(texts.get(index) for index in (BUILD_TIME, FIRMWARE_VERSION, MAC_ADDRESS)),
            canopen=speaks_canopen,
        )

    async def _read_text(self, node_id: int, index: int) -> str | None:
        """A VISIBLE_STRING object, None when the node has none or does not answer."""
        try:
            data: bytes = await self._sdo(
                node_id, self.settings.sdo_timeout, lambda sdo: sdo.upload(index, 0)
            )
        except _SdoFailedError:
            return None
        return data.rstrip(b"\0").decode("utf-8", errors="replace") or None

    async def _read_number(self, node_id: int, index: int) -> int | None:
        """A small unsigned object, None when it does not come."""
        try:
            data: bytes = await self._sdo(
                node_id, self.settings.sdo_timeout, lambda sdo: sdo.upload(index, 0)
            )
        except _SdoFailedError:
            return None
        return int.from_bytes(data, "little") if data else None

    async def _sdo(self, node_id: int, timeout: float, work: Callable[[Any], T]) -> T:  # noqa: ASYNC109
        """``work(sdo_client)`` for the node in a worker thread, ``timeout`` for each answer; the
        transfers one at a time. A cancelled caller waits for the call (bounded by ``timeout``).

        :raises _SdoFailedError: no answer, or an abort
        :raises LinkLostError: the bus was lost meanwhile
        """
        async with self._sdo_lock:
            return await run_stoppable(lambda _stop: self._transfer(node_id, timeout, work))

    def _transfer(self, node_id: int, timeout: float, work: Callable[[Any], T]) -> T:
        """In a worker thread: ``work`` on the node's SDO client, its failures as :class:`_SdoFailedError`."""
        network = self._network
        if network is None:
            raise LinkClosedError(f"{self.name}: link is closed", port=self.name)
        node: Any = network.nodes.get(node_id) or network.add_node(node_id)  # no EDS: objects by index only
        node.sdo.RESPONSE_TIMEOUT = timeout
        self._transfer_node = node
        try:
            return work(node.sdo)
        except SdoAbortedError as err:
            self._raise_if_lost()
            raise _SdoFailedError(node_id, f"aborted: {err}", abort_code=err.code) from err
        except SdoCommunicationError as err:
            self._raise_if_lost()
            if str(err) == _NO_RESPONSE:
                raise _SdoFailedError(node_id, f"no answer within {timeout}s", timed_out=True) from err
            raise _SdoFailedError(node_id, f"unexpected answer: {err}") from err
        except can.CanError as err:
            self._raise_if_lost()
            raise LinkLostError(f"{self.name}: sending failed: {err}", port=self.name) from err
        finally:
            self._transfer_node = None

    def _raise_if_lost(self) -> None:
        if self._lost is not None:
            raise LinkLostError(f"{self.name}: {self._lost}", port=self.name)


class _SdoFailedError(Exception):
    """An SDO transfer did not go through: no answer in time, an abort, or an answer out of protocol."""

    def __init__(
        self, node_id: int, reason: str, *, abort_code: int | None = None, timed_out: bool = False
    ) -> None:
        super().__init__(f"node {node_id}: {reason}")
        self.node_id = node_id
        self.reason = reason
        self.abort_code = abort_code
        self.timed_out = timed_out

    def as_error(
        self, port: str, code: str, text: str | None = None, details: dict[str, Any] | None = None
    ) -> MasterError:
        """The master's error for the step that failed: ``code`` as the master names it."""
        facts = dict(details or {})
        if self.abort_code is not None:
            facts["abort_code"] = f"0x{self.abort_code:08X}"
        words = text or MASTER_ERROR_TEXT.get(code, "the node refused")
        listed = "".join(f" {key}={value}" for key, value in facts.items())
        message = f"{port}: node {self.node_id}: {words} (error={code}{listed}; {self.reason})"
        kind = NodeTimeoutError if self.timed_out else MasterError
        return kind(message, port=port, code=code, node_id=self.node_id, details=facts)


class _Stream:
    """One image into one node over a held link."""

    def __init__(self, link: CanDirectLink, node_id: int, image: bytes, crc32: int) -> None:
        self._link = link
        self._node_id = node_id
        self._image = image
        self._crc32 = crc32
        self._settings = link.settings
        self._name = f"{link.name}: node {node_id}"

    async def run(self, progress: Progress | None, on_flashing: Callable[[], None] | None) -> StreamResult:
        link, settings, node_id, size = self._link, self._settings, self._node_id, len(self._image)
        loop = asyncio.get_running_loop()
        started = loop.time()
        _LOGGER.info("%s: streaming size=%d crc32=0x%08X", self._name, size, self._crc32)
        if not await link.wait_heard(node_id, settings.reachable_timeout):
            raise MasterError(
                f"{self._name}: {MASTER_ERROR_TEXT['slave_unreachable']} "
                f"within {settings.reachable_timeout}s (error=slave_unreachable)",
                port=link.name,
                code="slave_unreachable",
                node_id=node_id,
            )
        link._check_usable()
        await self._write_u32(OTA_CRC, self._crc32, settings.sdo_timeout, "crc_write_failed")
        await self._write_u32(OTA_SIZE, size, settings.size_write_timeout, "size_write_failed")
        await asyncio.sleep(settings.ota_settle)
        chunks = await self._push(progress, on_flashing)
        await self._confirm()
        seconds = loop.time() - started
        _LOGGER.info("%s: success in %0.3fs (%0.1f KiB/s)", self._name, seconds, size / 1024 / seconds)
        return StreamResult(node_id, size, self._crc32, chunks, seconds)

    async def _confirm(self) -> None:
        """0x2F03 once more, as FW-main's PC tool reads it (``uc2_ota_can.py:143-162``): the end of the
        transfer was answered only after the commit (``CanOpenOTA.cpp:339-357``), so only an error
        status refutes it; no answer or idle means the node is rebooting already.

        :raises MasterError: the node reports an OTA error (``sdo_end_failed``, its 0x2F05 in the details)
        """
        status = await self._link._read_number(self._node_id, OTA_STATUS)
        if status == OTA_COMPLETE:
            return
        if status != OTA_STATUS_ERROR:
            _LOGGER.info("%s: status after the image: %s (rebooting)", self._name, status)
            return
        details = await self._slave_state()
        raise MasterError(
            f"{self._name}: {MASTER_ERROR_TEXT['sdo_end_failed']} (error=sdo_end_failed "
            f"ota_error={details.get('ota_error')})",
            port=self._link.name,
            code="sdo_end_failed",
            node_id=self._node_id,
            details=details,
        )

    async def _write_u32(self, index: int, value: int, timeout: float, code: str) -> None:  # noqa: ASYNC109
        data = struct.pack("<I", value)
        try:
            await self._link._sdo(self._node_id, timeout, lambda sdo: sdo.download(index, 0, data))
        except _SdoFailedError as failure:
            raise failure.as_error(self._link.name, code, details=await self._slave_state()) from None

    async def _slave_state(self) -> dict[str, Any]:
        """0x2F03 and 0x2F05 as the slave reports them after a failure (those that answer)."""
        facts: dict[str, Any] = {}
        status = await self._link._read_number(self._node_id, OTA_STATUS)
        if status is not None:
            facts["ota_status"] = OTA_STATUS_NAMES.get(status, str(status))
        error = await self._link._read_number(self._node_id, OTA_ERROR)
        if error:
            facts["ota_error"] = OTA_ERROR_NAMES.get(error, str(error))
        return facts

    async def _push(self, progress: Progress | None, on_flashing: Callable[[], None] | None) -> int:
        """The block download: initiate, the image chunk by chunk, the end. Returns the chunks sent."""
        link, settings, size = self._link, self._settings, len(self._image)
        loop = asyncio.get_running_loop()
        state = _PushState()

        def report(acknowledged: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, acknowledged, size)

        def flashing() -> None:
            if on_flashing is not None:
                loop.call_soon_threadsafe(on_flashing)

        def work(stop: threading.Event) -> int:
            return link._transfer(
                self._node_id,
                settings.block_timeout,
                lambda sdo: self._blocking_push(sdo, stop, state, report, flashing),
            )

        try:
            async with link._sdo_lock:
                return await run_stoppable(work)
        except _SdoFailedError as failure:
            code = {"begin": "sdo_begin_failed", "data": "sdo_chunk_failed"}.get(state.step, "sdo_end_failed")
            raise failure.as_error(link.name, code, details=await self._slave_state()) from None
        except asyncio.CancelledError:
            await self._reset()
            raise

    def _blocking_push(
        self,
        sdo: Any,
        stop: threading.Event,
        state: _PushState,
        report: Callable[[int], None],
        flashing: Callable[[], None],
    ) -> int:
        """In a worker thread: canopen's block download stream, fed 7 bytes at a time, checked per chunk."""
        image, size = self._image, len(self._image)
        stream = sdo.open(OTA_DATA, 0, "wb", size=size, block_transfer=True, buffering=0)
        state.step = "data"
        chunks = 0
        try:
            for offset in range(0, size, SEGMENT_BYTES):
                stream.write(image[offset : offset + SEGMENT_BYTES])  # the last one ends the transfer
                sent = min(offset + SEGMENT_BYTES, size)
                if sent // CHUNK_SIZE == offset // CHUNK_SIZE and sent < size:
                    continue
                chunks += 1  # a chunk's worth (the master's 4 KB) went out: report, check, go on
                report(_acknowledged(stream))
                if stop.is_set():
                    raise StoppedError
                self._link._raise_if_lost()
            flashing()
            state.step = "end"
            stream.close()  # the end frame with the CRC; the slave checks and commits before it answers
        except SdoAbortedError:
            io.RawIOBase.close(stream)  # the node ended it: no end frame from the collector later
            raise
        except BaseException:
            if not stream.closed:
                io.RawIOBase.close(stream)
                with contextlib.suppress(can.CanError):
                    sdo.abort()
            raise
        return chunks

    async def _reset(self) -> None:
        """The host gave up mid-stream: size 0 resets the slave's OTA at once (``CanOpenOTA.cpp:172-176``).
        Never raises but CancelledError; the slave's 30 s watchdog does the same if this does not arrive."""
        data = struct.pack("<I", 0)
        with contextlib.suppress(_SdoFailedError, LinkLostError, LinkClosedError):
            await self._link._sdo(
                self._node_id, self._settings.sdo_timeout, lambda sdo: sdo.download(OTA_SIZE, 0, data)
            )


def _send_each(network: canopen.Network, frames: list[tuple[int, bytes]]) -> None:
    for cob_id, data in frames:
        network.send_message(cob_id, data)


@dataclass
class _PushState:
    #: which part of the block download runs: the initiate, the data, the end (the master's codes differ)
    step: str = "begin"


def _acknowledged(stream: Any) -> int:
    """Bytes of ``stream`` whose sub-blocks the node acknowledged: those sent, less the sub-block still
    open. canopen 2.4 exposes no acknowledged count; its segments waiting for an acknowledgement are in
    ``_current_block`` (7 bytes each but the last)."""
    pending = getattr(stream, "_current_block", [])
    return max(0, int(stream.tell()) - sum(len(segment) for segment in pending))
