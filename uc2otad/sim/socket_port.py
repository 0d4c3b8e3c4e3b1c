"""The virtual master's serial port over TCP, for pyserial's ``socket://127.0.0.1:P`` URLs.

A second transport besides the pty, for clients that cannot open a pty (another container, another
host's tooling through a tunnel) and as the way ser2net-style setups reach a real HAT. Like a serial
port it has one user at a time: a second connection is closed at once. There is no baud rate on a
socket, so the master never garbles output here.

Constraint: loopback only (127.0.0.1); the port number stays the same across :meth:`vanish` and
:meth:`restore`, so a client's URL keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: unread output kept per client before dropping more, as for the pty
MAX_PENDING_OUTPUT = 64 * 1024
_READ_SIZE = 4096


class SocketPort:
    """A one-client TCP server on 127.0.0.1; ``port`` 0 picks a free one at the first :meth:`open`."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        #: called with every chunk of bytes the client writes
        self.on_data: Callable[[bytes], None] | None = None
        self._server: asyncio.Server | None = None
        self._client: asyncio.StreamWriter | None = None
        self._client_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"socket://{HOST}:{self.port}"

    def __repr__(self) -> str:
        return f"SocketPort({self.url})"

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        _LOGGER.debug("%s: listening", self)

    async def vanish(self) -> None:
        """Drop the client and stop listening (connections are refused until :meth:`restore`)."""
        await self.close()
        _LOGGER.info("%s: vanished", self)

    async def restore(self) -> None:
        await self.open()
        _LOGGER.info("%s: back", self)

    async def close(self) -> None:
        """Drop the client and stop listening; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._drop_client()
        if server is not None:
            await server.wait_closed()

    def client_baud(self) -> int | None:
        return None

    def write(self, data: bytes) -> None:
        client = self._client
        if client is None or client.is_closing():
            return
        if client.transport.get_write_buffer_size() + len(data) > MAX_PENDING_OUTPUT:
            _LOGGER.debug("%s: client does not read; dropped %d bytes", self, len(data))
            return
        client.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._client is not None:
            _LOGGER.info("%s: refused a second client", self)
            writer.close()
            return
        self._client = writer
        self._client_task = asyncio.current_task()
        try:
            while data := await reader.read(_READ_SIZE):
                if self.on_data is not None:
                    self.on_data(data)
        except ConnectionError as err:
            _LOGGER.debug("%s: client connection failed: %s", self, err)
        finally:
            if self._client is writer:
                self._client = None
                self._client_task = None
            writer.close()

    async def _drop_client(self) -> None:
        client, task = self._client, self._client_task
        self._client, self._client_task = None, None
        if client is not None:
            client.close()
            with contextlib.suppress(ConnectionError):
                await client.wait_closed()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])  # unlike awaiting the task, this cannot swallow our own cancel
