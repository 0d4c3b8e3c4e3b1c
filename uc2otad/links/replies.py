"""Match the master's messages to the commands that wait for them, and hand every message to listeners.

Most replies echo the request's ``qid``. Some do not: the firmware turns a handler's int result into
``{"qid": <result>, "success": …}`` (so that "qid" is not the request's), ``/can_get`` and node restarts
answer without one, and ``/ota_start`` is sent without one (``uc2-stack.md`` §2). Those replies are
recognised by their shape instead, which is only unambiguous while one such command is pending; the
link runs them one at a time.

Constraint: everything here runs on the event loop and never blocks; a listener that falls behind
loses its stream (:class:`~uc2otad.errors.EventOverflowError`) instead of growing a queue without end.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from uc2otad.errors import EventOverflowError, LinkBusyError, LinkError

_LOGGER = logging.getLogger(__name__)

JsonObject = dict[str, Any]
#: qids run 1..254 and never 0, as UC2-REST 0.2.0.43 (``mserial._generate_identifier``); 0 is what
#: unsolicited messages and int replies of value 0 carry
MAX_QID = 254


def is_int_reply(message: Mapping[str, Any]) -> bool:
    """``{"qid": <result>, "success": 1|0|-1}``: a handler's return value, not the request's qid."""
    return message.keys() == {"qid", "success"}


@dataclass(frozen=True)
class ReplyShape:
    """How to recognise the reply to a command whose reply carries no usable qid."""

    #: what the reply is, for log and error messages
    name: str
    matches: Callable[[Mapping[str, Any]], bool]


class PendingReplies:
    """The commands waiting for a reply: by qid, and at most one by shape."""

    def __init__(self) -> None:
        self._by_qid: dict[int, asyncio.Future[JsonObject]] = {}
        self._by_shape: list[tuple[ReplyShape, asyncio.Future[JsonObject]]] = []
        self._last_qid = 0

    def new_qid(self) -> int:
        """The next qid that no pending command holds.

        :raises LinkBusyError: all 254 qids are waiting for replies
        """
        for _ in range(MAX_QID):
            self._last_qid = self._last_qid % MAX_QID + 1
            if self._last_qid not in self._by_qid:
                return self._last_qid
        raise LinkBusyError(f"all {MAX_QID} qids are waiting for replies")

    def expect(self, *, qid: int | None, shape: ReplyShape | None) -> asyncio.Future[JsonObject]:
        """Register a command before it is sent; its reply will resolve the returned future.

        With both a qid and a shape, whichever arrives first wins: newer firmware may echo the qid of
        a command that older firmware answers without one.
        """
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        if qid is not None:
            self._by_qid[qid] = future
        if shape is not None:
            if self._by_shape:
                raise LinkBusyError(f"a reply by shape ({self._by_shape[0][0].name}) is already awaited")
            self._by_shape.append((shape, future))
        return future

    def forget(self, future: asyncio.Future[JsonObject]) -> None:
        """Unregister a command (answered, timed out or cancelled)."""
        if future.done() and not future.cancelled():
            future.exception()  # failed while its command was ending another way: not worth a warning
        self._by_qid = {qid: waiting for qid, waiting in self._by_qid.items() if waiting is not future}
        self._by_shape = [(shape, waiting) for shape, waiting in self._by_shape if waiting is not future]

    def deliver(self, message: JsonObject) -> bool:
        """Resolve the command ``message`` answers; False when it answers none (an event, a late reply).

        An int reply whose value is the qid of a command waiting by qid alone is that command's
        acknowledgement, and True too: FW-legacy's ``/can_act`` returns the request's qid
        (``can_controller.cpp:1564, 1610`` @14fa3e3), and for a scan the reply follows ~1.4 s later.
        It resolves nothing, and it is no answer for a command waiting by shape either.
        """
        qid = message.get("qid")
        if isinstance(qid, int) and not isinstance(qid, bool):
            future = self._by_qid.get(qid)
            if future is not None and not future.done():
                if not is_int_reply(message):
                    future.set_result(message)
                    return True
                if all(waiting is not future for _, waiting in self._by_shape):
                    return True
        for shape, future in self._by_shape:
            if not future.done() and shape.matches(message):
                future.set_result(message)
                return True
        return False

    def fail_all(self, error: LinkError) -> None:
        """End every waiting command with ``error`` (the port was lost, the master rebooted)."""
        for future in [*self._by_qid.values(), *(future for _, future in self._by_shape)]:
            if not future.done():
                future.set_exception(error)


class EventStream:
    """The master's messages with some top-level keys, in arrival order, as an async iterator.

    Use it as ``async with link.listen("ota_rx", "ota_status") as events: async for message in events``.
    Messages that arrived before a failure are still handed out; then the failure is raised:
    :class:`~uc2otad.errors.LinkLostError` when the port went away,
    :class:`~uc2otad.errors.MasterRebootedError`, :class:`~uc2otad.errors.LinkClosedError`, or
    :class:`~uc2otad.errors.EventOverflowError` when more than ``maxsize`` messages piled up.
    """

    def __init__(self, hub: EventHub, keys: frozenset[str], maxsize: int) -> None:
        self.keys = keys
        self._hub = hub
        self._maxsize = maxsize
        self._items: deque[JsonObject] = deque()
        self._error: LinkError | None = None
        self._wakeup = asyncio.Event()

    async def get(self) -> JsonObject:
        """The next message; waits for one.

        :raises LinkError: the stream ended (see the class)
        """
        while True:
            if self._items:
                return self._items.popleft()
            if self._error is not None:
                raise self._error
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """Stop receiving; safe to call twice."""
        self._hub.remove(self)

    def push(self, message: JsonObject) -> None:
        if self._error is not None:
            return
        if len(self._items) >= self._maxsize:
            self._error = EventOverflowError(f"listener for {sorted(self.keys)} fell {self._maxsize} behind")
        else:
            self._items.append(message)
        self._wakeup.set()

    def fail(self, error: LinkError) -> None:
        if self._error is None:
            self._error = error
            self._wakeup.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> JsonObject:
        return await self.get()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventHub:
    """Who listens to which top-level key: callbacks (long-lived) and streams (one operation)."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[JsonObject], None]]] = {}
        self._streams: list[EventStream] = []

    def subscribe(self, key: str, callback: Callable[[JsonObject], None]) -> Callable[[], None]:
        """Call ``callback(message)`` for every message with top-level ``key``; returns the unsubscriber."""
        self._callbacks.setdefault(key, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._callbacks.get(key, [])
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def stream(self, keys: Collection[str], maxsize: int) -> EventStream:
        """A stream registered at once, so nothing that arrives after this call is missed."""
        stream = EventStream(self, frozenset(keys), maxsize)
        self._streams.append(stream)
        return stream

    def remove(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def publish(self, message: JsonObject) -> None:
        """Hand ``message`` to everyone listening to one of its top-level keys."""
        for key in message:
            for callback in list(self._callbacks.get(key, ())):
                try:
                    callback(message)
                except Exception:  # a listener's bug must not stop the link or the other listeners
                    _LOGGER.exception("listener %r for key %r failed", callback, key)
        for stream in list(self._streams):
            if not stream.keys.isdisjoint(message):
                stream.push(message)

    def fail_streams(self, error: LinkError) -> None:
        """End every stream with ``error``; callbacks stay subscribed across reconnects."""
        for stream in self._streams:
            stream.fail(error)
