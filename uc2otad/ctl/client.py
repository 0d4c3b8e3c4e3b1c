"""A small D-Bus client of ``org.openuc2.OTA1``: calls with plain Python values in and out.

Errors come back as :class:`CtlError` carrying the exit code the contract gives them (CONTRACT.md §5),
so each command only says what to do on success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from uc2otad.api import names
from uc2otad.api.compat_bus import CompatBus

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOTHING_TO_DO = 2
EXIT_NOT_FOUND = 3
EXIT_NOT_PERMITTED = 4
EXIT_NO_DAEMON = 5
EXIT_USAGE = 64

_EXIT_BY_ERROR = {
    names.NOT_FOUND: EXIT_NOT_FOUND,
    names.NOT_PERMITTED: EXIT_NOT_PERMITTED,
    "org.freedesktop.DBus.Error.AccessDenied": EXIT_NOT_PERMITTED,
    names.INVALID_ARGUMENT: EXIT_USAGE,
    "org.freedesktop.DBus.Error.ServiceUnknown": EXIT_NO_DAEMON,
    "org.freedesktop.DBus.Error.NameHasNoOwner": EXIT_NO_DAEMON,
    "org.freedesktop.DBus.Error.NoReply": EXIT_NO_DAEMON,
}


#: match rules: uc2otad's status signals; uc2otad leaving the bus (or coming back)
STATUS_SIGNALS = f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'"
DAEMON_OWNER_CHANGES = (
    f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{names.BUS_NAME}'"
)


class CtlError(Exception):
    """A failed call, with the D-Bus error name and the exit code it maps to."""

    def __init__(self, name: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.exit_code = exit_code

    def as_dict(self) -> dict[str, Any]:
        return {"error": {"name": self.name, "message": self.message, "exit_code": self.exit_code}}


def unwrap(value: Any) -> Any:
    """Variants (nested too) → plain values."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value


class DaemonClient:
    """One connection to the bus the daemon is on."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls, bus_type: BusType) -> DaemonClient:
        """:raises CtlError: no bus to connect to (exit 5)"""
        try:
            # CompatBus: Debian 12's dbus-fast mis-sizes non-ASCII strings (an SSID, an inhibit reason)
            # unix fds: ``import`` hands the daemon an open file rather than a path it may not see
            bus = await CompatBus(bus_type=bus_type, negotiate_unix_fd=True).connect()
        except (OSError, ValueError, DBusError) as err:
            kind = bus_type.name.lower()
            raise CtlError(
                "org.freedesktop.DBus.Error.NoServer", f"cannot reach the {kind} bus: {err}", EXIT_NO_DAEMON
            ) from err
        return cls(bus)

    def close(self) -> None:
        self.bus.disconnect()

    async def call(
        self, member: str, signature: str = "", *body: Any, interface: str = names.INTERFACE
    ) -> list[Any]:
        """Call ``member`` on the daemon; the reply's values, unwrapped.

        :raises CtlError: the daemon answered with an error, or is not there
        """
        message = Message(destination=names.BUS_NAME, path=names.OBJECT_PATH, interface=interface,
                          member=member, signature=signature, body=list(body))  # fmt: skip
        return await self._call(message)

    async def call_with_file(self, member: str, descriptor: int) -> list[Any]:
        """Call ``member`` (signature ``h``) with the open file ``descriptor``; the bus passes a copy of
        it to the daemon, and the caller keeps its own.

        :raises CtlError: as :meth:`call`
        """
        message = Message(destination=names.BUS_NAME, path=names.OBJECT_PATH, interface=names.INTERFACE,
                          member=member, signature="h", body=[0], unix_fds=[descriptor])  # fmt: skip
        return await self._call(message)

    async def _call(self, message: Message) -> list[Any]:
        reply = await self.bus.call(message)
        if reply is None:
            raise CtlError("org.freedesktop.DBus.Error.NoReply", "no reply from uc2otad", EXIT_NO_DAEMON)
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or "unknown"
            text = str(reply.body[0]) if reply.body else name
            if name in (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner",
            ):
                text = (
                    "uc2otad is not running on this bus (is the service started? --session for a test daemon)"
                )
            raise CtlError(name, text, _EXIT_BY_ERROR.get(name, EXIT_FAILED))
        return [unwrap(value) for value in reply.body]

    async def properties(self) -> dict[str, Any]:
        (values,) = await self.call(
            "GetAll", "s", names.INTERFACE, interface="org.freedesktop.DBus.Properties"
        )
        return dict(values)

    async def add_match(self, rule: str) -> None:
        """Have the bus route the signals that match ``rule`` to us (the bus takes AddMatch, not uc2otad).

        :raises CtlError: the bus refused the rule
        """
        bus = "org.freedesktop.DBus"
        await self._call(Message(destination=bus, path="/org/freedesktop/DBus", interface=bus,
                                 member="AddMatch", signature="s", body=[rule]))  # fmt: skip

    async def watch(self, on_status: Callable[[int, dict[str, Any]], None]) -> None:
        """Call ``on_status(can_id, status)`` for every OTAStatusChanged until cancelled."""

        def handler(message: Message) -> None:
            if message.message_type is MessageType.SIGNAL and message.member == "OTAStatusChanged":
                on_status(int(message.body[0]), unwrap(message.body[1]))

        self.bus.add_message_handler(handler)
        try:
            await self.add_match(STATUS_SIGNALS)
            await asyncio.Event().wait()
        finally:
            self.bus.remove_message_handler(handler)
