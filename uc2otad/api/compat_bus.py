"""The daemon's message bus: dbus-fast's asyncio bus, with bugs of dbus-fast 1.84 (Debian 12) and later fixed.

1. Strings: dbus-fast up to 2.9 writes a string's length prefix as its number of characters instead of
   its number of UTF-8 bytes (fixed upstream by "fix: marshall multi-byte strings correctly", dbus-fast
   PR #261, October 2023). A message with "✅ Firmware uploaded successfully" in it is then malformed,
   and dbus-daemon disconnects the sender: on Debian bookworm (python3-dbus-fast 1.84.2) the daemon fell
   off the bus at the first status message or non-ASCII SSID. The marshaller takes the prefix from
   ``len(value)`` (also in its compiled form, where the value is a plain object), so a ``str`` whose
   ``len`` is its UTF-8 size is marshalled right: :class:`CompatBus` gives every non-ASCII string of an
   outgoing message that form, but only when :func:`marshals_utf8` finds the bug.
2. Disconnect: 1.84's asyncio bus closes its socket right after shutting it down, before the event loop
   has seen the end of the connection; its reader is never called again and ``wait_for_disconnect()``
   never returns (the daemon hung on SIGTERM until killed). :meth:`CompatBus.disconnect` only shuts the
   connection down, as dbus-fast 2 and later do; the reader then sees its end and finalizes.
3. A full socket (issue 14, D1): every dbus-fast so far (1.84 of Debian 12, 2.44 of Debian 13, 5.2 on
   PyPI) takes the ``BlockingIOError`` (EAGAIN) of its non-blocking socket for a broken connection and
   drops it. dbus-daemon reads a connection only as fast as it gets round to it, so a burst of replies
   (two local users with 128 pending ``GetAllStatus`` each) filled the daemon's socket and knocked it
   off the bus; 5.x then closes the socket (the name is gone), 1.84 and 2.44 keep it open but never
   read or write it again (the name stays, nobody answers). The same bug in dbus-next, whose fork
   dbus-fast is: altdesktop/python-dbus-next#153 (open, with PR #154); no dbus-fast issue found.
   :class:`PatientWriter` replaces dbus-fast's writer in every version: on EAGAIN it keeps the rest
   and waits for the socket to be writable (``loop.add_writer``). What it keeps is bounded: past
   :data:`MAX_UNSENT_BYTES` it gives the connection up (:class:`SendBacklogError`), and the daemon
   ends so that systemd restarts it. Its queue is first in, first out, which also fixes 1.84's
   writer sending queued messages last in, first out (dbus-fast PR #225, in 1.85).

Main constraint: with a fixed dbus-fast (PyPI's) the bus behaves exactly as dbus-fast's own, and the
strings' values never change; a connection dbus-daemon keeps reading behaves as with dbus-fast's writer.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import socket
from typing import Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _MessageWriter
from dbus_fast.message_bus import BaseMessageBus

#: a string whose UTF-8 size differs from its length: 3 bytes, 1 character
_PROBE = "\u2705"
#: bytes of messages a connection keeps while dbus-daemon does not read them (its socket is full): a
#: minute of status traffic many times over, a few thousand GetAllStatus replies; past it the connection
#: is given up rather than the memory
MAX_UNSENT_BYTES = 16 * 1024 * 1024


class Utf8SizedStr(str):
    """A ``str`` whose ``len`` is its UTF-8 size, which is what old dbus-fast writes as its length."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.encode())


@functools.cache
def marshals_utf8() -> bool:
    """Whether this dbus-fast writes the UTF-8 size of a non-ASCII string (probed once, by marshalling)."""
    data = Message(path="/", interface="a.b", member="c", signature="s", body=[_PROBE])._marshall(False)
    encoded = _PROBE.encode()
    return data.endswith(len(encoded).to_bytes(4, "little") + encoded + b"\0")


def utf8_sized(value: Any) -> Any:
    """``value`` with each non-ASCII string (also in lists, dicts and variants) as :class:`Utf8SizedStr`."""
    if isinstance(value, str):
        return value if value.isascii() else Utf8SizedStr(value)
    if isinstance(value, Variant):
        return Variant(value.signature, utf8_sized(value.value))
    if isinstance(value, dict):
        return {key: utf8_sized(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(utf8_sized(item) for item in value)
    return value


class SendBacklogError(ConnectionError):
    """dbus-daemon has not taken :data:`MAX_UNSENT_BYTES` of this connection's messages: given up."""


class PatientWriter(_MessageWriter):
    """dbus-fast's writer (its queue and attributes), but a full socket makes it wait, not disconnect.

    ``schedule_write`` queues a message and, unless the writer already waits for the socket, writes
    what the socket takes; ``write_callback`` is also what the loop calls once the socket is writable.
    """

    def __init__(self, bus: MessageBus) -> None:
        super().__init__(bus)
        if self.sock is None or self.fd is None:
            raise RuntimeError("dbus-fast made its writer before its socket")
        self._socket: socket.socket = self.sock
        self._fileno: int = self.fd
        #: bytes queued or partly written
        self.unsent = 0
        #: whether ``write_callback`` is registered with the loop, to run once the socket is writable
        self.waiting = False

    def buffer_message(self, msg: Message, future: asyncio.Future[None] | None = None) -> None:
        data = msg._marshall(self.negotiate_unix_fd)
        self.messages.append((data, list(msg.unix_fds) if msg.unix_fds else None, future))
        self.unsent += len(data)

    def schedule_write(self, msg: Message | None = None, future: asyncio.Future[None] | None = None) -> None:
        if msg is not None:
            self.buffer_message(msg, future)
        # before Hello is answered messages wait in the queue; dbus-fast then calls us without one
        if self.bus.unique_name and not self.waiting:
            self.write_callback()
        if self.unsent > MAX_UNSENT_BYTES:
            self.give_up(
                SendBacklogError(
                    f"dbus-daemon has not read {self.unsent} bytes of this connection's messages "
                    f"(the limit is {MAX_UNSENT_BYTES}): connection given up"
                )
            )

    def write_callback(self, remove_writer: bool = True) -> None:
        """Write queued messages until the queue is empty or the socket is full (then wait for it).

        ``remove_writer`` is dbus-fast's parameter, unused: the writer knows whether it waits."""
        try:
            while self.buf is not None or self.messages:
                if self.buf is None:
                    data, self.unix_fds, self.fut = self.messages.popleft()
                    self.buf, self.offset = memoryview(data), 0
                try:
                    sent = self._send(self.buf[self.offset :])
                except BlockingIOError:
                    self._wait_for_socket(True)
                    return
                self.offset += sent
                self.unsent -= sent
                if self.offset == len(self.buf):
                    self.buf = None
                    if self.fut is not None and not self.fut.done():
                        self.fut.set_result(None)
        except Exception as err:  # as with dbus-fast's writer: any other error ends the connection
            self.give_up(err)
            return
        self._wait_for_socket(False)

    def _send(self, data: memoryview) -> int:
        if self.unix_fds and self.negotiate_unix_fd:
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", self.unix_fds))
            sent = self._socket.sendmsg([data], [rights])
            self.unix_fds = None  # they went with the first byte
            return sent
        return self._socket.send(data)

    def _wait_for_socket(self, wait: bool) -> None:
        if wait and not self.waiting:
            self.loop.add_writer(self._fileno, self.write_callback)
        elif not wait and self.waiting:
            self.loop.remove_writer(self._fileno)
        self.waiting = wait

    def give_up(self, err: Exception) -> None:
        """End the connection with ``err``: settle every queued message's future as dbus-fast settles
        the current one, shut the socket down (dbus-daemon drops our names), and finalize the bus."""
        futures = [self.fut, *(future for _, _, future in self.messages)]
        self.messages.clear()
        self.buf, self.fut, self.unsent = None, None, 0
        self._wait_for_socket(False)
        for future in futures:
            if future is None or future.done():
                continue
            if self.bus._user_disconnect:
                future.set_result(None)
            else:
                future.set_exception(err)
                future.exception()  # the connection's end is reported once, by wait_for_disconnect()
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self.bus._finalize(err)


class CompatBus(MessageBus):
    """dbus-fast's asyncio bus with the work-arounds above."""

    # dbus-fast assigns its writer when it has a socket (in __init__ up to 4.x, in connect() from 5.0):
    # every assignment installs a PatientWriter instead
    @property
    def _writer(self) -> PatientWriter | None:
        return self._patient_writer

    @_writer.setter
    def _writer(self, writer: _MessageWriter | None) -> None:
        self._patient_writer = None if writer is None else PatientWriter(self)

    # aio's send returns a Future, which dbus-fast's stubs do not say of the base class it overrides
    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        """Every message the bus sends (returns, errors, signals, PropertiesChanged, calls) passes here."""
        if not marshals_utf8():
            msg.body = utf8_sized(msg.body)
        future: asyncio.Future[None] = super().send(msg)
        return future

    def disconnect(self) -> None:
        """Shut the connection down; the reader sees its end, and ``wait_for_disconnect()`` returns.
        A connection that has already ended (dbus-daemon went away) has nothing left to shut down."""
        if not self._disconnected:
            BaseMessageBus.disconnect(self)
