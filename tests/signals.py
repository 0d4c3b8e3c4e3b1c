"""Watching signals from a test's D-Bus client: one collector, and the kinds of signal the tests watch.

A :class:`SignalCollector` registers its handler when it is made, so a collector made before the test's
first call misses nothing. Its ``pick`` function turns each message into an item, or None for a message
that is not of its kind; the items are kept in the order they came, with the time each arrived, and
every new one wakes the waiters. The AddMatch that routes the signals to the client stays with the caller
(``dbus_client.add_match``): a fixture or a test chooses the rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from uc2otad.api import names
from uc2otad.ctl.client import unwrap

T = TypeVar("T")
R = TypeVar("R")

#: seconds an update may take to reach the status a test waits for
SIGNAL_TIMEOUT = 30.0


class SignalCollector(Generic[T]):
    """The items ``pick`` takes from the signals ``client`` receives, in order of arrival.

    :param client: the test's connection; the handler stays on it until :meth:`close`
    :param pick: the item a message gives, or None when the message is not one of ours
    """

    def __init__(self, client: MessageBus, pick: Callable[[Message], T | None]) -> None:
        self.items: list[T] = []
        #: when each item arrived, on the event loop's clock (``loop.time()``)
        self.arrived: list[float] = []
        self._client = client
        self._pick = pick
        self._changed = asyncio.Event()
        client.add_message_handler(self._on_message)

    def _on_message(self, message: Message) -> None:
        item = self._pick(message)
        if item is None:
            return
        self.items.append(item)
        self.arrived.append(asyncio.get_running_loop().time())
        self._changed.set()

    async def wait_for(self, find: Callable[[], R | None], within: float | None = SIGNAL_TIMEOUT) -> R:
        """What ``find()`` returns once it is not None: checked now and after each new item.

        :raises TimeoutError: not found within ``within`` seconds (None: the caller bounds the wait)
        """
        async with asyncio.timeout(within):
            while True:
                found = find()
                if found is not None:
                    return found
                self._changed.clear()
                await self._changed.wait()

    async def wait_until(self, done: Callable[[], bool], within: float | None = SIGNAL_TIMEOUT) -> None:
        """Return once ``done()`` holds, checked now and after each new item.

        :raises TimeoutError: it did not within ``within`` seconds
        """
        await self.wait_for(lambda: True if done() else None, within)

    async def first(self, match: Callable[[T], bool], within: float | None = SIGNAL_TIMEOUT) -> T:
        """The first item, in order of arrival, that ``match`` accepts (one that came already counts).

        :raises TimeoutError: none came within ``within`` seconds
        """
        return await self.wait_for(lambda: next((item for item in self.items if match(item)), None), within)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def timed(self) -> list[tuple[float, T]]:
        """(arrival time, item) of each item (right after a test cleared ``items``, too)."""
        return list(zip(self.arrived[len(self.arrived) - len(self.items) :], self.items, strict=True))

    def close(self) -> None:
        """Stop collecting."""
        self._client.remove_message_handler(self._on_message)


# ---- what a collector picks --------------------------------------------------------------------------


def any_signal(message: Message) -> Message | None:
    """Every signal, as it came."""
    return message if message.message_type is MessageType.SIGNAL else None


def board_statuses(can_id: int) -> Callable[[Message], dict[str, Any] | None]:
    """The status dicts of the daemon's OTAStatusChanged for board ``can_id``."""

    def pick(message: Message) -> dict[str, Any] | None:
        if message.member == "OTAStatusChanged" and message.body[0] == can_id:
            status: dict[str, Any] = unwrap(message.body[1])
            return status
        return None

    return pick


def property_changes(name: str) -> Callable[[Message], Any]:
    """The new values of the daemon's property ``name``, from PropertiesChanged on its object."""

    def pick(message: Message) -> Any:
        if message.member == "PropertiesChanged" and message.path == names.OBJECT_PATH:
            return unwrap(message.body[1]).get(name)
        return None

    return pick


# ---- the board statuses most tests wait on --------------------------------------------------------------


class StatusSignals(SignalCollector[dict[str, Any]]):
    """OTAStatusChanged of one board as they arrive, with the waits the tests need."""

    def __init__(self, client: MessageBus, can_id: int) -> None:
        super().__init__(client, board_statuses(can_id))

    @property
    def statuses(self) -> list[dict[str, Any]]:
        """The statuses so far (the list itself: a test may clear it to wait for newer ones)."""
        return self.items

    async def until(self, upload_status: str, *, attempt: int = 1) -> dict[str, Any]:
        """The first status of ``upload_status``, or the first failure, from ``attempt`` on (a failed
        earlier attempt may be retried)."""
        return await self.first(
            lambda status: (
                status["upload_status"] in (upload_status, "failed") and status["attempt"] >= attempt
            )
        )

    async def until_uploading(self, percent: int) -> dict[str, Any]:
        """The first "uploading" status at ``percent`` or more; a failure before it fails the test."""

        def uploading(status: dict[str, Any]) -> bool:
            assert status["upload_status"] != "failed", status
            return bool(status["upload_status"] == "uploading" and status["upload_progress"] >= percent)

        return await self.first(uploading)

    async def until_final(self) -> dict[str, Any]:
        """The status that ends the job: success, or a failure without ``retry_in``."""
        return await self.first(
            lambda status: (
                status["upload_status"] == "success"
                or (status["upload_status"] == "failed" and "retry_in" not in status)
            )
        )

    def of_attempt(self, attempt: int) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, status) of each status of ``attempt``."""
        return [(at, status) for at, status in self.timed() if status["attempt"] == attempt]
