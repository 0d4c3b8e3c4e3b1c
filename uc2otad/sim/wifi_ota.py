"""The WiFi method of legacy firmware: the master relays the command, the slave joins WiFi, runs ArduinoOTA.

Written from ``uc2-stack.md`` §2.3 and §3.3:

- host → master: ``/can_act`` with ``ota`` (answered at once with the int reply, in :mod:`.master`);
- master → slave: ``OTA_START`` (0x60) over ISO-TP on the slave's id: ``char ssid[32]; char
  password[64]; uint32_t timeout_ms`` (little-endian), 101 bytes with the type;
- the slave calls ``WiFi.begin()`` and waits up to 30 s *inside its CAN dispatch* (it hears nothing
  else meanwhile), answers ``OTA_ACK`` (0x61: status, canId, ip[4]) to node 1, and only then starts
  mDNS and ArduinoOTA (``can_controller.cpp:2377`` vs ``:2451`` @14fa3e3): an invitation the host sends
  in the ``ota_listen_delay`` between is lost. It serves as ``UC2-CAN-<id in hex>`` until its window
  ends (at least 300 s; 0 means 3,000,000 ms), then reboots. Asked again with the same SSID while
  serving, it only answers success again;
- master → host: ``{"ota":{"canId":…,"status":…,"statusMsg":…,"ip":…,"hostname":…}}``, framed; status
  0 "Success", 1 "WiFi connection failed", 2 "OTA start failed", with ip "0.0.0.0" on failure.

The virtual WiFi has the microscope's SSID and password; the slave's ArduinoOTA is the board simulator
(:class:`~uc2otad.sim.ota_board.OtaBoard`) on the slave's own 127.0.0.(100+id). When an upload ends
well the slave reboots into the new image.

Main constraint: the password travels in clear over CAN, as on the real bus, and is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import can

from uc2otad.sim.can_bus import CanPort, SimCanBus
from uc2otad.sim.isotp import IsoTpError, IsoTpSender, Reassembler
from uc2otad.sim.nodes import NodeFaults
from uc2otad.sim.ota_board import ARDUINO_OTA_PORT, BoardFaults, OtaBoard, OtaBoardConfig
from uc2otad.sim.timing import MasterTiming

_LOGGER = logging.getLogger(__name__)

#: the virtual WiFi's credentials unless configured (CONTRACT.md §5: documented, not secret)
DEFAULT_SSID = "uc2-lab"
DEFAULT_PASSWORD = "uc2-lab-pass"
#: message types of FW-legacy ``can_messagetype.h``
OTA_START = 0x60
OTA_ACK = 0x61
#: the master's node id: where slaves send their answers
MASTER_NODE_ID = 1
#: FW-legacy's reading of a 0 ms window: 3,000,000 ms
ZERO_WINDOW = 3000.0
#: the address an unsuccessful slave reports
NO_ADDRESS = "0.0.0.0"
_START = struct.Struct("<B32s64sI")
_ACK = struct.Struct("<BBB4s")


class WifiStatus(IntEnum):
    """``OTA_ACK`` status."""

    JOINED = 0
    WIFI_FAILED = 1
    OTA_FAILED = 2


STATUS_TEXT = {
    WifiStatus.JOINED: "Success",
    WifiStatus.WIFI_FAILED: "WiFi connection failed",
    WifiStatus.OTA_FAILED: "OTA start failed",
}


@dataclass(frozen=True)
class WifiNetwork:
    """The virtual WiFi the slaves can join."""

    ssid: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class OtaStart:
    """``OTA_START``: join this WiFi and serve ArduinoOTA for ``timeout_ms``."""

    ssid: str
    password: str = field(repr=False)
    timeout_ms: int = 300_000

    def encode(self) -> bytes:
        """The C struct; strings are cut to fit with their NUL, as ``strncpy`` into the fields would."""
        return _START.pack(OTA_START, self.ssid.encode()[:31], self.password.encode()[:63], self.timeout_ms)

    @classmethod
    def decode(cls, message: bytes) -> OtaStart | None:
        if len(message) != _START.size or message[0] != OTA_START:
            return None
        _, ssid, password, timeout_ms = _START.unpack(message)
        return cls(_c_string(ssid), _c_string(password), timeout_ms)


@dataclass(frozen=True)
class OtaAck:
    """``OTA_ACK``: how the slave's attempt went."""

    status: WifiStatus
    can_id: int
    ip: str = NO_ADDRESS

    def encode(self) -> bytes:
        return _ACK.pack(OTA_ACK, self.status, self.can_id, bytes(int(part) for part in self.ip.split(".")))

    @classmethod
    def decode(cls, message: bytes) -> OtaAck | None:
        if len(message) != _ACK.size or message[0] != OTA_ACK:
            return None
        _, status, can_id, address = _ACK.unpack(message)
        try:
            return cls(WifiStatus(status), can_id, ".".join(str(part) for part in address))
        except ValueError:
            return None

    def event(self) -> dict[str, Any]:
        """What the master writes to the host for this answer."""
        return {
            "ota": {
                "canId": self.can_id,
                "status": int(self.status),
                "statusMsg": STATUS_TEXT[self.status],
                "ip": self.ip,
                "hostname": hostname_of(self.can_id),
            }
        }


def hostname_of(can_id: int) -> str:
    """The master formats ``"UC2-CAN-%X.local"``: node 11 is ``UC2-CAN-B.local`` (§7)."""
    return f"UC2-CAN-{can_id:X}.local"


def _c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Joined:
    """A session acknowledged but not yet listening: what :meth:`WifiOtaService.listen` starts."""

    request: OtaStart
    faults: NodeFaults
    running_image: bytes


class WifiOtaService:
    """One slave's WiFi OTA: join, ArduinoOTA on the slave's address, reboot when it is over.

    :param on_finished: called once the session is over, with the image an upload delivered (the slave
        reboots into it) or None (the window ended: the slave reboots its old image)
    """

    def __init__(
        self,
        can_id: int,
        ip: str,
        network: WifiNetwork,
        timing: MasterTiming,
        *,
        ota_port: int = ARDUINO_OTA_PORT,
        ota_password: str | None = None,
        on_finished: Callable[[bytes | None], None],
        on_fault_struck: Callable[[], None] = lambda: None,
    ) -> None:
        """
        :param ota_password: the password its ArduinoOTA asks for; None: none. FW-legacy calls no
            ``ArduinoOTA.setPassword`` (``can_controller.cpp:2395-2463`` @14fa3e3: hostname and mDNS
            only), so this is a lab's build that adds one (:class:`~uc2otad.sim.nodes.NodeSpec`)
        :param on_fault_struck: an upload failed while transfer faults were set (they may clear now)
        """
        self.can_id = can_id
        self.ip = ip
        self._network = network
        self._timing = timing
        self._ota_port = ota_port
        self._ota_password = ota_password
        self._on_finished = on_finished
        self._on_fault_struck = on_fault_struck
        #: the ArduinoOTA service while the slave serves one (from :meth:`listen` on)
        self.board: OtaBoard | None = None
        self._ssid = ""
        self._watch: asyncio.Task[None] | None = None
        #: acknowledged, not yet listening
        self._joined: _Joined | None = None
        #: counts :meth:`stop` calls: a session stopped while it was about to listen stays stopped
        self._stops = 0

    async def start(self, request: OtaStart, faults: NodeFaults, running_image: bytes) -> OtaAck:
        """Join the WiFi ``request`` names; takes as long as joining does. Returns the ack to send; after
        a success the slave starts ArduinoOTA with :meth:`listen` (FW-legacy ``handleOtaCommand``,
        ``can_controller.cpp:2305-2467`` @14fa3e3)."""
        if self.board is not None and request.ssid == self._ssid:
            return OtaAck(WifiStatus.JOINED, self.can_id, self.ip)  # :2324-2331
        await self.stop()
        joins = (
            not faults.wifi_refused
            and request.ssid == self._network.ssid
            and request.password == self._network.password
        )
        _LOGGER.info("node %d: joining WiFi ssid=%s", self.can_id, request.ssid)
        await asyncio.sleep(self._timing.wifi_join_time if joins else self._timing.wifi_join_timeout)
        if not joins:
            _LOGGER.info("node %d: WiFi connection failed ssid=%s", self.can_id, request.ssid)
            return OtaAck(WifiStatus.WIFI_FAILED, self.can_id)
        if faults.ota_start_fails:
            # FW-legacy sends status 2 only for null credentials (:2307-2311); the fault stands for it
            _LOGGER.warning("node %d: OTA start failed (fault)", self.can_id)
            return OtaAck(WifiStatus.OTA_FAILED, self.can_id)
        self._joined = _Joined(request, faults, running_image)
        return OtaAck(WifiStatus.JOINED, self.can_id, self.ip)  # :2377, before mDNS and ArduinoOTA

    async def listen(self) -> None:
        """After the success ack, still in the CAN dispatch: mDNS, ``ArduinoOTA.begin()`` (which binds the
        UDP port) ``ota_listen_delay`` later, then serving (``can_controller.cpp:2379-2463`` @14fa3e3).
        Returns at once when :meth:`start` acknowledged no new session."""
        joined, self._joined = self._joined, None
        if joined is None:
            return
        stops = self._stops
        await asyncio.sleep(self._timing.ota_listen_delay)
        if stops != self._stops:
            return  # stopped meanwhile (a reboot, power off)
        board = OtaBoard(
            OtaBoardConfig(
                ip=self.ip,
                port=self._ota_port,
                reboot_time=0.0,
                firmware=joined.running_image,
                password=self._ota_password,
            ),
            faults=self._board_faults(joined.faults),
        )
        serving: OtaBoard | None = board
        try:
            await board.start()
        except OSError as err:  # ArduinoOTA.begin() logs "udp bind failed" and returns; the window runs
            _LOGGER.warning("node %d: ArduinoOTA cannot listen: %s", self.can_id, err)
            serving = None
        self.board, self._ssid = serving, joined.request.ssid
        timeout_ms = joined.request.timeout_ms
        window = timeout_ms / 1000 if timeout_ms else ZERO_WINDOW
        self._watch = asyncio.create_task(
            self._serve(
                serving,
                max(window, self._timing.wifi_ota_min_window),
                once=joined.faults.transfer_faults_once,
            )
        )

    def apply_faults(self, faults: NodeFaults) -> None:
        """New faults of the node: an ArduinoOTA service running now takes them from its next upload."""
        if self._joined is not None:
            self._joined = replace(self._joined, faults=faults)
        if self.board is not None:
            self.board.faults = self._board_faults(faults)

    def _board_faults(self, faults: NodeFaults) -> BoardFaults:
        """The node's transfer faults strike its ArduinoOTA upload as they strike a CAN stream."""
        return BoardFaults(
            drop_at_percent=faults.drop_at_percent,
            stall_at_percent=faults.stall_at_percent,
            stall_seconds=faults.stall_seconds,
            corrupt_offset=faults.corrupt_offset,
            network_delay=self._timing.wifi_network_delay,
        )

    async def stop(self) -> None:
        """End the session without a reboot callback (the slave is rebooting or powered off anyway)."""
        self._stops += 1
        self._joined = None
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
            await asyncio.wait([watch])
        board, self.board = self.board, None
        if board is not None:
            await board.stop()

    async def _serve(self, board: OtaBoard | None, window: float, *, once: bool) -> None:
        """``handleOtaLoop()``: serve until an upload ends well or the window is over (None: nothing
        listens, the window just runs out)."""
        image: bytes | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window):
                if board is None:
                    await asyncio.get_running_loop().create_future()
                else:
                    image = await self._until_uploaded(board, once=once)
        self._watch = None
        await self.stop()
        _LOGGER.info("node %d: OTA session over (%s)", self.can_id, "new image" if image else "window ended")
        self._on_finished(image)

    async def _until_uploaded(self, board: OtaBoard, *, once: bool) -> bytes:
        """The image of the first upload that ends well."""
        if once and board.faults != BoardFaults(network_delay=board.faults.network_delay):
            await board.wait_until(lambda running: running.boots > 0 or running.counters.failed_updates > 0)
            if not board.boots:  # the fault struck: clear it for the next attempt
                board.faults = BoardFaults(network_delay=board.faults.network_delay)
                self._on_fault_struck()
        await board.wait_until(lambda running: running.boots > 0)
        return board.running_image


class WifiOtaRelay:
    """The legacy master's side: ``OTA_START`` out over ISO-TP, each ``OTA_ACK`` back as an ``ota`` message.

    :param publish: writes a message to the host
    """

    def __init__(self, bus: SimCanBus, publish: Callable[[dict[str, Any]], None]) -> None:
        self._bus = bus
        self._publish = publish
        self._port: CanPort | None = None
        self._sender = IsoTpSender(self._send)
        self._reassembler = Reassembler()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # every identifier: answers come on node 1's, flow control on the slaves' own
        self._port = self._bus.open_port([self._on_message], loop=asyncio.get_running_loop())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._port is not None:
            await self._port.close()
            self._port = None

    def forward(self, can_id: int, request: OtaStart) -> None:
        """Send ``request`` to node ``can_id`` in the background, as the firmware queues it."""
        task = asyncio.get_running_loop().create_task(self._deliver(can_id, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, can_id: int, request: OtaStart) -> None:
        try:
            await self._sender.send(can_id, request.encode())
        except IsoTpError as err:  # the firmware sends and forgets: the host simply never hears back
            _LOGGER.warning("node %d: OTA command not delivered: %s", can_id, err)

    def _send(self, can_id: int, frame: bytes) -> None:
        if self._port is not None:
            self._port.send(can_id, frame)

    def _on_message(self, message: can.Message) -> None:
        if message.is_error_frame:
            return
        data = bytes(message.data)
        if self._sender.on_frame(message.arbitration_id, data) or message.arbitration_id != MASTER_NODE_ID:
            return
        payload, _ = self._reassembler.feed(data)
        ack = OtaAck.decode(payload) if payload else None
        if ack is not None:
            _LOGGER.info("node %d: OTA answer status=%d ip=%s", ack.can_id, ack.status, ack.ip)
            self._publish(ack.event())
