"""The link template: one port to a master that speaks the UC2 serial JSON protocol.

As python-can's ``BusABC``, the base class owns what every link shares — its state, deadlines, logging,
reply matching, events and reconnecting — and a subclass owns only the port: ``_open``, ``_read``,
``_write`` and ``_close``. Those four block, and are only ever called from worker threads.

Main constraint: nothing blocks the event loop. Per open port, one reader thread reads (blocking for at
most ``read_interval``), parses, and hands complete items to the loop with ``call_soon_threadsafe``;
writes run in worker threads, one at a time. A port that fails is an event, not a crash: every waiting
command fails with :class:`~uc2otad.errors.LinkLostError` at once, and the link reconnects with backoff.

States (:class:`LinkState`)::

    CLOSED --open()--> OPENING --ok--> OPEN --port lost--> RECONNECTING --ok--> OPEN
              OPENING --failed--> CLOSED          RECONNECTING --policy gave up--> CLOSED
    any --close()--> CLOSED
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import re
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from uc2otad.errors import (
    LinkClosedError,
    LinkError,
    LinkIOError,
    LinkLostError,
    LinkTimeoutError,
    MasterRebootedError,
)
from uc2otad.links.capture import LinkCapture
from uc2otad.links.frames import FrameParser, FrameType, Item
from uc2otad.links.holder import LinkHolder
from uc2otad.links.reconnect import RECONNECT_POLICY, ReconnectLogic
from uc2otad.links.redact import redacted, redacted_text
from uc2otad.links.replies import EventHub, EventStream, JsonObject, PendingReplies, ReplyShape
from uc2otad.retry import RetryPolicy

_LOGGER = logging.getLogger(__name__)

#: log level of per-frame traffic, below DEBUG (python-can's ``RECV_LOGGING_LEVEL``)
TRAFFIC = 9
logging.addLevelName(TRAFFIC, "TRAFFIC")

#: seconds a command waits for its reply unless it says otherwise; UC2-REST's scan waits 5 s
REQUEST_TIMEOUT = 5.0
#: seconds the reader blocks per read while the line is idle. Bytes end the wait at once, and closing
#: interrupts it where the port can (pyserial's ``cancel_read``), so this only sets how often an idle
#: daemon wakes up: twice a second
READ_INTERVAL = 0.5
#: seconds a write may block (USB-serial flow control); UC2-REST's ``write_timeout`` is 1 s
WRITE_TIMEOUT = 1.0
#: seconds to wait for the reader thread to end on close; it ends within a read interval at most
CLOSE_TIMEOUT = 2.0
#: messages a listener may fall behind: a whole 8 MiB stream acknowledged every 4 KiB is 2048 lines,
#: and a listener that keeps up holds one or two
EVENT_QUEUE_SIZE = 1024
#: most bytes handed from the reader thread to the parser at once
READ_CHUNK = 4096
#: most commands awaiting their replies at once. The master queues what its serial task reads for its
#: main loop: ``xQueueCreate(16, …)`` on FW-main (``SerialProcess.cpp:350`` @063e5a6), ``xQueueCreate(5,
#: …)`` on FW-legacy (``:326`` @14fa3e3), and drops what comes while the queue is full ("Serial queue
#: full - dropping message"): the dropped command never gets a reply. One below the legacy depth, since
#: the command the master is handling may still hold its place
MAX_IN_FLIGHT = 4

# the reset reason the ESP32 ROM prints first after every reset ("rst:0xc (SW_CPU_RESET),boot:…", after
# "ets Jul 29 2019 …" on the ESP32, "ESP-ROM:esp32s3-…" on the S3); readable only when the link runs at
# the ROM's 115200 baud, garbage otherwise
_BOOT_BANNER = re.compile(r"^rst:0x[0-9a-fA-F]+ \(")

PortT = TypeVar("PortT")


class LinkState(Enum):
    """Where a link is in its life; the transitions are drawn in the module docstring."""

    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
    RECONNECTING = "reconnecting"


class ConnectionEvent(Enum):
    """What :meth:`Link.on_connection` listeners hear."""

    #: opened, or reconnected after a loss
    CONNECTED = "connected"
    #: the port went away; the link reconnects unless reconnecting is off
    LOST = "lost"
    #: the master's boot banner was seen: commands in flight were forgotten by the master
    MASTER_REBOOTED = "master_rebooted"
    #: closed by :meth:`Link.close`, or reconnecting gave up
    CLOSED = "closed"


@dataclass(frozen=True)
class LinkSettings:
    """Timeouts and limits of a link; tests shrink them instead of sleeping."""

    request_timeout: float = REQUEST_TIMEOUT
    read_interval: float = READ_INTERVAL
    write_timeout: float = WRITE_TIMEOUT
    close_timeout: float = CLOSE_TIMEOUT
    event_queue_size: int = EVENT_QUEUE_SIZE
    #: commands awaiting replies at once (:data:`MAX_IN_FLIGHT`); the rest wait for a place, and that
    #: wait is not part of their reply timeout
    max_in_flight: int = MAX_IN_FLIGHT
    reconnect: RetryPolicy = RECONNECT_POLICY
    #: where every byte on the port is recorded (``serial.capture``); shared by the links a daemon makes
    capture: LinkCapture | None = field(default=None, compare=False)


class _Session(Generic[PortT]):
    """One open port and the thread that reads it."""

    def __init__(self, port: PortT) -> None:
        self.port = port
        self.stop = threading.Event()
        self.reader: threading.Thread | None = None


class Link(abc.ABC, Generic[PortT]):
    """A link to a master: commands with replies, events by top-level key, reconnect on loss.

    Subclasses implement the four blocking port methods and may add a handshake (:meth:`_handshake`)
    that runs before the link counts as open.
    """

    def __init__(self, name: str, *, settings: LinkSettings | None = None, reconnect: bool = True) -> None:
        """
        :param name: how logs and errors name the link (its port or URL)
        :param reconnect: reopen the port when it is lost, with backoff (``settings.reconnect``)
        """
        self.name = name
        self.settings = settings or LinkSettings()
        self._auto_reconnect = reconnect
        self._state = LinkState.CLOSED
        self._session: _Session[PortT] | None = None
        self._pending = PendingReplies()
        self._events = EventHub()
        self._connection_listeners: list[Callable[[ConnectionEvent], None]] = []
        self._lifecycle = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._thread_write_lock = threading.Lock()
        self._shape_lock = asyncio.Lock()
        if self.settings.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._in_flight = asyncio.Semaphore(self.settings.max_in_flight)
        #: the thread that writes to the port: the link's own, so that a busy default executor (firmware
        #: downloads, the store) cannot hold a command back until its reply timeout has passed
        self._writer: ThreadPoolExecutor | None = None
        self._holder = LinkHolder()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnector = ReconnectLogic(
            name, self._reconnect_once, policy=self.settings.reconnect, on_give_up=self._gave_up
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, state={self._state.value})"

    def __del__(self) -> None:
        if getattr(self, "_state", LinkState.CLOSED) is not LinkState.CLOSED:
            warnings.warn(f"{self!r} was never closed", ResourceWarning, stacklevel=1)

    # ---- the port (blocking; worker threads only) -----------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> PortT:
        """Open the port.

        :raises LinkOpenError: it cannot be opened
        """

    @abc.abstractmethod
    def _read(self, port: PortT, limit: int) -> bytes:
        """Up to ``limit`` bytes; b"" when none came within ``settings.read_interval``.

        Any exception means the port is gone.
        """

    @abc.abstractmethod
    def _write(self, port: PortT, data: bytes) -> None:
        """Write all of ``data``.

        :raises LinkIOError: the port failed
        :raises LinkTimeoutError: it did not take the bytes within ``settings.write_timeout``
        """

    @abc.abstractmethod
    def _close(self, port: PortT) -> None:
        """Close the port; never raises."""

    def _interrupt(self, port: PortT) -> None:
        """Make a waiting ``_read`` return now, where the port can; never raises.

        Without it, stopping the reader waits up to ``settings.read_interval``.
        """

    async def _handshake(self) -> None:
        """Runs once the port is open and being read, before the link counts as open; uses :meth:`_exchange`.

        :raises LinkError: the peer is not usable; the port is closed again
        """

    # ---- state ----------------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is LinkState.OPEN

    def on_connection(self, callback: Callable[[ConnectionEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on every :class:`ConnectionEvent`; returns the unsubscriber."""
        self._connection_listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._connection_listeners:
                self._connection_listeners.remove(callback)

        return unsubscribe

    # the timeout is part of the question asked; its expiry becomes a LinkTimeoutError naming the link
    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return once the link is open (at once if it is).

        :raises LinkTimeoutError: not open within ``timeout`` seconds
        :raises LinkClosedError: closed meanwhile (or already), or reconnecting gave up
        """
        if self._state is LinkState.OPEN:
            return
        if self._state is LinkState.CLOSED:
            raise LinkClosedError(f"{self.name}: link is closed", port=self.name)
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_event(event: ConnectionEvent) -> None:
            if outcome.done():
                return
            if event is ConnectionEvent.CONNECTED:
                outcome.set_result(None)
            elif event is ConnectionEvent.CLOSED:
                outcome.set_exception(LinkClosedError(f"{self.name}: link closed", port=self.name))

        unsubscribe = self.on_connection(on_event)
        try:
            async with asyncio.timeout(timeout):
                await outcome
        except TimeoutError as err:
            raise LinkTimeoutError(f"{self.name}: not connected within {timeout}s", port=self.name) from err
        finally:
            unsubscribe()

    # ---- open and close -------------------------------------------------------------------------------

    async def open(self, *, recover: bool = False) -> None:
        """Open the port and run the handshake; no-op unless closed (a lost link reconnects by itself).

        :param recover: when the peer does not answer, let the link try to bring it back before giving
            up, which may take long (:class:`~uc2otad.links.serial_hat.SerialHatLink`: up to the master's
            ``rx_timeout``). For callers that may wait, such as a background opener; the link's own
            reconnects always do.
        :raises LinkOpenError: the port cannot be opened (HandshakeError: no master answers on it)
        :raises LinkLostError: the port went away while opening
        """
        async with self._lifecycle:
            if self._state is not LinkState.CLOSED:
                return
            self._loop = asyncio.get_running_loop()
            self._set_state(LinkState.OPENING)
            try:
                await self._connect(recover=recover)
            except BaseException:
                self._set_state(LinkState.CLOSED)
                raise
            self._set_state(LinkState.OPEN)
        _LOGGER.info("%s: open", self.name)
        self._notify(ConnectionEvent.CONNECTED)

    async def close(self) -> None:
        """Close the link: stop reconnecting, fail waiting commands, close the port. Safe to call twice."""
        was = self._state
        self._set_state(LinkState.CLOSED)  # at once, so that nothing new starts
        await self._reconnector.stop()
        # a lost port may still be closing in the background: let it finish, it holds the only handle
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._lifecycle:
            error = LinkClosedError(f"{self.name}: link closed", port=self.name)
            self._pending.fail_all(error)
            self._events.fail_streams(error)
            if self._session is not None:
                await self._end_session(self._session)
            self._stop_writer()
        if was is not LinkState.CLOSED:
            _LOGGER.info("%s: closed", self.name)
            self._notify(ConnectionEvent.CLOSED)

    def force_close(self) -> None:
        """Close the port at once, without waiting for anything; for process shutdown only."""
        self._set_state(LinkState.CLOSED)
        session, self._session = self._session, None
        if session is not None:
            session.stop.set()
            self._close(session.port)
        self._stop_writer()

    def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=False)  # its thread ends once a write in progress has

    async def _connect(self, *, recover: bool) -> None:
        """One way to connect: :meth:`_connect_once`. Subclasses that can try several (baud rates) or
        bring a silent peer back (``recover``, see :meth:`open`) override this."""
        await self._connect_once()

    async def _connect_once(self, prepare: Callable[[], Awaitable[None]] | None = None) -> None:
        """Open the port, start its reader, run ``prepare`` and the handshake; on any failure leave nothing
        open. ``prepare`` runs with the port open and read, before the link counts as open."""
        port = await self._open_port()
        session = _Session(port)
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(self._end_session, session)
            self._start_reader(session)
            self._session = session
            if prepare is not None:
                await prepare()
            await self._handshake()
            if self._session is not session:  # lost while the handshake's last reply was on its way
                raise LinkLostError(f"{self.name}: port lost while opening", port=self.name)
            undo.pop_all()

    async def _open_port(self) -> PortT:
        """``_open`` in a worker thread. A thread cannot be stopped, so when we are cancelled meanwhile we
        wait for it and close the port it opened: "cancelled" must not leave a port open behind us."""
        opening = asyncio.ensure_future(asyncio.to_thread(self._open_recorded))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            with contextlib.suppress(LinkError):  # it failed to open: nothing to close
                await asyncio.to_thread(self._close, await opening)
            raise

    def _open_recorded(self) -> PortT:
        port = self._open()
        if self.settings.capture is not None:
            self.settings.capture.record_open(self.name)
        return port

    async def _reconnect_once(self) -> None:
        async with self._lifecycle:
            if self._state is not LinkState.RECONNECTING:
                return
            await self._connect(recover=True)
            self._set_state(LinkState.OPEN)
        self._notify(ConnectionEvent.CONNECTED)

    def _gave_up(self) -> None:
        if self._state is LinkState.RECONNECTING:
            self._set_state(LinkState.CLOSED)
            self._notify(ConnectionEvent.CLOSED)

    async def _end_session(self, session: _Session[PortT]) -> None:
        """Stop the reader, then close the port (in that order: the reader must not read a closed fd)."""
        if self._session is session:
            self._session = None
        session.stop.set()
        reader = session.reader
        if reader is not None and reader is not threading.current_thread():
            await asyncio.to_thread(self._stop_reader, session.port, reader)
            if reader.is_alive():
                _LOGGER.warning("%s: reader did not stop within %ss", self.name, self.settings.close_timeout)
        await asyncio.to_thread(self._close, session.port)

    def _stop_reader(self, port: PortT, reader: threading.Thread) -> None:
        self._interrupt(port)
        reader.join(self.settings.close_timeout)
        if self.settings.capture is not None:
            self.settings.capture.flush()

    def _set_state(self, state: LinkState) -> None:
        if state is not self._state:
            _LOGGER.debug("%s: state %s -> %s", self.name, self._state.value, state.value)
            self._state = state

    def _notify(self, event: ConnectionEvent) -> None:
        for callback in list(self._connection_listeners):
            try:
                callback(event)
            except Exception:  # a listener's bug must not stop the link
                _LOGGER.exception("%s: connection listener %r failed", self.name, callback)

    # ---- commands -------------------------------------------------------------------------------------

    async def request(
        self,
        command: Mapping[str, Any],
        *,
        reply: ReplyShape | None = None,
        # each command has its own timeout, and its expiry becomes a LinkTimeoutError naming the command
        timeout: float | None = None,  # noqa: ASYNC109
        send_qid: bool = True,
    ) -> JsonObject:
        """Send ``command`` and return the master's reply.

        :param reply: None: the reply echoes the qid the link adds. A shape: the reply is recognised
            by it (a qid echo counts too); such commands run one at a time.
        :param timeout: seconds for the exchange, waiting for a shape's turn included
            (default ``settings.request_timeout``); not the wait for a place among the commands in
            flight (``settings.max_in_flight``)
        :param send_qid: add a ``qid``; UC2-REST sends ``/ota_start`` without one
        :raises LinkClosedError: the link is not open
        :raises LinkBusyError: another task holds the link (:meth:`exclusive`)
        :raises LinkTimeoutError: no reply in time
        :raises LinkLostError: the port went away meanwhile
        :raises MasterRebootedError: the master restarted meanwhile
        :raises LinkIOError: the port failed while writing
        """
        self._check_usable()
        return await self._exchange(command, reply=reply, timeout=timeout, send_qid=send_qid)

    async def write_raw(self, data: bytes) -> None:
        """Write bytes as they are (a firmware stream after ``/ota_start`` put the master in binary mode).

        :raises LinkClosedError, LinkBusyError, LinkIOError, LinkTimeoutError: as :meth:`request`
        """
        self._check_usable()
        _LOGGER.log(TRAFFIC, "%s: >> %d raw bytes", self.name, len(data))
        await self._send(data, raw=True)

    def subscribe(self, key: str, callback: Callable[[JsonObject], None]) -> Callable[[], None]:
        """Call ``callback(message)`` for every message with top-level ``key`` (replies included).

        Subscriptions outlive reconnects. Returns the unsubscriber.
        """
        return self._events.subscribe(key, callback)

    def listen(self, *keys: str) -> EventStream:
        """A stream of the messages with any of ``keys`` at top level, registered at once.

        It ends with the link's error when the port is lost, the master reboots or the link closes.
        """
        return self._events.stream(keys, self.settings.event_queue_size)

    @contextlib.asynccontextmanager
    async def exclusive(self, purpose: str) -> AsyncIterator[None]:
        """Hold the link: while the block runs, other tasks' commands raise LinkBusyError.

        Commands and raw writes from inside the block, and from tasks it starts, go through.

        :raises LinkBusyError: another task holds the link
        """
        async with self._holder.hold(self.name, purpose):
            yield

    def _check_usable(self) -> None:
        if self._state is not LinkState.OPEN:
            raise LinkClosedError(f"{self.name}: link is {self._state.value}", port=self.name)
        self._holder.check(self.name)

    async def _exchange(
        self,
        command: Mapping[str, Any],
        *,
        reply: ReplyShape | None,
        timeout: float | None,  # noqa: ASYNC109 - as in request()
        send_qid: bool,
    ) -> JsonObject:
        """:meth:`request` without the state checks, for the handshake."""
        if reply is None and not send_qid:
            raise ValueError("a command without qid needs a reply shape")
        timeout = self.settings.request_timeout if timeout is None else timeout
        # never more commands awaiting replies than the master queues; the wait for a place is not the
        # master's silence, so the deadline starts once the command has one
        async with self._in_flight:
            return await self._exchange_now(command, reply=reply, timeout=timeout, send_qid=send_qid)

    async def _exchange_now(
        self,
        command: Mapping[str, Any],
        *,
        reply: ReplyShape | None,
        timeout: float,  # noqa: ASYNC109 - as in request()
        send_qid: bool,
    ) -> JsonObject:
        task = command.get("task", "?")
        qid: int | None = None
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline, contextlib.AsyncExitStack() as stack:
                if reply is not None:
                    await stack.enter_async_context(self._shape_lock)
                if self._session is None:
                    raise LinkClosedError(f"{self.name}: port is not open", port=self.name)
                message = dict(command)
                if send_qid:
                    qid = message["qid"] = self._pending.new_qid()
                answer = self._pending.expect(qid=qid, shape=reply)
                stack.callback(self._pending.forget, answer)
                try:
                    # registered above, before this first await on the exchange: no reply can slip past
                    await self._send_json(message)
                except LinkIOError:
                    if not answer.done():
                        raise
                    # the failed write was the port going away: answer with the loss, as every command
                return await answer
        except TimeoutError as err:
            if not deadline.expired():
                raise  # a LinkTimeoutError from the write, already ours
            expected = f"qid={qid}" if reply is None else reply.name
            raise LinkTimeoutError(
                f"{self.name}: no reply to {task} within {timeout}s ({expected})", port=self.name
            ) from err

    async def _send_json(self, message: Mapping[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        if _LOGGER.isEnabledFor(TRAFFIC):
            _LOGGER.log(TRAFFIC, "%s: >> %s", self.name, json.dumps(redacted(message), separators=(",", ":")))
        # one object per write, newline-terminated, as UC2-REST writes (uc2-stack.md §2.1)
        await self._send(text.encode() + b"\n")

    async def _send(self, data: bytes, *, raw: bool = False) -> None:
        """Write ``data``; a port that fails the write is lost, as one that fails a read.

        :param raw: image bytes, not a command (the capture records only their size and hash)
        """
        session = self._session
        if session is None:
            raise LinkClosedError(f"{self.name}: port is not open", port=self.name)
        async with self._write_lock:
            if self._writer is None:
                name = f"uc2otad-write {self.name}"
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
            writer = self._writer
            loop = asyncio.get_running_loop()
            try:
                written = loop.run_in_executor(writer, self._write_in_order, session.port, data, raw)
            except RuntimeError as err:  # closed meanwhile: the writer takes nothing more
                raise LinkClosedError(f"{self.name}: link closed", port=self.name) from err
            try:
                await written
            except LinkIOError as err:
                self._on_lost(session, err)
                raise

    def _write_in_order(self, port: PortT, data: bytes, raw: bool) -> None:
        # the asyncio lock orders writes; this one keeps a write whose caller was cancelled from
        # interleaving with the next one
        with self._thread_write_lock:
            if self.settings.capture is not None:
                # before the write: the reply must not reach the file ahead of its request
                self.settings.capture.record_tx(data, raw=raw)
            self._write(port, data)

    # ---- the reader thread and what it hands to the loop ----------------------------------------------

    def _start_reader(self, session: _Session[PortT]) -> None:
        session.reader = threading.Thread(
            target=self._read_loop, args=(session,), name=f"uc2otad-link {self.name}", daemon=True
        )
        session.reader.start()

    def _read_loop(self, session: _Session[PortT]) -> None:
        parser = FrameParser()
        while not session.stop.is_set():
            try:
                data = self._read(session.port, READ_CHUNK)
            except Exception as err:  # whatever the driver raises, the port is unusable now
                if not session.stop.is_set():
                    self._post(self._on_lost, session, err)
                return
            if data:
                if self.settings.capture is not None:
                    self.settings.capture.record_rx(data)
                items = parser.feed(data)
                if items:
                    self._post(self._on_items, session, items)

    def _post(
        self, callback: Callable[[_Session[PortT], Any], None], session: _Session[PortT], arg: Any
    ) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(callback, session, arg)

    def _on_items(self, session: _Session[PortT], items: list[Item]) -> None:
        if session is not self._session:
            return  # a stale reader's last words
        for kind, payload in items:
            if kind is FrameType.FRAME or kind is FrameType.LINE:
                self._on_message(kind, payload)
            elif kind is FrameType.LOG:
                self._on_log(payload)
            else:
                _LOGGER.warning("%s: unusable input from master: %s", self.name, redacted_text(payload))

    def _on_message(self, kind: FrameType, message: JsonObject) -> None:
        if _LOGGER.isEnabledFor(TRAFFIC):
            text = json.dumps(redacted(message), separators=(",", ":"))
            _LOGGER.log(TRAFFIC, "%s: << %s %s", self.name, kind.value, text)
        if not self._pending.deliver(message):
            _LOGGER.debug("%s: event %s", self.name, ",".join(message))
        self._events.publish(message)

    def _on_log(self, line: str) -> None:
        _LOGGER.debug("%s: master log: %s", self.name, redacted_text(line))
        if _BOOT_BANNER.match(line):
            _LOGGER.warning("%s: master rebooted", self.name)
            error = MasterRebootedError(f"{self.name}: master rebooted", port=self.name)
            self._pending.fail_all(error)
            self._events.fail_streams(error)
            self._notify(ConnectionEvent.MASTER_REBOOTED)

    def _on_lost(self, session: _Session[PortT], err: BaseException) -> None:
        if session is not self._session:
            return
        self._session = None
        error = LinkLostError(f"{self.name}: port lost: {err}", port=self.name)
        self._pending.fail_all(error)
        self._events.fail_streams(error)
        if self._state is not LinkState.OPEN:
            return  # lost while opening or reconnecting: that attempt fails and closes the port itself
        then = "; reconnecting" if self._auto_reconnect else ""
        _LOGGER.warning("%s: port lost (%s)%s", self.name, err, then)
        self._set_state(LinkState.RECONNECTING if self._auto_reconnect else LinkState.CLOSED)
        self._spawn(self._after_loss(session))
        self._notify(ConnectionEvent.LOST)
        if not self._auto_reconnect:
            self._notify(ConnectionEvent.CLOSED)

    async def _after_loss(self, session: _Session[PortT]) -> None:
        async with self._lifecycle:
            await self._end_session(session)
        if self._state is LinkState.RECONNECTING:
            self._reconnector.start()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
