"""The daemon's hold on a direct CAN link (``[can] interface``): open while the daemon runs.

A direct link is the daemon on the bus itself (a SocketCAN HAT or a USB adapter, ``links/can_direct``).
Unlike the master's port it is never shared with ImSwitch — a CAN interface has no exclusive owner,
every program on it hears every frame — so it stays open from start to stop. An interface that cannot
be opened at start-up (``can0`` not up yet, a USB adapter not plugged in), or that fails later (the
adapter unplugged, ``can0`` gone: :meth:`BusLink.wait_failed`), is closed and tried again in the
background with the master's backoff (:data:`~uc2otad.links.reconnect.RECONNECT_POLICY`), and
``CanConnected`` follows. A bus-off is not a failure of the interface: the controller recovers by
itself, and the link refuses commands (``link_lost``) until it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from uc2otad.errors import LinkClosedError, LinkError
from uc2otad.links.protocol import BusLink
from uc2otad.links.reconnect import RECONNECT_POLICY, ReconnectLogic

_LOGGER = logging.getLogger(__name__)


class DirectConnection:
    """The direct CAN link, opened at :meth:`start` (or in the background until it opens)."""

    def __init__(self, make_link: Callable[[], BusLink], on_connected: Callable[[bool], None]) -> None:
        """
        :param make_link: builds the (unopened) link; called once (it imports python-can and canopen)
        :param on_connected: told True once the link is open, False when it closes
        """
        self._make_link = make_link
        self._on_connected = on_connected
        self._link: BusLink | None = None
        self._opener: ReconnectLogic | None = None
        self._opened = asyncio.Event()
        #: waits for the open link's interface to fail, then reopens it
        self._watch: asyncio.Task[None] | None = None

    @property
    def link(self) -> BusLink | None:
        """The open link; None before it opened or after :meth:`stop`."""
        return self._link if self._link is not None and self._link.is_open else None

    @property
    def name(self) -> str:
        return self._link.name if self._link is not None else "can"

    async def start(self) -> None:
        """Open the link; when it cannot be opened now, keep trying in the background. Returns at once."""
        link = self._make_link()
        self._link = link
        self._opener = ReconnectLogic(link.name, self._open, policy=RECONNECT_POLICY)
        try:
            await self._open()
        except LinkError as err:
            _LOGGER.warning("can: %s: not available yet (%s); trying again in the background", link.name, err)
            self._opener.start()

    async def wait_connected(self) -> None:
        """Return once the link is open; bound it with a timeout."""
        await self._opened.wait()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait({self._watch})
        if self._opener is not None:
            await self._opener.stop()
        link, self._link = self._link, None
        if link is not None and link.is_open:
            await link.close()
            self._on_connected(False)

    @contextlib.asynccontextmanager
    async def use(self, purpose: str) -> AsyncIterator[BusLink]:
        """The open link for ``purpose``.

        :raises LinkClosedError: the interface is not open (yet)
        """
        link = self.link
        if link is None:
            raise LinkClosedError(f"the direct CAN link ({self.name}) is not open", port=self.name)
        _LOGGER.debug("can: %s for %s", link.name, purpose)
        yield link

    async def _open(self) -> None:
        link = self._link
        if link is None:
            return
        await link.open()
        self._opened.set()
        self._on_connected(True)
        self._watch = asyncio.create_task(self._reopen_when_failed(link), name=f"watching {link.name}")

    async def _reopen_when_failed(self, link: BusLink) -> None:
        reason = await link.wait_failed()
        _LOGGER.warning("can: %s: %s; closing it and opening it again", link.name, reason)
        self._opened.clear()
        self._on_connected(False)
        await link.close()
        if self._opener is not None:
            self._opener.start()
