"""CompatBus's writer against a real dbus-daemon that stops reading (SIGSTOP): it waits, keeps the order,
and gives the connection up only past its limit (issue 14, D1; uc2otad/api/compat_bus.py)."""

from __future__ import annotations

import asyncio

import pytest
from dbus_client import add_match
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from processes import paused
from signals import SignalCollector

from uc2otad.api import compat_bus
from uc2otad.api.compat_bus import CompatBus, SendBacklogError
from uc2otad.sim.private_bus import PrivateBus

_PATH = "/org/openuc2/Test"
_INTERFACE = "org.openuc2.Test"
_NAME = "org.openuc2.Test.Backlog"
#: one signal's payload: 64 of them pass a socket buffer (about 200 KiB) many times over
_PAYLOAD = "x" * 60_000
_SIGNALS = 64
_TIMEOUT = 10.0


def burst_signal(number: int) -> Message:
    return Message.new_signal(_PATH, _INTERFACE, "Burst", "us", [number, _PAYLOAD])


def _burst_number(message: Message) -> int | None:
    if message.member == "Burst":
        number: int = message.body[0]
        return number
    return None


async def test_d1_a_full_socket_makes_the_writer_wait_and_keep_the_order(
    private_bus: PrivateBus, client: MessageBus
) -> None:
    """D1: while dbus-daemon does not read, ~4 MiB of signals wait in the writer instead of ending the
    connection; once it reads again every one is sent, and a subscriber gets them in order."""
    received: SignalCollector[int] = SignalCollector(client, _burst_number)
    await add_match(client, f"type='signal',interface='{_INTERFACE}',member='Burst'")
    bus = await CompatBus(bus_address=private_bus.address).connect()
    try:
        with paused(private_bus.pid):
            sent = [bus.send(burst_signal(number)) for number in range(_SIGNALS)]
            await asyncio.sleep(0.1)  # the loop runs: a writer that took EAGAIN for an error would end now
            assert bus.connected
            assert not sent[-1].done()  # the last ones wait for the socket
        async with asyncio.timeout(_TIMEOUT):
            await asyncio.gather(*sent)
            await received.wait_until(lambda: len(received) == _SIGNALS, None)
        assert received.items == list(range(_SIGNALS))
        assert bus.connected
    finally:
        bus.disconnect()
        async with asyncio.timeout(_TIMEOUT):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


async def test_d1_a_backlog_past_the_limit_gives_the_connection_up(
    private_bus: PrivateBus, client: MessageBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D1: what waits is bounded. Past MAX_UNSENT_BYTES the connection ends with SendBacklogError
    (what wait_for_disconnect raises, and the daemon then exits non-zero), and dbus-daemon frees its
    names."""
    monkeypatch.setattr(compat_bus, "MAX_UNSENT_BYTES", 1024 * 1024)
    bus = await CompatBus(bus_address=private_bus.address).connect()
    await bus.request_name(_NAME)
    owner = bus.unique_name
    name_freed = SignalCollector(client, lambda message: True if message.body == [_NAME, owner, ""] else None)
    await add_match(client, f"type='signal',member='NameOwnerChanged',arg0='{_NAME}'")
    with paused(private_bus.pid):
        sent = [bus.send(burst_signal(number)) for number in range(_SIGNALS)]
        assert not bus.connected
    with pytest.raises(SendBacklogError, match="has not read"):
        async with asyncio.timeout(_TIMEOUT):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    results = await asyncio.gather(*sent, return_exceptions=True)
    assert any(isinstance(result, SendBacklogError) for result in results)
    assert all(result is None or isinstance(result, OSError) for result in results)
    async with asyncio.timeout(_TIMEOUT):
        await name_freed.first(lambda _freed: True, None)  # dbus-daemon saw the connection end
