"""A simulated ESP32 board's ArduinoOTA service, faithful to the wire of the Arduino-ESP32 core.

Written from ``arduino-ota.md`` §1-§3.5 alone:
- UDP on port 3232: IDLE → (WAITAUTH →) RUNUPDATE. Malformed input is ignored without a word; replies
  carry no newline and go back to the datagram's source address and port.
- The board connects back over TCP to the source address of the datagram that got the final "OK", at the
  invitation's port; an image larger than the partition fails ``Update.begin`` and there is no call-back.
- It reads at most 1460 bytes at a time, and acks each read with its decimal count, no delimiter. After
  an idle second it repeats the last ack, up to three times, then gives up ("Receive Failed").
- The ``Update`` library (:mod:`ota_update`) buffers 4 KB sectors, checks 0xE9 on the first flush and
  the MD5 at the end; the board then sends "OK" or the error text + CRLF, closes, and on success
  reboots into the new image.

Like the firmware's ``handle()`` loop the board does one thing at a time: datagrams that arrive during
an update wait in a short queue (lwIP's UDP mailbox) and are handled afterwards; during a reboot they are
lost.

Faults (:class:`BoardFaults`) switch at run time and apply from the next datagram or upload: a wrong
password, a connection dropped or stalled at N %, a corrupted byte, a flash write error, slow flash, a
network delay on everything the board sends (which never holds up its reading), and random read sizes.

Main constraint: nothing here comes from ``uc2otad.methods`` or ``uc2otad.firmware``. The board binds
the address it is given; tests give it loopback addresses only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType

from uc2otad.sim.app_desc import app_version
from uc2otad.sim.ota_auth import BoardAuth, expected_response, field_length, new_nonce, stored_password
from uc2otad.sim.ota_update import U_FLASH, U_SPIFFS, FlashTiming, FlashUpdate

_LOGGER = logging.getLogger(__name__)

#: ArduinoOTA's default UDP port (D-3x ``begin()``)
ARDUINO_OTA_PORT = 3232
#: ``app0``/``app1`` of the Arduino default partition table, and the slaves' (PT; uc2-stack.md §3.1)
OTA_PARTITION_SIZE = 0x140000
#: ``spiffs`` of the Arduino default partition table (PT)
FILESYSTEM_PARTITION_SIZE = 0x160000
#: the board's static read buffer (D-3x ``static uint8_t buf[1460]``)
READ_SIZE = 1460
#: ``_ota_timeout``: how long the board waits for data before repeating its ack (D-3x, 1000 ms)
IDLE_TIMEOUT = 1.0
#: repeated acks before "Receive Failed" (D-3x ``tried++ < 3``)
ACK_REPEATS = 3
#: ``NetworkClient::connect`` gives up after 3 s (``WIFI_CLIENT_DEF_CONN_TIMEOUT_MS``)
CONNECT_TIMEOUT = 3.0
#: lwIP's receive window (``CONFIG_LWIP_TCP_WND_DEFAULT`` 5760 = 4 MSS of 1440): a real board takes no
#: more than this before it reads, so a host cannot run far ahead of it
TCP_WINDOW = 5760
#: lwIP's UDP receive mailbox (``CONFIG_LWIP_UDP_RECVMBOX_SIZE`` default 6): datagrams beyond it are lost
UDP_QUEUE_LEN = 6
#: after "OK": ``client.stop(); delay(10)``, end callback, ``delay(100)``, ``ESP.restart()`` (D-3x)
RESTART_DELAY = 0.11
#: from restart to answering again; the procedure document's "Device reboot: 3-5 seconds"
REBOOT_TIME = 3.0
#: the authentication command (``U_AUTH``, §2)
U_AUTH = 200
#: ``INT_BUFFER_SIZE`` 16 (D-h): ``parseInt`` reads at most 15 digits
_INT_DIGITS = 15
_INT32_MAX = 2**31 - 1


class BoardState(Enum):
    """The OTA state of the board.

    IDLE → WAITAUTH (password set: "AUTH <nonce>" sent) → RUNUPDATE ("OK" sent) → IDLE after the update
    ended badly, or → REBOOTING → IDLE after it ended well. WAITAUTH → IDLE on any datagram that is not
    the right answer (a wrong one gets "Authentication Failed", a malformed one nothing).
    """

    IDLE = "idle"
    WAITAUTH = "waitauth"
    RUNUPDATE = "runupdate"
    REBOOTING = "rebooting"


@dataclass(frozen=True)
class OtaBoardConfig:
    """What the board is; defaults are a stock sketch on the Arduino default partition table."""

    ip: str = "127.0.0.1"
    #: 0 binds a free port (see :attr:`OtaBoard.port`)
    port: int = ARDUINO_OTA_PORT
    #: None: no authentication
    password: str | None = None
    auth: BoardAuth = BoardAuth.MD5
    #: the sketch stores an MD5 hex with ``setPasswordHash`` (a PBKDF2 host must fall back to it)
    password_is_md5_hash: bool = False
    partition_size: int = OTA_PARTITION_SIZE
    filesystem_size: int = FILESYSTEM_PARTITION_SIZE
    idle_timeout: float = IDLE_TIMEOUT
    reboot_time: float = REBOOT_TIME
    #: the image the board runs at start
    firmware: bytes = b""


@dataclass(frozen=True)
class BoardFaults:
    """Switchable misbehaviour; the default is a healthy board on a fast network with instant flash."""

    #: answer "Authentication Failed" to every authentication, as a board with another password would
    wrong_password: bool = False
    #: close the TCP connection without a word once this share of the image has arrived
    drop_at_percent: float | None = None
    #: stop reading (and acking) once this share has arrived, for ``stall_seconds`` (inf: for good)
    stall_at_percent: float | None = None
    stall_seconds: float = math.inf
    #: flip this byte of the image as it arrives, so that the MD5 check fails
    corrupt_offset: int | None = None
    #: the sector write covering this image offset fails ("Flash Write Failed")
    flash_write_error_at: int | None = None
    #: flash busy times; slow flash stalls the board's reads and acks, as on hardware
    flash: FlashTiming = field(default_factory=FlashTiming)
    #: seconds until anything the board sends (UDP answers, acks, its result) reaches the host; the
    #: board goes on reading meanwhile. An ESP32 in WiFi modem-sleep answers in tens of ms
    network_delay: float = 0.0
    #: read random sizes 1..1460 with this seed instead of all that arrived: split acks for the host
    random_read_seed: int | None = None


@dataclass
class BoardCounters:
    """What happened so far, for tests and benchmarks."""

    #: well-formed invitations answered
    invitations: int = 0
    #: datagrams dropped without a word: malformed, unexpected, queue full, or during a reboot
    ignored_datagrams: int = 0
    auth_failures: int = 0
    #: invitations accepted and then refused by ``Update.begin`` (too large, size 0): no call-back
    begin_errors: int = 0
    #: TCP call-backs made
    sessions: int = 0
    reads: int = 0
    largest_read: int = 0
    acks: int = 0
    repeated_acks: int = 0
    bytes_received: int = 0
    #: updates that ended with "OK"
    updates: int = 0
    #: updates that ended otherwise (error text, receive failure, dropped)
    failed_updates: int = 0
    #: time the simulated flash was busy: the best any host can do is image size / this
    flash_seconds: float = 0.0


@dataclass
class _Invitation:
    """What an accepted invitation asks for, and where to connect back."""

    command: int
    port: int
    size: int
    md5: str
    callback_ip: str = ""
    nonce: str = ""


class _Datagram:
    """A datagram read the way ArduinoOTA reads it: ``parseInt``, ``read``, ``readStringUntil``."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def peek(self) -> int:
        return self._data[self._pos] if self._pos < len(self._data) else -1

    def read(self) -> int:
        value = self.peek()
        if value >= 0:
            self._pos += 1
        return value

    def parse_int(self) -> int:
        """Skip spaces, then ``atoi`` of up to 15 digits; 0 when there are more (ArduinoOTA ``parseInt``)."""
        while self.peek() == ord(" "):
            self.read()
        digits = b""
        while len(digits) < _INT_DIGITS:
            if not ord("0") <= self.peek() <= ord("9"):
                # atoi (strtol) saturates at INT_MAX on the 32-bit board
                return min(int(digits or b"0"), _INT32_MAX)
            digits += bytes([self.read()])
        return 0

    def read_until(self, end: str) -> str:
        """Characters up to ``end``, a NUL or the end of the datagram; ``end`` is consumed."""
        chars = []
        while (value := self.read()) > 0 and value != ord(end):
            chars.append(chr(value))
        return "".join(chars)


class _DelayLine:
    """Everything the board writes on one connection reaches the host ``delay`` seconds later, in
    order; the board itself never waits for it (the network delay fault)."""

    def __init__(self, writer: asyncio.StreamWriter, delay: float) -> None:
        self._writer = writer
        self._delay = delay
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._task = asyncio.create_task(self._deliver()) if delay > 0 else None

    def send(self, data: bytes) -> None:
        if self._task is None:
            self._write(data)
        else:
            self._queue.put_nowait((asyncio.get_running_loop().time() + self._delay, data))

    async def close(self) -> None:
        """Deliver what is still on its way, then close the connection (``client.stop()``)."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    def abort(self) -> None:
        """Drop the connection at once (the board was stopped)."""
        if self._task is not None:
            self._task.cancel()
        self._writer.transport.abort()

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self._queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            self._write(data)
            self._queue.task_done()

    def _write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)


class _DatagramEndpoint(asyncio.DatagramProtocol):
    def __init__(self, deliver: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._deliver = deliver

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._deliver(data, addr)


class OtaBoard:
    """One simulated board's ArduinoOTA service; use ``async with OtaBoard(config) as board``.

    :param config: what the board is
    :param faults: how it misbehaves; :attr:`faults` may be replaced at any time
    """

    def __init__(self, config: OtaBoardConfig | None = None, *, faults: BoardFaults | None = None) -> None:
        self.config = config or OtaBoardConfig()
        self.faults = faults or BoardFaults()
        self.counters = BoardCounters()
        #: the image the board boots; replaced by a successful FLASH update at reboot
        self.running_image = self.config.firmware
        #: the last file system image received
        self.filesystem_image: bytes | None = None
        #: reboots into a new image so far
        self.boots = 0
        #: the board's words for how its last update failed ("MD5 Check Failed", "Receive Failed", …)
        self.last_error: str | None = None
        self._state = BoardState.IDLE
        self._stored_password = (
            None
            if self.config.password is None
            else stored_password(
                self.config.auth, self.config.password, md5_hash=self.config.password_is_md5_hash
            )
        )
        self._inbox: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue(UDP_QUEUE_LEN)
        self._invitation: _Invitation | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._port = self.config.port
        self._started_at = 0.0
        #: how much later than planned the last flash stall ended (see _flash_busy)
        self._flash_lateness = 0.0

    def __repr__(self) -> str:
        return f"OtaBoard({self.config.ip}:{self._port}, state={self._state.value})"

    @property
    def state(self) -> BoardState:
        return self._state

    @property
    def port(self) -> int:
        """The UDP port bound (the configured one, or the free port chosen for 0)."""
        return self._port

    @property
    def running_version(self) -> str | None:
        """The app descriptor's version of the running image, as the booted board reports it."""
        return app_version(self.running_image)

    async def start(self) -> None:
        """Bind the UDP port and start serving.

        :raises OSError: the address cannot be bound
        """
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramEndpoint(self._on_datagram), local_addr=(self.config.ip, self.config.port)
        )
        self._transport = transport
        self._port = transport.get_extra_info("sockname")[1]
        self._started_at = loop.time()
        self._task = asyncio.create_task(self._serve(), name=f"{self!r}")
        _LOGGER.info("%s: OTA server at %s:%d", self, self.config.ip, self._port)

    async def stop(self) -> None:
        """Power off: stop serving and drop any connection. Safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> OtaBoard:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_until(self, predicate: Callable[[OtaBoard], bool]) -> None:
        """Return once ``predicate(board)`` holds; it is checked after every change of state or counter."""
        while True:
            changed = self._changed
            if predicate(self):
                return
            await changed.wait()

    # ---- UDP: the handle() loop ------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        if self._state is BoardState.REBOOTING or self._inbox.full():
            self.counters.ignored_datagrams += 1
            self._notify()
            return
        self._inbox.put_nowait((data, source))

    async def _serve(self) -> None:
        """``handle()``: one datagram at a time, and the whole update inline when one was accepted."""
        while True:
            data, source = await self._inbox.get()
            try:
                await self._on_rx(_Datagram(data), source)
                self._notify()
                if self._state is BoardState.RUNUPDATE and self._invitation is not None:
                    await self._run_update(self._invitation)
            except Exception:
                # a bug of the simulator, not a behaviour of the board: say so loudly, and keep serving
                # as a real board's watchdog reset would
                _LOGGER.exception("%s: crashed handling a datagram from %s", self, source[0])
                self._set_state(BoardState.IDLE)

    async def _on_rx(self, datagram: _Datagram, source: tuple[str, int]) -> None:
        """ArduinoOTA ``_onRx`` for the current state."""
        if self._state is BoardState.IDLE:
            self._on_invitation(datagram, source)
        elif self._state is BoardState.WAITAUTH and self._invitation and self._stored_password:
            await self._on_auth(datagram, source, self._invitation, self._stored_password)

    def _on_invitation(self, datagram: _Datagram, source: tuple[str, int]) -> None:
        command = datagram.parse_int()
        if command not in (U_FLASH, U_SPIFFS):
            self._ignore(source, f"command={command}")
            return
        port = datagram.parse_int()
        size = datagram.parse_int()
        datagram.read()  # the separator
        md5 = datagram.read_until("\n").strip()
        if len(md5) != 32:
            self._ignore(source, "bad md5 length")
            return
        self.counters.invitations += 1
        invitation = _Invitation(command, port, size, md5)
        self._invitation = invitation
        if self._stored_password is None:
            invitation.callback_ip = source[0]
            self._reply(b"OK", source)
            self._set_state(BoardState.RUNUPDATE)
            return
        micros = int((asyncio.get_running_loop().time() - self._started_at) * 1e6)
        invitation.nonce = new_nonce(self.config.auth, micros)
        self._reply(f"AUTH {invitation.nonce}".encode("ascii"), source)
        self._set_state(BoardState.WAITAUTH)

    async def _on_auth(
        self, datagram: _Datagram, source: tuple[str, int], invitation: _Invitation, stored: str
    ) -> None:
        """Any datagram in WAITAUTH is taken as the answer, from whoever sent it (§2)."""
        command = datagram.parse_int()
        if command != U_AUTH:
            self._set_state(BoardState.IDLE)
            self._ignore(source, f"{U_AUTH} was expected, got {command}")
            return
        datagram.read()
        cnonce = datagram.read_until(" ")
        response = datagram.read_until("\n")
        length = field_length(self.config.auth)
        if len(cnonce) != length or len(response) != length:
            self._set_state(BoardState.IDLE)
            self._ignore(source, "auth param fail")
            return
        # PBKDF2 takes milliseconds: off the loop (the real board blocks, but our loop serves others too)
        expected = await asyncio.to_thread(
            expected_response, self.config.auth, stored, invitation.nonce, cnonce
        )
        if response == expected and not self.faults.wrong_password:
            invitation.callback_ip = source[0]
            self._reply(b"OK", source)
            self._set_state(BoardState.RUNUPDATE)
            return
        self.counters.auth_failures += 1
        _LOGGER.info("%s: Authentication Failed from %s", self, source[0])
        self._reply(b"Authentication Failed", source)
        self._set_state(BoardState.IDLE)

    def _reply(self, data: bytes, destination: tuple[str, int]) -> None:
        """Answer to the datagram's source, no newline, after the network delay."""
        delay = self.faults.network_delay
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send_datagram, data, destination)
        else:
            self._send_datagram(data, destination)

    def _send_datagram(self, data: bytes, destination: tuple[str, int]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, destination)

    def _ignore(self, source: tuple[str, int], reason: str) -> None:
        self.counters.ignored_datagrams += 1
        _LOGGER.debug("%s: ignoring a datagram from %s: %s", self, source[0], reason)

    # ---- TCP: _runUpdate() ----------------------------------------------------------------------------

    async def _run_update(self, invitation: _Invitation) -> None:
        """Begin the update, connect back, receive, end; reboot after "OK". Back in IDLE otherwise."""
        faults = self.faults
        update = FlashUpdate(faults.flash, write_error_at=faults.flash_write_error_at)
        partition = (
            self.config.partition_size if invitation.command == U_FLASH else self.config.filesystem_size
        )
        if not update.begin(invitation.size, invitation.command, partition):
            # the host got its "OK" and now waits in vain for the call-back (§4.5)
            self.counters.begin_errors += 1
            self._fail(f"Begin ERROR: {update.error_text}")
            return
        update.set_md5(invitation.md5)
        try:
            reader, writer = await self._connect(invitation.callback_ip, invitation.port)
        except OSError as err:
            self._fail(f"connect failed: {err}")
            return
        self.counters.sessions += 1
        line = _DelayLine(writer, faults.network_delay)
        try:
            failure = await self._receive(reader, line, update, invitation.size, faults)
            await line.close()
        except BaseException:
            line.abort()
            raise
        if failure is not None or update.image is None:
            self._fail(failure or "no image")
            return
        self.counters.updates += 1
        await self._reboot(update.image, invitation.command)

    async def _connect(self, ip: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect from the board's own address, with a receive buffer the size of lwIP's window."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TCP_WINDOW)
            # Nagle would hold the error text behind a not yet acknowledged ack, and closing with the
            # host's bytes unread resets the connection, discarding it: the host would never see "Wrong
            # Magic Byte". lwIP can do the same, but the spec has the host read the text (§3.3, §4.6)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.config.ip, 0))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await asyncio.get_running_loop().sock_connect(sock, (ip, port))
            # the stream pauses reading above twice the limit: a window's worth buffered, like lwIP
            return await asyncio.open_connection(sock=sock, limit=TCP_WINDOW // 2)
        except BaseException:
            sock.close()
            raise

    async def _receive(
        self,
        reader: asyncio.StreamReader,
        line: _DelayLine,
        update: FlashUpdate,
        size: int,
        faults: BoardFaults,
    ) -> str | None:
        """The receive loop and its last words ("OK", or the error + CRLF); None, or why it failed."""
        read_size = _read_sizes(faults.random_read_seed)
        stall_at = _threshold(size, faults.stall_at_percent)
        drop_at = _threshold(size, faults.drop_at_percent)
        received = written = repeats = 0
        while not update.finished and not reader.at_eof():
            if received >= stall_at:
                stall_at = math.inf  # once
                await _sleep(faults.stall_seconds)
            try:
                async with asyncio.timeout(self.config.idle_timeout):
                    data = await reader.read(read_size())
            except ConnectionError:
                break  # the host reset the connection: client.connected() is false
            except TimeoutError:
                if written and repeats < ACK_REPEATS:
                    repeats += 1
                    self.counters.repeated_acks += 1
                    line.send(str(written).encode("ascii"))
                    continue
                update.abort()
                return "Receive Failed"  # the board closes without a word
            if not data:
                break  # the host closed: client.connected() is false
            repeats = 0
            data = _corrupt(data, received, faults.corrupt_offset)
            received += len(data)
            self._count_read(len(data))
            if received >= drop_at:
                update.abort()
                return f"dropped at received={received} (fault)"
            written = update.write(data)
            await self._flash_busy(update.take_busy_seconds())
            if written > 0:
                self.counters.acks += 1
                line.send(str(written).encode("ascii"))
            else:
                _LOGGER.debug("%s: Write ERROR: %s", self, update.error_text)
        if update.end():
            line.send(b"OK")
            return None
        line.send(update.error_text.encode("ascii") + b"\r\n")  # Update.printError: println
        return update.error_text

    async def _flash_busy(self, seconds: float) -> None:
        """Stall for the flash work just done, as ``Update.write`` blocks the board's loop.

        A sleep ends a millisecond or two late on a busy host; over the ~230 flash operations of an
        image that would make the simulated flash 5-10 % slower than configured. The lateness of one
        stall is taken off the next, so that the flash as a whole runs at its configured speed.
        """
        if seconds <= 0:
            return
        self.counters.flash_seconds += seconds
        loop = asyncio.get_running_loop()
        planned = seconds - self._flash_lateness
        started = loop.time()
        if planned > 0:
            await asyncio.sleep(planned)
        self._flash_lateness = loop.time() - started - planned

    async def _reboot(self, image: bytes, command: int) -> None:
        """``ESP.restart()`` after the "OK": away for the reboot time, then running the new image."""
        self._set_state(BoardState.REBOOTING)
        await asyncio.sleep(RESTART_DELAY + self.config.reboot_time)
        if command == U_FLASH:
            self.running_image = image
            self.boots += 1
        else:
            self.filesystem_image = image
        while not self._inbox.empty():  # what arrived before the restart is gone with the old RAM
            self._inbox.get_nowait()
        _LOGGER.info("%s: booted version=%s", self, self.running_version)
        self._set_state(BoardState.IDLE)

    def _fail(self, reason: str) -> None:
        self.counters.failed_updates += 1
        self.last_error = reason
        _LOGGER.info("%s: update failed: %s", self, reason)
        self._set_state(BoardState.IDLE)

    def _count_read(self, length: int) -> None:
        counters = self.counters
        counters.reads += 1
        counters.bytes_received += length
        counters.largest_read = max(counters.largest_read, length)
        self._notify()

    def _set_state(self, state: BoardState) -> None:
        if state is not self._state:
            _LOGGER.debug("%s: %s -> %s", self, self._state.value, state.value)
            self._state = state
        self._notify()

    def _notify(self) -> None:
        """Wake :meth:`wait_until` callers."""
        self._changed.set()
        self._changed = asyncio.Event()


def _read_sizes(seed: int | None) -> Callable[[], int]:
    """How much each read asks for: up to 1460, or a random 1..1460 when seeded."""
    if seed is None:
        return lambda: READ_SIZE
    rng = random.Random(seed)
    return lambda: rng.randint(1, READ_SIZE)


def _corrupt(data: bytes, start: int, offset: int | None) -> bytes:
    """``data`` (image bytes from ``start`` on) with the byte at image ``offset`` inverted, if it is here."""
    if offset is None or not start <= offset < start + len(data):
        return data
    corrupted = bytearray(data)
    corrupted[offset - start] ^= 0xFF
    return bytes(corrupted)


def _threshold(size: int, percent: float | None) -> float:
    """Bytes received at which a fault set at ``percent`` strikes; never when None."""
    return math.inf if percent is None else size * percent / 100


async def _sleep(seconds: float) -> None:
    if math.isinf(seconds):
        await asyncio.get_running_loop().create_future()  # for good: until the board is stopped
    else:
        await asyncio.sleep(seconds)
