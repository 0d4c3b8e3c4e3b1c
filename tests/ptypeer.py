"""Both ends of a serial conversation, driven by the test with exact bytes over real ptys.

``PtyPeer`` plays the master: the link's robustness tests need byte sequences the firmware may produce
but the virtual master never does on purpose (a reply in 1-byte writes, a log line inside a frame, a
stale status line). ``PtyClient`` plays the host against the virtual master, to check the simulator
itself byte by byte. The encoder and decoder here are written from ``uc2-stack.md`` §2 — not from
``uc2otad.links`` and not from ``uc2otad.sim``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import struct
import termios
import tty
from collections.abc import Callable
from typing import Any

#: seconds a test waits for the link to send or to consume something
WAIT = 2.0
#: a reply frame: "++", the JSON, "--", each on its own line
_FRAME = re.compile(rb"\+\+\r?\n(.*?)\r?\n--\r?\n", re.S)


def frame(value: dict[str, Any]) -> bytes:
    """A framed reply, ``++\\n<compact JSON>\\n--\\n`` (``SerialProcess::safeSendJsonString``)."""
    return b"++\n" + json.dumps(value, separators=(",", ":")).encode() + b"\n--\n"


def line(value: dict[str, Any]) -> bytes:
    """A bare status line, as ``{"ota_rx":4096}``."""
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def state_reply(qid: int, **state: Any) -> dict[str, Any]:
    """A ``/state_get`` answer of a CANopen master."""
    identity = {
        "identifier_name": "UC2_Feather",
        "identifier_id": "V2.0",
        "identifier_date": "Jun 17 2026 07:17:22",
        "identifier_author": "BD",
        "pindef": "UC2_canopen_master",
    }
    return {"state": {**identity, **state}, "qid": qid}


class PtyPeer:
    """The master side of a pty pair; ``path`` is the side the link opens."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._received = bytearray()
        self._arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._master, self._on_readable)

    def _on_readable(self) -> None:
        try:
            self._received += os.read(self._master, 4096)
        except OSError:
            return
        self._arrived.set()

    async def command(self) -> dict[str, Any]:
        """The next JSON object the link wrote (found by brace counting, as the firmware does)."""
        async with asyncio.timeout(WAIT):
            while True:
                found = _first_object(self._received)
                if found is not None:
                    text, end = found
                    del self._received[: end + 1 if self._received[end : end + 1] == b"\n" else end]
                    value: dict[str, Any] = json.loads(text)
                    return value
                self._arrived.clear()
                await self._arrived.wait()

    async def raw(self, size: int) -> bytes:
        """The next ``size`` bytes the link wrote (after its last command and that command's newline)."""
        async with asyncio.timeout(WAIT):
            while len(self._received) < size:
                self._arrived.clear()
                await self._arrived.wait()
        data = bytes(self._received[:size])
        del self._received[:size]
        return data

    async def write(self, data: bytes) -> None:
        """Write ``data`` in one write when the pty has room for it (a few KiB), else as it makes room."""
        view = memoryview(data)
        async with asyncio.timeout(WAIT):
            while view:
                try:
                    view = view[os.write(self._master, view) :]
                except BlockingIOError:
                    await self._writable()  # the link has not read yet: wait for room

    async def write_slowly(self, data: bytes, *, piece: int = 1) -> None:
        """Write ``data`` ``piece`` bytes at a time, each only after the link has read the previous one."""
        for start in range(0, len(data), piece):
            await self.write(data[start : start + piece])
            await self.drained()

    async def drained(self) -> None:
        """Wait until the link has read everything written so far."""
        async with asyncio.timeout(WAIT):
            # the kernel wakes nobody when the other side reads: asking FIONREAD is the only way to know
            while self._unread() > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.001)

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(self._master, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_writer(self._master)

    def _unread(self) -> int:
        value: int = struct.unpack("i", fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0"))[0]
        return value

    def close(self) -> None:
        """Unplug: the link's next read fails with EIO."""
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1


def _first_object(data: bytearray) -> tuple[bytes, int] | None:
    start = data.find(b"{")
    if start < 0:
        return None
    depth = 0
    for index in range(start, len(data)):
        if data[index] == ord("{"):
            depth += 1
        elif data[index] == ord("}"):
            depth -= 1
            if depth == 0:
                return bytes(data[start : index + 1]), index + 1
    return None


class PtyClient:
    """The host side: opens a serial port path raw at ``baud`` and collects what the master writes."""

    def __init__(self, path: str, baud: int = 921600) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        attributes = termios.tcgetattr(self._fd)
        attributes[4] = attributes[5] = getattr(termios, f"B{baud}")
        termios.tcsetattr(self._fd, termios.TCSANOW, attributes)
        self.received = bytearray()
        #: the master side closed (the port vanished)
        self.hung_up = False
        self._arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.received += data
        else:  # end of file or EIO: the master side went away
            self.hung_up = True
            asyncio.get_running_loop().remove_reader(self._fd)
        self._arrived.set()

    def send(self, data: bytes) -> None:
        os.write(self._fd, data)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self._arrived.clear()
                await self._arrived.wait()

    async def reply(self) -> dict[str, Any]:
        """The next framed reply; what came before it (log lines) is dropped."""
        await self.wait_for(lambda: _FRAME.search(self.received) is not None)
        found = _FRAME.search(bytes(self.received))  # a copy: the match must not see the deletion
        assert found is not None
        del self.received[: found.end()]
        value: dict[str, Any] = json.loads(found.group(1))
        return value

    def close(self) -> None:
        if self._fd >= 0:
            if not self.hung_up:
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
