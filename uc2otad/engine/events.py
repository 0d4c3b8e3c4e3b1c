"""What the engine tells its observers: a board's status, a daemon property, the USB flash status.

The engine reports every change through one observer list, and nothing here knows D-Bus: the D-Bus
adapter turns each event into its signal (and a property's field name into its D-Bus name). Observers
are called synchronously, in the order they subscribed, so a signal leaves before the change that caused
it returns; one observer's bug is logged and does not keep the others from their event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from uc2otad import __version__
from uc2otad.contract import StatusDict

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusChanged:
    """A board's status dict changed (CONTRACT.md §2)."""

    can_id: int
    status: StatusDict


@dataclass(frozen=True)
class PropertyChanged:
    """A daemon property changed; ``name`` is the :class:`Properties` field."""

    name: str
    value: Any


@dataclass(frozen=True)
class USBFlashChanged:
    """The USB flash status of the master changed (CONTRACT.md §1 USBFlashStatusChanged)."""

    status: Mapping[str, Any]


Event = StatusChanged | PropertyChanged | USBFlashChanged
Observer = Callable[[Event], None]


@dataclass
class Properties:
    """The daemon's read-only properties (CONTRACT.md §1), as plain values."""

    version: str = __version__
    firmware_server: str = ""
    wifi_ssid: str = ""
    master_connected: bool = False
    can_connected: bool = False
    busy: bool = False
    inhibited: bool = False
    progress: int = 0
    last_error: str = ""


PROPERTY_FIELDS = frozenset(field.name for field in fields(Properties))


class EventHub:
    """The observer list, and the properties whose changes it announces."""

    def __init__(self, properties: Properties) -> None:
        self.properties = properties
        self._observers: list[Observer] = []

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` for every event; returns the function that unsubscribes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def emit(self, event: Event) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not stop the engine or the other observers
                _LOGGER.exception("engine: observer %r failed on %r", observer, event)

    def set_property(self, name: str, value: Any) -> None:
        """Set property ``name`` (a :class:`Properties` field) and announce it, if it changed."""
        if getattr(self.properties, name) == value:
            return
        setattr(self.properties, name, value)
        self.emit(PropertyChanged(name, value))

    async def until_property(self, name: str, value: Any) -> None:
        """Until property ``name`` has ``value`` (at once if it has)."""
        if getattr(self.properties, name) == value:
            return
        reached = asyncio.get_running_loop().create_future()

        def watch(event: Event) -> None:
            if event == PropertyChanged(name, value) and not reached.done():
                reached.set_result(None)

        unsubscribe = self.subscribe(watch)
        try:
            await reached
        finally:
            unsubscribe()
