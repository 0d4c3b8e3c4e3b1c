"""The master CAN HAT on a serial port: pyserial underneath, the HAT's commands on top.

Any pyserial URL works (``serial_for_url``): a device path, a pty, ``socket://host:port``,
``rfc2217://host:port``. Opening runs the UC2-REST handshake (``/state_get``, answered in a ``++``
frame), so an open link is known to reach a UC2 master; with baud probing, the other of the two baud
rates the HATs use is tried when the first gets no answer (``uc2-stack.md`` §2.1).

Main constraint: the HAT's USB port comes and goes (unplug, reboot into the ROM loader for flashing).
A lost port reconnects with backoff, to the same path or, for a plain device path, to the adapter found
again by its USB identity (:mod:`uc2otad.links.ports`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import serial
from serial.tools.list_ports import comports
from serial.tools.list_ports_common import ListPortInfo

from uc2otad.errors import (
    HandshakeError,
    LinkClosedError,
    LinkIOError,
    LinkOpenError,
    LinkProtocolError,
    LinkTimeoutError,
    PortInUseError,
)
from uc2otad.links import commands, ota_stream, ota_wifi
from uc2otad.links.base import Link, LinkSettings
from uc2otad.links.commands import BusHealth, MasterIdentity, ScanResult
from uc2otad.links.ota_stream import Progress, StreamResult, StreamSettings
from uc2otad.links.ota_wifi import WifiOtaResult, WifiOtaSettings
from uc2otad.links.ports import PortIdentity, find_port, identify_port
from uc2otad.links.replies import JsonObject

_LOGGER = logging.getLogger(__name__)

#: current masters (``UC2_canopen_master``, ``UC2_3_CAN_HAT_Master_v2``) run at 921600 baud
DEFAULT_BAUD = 921600
#: older HAT builds (``UC2_3_CAN_HAT_Master``) and UC2-REST's default
LEGACY_BAUD = 115200
#: seconds for the ``/state_get`` answer when opening; UC2-REST's identity probe waits 2 s
HANDSHAKE_TIMEOUT = 2.0
#: seconds for a bus scan; UC2-REST ``can.scan(timeout=5)``. A legacy master sends its scan ~1.4 s after
#: the command (``can_controller.cpp:2556-2612`` @14fa3e3)
SCAN_TIMEOUT = 5.0
#: seconds for a scan that also probes ids outside the routing table; UC2-REST ``can.discover(timeout=8)``
PROBE_SCAN_TIMEOUT = 8.0
#: seconds for ``/can_get``; UC2-REST ``can.get_available_devices(timeout=2)``
BUS_HEALTH_TIMEOUT = 2.0
#: seconds for the restart acknowledgement; UC2-REST ``can.reboot_remote(timeout=2)``
RESTART_TIMEOUT = 2.0


@dataclass(frozen=True)
class HatSettings(LinkSettings):
    """The link's settings plus the timeouts of the HAT's commands."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT
    scan_timeout: float = SCAN_TIMEOUT
    probe_scan_timeout: float = PROBE_SCAN_TIMEOUT
    bus_health_timeout: float = BUS_HEALTH_TIMEOUT
    restart_timeout: float = RESTART_TIMEOUT
    stream: StreamSettings = field(default_factory=StreamSettings)
    wifi_ota: WifiOtaSettings = field(default_factory=WifiOtaSettings)


class SerialHatLink(Link[Any]):
    """The master CAN HAT at ``url``.

    :param baud: the baud rate to use (or to try first, with ``probe_baud``)
    :param probe_baud: also try the other of 921600 and 115200 when the first gets no answer
    :param reconnect: reopen the port with backoff when it is lost
    :param list_ports: how to enumerate serial ports (default ``serial.tools.list_ports.comports``)
    """

    def __init__(
        self,
        url: str,
        *,
        baud: int = DEFAULT_BAUD,
        probe_baud: bool = False,
        settings: HatSettings | None = None,
        reconnect: bool = True,
        list_ports: Callable[[], Iterable[ListPortInfo]] = comports,
    ) -> None:
        self.hat_settings = settings or HatSettings()
        super().__init__(url, settings=self.hat_settings, reconnect=reconnect)
        self.url = url
        others = [rate for rate in (DEFAULT_BAUD, LEGACY_BAUD) if rate != baud] if probe_baud else []
        self._bauds = (baud, *others)
        #: the baud rate of the open port (the one that answered)
        self.baud = baud
        #: what the master said about itself when the link (re)opened
        self.identity: MasterIdentity | None = None
        self._port_identity: PortIdentity | None = None
        self._list_ports = list_ports
        #: scans take turns: a legacy master forgets a scan asked for while one runs
        self._scan_turn = asyncio.Lock()

    # ---- the HAT's commands ---------------------------------------------------------------------------

    async def get_identity(self) -> MasterIdentity:
        """The master's ``/state_get`` identity, asked now.

        :raises LinkError: see :meth:`Link.request`; LinkProtocolError for a reply without ``state``
        """
        reply = await self.request(commands.state_command(), timeout=self.hat_settings.handshake_timeout)
        return commands.parse_identity(reply)

    async def scan(self, *, probe_range: tuple[int, int] | None = None) -> ScanResult:
        """Scan the bus (``/can_act scan``).

        A CANopen master answers with the scan. A legacy master answers the int reply
        ``{"qid":<the request's qid>,"success":1}`` at once and the scan, with the same qid, ~1.4 s later
        from its main loop; a scan asked for meanwhile is acknowledged and never sent
        (``can_controller.cpp:1549-1564, 2757-2761`` @14fa3e3). So the scan is awaited by its qid (an int
        reply never answers by qid, :mod:`uc2otad.links.replies`), and this link's scans take turns; the
        wait for a turn is not part of the timeout.

        :param probe_range: also SDO-probe these ids (inclusive) for nodes outside the routing table
        :raises ValueError: a probe range outside 1..127
        :raises LinkError: see :meth:`Link.request`; LinkProtocolError for a reply without a scan list
        """
        command = commands.scan_command(probe_range)
        settings = self.hat_settings
        timeout = settings.scan_timeout if probe_range is None else settings.probe_scan_timeout
        async with self._scan_turn:
            return commands.parse_scan(await self.request(command, timeout=timeout))

    async def bus_health(self) -> BusHealth:
        """The master's CANopen state and CAN error counters (``/can_get``).

        :raises LinkError: see :meth:`Link.request`; LinkProtocolError for a reply without ``nodeId``
        """
        reply = await self.request(
            commands.bus_health_command(),
            reply=commands.BUS_HEALTH_REPLY,
            timeout=self.hat_settings.bus_health_timeout,
        )
        return commands.parse_bus_health(reply)

    async def restart_node(self, node_id: int) -> None:
        """Ask the master to restart node ``node_id`` (0: the master itself).

        The node reboots about 200 ms after the acknowledgement. The master itself never acknowledges:
        it restarts 300 ms after the command without a word (``CANopenModule.cpp:1679-1684`` @063e5a6),
        so for node 0 the command is sent and nothing is awaited; the reboot shows as the master's boot
        banner (readable at 115200 baud only, see :class:`~uc2otad.errors.MasterRebootedError`), and
        what is sent meanwhile is lost with the master's RAM.

        :raises ValueError: ``node_id`` outside 0..127
        :raises MasterError: the master could not reach the node
        :raises LinkError: see :meth:`Link.request`
        """
        if node_id == commands.MASTER_ITSELF:
            self._check_usable()
            await self._send_json(commands.restart_command(node_id))
            return
        reply = await self.request(
            commands.restart_command(node_id),
            reply=commands.restart_reply(node_id),
            timeout=self.hat_settings.restart_timeout,
        )
        commands.check_restart(reply, node_id)

    async def stream_ota(
        self,
        node_id: int,
        image: bytes,
        *,
        progress: Progress | None = None,
        on_flashing: Callable[[], None] | None = None,
    ) -> StreamResult:
        """Stream ``image`` through the master into node ``node_id`` (CANopen masters; ``uc2-stack.md`` §2.2).

        The link is held for the whole stream. Cancelling stops between chunks; the slave keeps its old
        image, and the master is restored before this returns (:mod:`uc2otad.links.ota_stream`).

        :param progress: called with (bytes acknowledged, image size) after every 4 KB chunk
        :param on_flashing: called when the master reports "flashing" (the slave checks and commits)
        :raises ValueError: a node id outside 1..127, an empty image
        :raises MasterUnsupportedError: a legacy master (nothing is sent)
        :raises MasterError: the master's ``{"ota_status":"error"}``, its code in ``.code``
        :raises LinkBusyError: another task holds the link
        :raises LinkTimeoutError: no "ready", ``ota_rx`` or result in time
        :raises LinkError: the port went away, the master rebooted
        """
        settings = self.hat_settings.stream
        return await ota_stream.stream_image(
            self, node_id, image, settings=settings, progress=progress, on_flashing=on_flashing
        )

    async def start_wifi_ota(
        self,
        can_id: int,
        ssid: str,
        password: str,
        *,
        timeout_ms: int = ota_wifi.DEFAULT_WINDOW_MS,
        on_accepted: Callable[[JsonObject], None] | None = None,
    ) -> WifiOtaResult:
        """Make node ``can_id`` join WiFi and serve ArduinoOTA (legacy masters; ``uc2-stack.md`` §2.3).

        :param timeout_ms: how long the slave serves ArduinoOTA before it reboots (it makes it ≥ 300 s)
        :param on_accepted: called with the master's immediate reply, before the slave's answer comes
        :raises ValueError: an SSID or password the firmware's fields cannot carry, a bad id or timeout
        :raises MasterUnsupportedError: a CANopen master (nothing is sent)
        :raises MasterError: the master refused the command (int reply -1)
        :raises WifiJoinError: the slave could not join (status 1) or start ArduinoOTA (status 2)
        :raises WifiJoinTimeoutError: no answer from the slave within ``wifi_ota.event_timeout``
        :raises LinkError: see :meth:`Link.request`
        """
        return await ota_wifi.start_wifi_ota(
            self,
            can_id,
            ssid,
            password,
            timeout_ms=timeout_ms,
            settings=self.hat_settings.wifi_ota,
            on_accepted=on_accepted,
        )

    async def pulse_reset(self) -> bool:
        """Reset the master through its auto-reset circuit: RTS pulls EN low (UC2-REST's DTR/RTS pulse).

        :returns: False when the port has no modem lines (a pty, ``socket://``): nothing was reset
        :raises LinkClosedError: the link is not open
        :raises LinkBusyError: another task holds the link
        """
        self._check_usable()
        port = self._open_port_now()
        if "://" in self.url and not self.url.startswith("rfc2217://"):
            return False  # pyserial's socket:// and loop:// accept DTR/RTS and silently do nothing
        try:
            await asyncio.to_thread(_pulse_reset, port)
        except (serial.SerialException, OSError) as err:  # ENOTTY: no modem lines
            _LOGGER.debug("%s: no reset through DTR/RTS: %s", self.name, err)
            return False
        return True

    # ---- opening: the handshake and baud probing ------------------------------------------------------

    async def _connect(self) -> None:
        """One open attempt per baud rate to try, until the master answers at one."""
        for baud in self._bauds:
            self.baud = baud
            try:
                await super()._connect()
            except HandshakeError:
                if baud == self._bauds[-1]:
                    raise
                _LOGGER.debug("%s: no answer at %d baud, trying the next rate", self.name, baud)
                continue
            if len(self._bauds) > 1:
                _LOGGER.info("%s: master answers at %d baud", self.name, baud)
                # try this rate first when reconnecting: the master does not change it
                self._bauds = (baud, *(rate for rate in self._bauds if rate != baud))
            return

    async def _handshake(self) -> None:
        """UC2-REST's test of a port: a board that answers ``/state_get`` in a frame speaks UC2."""
        try:
            timeout = self.hat_settings.handshake_timeout
            reply = await self._exchange(commands.state_command(), reply=None, timeout=timeout, send_qid=True)
            identity = commands.parse_identity(reply)
        except (LinkTimeoutError, LinkProtocolError) as err:
            message = f"{self.url}: no UC2 master answered /state_get at {self.baud} baud ({err})"
            raise HandshakeError(message, port=self.url) from err
        if not identity.is_master:
            _LOGGER.warning("%s: the board is not a master build: pindef=%r", self.name, identity.pindef)
        _LOGGER.info(
            "%s: master %s pindef=%s version=%s built=%s",
            self.name, identity.name, identity.pindef, identity.version or "-", identity.build_date,
        )  # fmt: skip
        self.identity = identity

    # ---- the port -------------------------------------------------------------------------------------

    def _open(self) -> Any:
        target = self._resolve_target()
        try:
            port = serial.serial_for_url(
                target,
                baudrate=self.baud,
                timeout=self.settings.read_interval,
                write_timeout=self.settings.write_timeout,
                # one owner at a time: a second uc2otad (or anything else that locks) gets an error
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as err:
            if "exclusively lock" in str(err):  # pyserial's words when flock(LOCK_EX | LOCK_NB) fails
                raise PortInUseError(
                    f"{self.url}: {target} is in use by another program", port=self.url
                ) from err
            raise LinkOpenError(f"{self.url}: cannot open {target}: {err}", port=self.url) from err
        if hasattr(port, "cancel_read"):
            # device paths and ptys: block until bytes come, and let close() interrupt the read, so an
            # idle link never wakes the daemon; sockets cannot be interrupted and keep the interval
            port.timeout = None
        if "://" not in self.url and self._port_identity is None:
            self._port_identity = identify_port(target, self._list_ports())
        return port

    def _resolve_target(self) -> str:
        """The URL itself, or for a device path the adapter with the remembered USB identity."""
        if self._port_identity is not None:
            found = find_port(self._port_identity, self._list_ports())
            if found is not None and found != self.url:
                _LOGGER.info("%s: adapter found again as %s", self.name, found)
                return found
        return self.url

    def _read(self, port: Any, limit: int) -> bytes:
        waiting = port.in_waiting
        data: bytes = port.read(min(waiting, limit) if waiting else 1)
        return data

    def _write(self, port: Any, data: bytes) -> None:
        try:
            port.write(data)
        except serial.SerialTimeoutException as err:
            message = f"{self.url}: write of {len(data)} bytes timed out after {self.settings.write_timeout}s"
            raise LinkTimeoutError(message, port=self.url) from err
        except (serial.SerialException, OSError) as err:
            raise LinkIOError(f"{self.url}: write failed: {err}", port=self.url) from err

    def _interrupt(self, port: Any) -> None:
        cancel_read = getattr(port, "cancel_read", None)  # device paths and ptys have it; sockets do not
        if cancel_read is not None:
            try:
                cancel_read()
            except (serial.SerialException, OSError) as err:
                _LOGGER.debug("%s: cancel_read: %s", self.name, err)

    def _open_port_now(self) -> Any:
        session = self._session
        if session is None:
            raise LinkClosedError(f"{self.name}: port is not open", port=self.name)
        return session.port

    def _close(self, port: Any) -> None:
        try:
            port.close()
        except (serial.SerialException, OSError) as err:  # closing a port that vanished may complain
            _LOGGER.debug("%s: close: %s", self.name, err)


def _pulse_reset(port: Any) -> None:
    """DTR off, RTS on for the pulse, then both off: the board runs again (UC2-REST ``tryToConnect``)."""
    port.dtr = False
    port.rts = True
    time.sleep(ota_stream.RESET_PULSE)
    port.dtr = False
    port.rts = False
