"""Talking to the daemon as a client does: raw method calls, properties, signals (for the tests)."""

from __future__ import annotations

from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from signals import SignalCollector, property_changes

from uc2otad.api import names
from uc2otad.ctl.client import unwrap

__all__ = ["add_match", "call", "properties", "unwrap", "wait_for_property"]


async def call(
    client: MessageBus, member: str, signature: str = "", *body: Any, interface: str = ""
) -> Message:
    reply = await client.call(
        Message(
            destination=names.BUS_NAME,
            path=names.OBJECT_PATH,
            interface=interface or names.INTERFACE,
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    assert reply is not None
    return reply


async def add_match(client: MessageBus, rule: str) -> None:
    """Ask the bus to route matching signals to ``client`` (the bus, not the daemon, takes AddMatch)."""
    bus = "org.freedesktop.DBus"
    message = Message(destination=bus, path="/org/freedesktop/DBus", interface=bus, member="AddMatch",
                      signature="s", body=[rule])  # fmt: skip
    reply = await client.call(message)
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply


async def properties(client: MessageBus) -> dict[str, Any]:
    reply = await call(client, "GetAll", "s", names.INTERFACE, interface="org.freedesktop.DBus.Properties")
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return dict(unwrap(reply.body[0]))


#: seconds a property may take to reach the value a test waits for
PROPERTY_TIMEOUT = 10.0


async def wait_for_property(client: MessageBus, name: str, value: Any) -> None:
    """Return once property ``name`` has ``value``: now, or by a later PropertiesChanged signal."""
    changes = SignalCollector(client, property_changes(name))
    try:
        await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='PropertiesChanged'")
        if (await properties(client)).get(name) == value:
            return
        await changes.first(lambda changed: bool(changed == value), PROPERTY_TIMEOUT)
    finally:
        changes.close()
