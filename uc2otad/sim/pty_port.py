"""The virtual master's USB serial port as a pseudo-terminal pair.

A client (uc2otad, UC2-REST, a terminal) opens the pty's slave side, ``/dev/pts/N``, as it would open
``/dev/ttyUSB0``; the master reads and writes the other side. The baud rate the client sets is visible
from our side (one termios for the pair), so the master can answer a client at the wrong rate with
garbage, as a real UART does.

"The port vanishes and returns" closes the pair, which the client sees as EIO, and opens a new one.
A new pair gets a new ``/dev/pts/N``, so the port also has a stable path: a symlink that always points
at the current pair — the same way ``/dev/serial/by-id/…`` follows a re-plugged USB adapter.

Constraint: the event loop never blocks. The master side is non-blocking and watched with
``add_reader``; output the client has not read yet waits in a bounded buffer; file system work
(the symlink) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import termios
import tty
from collections.abc import Callable
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

#: output the client has not read that we keep before dropping more (the firmware drops output when
#: its queue is full, too); a few frames of 8 KiB
MAX_PENDING_OUTPUT = 64 * 1024
_READ_SIZE = 4096
_BAUD_RATES = {
    getattr(termios, f"B{rate}"): rate
    for rate in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 921600, 1000000, 2000000)
    if hasattr(termios, f"B{rate}")
}


class PtyPort:
    """One pty pair, recreated on :meth:`restore`, with an optional stable symlink ``link``."""

    def __init__(self, link: Path | None = None, *, baud: int | None = None) -> None:
        """
        :param link: where to keep the stable symlink; None for none
        :param baud: the speed a fresh pair starts with, so that a client that sets none (``cat``)
            reads the master; clients that set their own (pyserial does) override it
        """
        self.link = link
        self.baud = baud
        #: called with every chunk of bytes the client writes
        self.on_data: Callable[[bytes], None] | None = None
        self._master_fd: int | None = None
        # our own handle on the slave side keeps the pair readable while no client has it open
        self._slave_fd: int | None = None
        self._path = ""
        self._pending = bytearray()
        self._dropped = 0

    @property
    def path(self) -> str:
        """The current ``/dev/pts/N``."""
        return self._path

    @property
    def url(self) -> str:
        """What a client should open: the stable symlink when there is one."""
        return str(self.link) if self.link is not None else self._path

    def __repr__(self) -> str:
        return f"PtyPort({self.url})"

    async def open(self) -> None:
        """Create the pair (and point the symlink at it)."""
        master_fd, slave_fd = os.openpty()
        # raw: bytes pass unchanged (no echo, no CR/LF translation), as on a USB-UART
        tty.setraw(slave_fd)
        speed = next((code for code, rate in _BAUD_RATES.items() if rate == self.baud), None)
        if speed is not None:
            attributes = termios.tcgetattr(slave_fd)
            attributes[4] = attributes[5] = speed
            termios.tcsetattr(slave_fd, termios.TCSANOW, attributes)
        os.set_blocking(master_fd, False)
        self._master_fd, self._slave_fd = master_fd, slave_fd
        self._path = os.ttyname(slave_fd)
        asyncio.get_running_loop().add_reader(master_fd, self._on_readable)
        if self.link is not None:
            await asyncio.to_thread(_point_symlink, self.link, self._path)
        _LOGGER.debug("%s: open on %s", self, self._path)

    async def vanish(self) -> None:
        """Unplug: close the pair (the client's reads fail) and remove the symlink."""
        await self.close()
        _LOGGER.info("%s: vanished", self)

    async def restore(self) -> None:
        """Plug in again: a new pair, the symlink pointing at it."""
        await self.open()
        _LOGGER.info("%s: back on %s", self, self._path)

    async def close(self) -> None:
        """Close the pair and remove the symlink; safe to call twice."""
        self._close_pair()
        if self.link is not None:
            await asyncio.to_thread(_remove_symlink, self.link)

    def client_baud(self) -> int | None:
        """The baud rate the client configured, None when closed or not a standard rate."""
        if self._master_fd is None:
            return None
        try:
            speed = termios.tcgetattr(self._master_fd)[5]
        except termios.error:
            return None
        return _BAUD_RATES.get(speed)

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client; what it has not read yet waits (up to a bound), never blocks."""
        if self._master_fd is None:
            return
        if len(self._pending) + len(data) > MAX_PENDING_OUTPUT:
            self._dropped += len(data)
            _LOGGER.debug("%s: client does not read; dropped %d bytes so far", self, self._dropped)
            return
        was_empty = not self._pending
        self._pending += data
        if was_empty:
            self._flush()

    def _flush(self) -> None:
        fd = self._master_fd
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        try:
            written = os.write(fd, self._pending)
        except BlockingIOError:
            written = 0
        except OSError as err:
            _LOGGER.debug("%s: write failed: %s", self, err)
            self._pending.clear()
            return
        del self._pending[:written]
        if self._pending:
            loop.add_writer(fd, self._flush)
        else:
            loop.remove_writer(fd)

    def _on_readable(self) -> None:
        fd = self._master_fd
        if fd is None:
            return
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno != errno.EIO:  # EIO: no client has the slave open (cannot happen while we hold it)
                _LOGGER.debug("%s: read failed: %s", self, err)
            return
        if data and self.on_data is not None:
            self.on_data(data)

    def _close_pair(self) -> None:
        fd, self._master_fd = self._master_fd, None
        if fd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            os.close(fd)
        slave, self._slave_fd = self._slave_fd, None
        if slave is not None:
            os.close(slave)
        self._pending.clear()


def _point_symlink(link: Path, target: str) -> None:
    """Make ``link`` point at ``target``, replacing an older link atomically.

    :raises FileExistsError: ``link`` is something other than a symlink (never overwrite a user's file)
    """
    if os.path.lexists(link) and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; it is not ours to replace")
    temporary = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(target)
    temporary.replace(link)


def _remove_symlink(link: Path) -> None:
    if link.is_symlink():
        link.unlink()
