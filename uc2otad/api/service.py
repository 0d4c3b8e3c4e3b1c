"""Put the interface on a bus: connect, export, own the name, and follow callers.

Two things dbus-fast does not do for a method: tell it who called, and tell us when that caller is
gone. A message handler records each method call's sender in :data:`CALLER` just before dispatch (the
method's task inherits that context), and a NameOwnerChanged match releases the inhibits of a client
that left the bus, crashed or not.

The connection can also end without :meth:`DBusService.stop`: dbus-daemon stopped or restarted, the
connection broke or was given up (compat_bus.py). :meth:`DBusService.wait_lost` returns then, with the
reason, and the daemon ends with a failure status for systemd to restart it: a process on the bus
without its name would answer nobody and never be restarted (issue 14, D1).
"""

from __future__ import annotations

import asyncio
import logging

from dbus_fast import BusType, Message, MessageType, RequestNameReply
from dbus_fast.aio import MessageBus

from uc2otad.api import names
from uc2otad.api.compat_bus import CompatBus
from uc2otad.api.interface import CALLER, OTA1Interface
from uc2otad.engine.core import Engine
from uc2otad.errors import Uc2otadError

_LOGGER = logging.getLogger(__name__)

_NAME_OWNER_CHANGED = "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"


class BusNameTakenError(Uc2otadError):
    """Another process owns ``org.openuc2.OTA1`` on this bus."""


class DBusService:
    """The daemon on the bus. ``start`` returns once the name is owned; ``stop`` releases everything."""

    def __init__(self, engine: Engine, bus_type: BusType) -> None:
        self._engine = engine
        self._bus_type = bus_type
        self._bus: MessageBus | None = None
        self._interface: OTA1Interface | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[str] | None = None

    async def start(self) -> None:
        """:raises BusNameTakenError: the name is owned by someone else"""
        # unix fds: ImportFirmware takes the caller's open bundle (an fd), as fwupd's Install does
        bus = await CompatBus(bus_type=self._bus_type, negotiate_unix_fd=True).connect()
        self._bus = bus
        self._lost = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.create_task(self._watch(bus), name="uc2otad-bus-watch")
        bus.add_message_handler(self._on_message)
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[_NAME_OWNER_CHANGED],
            )
        )
        self._interface = OTA1Interface(self._engine)
        bus.export(names.OBJECT_PATH, self._interface)
        reply = await bus.request_name(names.BUS_NAME)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            await self.stop()
            raise BusNameTakenError(f"{names.BUS_NAME} is already owned on this bus: is uc2otad running?")
        _LOGGER.info("api: serving %s on the %s bus", names.BUS_NAME, self._bus_type.name.lower())

    async def wait_lost(self) -> str:
        """Return once the connection has ended without :meth:`stop` (call after :meth:`start`): why."""
        if self._lost is None:
            raise RuntimeError("DBusService.wait_lost before start")
        return await asyncio.shield(self._lost)

    async def stop(self) -> None:
        """Leave the bus; safe to call twice."""
        if self._interface is not None:
            self._interface.close()
            self._interface = None
        if self._bus is not None:
            bus, self._bus = self._bus, None
            bus.disconnect()
            if self._watcher is not None:
                await self._watcher  # returns once the connection has ended

    async def _watch(self, bus: MessageBus) -> None:
        """Wait for the connection's end; unless :meth:`stop` ended it, tell :meth:`wait_lost` why."""
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            reason = "dbus-daemon closed the connection"
        except EOFError:
            reason = "dbus-daemon closed the connection"
        except Exception as err:  # how the connection ended, whatever it was: reported, not raised
            reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        if bus is self._bus and self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)

    def _on_message(self, message: Message) -> None:
        if message.message_type is MessageType.METHOD_CALL and message.sender:
            CALLER.set(message.sender)
        elif message.message_type is MessageType.SIGNAL and message.member == "NameOwnerChanged":
            name, _old_owner, new_owner = message.body
            if not new_owner and name in self._engine.inhibitors.owners:
                self._engine.inhibitors.release_owner(name)
