"""The master CAN HAT on a serial port: pyserial underneath, the HAT's commands on top.

Any pyserial URL works (``serial_for_url``): a device path, a pty, ``socket://host:port``,
``rfc2217://host:port``. Opening runs the UC2-REST handshake (``/state_get``, answered in a ``++``
frame), so an open link is known to reach a UC2 master; with baud probing, the other of the two baud
rates the HATs use is tried when the first gets no answer (``uc2-stack.md`` §2.1).

Main constraint: the HAT's USB port comes and goes (unplug, reboot into the ROM loader for flashing).
A lost port reconnects with backoff, to the same path or, for a plain device path, to the adapter found
again by its USB identity (:mod:`uc2otad.links.ports`). A master that answers nothing may still be in
binary mode from a stream its host abandoned; opening with ``recover`` gets it out first
(:meth:`SerialHatLink._connect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
    MasterRebootedError,
    PortInUseError,
)
from uc2otad.links import commands, ota_stream, ota_wifi
from uc2otad.links.base import Link, LinkSettings
from uc2otad.links.commands import BusHealth, MasterIdentity, ScanResult
from uc2otad.links.ota_stream import StreamSettings
from uc2otad.links.ota_wifi import WifiOtaSettings
from uc2otad.links.ports import PortIdentity, find_port, identify_port
from uc2otad.links.protocol import LinkCapability, Progress, StreamResult, WifiOtaResult
from uc2otad.links.replies import EventStream, JsonObject

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
    """The master CAN HAT at ``url``: a :class:`~uc2otad.links.protocol.MasterLink`.

    Its update procedures are :mod:`.ota_stream` and :mod:`.ota_wifi`, which it calls with itself as
    their :class:`~uc2otad.links.hat_channel.HatChannel`.

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
        #: the scan in flight per probe range (None: a plain scan); callers meanwhile share it
        self._scans: dict[tuple[int, int] | None, asyncio.Future[ScanResult]] = {}
        #: the master may be in binary mode and the recovery has not been tried (:meth:`_connect`): at
        #: first, since another process may have left it streaming; again when a stream lost the port
        self._recovery_armed = True
        #: the daemon is stopping (:meth:`leave`)
        self._leaving = False

    def leave(self) -> None:
        """The daemon is stopping: a stream abandoned from now on does not wait for the master.

        Waiting out the master's ``rx_timeout`` (30 s, and our margin) does not fit in the unit's
        ``TimeoutStopSec=30s``, and nobody needs the link afterwards: so the master is reset where the
        port has modem lines, without waiting for it to boot, and otherwise left in binary mode for the
        next start's recovery (:meth:`_connect`), which waits it out (issue 15, D9).
        """
        self._leaving = True

    @property
    def capabilities(self) -> frozenset[LinkCapability]:
        """Streaming on a CANopen master, the WiFi trigger on a legacy one; nothing before the handshake.

        The firmware generation decides, as ``pindef`` names it (``uc2-stack.md`` §10): a CANopen master
        ignores the WiFi command, a legacy one has no ``/ota_start``.
        """
        if self.identity is None:
            return frozenset()
        if self.identity.is_canopen:
            return frozenset({LinkCapability.STREAM})
        return frozenset({LinkCapability.WIFI_TRIGGER})

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

        Concurrent calls share one scan: a call made while a scan with the same ``probe_range`` is in
        flight gets that scan's result (or error) and sends nothing, so a burst of callers costs the
        master one command (issue 15, D5). Cancelling one caller does not cancel the scan for the others.

        :param probe_range: also SDO-probe these ids (inclusive) for nodes outside the routing table
        :raises ValueError: a probe range outside 1..127
        :raises LinkError: see :meth:`Link.request`; LinkProtocolError for a reply without a scan list
        """
        command = commands.scan_command(probe_range)  # checks the range before anything is shared
        self._check_usable()  # each caller's own: one outside an exclusive() block gets LinkBusyError
        shared = self._scans.get(probe_range)
        if shared is None or shared.done():
            shared = asyncio.ensure_future(self._scan_once(command, probe_range))
            self._scans[probe_range] = shared
            shared.add_done_callback(functools.partial(self._scan_done, probe_range))
        return await asyncio.shield(shared)

    async def _scan_once(self, command: JsonObject, probe_range: tuple[int, int] | None) -> ScanResult:
        settings = self.hat_settings
        timeout = settings.scan_timeout if probe_range is None else settings.probe_scan_timeout
        async with self._scan_turn:
            return commands.parse_scan(await self.request(command, timeout=timeout))

    def _scan_done(self, probe_range: tuple[int, int] | None, scan: asyncio.Future[ScanResult]) -> None:
        if self._scans.get(probe_range) is scan:
            del self._scans[probe_range]
        if not scan.cancelled():
            scan.exception()  # retrieved: callers that all went away leave no "never retrieved" warning

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
        try:
            return await ota_stream.stream_image(
                self, node_id, image, settings=settings, progress=progress, on_flashing=on_flashing
            )
        except LinkIOError:  # the port went away (LinkLostError) or failed a write: the link reconnects
            self._recovery_armed = True  # and the master may still be swallowing bytes (see _connect)
            raise

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
        return await self._reset_through_modem_lines()

    async def end_binary_mode(self, events: EventStream, why: str) -> bool:
        """Get a master that may still be in binary mode back to reading JSON (:meth:`_end_binary_mode`).

        For a stream the host abandoned, from inside its hold on the link (:mod:`.ota_stream`).

        :raises LinkClosedError: the link is not open
        :raises LinkBusyError: another task holds the link
        """
        self._check_usable()
        return await self._end_binary_mode(events, why)

    # ---- a master left in binary mode -----------------------------------------------------------------

    async def _end_binary_mode(self, events: EventStream, why: str) -> bool:
        """Bring a master that may be in binary mode back to reading JSON, writing nothing it would swallow.

        After "ready" the firmware's serial loop hands every byte to ``OtaBinaryReceive::processBytes``
        (``SerialProcess.cpp:401-403`` @063e5a6), which restarts its silence clock with each byte it
        reads (``OtaBinaryReceive.cpp:207``) and ends the stream only after ``RX_TIMEOUT_MS``, 30 s,
        without one (``:32, 236``), writing ``{"ota_status":"error","error":"rx_timeout"}``. So a host
        that stopped mid-stream (cancelled, timed out, killed) leaves a master that takes whatever comes
        next, a ``/state_get`` included, for firmware and starts counting again. The two ways out, as
        ``uc2-stack.md`` §2.2 step 6:

        - the port has modem lines (a USB-UART HAT): reset the board through them, as UC2-REST's
          ``tryToConnect`` does, and ask ``/state_get`` until the booted master answers
          (``stream.reset_boot_timeout``);
        - it has none (a pty, ``socket://``): write nothing until the master's last word on ``events``
          (which must carry ``ota_status``), its ``rx_timeout`` at the latest
          (``stream.master_rx_timeout`` + ``stream.recovery_margin``).

        :param why: how the caller came to suspect binary mode, for the log
        :returns: True when the master was reset, False when it was waited out
        :raises TimeoutError: the reset master did not answer, or no last word came in time
        :raises LinkError: the port went away (or the master rebooted) meanwhile
        """
        settings = self.hat_settings.stream
        if await self._reset_through_modem_lines():
            _LOGGER.warning("%s: %s; master reset through DTR/RTS to end its binary mode", self.name, why)
            if self._leaving:
                return True  # it boots while we exit; the next start's handshake waits for it
            async with asyncio.timeout(settings.reset_boot_timeout):
                while True:
                    with contextlib.suppress(LinkTimeoutError, MasterRebootedError):
                        await self._exchange(
                            commands.state_command(),
                            reply=None,
                            timeout=self.hat_settings.handshake_timeout,
                            send_qid=True,
                        )
                        return True
        if self._leaving:
            _LOGGER.warning(
                "%s: %s while the daemon stops; the port cannot reset the master: it is left in binary "
                "mode, which its rx_timeout ends within %ss, and the next start waits for that",
                self.name, why, settings.master_rx_timeout,
            )  # fmt: skip
            return False
        wait = settings.master_rx_timeout + settings.recovery_margin
        _LOGGER.warning(
            "%s: %s; the port cannot reset the master: staying silent up to %ss until its rx_timeout ends "
            "binary mode",
            self.name,
            why,
            wait,
        )
        async with asyncio.timeout(wait):
            while (await events.get()).get("ota_status") not in ("error", "success"):
                pass  # ota_rx and "flashing" lines: the master is still busy with the stream
        return False

    async def _reset_through_modem_lines(self) -> bool:
        """:meth:`pulse_reset` without the checks: False when the port has no modem lines."""
        port = self._open_port_now()
        if "://" in self.url and not self.url.startswith("rfc2217://"):
            return False  # pyserial's socket:// and loop:// accept DTR/RTS and silently do nothing
        try:
            await asyncio.to_thread(_pulse_reset, port)
        except (serial.SerialException, OSError) as err:  # ENOTTY: no modem lines
            _LOGGER.debug("%s: no reset through DTR/RTS: %s", self.name, err)
            return False
        return True

    async def _recover_silent_master(self) -> None:
        """Before the handshake of the recovery round: the port is open and read, nothing written yet."""
        async with self.listen("ota_status") as events:
            try:
                await self._end_binary_mode(events, "no master answers /state_get")
            except TimeoutError:
                _LOGGER.warning("%s: the master did not come back within the recovery's wait", self.name)
            except MasterRebootedError:
                pass  # binary mode ends with the master's RAM

    # ---- opening: the handshake and baud probing ------------------------------------------------------

    async def _connect(self, *, recover: bool) -> None:
        """Try each baud rate until the master answers; when none does, ``recover`` once.

        A master that answers at no rate may be in binary mode, left there by a host that stopped
        mid-stream: a daemon killed while uploading and restarted by systemd within the master's 30 s, or
        this link's stream when the port went away under it. Handshakes, one every few seconds, would
        keep it there for good. So when no master answers and it may be so, the link gets it out
        (:meth:`_end_binary_mode`: a reset where the port can, else silence past its ``rx_timeout``) and
        asks again, at the first rate. Once: a master that is merely absent or hung is then tried at the
        usual pace, and one that answered is known to read JSON (a USB flash's reopening waits for
        nothing). A new link, and a stream that loses the port, arm it again.
        """
        try:
            await self._connect_at_any_baud()
        except HandshakeError:
            if not (recover and self._recovery_armed):
                raise
            self._recovery_armed = False
            self.baud = self._bauds[0]
            started = time.monotonic()
            await self._connect_once(self._recover_silent_master)
            _LOGGER.info(
                "%s: master back %0.1fs after the recovery began", self.name, time.monotonic() - started
            )
        self._recovery_armed = False

    async def _connect_at_any_baud(self) -> None:
        """One open attempt per baud rate to try, until the master answers at one."""
        for baud in self._bauds:
            self.baud = baud
            try:
                await self._connect_once()
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
