"""The virtual master CAN HAT: the firmware's serial behaviour over a bus of virtual nodes, with faults.

Written from ``shared/specs/uc2-stack.md`` §2, §3.2, §7 and §11 (never from ``uc2otad.links``):

- commands are read by the firmware's brace counter (:mod:`uc2otad.sim.wire`), queued (5 deep, as
  ``serialMSGQueue``; more are dropped) and handled one at a time;
- ``/state_get`` answers the board's identity, echoing the request's qid (0 without one);
- ``/can_act`` with ``scan`` lists the routed nodes — reachable ones with build, version and MAC,
  unreachable ones without — and with ``probeRange`` also nodes outside the routing table ("unrouted");
  a legacy master lists only the nodes that answer, in the short form, after its 500 ms wait;
- ``/can_act`` with ``restart`` acknowledges ``{"status":"ok","nodeId":N}`` and the node drops off the
  bus ~200 ms later until it has booted; node 0 is the master itself;
- ``/can_get`` reports NMT state and bus counters (CANopen masters only);
- int results follow the ``{"qid": <result>, "success": …}`` rule (``/state_act``, legacy ``/can_act``);
- between answers the debug log runs: Arduino ``[I][file.cpp:NN]`` and ESP-IDF ``I (ms) TAG:`` lines.

Faults, switchable at any time: a node goes offline, the master hangs (stops answering) or reboots
(ROM banner at 115200 baud, garbage to a client at another rate), garbage on the line; the port itself
vanishes and returns (:class:`~uc2otad.sim.pty_port.PtyPort`, :class:`~uc2otad.sim.socket_port.SocketPort`).

Constraint: asyncio only, never blocking; every delay is a field of :class:`MasterTiming`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from uc2otad.errors import ConfigError
from uc2otad.sim import wire
from uc2otad.sim.nodes import DEFAULT_BUILD, DEFAULT_VERSION, UNROUTED, UNVERSIONED, NodeSpec

_LOGGER = logging.getLogger(__name__)

#: the master's USB baud rate: 921600 on current masters, 115200 on old HAT builds (§2.1)
DEFAULT_BAUD = 921600
MASTER_MAC = "02:55:43:32:00:01"
#: ids a legacy master's scan probes: 10-15, 20-25, 30-35 (so a galvo at 40 is never found) (§2.4)
LEGACY_SCAN_IDS = frozenset([*range(10, 16), *range(20, 26), *range(30, 36)])
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


@dataclass(frozen=True)
class MasterTiming:
    """Every delay of the virtual bus, in seconds; tests shrink them."""

    #: one SDO read of a reachable node: a few frames at 500 kbit/s plus the slave's answer
    sdo_time: float = 0.002
    #: an SDO read of an unreachable node times out after 100 ms (FW-main ``_read_SDO``)
    sdo_timeout: float = 0.1
    #: a legacy master collects scan answers for 500 ms (§2.4)
    legacy_scan_wait: float = 0.5
    #: a slave restarts ~200 ms after the SDO write to 0x2507 (§2.4)
    restart_delay: float = 0.2
    #: a restarted slave is back on the bus after its boot (ESP32-S3 ROM and app start; an estimate)
    node_boot_time: float = 1.0
    #: the master runs its app again this long after a reset (ROM, bootloader, setup; an estimate)
    master_boot_time: float = 0.8


#: the firmware's command queue (``serialMSGQueue = xQueueCreate(5, …)``)
COMMAND_QUEUE_LENGTH = 5
#: what an endpoint answers: a JSON object to frame, or nothing
Reply = dict[str, Any] | None


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


class _Node:
    """A node's state on the bus."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.online = spec.online
        #: loop time until which the node is rebooting
        self.booting_until = 0.0


@dataclass(frozen=True)
class MasterIdentity:
    """What the master's ``/state_get`` says about the board."""

    kind: MasterKind = MasterKind.CANOPEN
    version: str = DEFAULT_VERSION
    build: str = DEFAULT_BUILD
    mac: str = MASTER_MAC

    def state(self) -> dict[str, Any]:
        """The ``state`` object: identifiers, then the pin definition (§2.4, FW ``State::get``)."""
        canopen = self.kind is MasterKind.CANOPEN
        state: dict[str, Any] = {
            "identifier_name": "UC2_Feather",
            "identifier_id": "V2.0",
            "identifier_date": self.build,
            "identifier_author": "BD",
            "IDENTIFIER_NAME": "uc2-esp",
            "configIsSet": 0,
            "pindef": "UC2_canopen_master" if canopen else "UC2_3_CAN_HAT_Master",
            "I2C_SLAVE": 0,
        }
        if canopen:  # release strings exist only on firmware newer than the legacy generation
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
        baud: int = DEFAULT_BAUD,
        timing: MasterTiming | None = None,
        log_noise: bool = True,
    ) -> None:
        self._nodes: dict[int, _Node] = {}
        for spec in nodes:
            if spec.can_id in self._nodes:
                raise ConfigError("nodes", f"CAN id {spec.can_id} is listed twice")
            self._nodes[spec.can_id] = _Node(spec)
        self.identity = identity or MasterIdentity()
        self.baud = baud
        self.timing = timing or MasterTiming()
        self.log_noise = log_noise
        #: called with every command read from a port, before it is queued: lets tests and tools watch
        self.on_command: Callable[[dict[str, Any]], None] | None = None
        self._attachments: list[_Attachment] = []
        self._queue: asyncio.Queue[tuple[_Attachment, dict[str, Any]]] = asyncio.Queue(COMMAND_QUEUE_LENGTH)
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
    def nodes(self) -> list[NodeSpec]:
        return [node.spec for node in self._nodes.values()]

    def attach(self, port: SimPort) -> None:
        """Talk over ``port`` too: its input is read, answers go back to it, the log goes to all ports."""
        attachment = _Attachment(port)
        self._attachments.append(attachment)
        port.on_data = lambda data: self._receive(attachment, data)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        self._worker = loop.create_task(self._work(), name="virtual master")
        self._log("I", "main.cpp", 88, "setup(): UC2 master ready")

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

    # ---- faults ---------------------------------------------------------------------------------------

    def set_node_online(self, can_id: int, online: bool) -> None:
        """Connect or disconnect node ``can_id`` from the bus (unplugged, powered off)."""
        self._node(can_id).online = online
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
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait([self._worker])
        while not self._queue.empty():
            self._queue.get_nowait()
        for attachment in self._attachments:
            attachment.reader = wire.CommandReader()
            self._send(attachment, wire.ROM_BOOT_BANNER, baud=wire.ROM_BAUD)
        await asyncio.sleep(self.timing.master_boot_time)
        self._booting = False
        await self.start()

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
        for received in attachment.reader.feed(data):
            if received.command is None:
                self._send(attachment, wire.reply_frame({"error": received.problem}))
                continue
            if self.on_command is not None:
                self.on_command(received.command)
            try:
                self._queue.put_nowait((attachment, received.command))
            except asyncio.QueueFull:
                self._log(
                    "W", "SerialProcess.cpp", 263, "addJsonToQueue(): Serial queue full - dropping message"
                )

    async def _work(self) -> None:
        while True:
            attachment, command = await self._queue.get()
            if self._muted:
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
            return  # no endpoint: the firmware answers nothing
        reply = await handler(command)
        if reply is not None:
            self._send(attachment, wire.reply_frame(reply))

    def _endpoints_of(self, kind: MasterKind) -> dict[str, Callable[[dict[str, Any]], Awaitable[Reply]]]:
        """The tasks the firmware generation handles; it answers nothing to any other task."""
        if kind is MasterKind.CANOPEN:
            return {
                "/state_get": self._state_get,
                "/state_act": self._state_act,
                "/can_act": self._can_act,
                "/can_get": self._can_get,
            }
        return {
            "/state_get": self._state_get,
            "/state_act": self._state_act,
            "/can_act": self._legacy_can_act,
        }

    # ---- endpoints ------------------------------------------------------------------------------------

    async def _state_get(self, command: dict[str, Any]) -> Reply:
        return {"state": self.identity.state(), "qid": wire.request_qid(command)}

    async def _state_act(self, command: dict[str, Any]) -> Reply:
        if "restart" in command:
            self._spawn(self.reboot())  # ESP.restart(): no answer
            return None
        return wire.int_reply(1)

    async def _can_act(self, command: dict[str, Any]) -> Reply:
        if command.get("scan"):
            return await self._scan(command)
        restart = command.get("restart")
        if isinstance(restart, int) and not isinstance(restart, bool):
            return self._restart(restart)
        # node-id configuration is the remaining branch; with none of its keys it answers "ok"
        return {"status": "ok", "nodeId": 1, "canMotorAxis": 0}

    async def _scan(self, command: dict[str, Any]) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for node in sorted(self._nodes.values(), key=lambda node: node.spec.can_id):
            if node.spec.routed:
                entries.append(await self._probe(node, routed=True))
        if command.get("probeRange"):
            first, last = _int(command.get("from"), 1), _int(command.get("to"), 127)
            for can_id in range(max(first, 2), min(last, 127) + 1):
                found = self._nodes.get(can_id)
                if found is None or found.spec.routed or not self._reachable(found):
                    await asyncio.sleep(self.timing.sdo_time)  # absent ids fail fast (UC2-REST docs)
                    continue
                entries.append(await self._probe(found, routed=False))
        master = {"canId": 1, "build": self.identity.build, "fwVersion": self.identity.version,
                  "mac": self.identity.mac}  # fmt: skip
        return {"master": master, "scan": entries, "qid": wire.request_qid(command), "count": len(entries)}

    async def _probe(self, node: _Node, *, routed: bool) -> dict[str, Any]:
        """A node's scan entry, after the SDO reads of build (0x2508), version (0x2500) and MAC (0x2509)."""
        spec = node.spec
        entry: dict[str, Any] = {
            "canId": spec.can_id,
            "deviceType": spec.device_type if routed else UNROUTED,
            "deviceTypeStr": spec.role if routed else "unrouted",
        }
        if not self._reachable(node):
            await asyncio.sleep(self.timing.sdo_timeout)
            self._log("W", "CANopenModule.cpp", 733, f"scan(): node {spec.can_id} did not answer")
            entry.update({"status": 1, "statusStr": "unreachable"})
            return entry
        await asyncio.sleep(3 * self.timing.sdo_time)
        self._idf_log("I", "UC2_CO", f"scan: node {spec.can_id} ({spec.role}) answered")
        entry.update({"status": 0, "statusStr": "idle"})
        if spec.reports != "none":
            entry["build"] = spec.build
            entry["fwVersion"] = spec.version if spec.reports == "version" else UNVERSIONED
            entry["mac"] = spec.mac
            if spec.image:
                entry["fwImage"] = spec.image
        return entry

    def _restart(self, can_id: int) -> dict[str, Any]:
        if can_id == 0:
            self._later(self.timing.restart_delay, lambda: self._spawn(self.reboot()))
            return {"status": "ok", "nodeId": 0}
        node = self._nodes.get(can_id)
        if node is None or not self._reachable(node):
            return {"status": "error", "error": "SDO write failed", "nodeId": can_id}
        self._later(self.timing.restart_delay, lambda: self._reset_node(node))
        return {"status": "ok", "nodeId": can_id}

    async def _can_get(self, command: dict[str, Any]) -> Reply:
        bus = {"txErr": 0, "rxErr": 0, "txFailed": 0, "busOffCount": 0, "state": "running"}
        return {"nodeId": 1, "canRole": MASTER_CAN_ROLE, "nmtState": NMT_OPERATIONAL,
                "nmtStateStr": "OPERATIONAL", "bus": bus}  # fmt: skip

    async def _legacy_can_act(self, command: dict[str, Any]) -> Reply:
        if command.get("scan"):
            await asyncio.sleep(self.timing.legacy_scan_wait)
            entries = [
                {
                    "canId": node.spec.can_id,
                    "deviceType": node.spec.device_type,
                    "status": 0,
                    "deviceTypeStr": node.spec.role,
                    "statusStr": "idle",
                }
                for node in sorted(self._nodes.values(), key=lambda node: node.spec.can_id)
                if node.spec.can_id in LEGACY_SCAN_IDS and self._reachable(node)
            ]
            return {"scan": entries, "qid": wire.request_qid(command), "count": len(entries)}
        ota = command.get("ota")
        if isinstance(ota, dict):
            # can_controller::act(): 0 once the CAN message is queued, -1 when keys are missing. The
            # slave's asynchronous {"ota": …} answer comes with the WiFi boards of the update methods.
            complete = all(key in ota for key in ("canid", "ssid", "password"))
            return wire.int_reply(0 if complete else -1)
        return wire.int_reply(0)

    # ---- the bus --------------------------------------------------------------------------------------

    def _reachable(self, node: _Node) -> bool:
        return node.online and asyncio.get_running_loop().time() >= node.booting_until

    def _reset_node(self, node: _Node) -> None:
        node.booting_until = asyncio.get_running_loop().time() + self.timing.node_boot_time
        self._idf_log("I", "UC2_CO", f"node {node.spec.can_id} restarting")
        back = f"node {node.spec.can_id} boot-up"
        self._later(self.timing.node_boot_time, lambda: self._idf_log("I", "UC2_CO", back))

    def _node(self, can_id: int) -> _Node:
        try:
            return self._nodes[can_id]
        except KeyError:
            raise ConfigError("nodes", f"no node {can_id} on the virtual bus") from None

    # ---- output ---------------------------------------------------------------------------------------

    def _send(self, attachment: _Attachment, data: bytes, *, baud: int | None = None) -> None:
        """Write ``data`` as sent at ``baud`` (default: the master's); at another rate it is garbage."""
        if not self._baud_matches(attachment, baud or self.baud):
            data = wire.garbled(data)
        attachment.port.write(data)

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

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
