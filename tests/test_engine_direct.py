"""The engine's hold on the direct CAN link (``engine/direct.py``): opened at start, or in the background
until it opens; closed and opened again when its interface fails (a USB adapter unplugged and plugged
back); ``CanConnected`` follows.

The link here is a stand-in with the :class:`~uc2otad.links.protocol.BusLink` calls the connection makes
(open, close, ``wait_failed``): what is tested is the connection's logic, not a bus; the real link's
failure on a stopped interface is ``tests/test_can_direct_etiquette.py``'s.
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from uc2otad.engine.direct import DirectConnection
from uc2otad.errors import LinkClosedError, LinkOpenError
from uc2otad.links.protocol import BusLink

#: the reconnect policy's first pause is 0.5 s: every wait below is bounded well above it
WAIT = 5.0


class Interface:
    """A CAN interface that can be absent (opening fails) and can fail while open."""

    name = "can:test:can0"

    def __init__(self, *, present: bool = True) -> None:
        self.present = present
        self.is_open = False
        self.opened = 0
        self._failure = asyncio.Event()

    async def open(self) -> None:
        if not self.present:
            raise LinkOpenError(f"{self.name}: no such device", port=self.name)
        self.is_open, self.opened = True, self.opened + 1
        self._failure = asyncio.Event()

    async def close(self) -> None:
        self.is_open = False

    async def wait_failed(self) -> str:
        await self._failure.wait()
        return "the CAN interface failed: OSError: [Errno 19] No such device"

    def unplug(self) -> None:
        self.present = False
        self._failure.set()


class Connected:
    """What ``CanConnected`` was told, and a way to wait for a value."""

    def __init__(self) -> None:
        self.values: list[bool] = []
        self._changed = asyncio.Event()

    def __call__(self, connected: bool) -> None:
        self.values.append(connected)
        self._changed.set()

    async def until(self, value: bool) -> None:
        async with asyncio.timeout(WAIT):
            while not self.values or self.values[-1] is not value:
                self._changed.clear()
                await self._changed.wait()


def connection(interface: Interface, connected: Connected) -> DirectConnection:
    return DirectConnection(lambda: cast(BusLink, interface), connected)


async def test_an_interface_that_fails_is_opened_again_once_it_is_back() -> None:
    interface, connected = Interface(), Connected()
    direct = connection(interface, connected)
    await direct.start()
    try:
        assert (connected.values, interface.opened) == ([True], 1)
        interface.unplug()
        await connected.until(False)
        assert not interface.is_open
        with pytest.raises(LinkClosedError):
            async with direct.use("scan"):
                pass
        interface.present = True  # plugged back in: the background opener finds it
        await connected.until(True)
        async with direct.use("scan") as link:
            assert link is cast(BusLink, interface)
    finally:
        await direct.stop()
    assert (connected.values, interface.opened) == ([True, False, True, False], 2)


async def test_an_interface_absent_at_start_is_opened_when_it_comes() -> None:
    interface, connected = Interface(present=False), Connected()
    direct = connection(interface, connected)
    await direct.start()  # returns at once: the daemon does not wait for its CAN adapter
    try:
        assert connected.values == [] and direct.link is None
        interface.present = True
        await connected.until(True)
        async with asyncio.timeout(WAIT):
            await direct.wait_connected()
    finally:
        await direct.stop()
    assert interface.opened == 1 and not interface.is_open
