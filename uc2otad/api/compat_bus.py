"""The daemon's message bus: dbus-fast's asyncio bus, with two bugs of dbus-fast 1.84 (Debian 12) fixed.

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

Main constraint: with a fixed dbus-fast (PyPI's) the bus behaves exactly as dbus-fast's own, and the
strings' values never change.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.message_bus import BaseMessageBus

#: a string whose UTF-8 size differs from its length: 3 bytes, 1 character
_PROBE = "\u2705"


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


class CompatBus(MessageBus):
    """dbus-fast's asyncio bus with the two work-arounds above."""

    # aio's send returns a Future, which dbus-fast's stubs do not say of the base class it overrides
    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        """Every message the bus sends (returns, errors, signals, PropertiesChanged, calls) passes here."""
        if not marshals_utf8():
            msg.body = utf8_sized(msg.body)
        future: asyncio.Future[None] = super().send(msg)
        return future

    def disconnect(self) -> None:
        """Shut the connection down; the reader sees its end, and ``wait_for_disconnect()`` returns."""
        BaseMessageBus.disconnect(self)
