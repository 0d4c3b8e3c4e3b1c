"""The virtual microscope's CAN bus for other processes: python-can-remote's server on 127.0.0.1.

python-can's ``virtual`` bus is in-process only, and the test machines have no vcan. So that a separate
process — the daemon's direct CAN link, a test — can talk to the simulated CANopen slaves, the
simulator serves its bus with `python-can-remote <https://pypi.org/project/python-can-remote/>`_: a
WebSocket server on loopback. The client side is an ordinary python-can interface, registered as
``remote``, so a client needs nothing of ours::

    bus = can.Bus(interface="remote", channel="ws://127.0.0.1:P/")

Each connection gets a bus of its own on the microscope's channel (:meth:`SimCanBus.raw_bus`), so as on
a real bus every participant hears every frame except its own, in the order they were sent (one TCP
stream each way); error frames keep their flag. With the CAN-rate model on, a client's frames take
their time on the wire like the master's (the connection's reader thread waits for them).

Main constraint: python-can-remote 0.3.0 makes a plain ``virtual`` bus per connection and reads it in a
thread it does not wake on close. :class:`_Connection` swaps in the paced bus before it answers the
client's bus request (so the client misses no frame sent after its ``can.Bus()`` returned) and reads it
with a loop that a close ends at once; the version is pinned because this touches its internals
(``send_bus_response``, ``_send_to_client``, the handler's ``start_websocket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import Any

import can
from can_remote.server import ClientRequestHandler, RemoteServer, RemoteServerProtocol
from can_remote.websocket import WebSocket, get_accept_key

from uc2otad.sim.can_bus import SimCanBus

_LOGGER = logging.getLogger(__name__)

#: the python-can interface a client names
INTERFACE = "remote"
HOST = "127.0.0.1"
#: seconds a connection's reader blocks per read; closing wakes it, so this only bounds a missed wake-up
READ_TIMEOUT = 0.5
#: seconds the server's loop waits between checks for shutdown
POLL_INTERVAL = 0.05
#: the WebSocket subprotocols python-can-remote speaks, preferred first
_PROTOCOLS = ("can.binary+json.v1", "can.json.v1")
#: WebSocket close status: the server goes away
GOING_AWAY = 1001


class _Connection(RemoteServerProtocol):  # type: ignore[misc]
    """One client: python-can-remote's protocol on a paced bus of the microscope's channel."""

    bus: can.BusABC
    running: bool

    def __init__(self, config: dict[str, Any], websocket: WebSocket, sim_bus: SimCanBus) -> None:
        self._paced = sim_bus.raw_bus()
        self.websocket = websocket
        try:
            super().__init__(config, websocket)  # the handshake: joins with a plain bus, then answers
        except BaseException:
            self._paced.shutdown()  # a bus left on the channel would queue every frame forever
            raise

    def send_bus_response(self, channel_info: str) -> None:
        """Swap the paced bus in before the client learns it joined: it expects every frame from then on."""
        plain, self.bus = self.bus, self._paced
        plain.shutdown()
        super().send_bus_response(channel_info)

    def _send_to_client(self) -> None:
        """Every frame the others send, to the client, until :meth:`close`."""
        try:
            while self.running:
                message = self.bus.recv(READ_TIMEOUT)
                if message is not None and self.running:
                    self.send_msg(message)
        except OSError as err:  # the client went away while a frame was on its way
            _LOGGER.debug("CAN client gone: %s", err)
        finally:
            self.running = False
            self.bus.shutdown()

    def close(self) -> None:
        """End both directions now: the reader's wait and the client's socket.

        The client gets a WebSocket close (1001, going away); its answer is not waited for.
        """
        self.running = False
        self._paced.wake_up()
        with contextlib.suppress(OSError):
            self.websocket.close(GOING_AWAY, "uc2otad-sim stops")
        with contextlib.suppress(OSError):
            self.websocket.socket.shutdown(socket.SHUT_RDWR)


class _Handler(ClientRequestHandler):  # type: ignore[misc]
    """python-can-remote's request handler, making :class:`_Connection` instead of its protocol."""

    server: _Server

    def start_websocket(self) -> None:
        self.send_response(101)
        self.send_header("Upgrade", "WebSocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", get_accept_key(self.headers["Sec-WebSocket-Key"]))
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", _PROTOCOLS[1]).split(",")]
        protocol = _PROTOCOLS[0] if _PROTOCOLS[0] in offered else _PROTOCOLS[1]
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        connection = _Connection(
            self.server.config, WebSocket(None, protocol, sock=self.request), self.server.sim_bus
        )
        with self.server.lock:
            self.server.clients.append(connection)
            if self.server.closing:  # joined while the server stopped: it will not be dropped later
                connection.close()
        _LOGGER.info("CAN client %s joins %s", self.address_string(), self.server.sim_bus.channel)
        try:
            connection.run()
        finally:
            with self.server.lock:
                self.server.clients.remove(connection)
            _LOGGER.info("CAN client %s leaves", self.address_string())


class _Server(RemoteServer):  # type: ignore[misc]
    # stopping joins the connections' threads: no bus of theirs outlives the microscope
    daemon_threads = False
    block_on_close = True

    def __init__(self, sim_bus: SimCanBus) -> None:
        super().__init__(HOST, 0, interface="virtual", channel=sim_bus.channel)
        self.RequestHandlerClass = _Handler
        self.sim_bus = sim_bus
        self.lock = threading.Lock()
        #: set under ``lock`` once :meth:`RemoteBusServer.stop` drops the clients
        self.closing = False


class RemoteBusServer:
    """Serves ``bus`` on ``ws://127.0.0.1:P/`` from :meth:`start` to :meth:`stop` (safe twice)."""

    def __init__(self, bus: SimCanBus) -> None:
        self._bus = bus
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The channel a client names with interface ``remote``.

        :raises RuntimeError: not started
        """
        if self._server is None:
            raise RuntimeError("the CAN bus is not served")
        return f"ws://{HOST}:{self._server.server_port}/"

    def client_config(self) -> dict[str, Any]:
        """What ``can.Bus(**config)`` needs to join the bus: the ready line's ``can``."""
        return {
            "interface": INTERFACE,
            "channel": self.url,
            "bitrate": self._bus.rate.bitrate,
            "paced": self._bus.rate.paced,
        }

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1.

        :raises OSError: no socket
        """
        self._server = await asyncio.to_thread(_Server, self._bus)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL,), name="uc2otad-sim CAN server"
        )
        self._thread.start()
        _LOGGER.info("CAN bus %s served on %s", self._bus.channel, self.url)

    async def stop(self) -> None:
        """Stop listening, drop every client, and wait until their buses left the channel."""
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(self._stop, server)

    def _stop(self, server: _Server) -> None:
        server.shutdown()
        if self._thread is not None:
            self._thread.join()
        with server.lock:
            server.closing = True
            connections = list(server.clients)
        for connection in connections:
            connection.close()
        server.server_close()  # joins the connections' threads
