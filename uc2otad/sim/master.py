"""The virtual master CAN HAT: the firmware's serial behaviour over a bus of virtual nodes, with faults.

Written from ``shared/specs/uc2-stack.md`` §2, §3.2, §7 and §11 (never from ``uc2otad.links``):

- commands are read by the firmware's brace counter (:mod:`uc2otad.sim.wire`), queued (``serialMSGQueue``:
  16 deep on FW-main, 5 on FW-legacy; more are dropped) and handled one at a time; a task the firmware
  does not know is answered ``{"qid":-1,"success":-1}``; every frame is followed by a NUL;
- ``/state_get`` answers the board's identity, echoing the request's qid (0 without one);
- ``/can_act`` with ``scan`` lists the routed nodes — reachable ones with build, version and MAC read
  from them by SDO, unreachable ones without — and with ``probeRange`` also nodes outside the routing
  table ("unrouted"); a legacy master answers the int reply at once and lists the nodes that answer,
  in the short form, in a frame ~1.4 s later;
- ``/can_act`` with ``restart`` writes 1 to the node's 0x2507 and acknowledges
  ``{"status":"ok","nodeId":N}``; the node drops off the bus ~200 ms later until it has booted; node 0
  is the master itself, which restarts 300 ms later without a word;
- ``/can_get`` reports NMT state and bus counters (CANopen masters only);
- ``/ota_start`` streams an image to a slave (:mod:`~uc2otad.sim.stream_ota`, CANopen masters);
  legacy ``/can_act`` with ``ota`` relays the WiFi OTA command (:mod:`~uc2otad.sim.wifi_ota`);
- int results follow the ``{"qid": <result>, "success": …}`` rule (``/state_act``, legacy ``/can_act``);
- between answers the debug log runs: Arduino ``[I][file.cpp:NN]`` and ESP-IDF ``I (ms) TAG:`` lines.

The slaves are :class:`~uc2otad.sim.canopen_slave.CanOpenSlave` nodes on the microscope's python-can
bus; the master reaches them only through frames on it (:mod:`~uc2otad.sim.master_can`).

Faults, switchable at any time: a node goes offline or misbehaves (:meth:`VirtualMaster.slave`), the
master hangs (stops answering) or reboots (ROM banner at 115200 baud, garbage to a client at another
rate), garbage on the line; the port itself vanishes and returns
(:class:`~uc2otad.sim.pty_port.PtyPort`, :class:`~uc2otad.sim.socket_port.SocketPort`).

Constraint: asyncio only, never blocking; every delay is a field of :class:`MasterTiming`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Protocol

from uc2otad.errors import ConfigError
from uc2otad.sim import wire
from uc2otad.sim.can_bus import SimCanBus
from uc2otad.sim.can_rate import CanRate
from uc2otad.sim.canopen_slave import CanOpenSlave
from uc2otad.sim.master_can import CanOpenClient, SdoTransferError
from uc2otad.sim.nodes import DEFAULT_BUILD, DEFAULT_VERSION, DISTURBED_RX_ERRORS, UNROUTED, NodeSpec
from uc2otad.sim.ota_board import ARDUINO_OTA_PORT
from uc2otad.sim.profiles import DEFAULT_PROFILE, PROFILES, UNVERSIONED, FirmwareProfile
from uc2otad.sim.slave_objects import BUILD_TIME, FIRMWARE_VERSION, IMAGE_NAME, MAC_ADDRESS, REBOOT
from uc2otad.sim.stream_ota import StreamReceiver, StreamStats, error_line, parse_ota_start

# re-exported (mypy wants the alias): MasterTiming lived here, and its importers keep working
from uc2otad.sim.timing import MasterTiming as MasterTiming  # noqa: PLC0414
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID, OtaStart, WifiNetwork, WifiOtaRelay

_LOGGER = logging.getLogger(__name__)

#: the master's USB baud rate: 921600 on current masters, 115200 on old HAT builds (§2.1)
DEFAULT_BAUD = 921600
MASTER_MAC = "02:55:43:32:00:01"
#: a legacy master's scan: the ids it asks, 10-15, 20-25, 30-35 (``can_controller.cpp:2556-2560``
#: @14fa3e3; so a galvo at 40 is never found); the type each answers, derived by the slave from its own
#: id (``:829-838``), and the name the master gives it (``:2631-2638``): a galvo at 30-35 says "led"
LEGACY_SCAN_TYPES = ((range(10, 16), 0, "motor"), (range(20, 26), 1, "laser"), (range(30, 36), 2, "led"))
LEGACY_SCAN_IDS = frozenset(can_id for ids, _, _ in LEGACY_SCAN_TYPES for can_id in ids)
#: ``runtimeConfig.canRole`` of a master; the spec elides the number, so this is an assumption
MASTER_CAN_ROLE = 1
#: NMT state OPERATIONAL (CiA 301)
NMT_OPERATIONAL = 5


class MasterKind(Enum):
    """Which firmware generation the master runs."""

    #: FW-main ``UC2_canopen_master``: CANopen scan form, streaming OTA
    CANOPEN = "canopen"
    #: FW-legacy ``UC2_3_CAN_HAT_Master``: short scan form, WiFi OTA
    LEGACY = "legacy"


#: the firmware's command queue: ``serialMSGQueue = xQueueCreate(16, …)`` on FW-main
#: (``SerialProcess.cpp:350`` @063e5a6); ``xQueueCreate(5, …)`` on FW-legacy (``:326`` @14fa3e3)
COMMAND_QUEUE_LENGTH = 16
LEGACY_COMMAND_QUEUE_LENGTH = 5
#: what an endpoint answers: a JSON object to frame, or nothing
Reply = dict[str, Any] | None
#: the WiFi OTA window UC2-REST asks for unless told otherwise (``timeout=300000``)
DEFAULT_OTA_WINDOW_MS = 300_000


class SimPort(Protocol):
    """A transport the master talks over (pty or TCP)."""

    on_data: Callable[[bytes], None] | None

    def write(self, data: bytes) -> None: ...

    def client_baud(self) -> int | None: ...


class _Attachment:
    """A port and the input parser that belongs to it."""

    def __init__(self, port: SimPort) -> None:
        self.port = port
        self.reader = wire.CommandReader()
        #: input that arrived while ``/ota_start`` was handled: the serial loop reads it afterwards,
        #: as JSON or, once "ready" switched it to binary mode, as firmware
        self.held: bytearray | None = None


#: an endpoint: the port the command came from (where a stream's bytes will come from), the command
Endpoint = Callable[[_Attachment, dict[str, Any]], Awaitable[Reply]]


@dataclass(frozen=True)
class MasterIdentity:
    """The master board: its firmware generation, release string, build time and MAC."""

    profile: FirmwareProfile = PROFILES[DEFAULT_PROFILE]
    #: the release string of the 2026-09 firmware; FW-main and legacy report none
    version: str = DEFAULT_VERSION
    #: compile time, ``__DATE__ " " __TIME__``
    build: str = DEFAULT_BUILD
    mac: str = MASTER_MAC

    @property
    def kind(self) -> MasterKind:
        return MasterKind.CANOPEN if self.profile.canopen else MasterKind.LEGACY

    def scan_entry(self) -> dict[str, Any]:
        """The master's own entry of a CANopen scan, read from its own OD (``CANopenModule.cpp:1617-1622``
        @063e5a6): FW-main's fixed version string, or the 2026-09 release string."""
        version = self.version if self.profile.release_strings else UNVERSIONED
        return {"canId": 1, "build": self.build, "fwVersion": version, "mac": self.mac}

    def state(self) -> dict[str, Any]:
        """The ``state`` object: identifiers, then the pin definition (``State.cpp:213-220`` @063e5a6).

        ``identifier_date`` is ``__DATE__ "" __TIME__``, with no space between (``State.h:12`` @063e5a6,
        the same at 14fa3e3): "Oct  1 202609:26:22". Release string and image name only on the 2026-09
        firmware (uc2-stack.md §2.4, from documentation).
        """
        canopen = self.kind is MasterKind.CANOPEN
        state: dict[str, Any] = {
            "identifier_name": "UC2_Feather",
            "identifier_id": "V2.0",
            "identifier_date": _without_space_before_time(self.build),
            "identifier_author": "BD",
            "IDENTIFIER_NAME": "uc2-esp",
            "configIsSet": 0,
            "pindef": "UC2_canopen_master" if canopen else "UC2_3_CAN_HAT_Master",
            "I2C_SLAVE": 0,
        }
        if self.profile.state_release:
            state["identifier_version"] = self.version
            state["identifier_image"] = "esp32_UC2_canopen_master_release.bin"
        return state


class VirtualMaster:
    """The master CAN HAT (node 1) with its slaves; attach ports, :meth:`start`, then talk to it."""

    def __init__(
        self,
        nodes: Iterable[NodeSpec],
        *,
        identity: MasterIdentity | None = None,
        baud: int | None = None,
        timing: MasterTiming | None = None,
        log_noise: bool = True,
        network: WifiNetwork | None = None,
        can_rate: CanRate | None = None,
        ota_port: int = ARDUINO_OTA_PORT,
    ) -> None:
        """
        :param network: the WiFi the slaves can join (default: the microscope's default credentials)
        :param can_rate: the CAN-rate model (default: off)
        :param ota_port: the slaves' ArduinoOTA port (0: each binds a free one)
        :param baud: the serial rate (default: the master profile's)

        Nodes without a profile of their own run the master's.
        """
        self.identity = identity or MasterIdentity()
        profile = self.identity.profile
        self.baud = baud or profile.baud
        timing = timing or MasterTiming()
        if timing.size_write_timeout is None:
            timing = replace(timing, size_write_timeout=profile.size_write_timeout)
        self.timing = timing
        self.log_noise = log_noise
        #: the microscope's CAN bus, shared by the master and its slaves
        self.can_bus = SimCanBus(can_rate)
        network = network or WifiNetwork(DEFAULT_SSID, DEFAULT_PASSWORD)
        self._slaves: dict[int, CanOpenSlave] = {}
        for spec in nodes:
            if spec.can_id in self._slaves:
                raise ConfigError("nodes", f"CAN id {spec.can_id} is listed twice")
            self._slaves[spec.can_id] = CanOpenSlave(
                spec,
                self.can_bus,
                timing=self.timing,
                network=network,
                ota_port=ota_port,
                profile=PROFILES[spec.profile] if spec.profile else profile,
            )
        canopen = self.identity.kind is MasterKind.CANOPEN
        self._canopen = CanOpenClient(self.can_bus, self.timing) if canopen else None
        if self._canopen is not None:
            self._canopen.on_boot_up = lambda can_id: self._idf_log("I", "UC2_CO", f"node {can_id} boot-up")
        self._relay = None if canopen else WifiOtaRelay(self.can_bus, self._publish)
        self._stream: StreamReceiver | None = None
        self._stream_attachment: _Attachment | None = None
        self._bus_health: dict[str, Any] = {}
        self.set_bus_health()
        #: what the last stream's time went into (benchmarks)
        self.stream_stats: StreamStats | None = None
        self._bus_up = False
        #: called with every command read from a port, before it is queued: lets tests and tools watch
        self.on_command: Callable[[dict[str, Any]], None] | None = None
        self._attachments: list[_Attachment] = []
        self._queue: asyncio.Queue[tuple[_Attachment, dict[str, Any]]] = asyncio.Queue(
            self.command_queue_length
        )
        #: a legacy master's scan between its int reply and its frame
        self._legacy_scan: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._muted = False
        self._booting = False
        self._started_at = 0.0
        self._endpoints = self._endpoints_of(self.identity.kind)

    @property
    def kind(self) -> MasterKind:
        return self.identity.kind

    @property
    def in_binary_mode(self) -> bool:
        """A stream's "ready" switched the serial loop to firmware bytes, and no last word ended it yet."""
        return self._stream is not None

    @property
    def command_queue_length(self) -> int:
        """How many commands ``serialMSGQueue`` holds: 16 on FW-main, 5 on FW-legacy."""
        canopen = self.identity.kind is MasterKind.CANOPEN
        return COMMAND_QUEUE_LENGTH if canopen else LEGACY_COMMAND_QUEUE_LENGTH

    @property
    def nodes(self) -> list[NodeSpec]:
        return [slave.spec for slave in self._slaves.values()]

    def slave(self, can_id: int) -> CanOpenSlave:
        """Node ``can_id``: to look at its image, set its faults, wait for its reboot.

        :raises ConfigError: no such node on the bus
        """
        try:
            return self._slaves[can_id]
        except KeyError:
            raise ConfigError("nodes", f"no node {can_id} on the virtual bus") from None

    def attach(self, port: SimPort) -> None:
        """Talk over ``port`` too: its input is read, answers go back to it, the log goes to all ports."""
        attachment = _Attachment(port)
        self._attachments.append(attachment)
        port.on_data = lambda data: self._receive(attachment, data)

    async def start(self) -> None:
        """Power on: the CAN bus with the slaves (once), then the master's app."""
        if not self._bus_up:
            self._bus_up = True
            # the master listens first, so that it hears the slaves' boot-up messages
            if self._canopen is not None:
                await self._canopen.start()
            if self._relay is not None:
                await self._relay.start()
            for slave in self._slaves.values():
                await slave.start()
        self._run_app()

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        tasks = [task for task in (self._worker, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._worker = None
        await self._end_stream()
        if self._bus_up:
            self._bus_up = False
            for slave in self._slaves.values():
                await slave.stop()
            for side in (self._canopen, self._relay):
                if side is not None:
                    await side.stop()

    def _run_app(self) -> None:
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        self._worker = loop.create_task(self._work(), name="virtual master")
        self._log("I", "main.cpp", 88, "setup(): UC2 master ready")

    # ---- faults ---------------------------------------------------------------------------------------

    def set_node_online(self, can_id: int, online: bool) -> None:
        """Connect or disconnect node ``can_id`` from the bus (its cable plugged in or out)."""
        self.slave(can_id).set_online(online)
        _LOGGER.info("node %d is %s", can_id, "online" if online else "offline")

    def set_muted(self, muted: bool) -> None:
        """A hung master: commands are read but never answered (and ``False`` cures it)."""
        self._muted = muted

    async def reboot(self) -> None:
        """Reset the master, as its reset button or a watchdog would; returns once it runs again.

        Commands in flight are forgotten; input is ignored until the app runs; the ROM prints its
        banner at 115200 baud, which a client at another baud rate receives as garbage.
        """
        _LOGGER.info("master reboots")
        self._booting = True
        self._muted = False  # a reset cures a hang
        for task in (self._worker, self._legacy_scan):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        while not self._queue.empty():
            self._queue.get_nowait()
        await self._end_stream()  # binary mode and its SDO transfer end with the RAM
        if self._canopen is not None:
            self._canopen.forget_heard()
        for attachment in self._attachments:
            attachment.reader = wire.CommandReader()
            attachment.held = None
            self._send(attachment, wire.ROM_BOOT_BANNER, baud=wire.ROM_BAUD)
        await asyncio.sleep(self.timing.master_boot_time)
        self._booting = False
        self._run_app()

    def send_garbage(self, data: bytes = b"\xff\xfe\x00\x13\xa5\x7f{\x00\x92\x81\xc0") -> None:
        """Noise on the line (a loose cable, EMI from the motors): bytes without a newline."""
        for attachment in self._attachments:
            attachment.port.write(data)

    # ---- input ----------------------------------------------------------------------------------------

    def _receive(self, attachment: _Attachment, data: bytes) -> None:
        if self._booting:
            return
        if not self._baud_matches(attachment, self.baud):
            _LOGGER.debug("input at the wrong baud rate (client %s): garbage", attachment.port.client_baud())
            return
        if attachment.held is not None:
            attachment.held += data
            return
        if self._stream is not None:  # binary mode: SerialProcess hands every byte to the receiver
            if attachment is self._stream_attachment:
                self._stream.feed(data)
            else:
                _LOGGER.debug("input on another port while streaming: %d bytes dropped", len(data))
            return
        for received in attachment.reader.feed(data):
            if received.command is None:
                self._send(attachment, wire.reply_frame({"error": received.problem}))
                continue
            if self.on_command is not None:
                self.on_command(received.command)
            if received.command.get("task") == "/ota_start" and "/ota_start" in self._endpoints:
                # handled before the serial loop reads on: the bytes after the preamble (UC2-REST's
                # newline, then firmware) are read in whatever mode the handler leaves behind
                attachment.held = bytearray(data[received.end :])
                attachment.reader = wire.CommandReader()
            try:
                self._queue.put_nowait((attachment, received.command))
            except asyncio.QueueFull:
                self._log(
                    "W", "SerialProcess.cpp", 263, "addJsonToQueue(): Serial queue full - dropping message"
                )
            if attachment.held is not None:
                return

    async def _work(self) -> None:
        while True:
            attachment, command = await self._queue.get()
            if self._muted:
                self._read_held(attachment, command)
                continue
            try:
                await self._handle(attachment, command)
            except Exception:  # a bug in one handler must not stop the master
                _LOGGER.exception("handling %.200r failed", command.get("task"))

    async def _handle(self, attachment: _Attachment, command: dict[str, Any]) -> None:
        task = command.get("task")
        if not isinstance(task, str):
            return  # the firmware ignores objects without a task
        self._log("I", "SerialProcess.cpp", 391, f"jsonProcessor(): {task}")
        handler = self._endpoints.get(task)
        if handler is None:
            # jsonProcessor's last branch: serialize(-1) (SerialProcess.cpp:831 @063e5a6, :720 @14fa3e3)
            self._send(attachment, wire.reply_frame(wire.int_reply(wire.UNKNOWN_TASK_RESULT)))
            return
        try:
            reply = await handler(attachment, command)
            if reply is not None:
                self._send(attachment, wire.reply_frame(reply))
        finally:
            self._read_held(attachment, command)

    def _read_held(self, attachment: _Attachment, command: dict[str, Any]) -> None:
        """After ``/ota_start`` the serial loop reads on: the input that waited meanwhile."""
        if command.get("task") != "/ota_start":
            return  # a command queued before it: the loop still waits
        held, attachment.held = attachment.held, None
        if held:
            self._receive(attachment, bytes(held))

    def _endpoints_of(self, kind: MasterKind) -> dict[str, Endpoint]:
        """The tasks the firmware generation handles; any other gets the int reply -1 (``_handle``)."""
        if kind is MasterKind.CANOPEN:
            return {
                "/state_get": self._state_get,
                "/state_act": self._state_act,
                "/can_act": self._can_act,
                "/can_get": self._can_get,
                "/ota_start": self._ota_start,
            }
        return {
            "/state_get": self._state_get,
            "/state_act": self._state_act,
            "/can_act": self._legacy_can_act,
        }

    # ---- endpoints ------------------------------------------------------------------------------------

    async def _state_get(self, attachment: _Attachment, command: dict[str, Any]) -> Reply:
        return {"state": self.identity.state(), "qid": wire.request_qid(command)}

    async def _state_act(self, attachment: _Attachment, command: dict[str, Any]) -> Reply:
        if "restart" in command:
            self._spawn(self.reboot())  # ESP.restart(): no answer
            return None
        return wire.int_reply(1)

    async def _can_act(self, attachment: _Attachment, command: dict[str, Any]) -> Reply:
        if command.get("scan"):
            return await self._scan(command)
        restart = command.get("restart")
        if isinstance(restart, int) and not isinstance(restart, bool):
            return await self._restart(restart)
        # node-id configuration is the remaining branch; with none of its keys it answers "ok"
        return {"status": "ok", "nodeId": 1, "canMotorAxis": 0}

    async def _scan(self, command: dict[str, Any]) -> dict[str, Any]:
        client = self._canopen_client()
        entries: list[dict[str, Any]] = []
        for slave in sorted(self._slaves.values(), key=lambda slave: slave.can_id):
            if slave.spec.routed:
                entries.append(await self._scan_entry(client, slave.can_id, slave.spec))
        if command.get("probeRange"):
            first, last = _int(command.get("from"), 1), _int(command.get("to"), 127)
            routed = {slave.can_id for slave in self._slaves.values() if slave.spec.routed}
            candidates = [can_id for can_id in range(max(first, 2), min(last, 127) + 1)
                          if can_id not in routed]  # fmt: skip
            for can_id in await client.probe(candidates):
                entries.append(await self._scan_entry(client, can_id, None))
        return {"master": self.identity.scan_entry(), "scan": entries, "qid": wire.request_qid(command),
                "count": len(entries)}  # fmt: skip

    async def _scan_entry(self, client: CanOpenClient, can_id: int, spec: NodeSpec | None) -> dict[str, Any]:
        """A node's scan entry (``CANopenModule.cpp:1581-1612`` @063e5a6): its routing (None: a probed
        node outside the table); status 0 when the master heard it within ``node_liveness`` (a probed node
        just answered), so a node in a short reboot is still "idle"; then, for such a node, each SDO read
        that answers — build (0x2508), version (0x2500), MAC (0x2509), and on 2026-09 firmware the image
        name (0x2501) — cut to the master's buffer."""
        entry: dict[str, Any] = {
            "canId": can_id,
            "deviceType": spec.device_type if spec is not None else UNROUTED,
            "deviceTypeStr": spec.role if spec is not None else "unrouted",
        }
        if spec is not None and not client.is_reachable(can_id):
            self._log("W", "CANopenModule.cpp", 733, f"scan(): node {can_id} not heard")
            entry.update({"status": 1, "statusStr": "unreachable"})
            return entry
        entry.update({"status": 0, "statusStr": "idle"})
        profile = self.identity.profile
        objects = {"build": BUILD_TIME, "fwVersion": FIRMWARE_VERSION, "mac": MAC_ADDRESS}
        if profile.scan_reads_image:
            objects["fwImage"] = IMAGE_NAME
        answers = await client.read_texts(can_id, objects.values(), profile.scan_text_limit)
        for key, value in zip(objects, answers, strict=True):
            if value:
                entry[key] = value
        self._idf_log("I", "UC2_CO", f"scan: node {can_id} ({entry['deviceTypeStr']}) read")
        return entry

    async def _restart(self, can_id: int) -> Reply:
        if can_id == 0:
            # the master itself: CANopenModule::act builds {"status":"rebooting","nodeId":0}, waits 300 ms
            # in the serial task and calls esp_restart(), so the reply never leaves
            # (CANopenModule.cpp:1679-1684 @063e5a6)
            await asyncio.sleep(self.timing.master_restart_delay)
            self._spawn(self.reboot())
            await asyncio.get_running_loop().create_future()  # esp_restart() does not return
            return None
        try:
            await self._canopen_client().write(
                can_id, REBOOT, 0, 1, size=1, response_timeout=self.timing.sdo_timeout
            )
        except SdoTransferError:
            return {"status": "error", "error": "SDO write failed", "nodeId": can_id}
        self._idf_log("I", "UC2_CO", f"node {can_id} restarting")
        return {"status": "ok", "nodeId": can_id}

    async def _ota_start(self, attachment: _Attachment, command: dict[str, Any]) -> Reply:
        """``DeviceRouter::handleOtaStart``: check, wait for the node, "ready", binary mode."""
        request = parse_ota_start(command)
        if isinstance(request, str):
            return error_line(request)
        client = self._canopen_client()
        if not await client.wait_heard(request.node_id, self.timing.reachable_timeout):
            return error_line("slave_unreachable")
        self._log("I", "OtaBinaryReceive.cpp", 74, f"begin(): node {request.node_id} size {request.size}")
        receiver = StreamReceiver(
            request,
            client,
            self.timing,
            send_line=lambda line: self._send_line(attachment, line),
            on_end=self._stream_ended,
        )
        self._stream, self._stream_attachment = receiver, attachment
        receiver.start()
        return request.ready()

    def set_bus_health(self, *, state: str = "running", tx_errors: int = 0, rx_errors: int = 0) -> None:
        """What ``/can_get`` reports of the TWAI controller from now on (a switchable fault): ``state``
        one of the firmware's words — "stopped", "running", "bus_off", "recovering"
        (``CANopenModule.cpp:1477-1482`` @063e5a6) — and its error counters."""
        self._bus_health = {"txErr": tx_errors, "rxErr": rx_errors, "txFailed": 0, "busOffCount": 0,
                            "state": state}  # fmt: skip

    async def _can_get(self, attachment: _Attachment, command: dict[str, Any]) -> Reply:
        """``CANopenModule::get`` (``CANopenModule.cpp:1449-1487`` @063e5a6): node id, role, NMT state,
        and ``twai_get_status_info``'s counters and state."""
        bus = dict(self._bus_health)
        if any(slave.disturbs_bus for slave in self._slaves.values()):  # NodeFaults.disturbing_image
            bus["rxErr"] = max(bus["rxErr"], DISTURBED_RX_ERRORS)
        return {"nodeId": 1, "canRole": MASTER_CAN_ROLE, "nmtState": NMT_OPERATIONAL,
                "nmtStateStr": "OPERATIONAL", "bus": bus}  # fmt: skip

    async def _legacy_can_act(self, attachment: _Attachment, command: dict[str, Any]) -> Reply:
        """FW-legacy ``can_controller::act`` (``can_controller.cpp:1419-1611`` @14fa3e3): an int result."""
        qid = wire.request_qid(command)
        ota = command.get("ota")
        if isinstance(ota, dict):
            # can_controller::act(): 0 once the CAN message is queued, -1 when keys are missing; the
            # slave's answer comes later, as an {"ota": …} message (wifi_ota.py)
            request = _ota_request(ota)
            if request is None or self._relay is None:
                return wire.int_reply(-1)
            self._relay.forward(request[0], request[1])
            return wire.int_reply(0)
        if command.get("scan") is True:  # cJSON_IsTrue
            # act() only flags the scan for loop() and returns the request's qid: the int reply goes out
            # at once (can_controller.cpp:1549-1564 @14fa3e3). loop() then runs it and clears the flag
            # (:2757-2761): a scan asked for while one runs is acknowledged and lost
            self._log("I", "can_controller.cpp", 1553, "act(): Starting CAN network scan...")
            if self._legacy_scan is None or self._legacy_scan.done():
                self._legacy_scan = self._spawn(self._legacy_scan_frame(attachment, qid))
            return wire.int_reply(qid)
        # any other command ends with `return qid` (:1610); a restart is not passed on to the slave here
        return wire.int_reply(qid)

    async def _legacy_scan_frame(self, attachment: _Attachment, qid: int) -> None:
        """``sendScanResults(qid)``: ``SCAN_REQUEST`` to 18 ids 50 ms apart, then 500 ms for the answers
        (``can_controller.cpp:2583-2612`` @14fa3e3), hence ``legacy_scan_wait``; then the frame
        ``{"scan":[…],"qid":…,"count":…}`` (``:2667-2679``). The ISO-TP exchange is not simulated: a node
        answers when it is on the bus."""
        await asyncio.sleep(self.timing.legacy_scan_wait)
        entries = [
            {
                "canId": node.can_id,
                "deviceType": device_type,
                "status": 0,
                "deviceTypeStr": name,
                "statusStr": "idle",
            }
            for node in sorted(self._slaves.values(), key=lambda node: node.can_id)
            for ids, device_type, name in LEGACY_SCAN_TYPES
            if node.can_id in ids and node.reachable
        ]
        self._log("I", "can_controller.cpp", 2655, f"scanCanDevices(): CAN device scan completed. "
                  f"Found {len(entries)} devices.")  # fmt: skip
        self._send(attachment, wire.reply_frame({"scan": entries, "qid": qid, "count": len(entries)}))

    # ---- the bus --------------------------------------------------------------------------------------

    def _canopen_client(self) -> CanOpenClient:
        if self._canopen is None:
            raise RuntimeError("a legacy master has no CANopen side")
        return self._canopen

    def _stream_ended(self, receiver: StreamReceiver) -> None:
        """Back to JSON: the receiver sent its last status line."""
        if self._stream is receiver:
            attachment = self._stream_attachment
            self._stream = self._stream_attachment = None
            self.stream_stats = receiver.stats
            if attachment is not None:
                attachment.reader = wire.CommandReader()

    async def _end_stream(self) -> None:
        if self._stream is not None:
            await self._stream.stop()

    # ---- output ---------------------------------------------------------------------------------------

    def _send(self, attachment: _Attachment, data: bytes, *, baud: int | None = None) -> None:
        """Write ``data`` as sent at ``baud`` (default: the master's); at another rate it is garbage."""
        if not self._baud_matches(attachment, baud or self.baud):
            data = wire.garbled(data)
        attachment.port.write(data)

    def _send_line(self, attachment: _Attachment, line: dict[str, Any]) -> None:
        """A bare status line, as the firmware writes it: the object, then its newline (two writes)."""
        self._send(attachment, wire.compact(line))
        self._send(attachment, b"\n")

    def _publish(self, message: dict[str, Any]) -> None:
        """An unsolicited framed message (the slave's ``ota`` answer) to every port."""
        for attachment in self._attachments:
            self._send(attachment, wire.reply_frame(message))

    def _baud_matches(self, attachment: _Attachment, baud: int) -> bool:
        client = attachment.port.client_baud()
        return client is None or client == baud

    def _log(self, level: str, source: str, line: int, message: str) -> None:
        if self.log_noise:
            for attachment in self._attachments:
                self._send(attachment, wire.arduino_log(level, source, line, message))

    def _idf_log(self, level: str, tag: str, message: str) -> None:
        if self.log_noise:
            uptime_ms = int((asyncio.get_running_loop().time() - self._started_at) * 1000)
            for attachment in self._attachments:
                self._send(attachment, wire.idf_log(level, uptime_ms, tag, message))

    # ---- housekeeping ---------------------------------------------------------------------------------

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        handle: asyncio.TimerHandle

        def run() -> None:
            self._timers.discard(handle)
            callback()

        handle = asyncio.get_running_loop().call_later(delay, run)
        self._timers.add(handle)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _ota_request(ota: dict[str, Any]) -> tuple[int, OtaStart] | None:
    """The legacy ``ota`` object as (node, command); None when a key is missing or of the wrong type."""
    can_id, timeout = _int(ota.get("canid"), -1), _int(ota.get("timeout", DEFAULT_OTA_WINDOW_MS), -1)
    ssid, password = ota.get("ssid"), ota.get("password")
    if can_id < 0 or timeout < 0 or not isinstance(ssid, str) or not isinstance(password, str):
        return None
    return can_id, OtaStart(ssid, password, timeout)


def _without_space_before_time(build: str) -> str:
    """``"Oct  1 2026 09:26:22"`` as ``__DATE__ "" __TIME__`` pastes it: ``"Oct  1 202609:26:22"``."""
    date, _, time = build.rpartition(" ")
    return f"{date}{time}" if date else build
