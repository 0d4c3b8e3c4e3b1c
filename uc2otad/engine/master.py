"""The daemon's hold on the master CAN HAT: who may use the port, and whether it is there.

Two ownership modes (CONTRACT.md §3):
- ``exclusive`` (default): the daemon keeps the port open. A HAT that is absent at start-up, or goes
  away, is tried again with backoff until it answers; ``MasterConnected`` follows.
- ``on-demand``: the port is opened only for a scan or a job and closed right after, so ImSwitch can
  use it in between; if someone else holds it then, the caller gets :class:`PortInUseError` (Busy).

Either way a caller borrows the link with ``async with connection.use("scan") as link``. Flashing the
master over USB takes the port away from both modes: ``async with connection.released("USB flash"):``
closes the link and keeps it closed (``use`` is then LinkBusyError) until the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable

from uc2otad.errors import LinkBusyError, LinkClosedError, LinkError
from uc2otad.links.base import ConnectionEvent
from uc2otad.links.protocol import MasterLink
from uc2otad.links.reconnect import ReconnectLogic
from uc2otad.links.serial_hat import HatSettings, SerialHatLink

_LOGGER = logging.getLogger(__name__)

#: builds the (unopened) link; :func:`link_factory` is the one place that names a link class
LinkFactory = Callable[[], MasterLink]


class MasterConnection:
    """The link to the master under one of the two ownership modes."""

    def __init__(self, make_link: LinkFactory, ownership: str, on_connected: Callable[[bool], None]) -> None:
        """
        :param make_link: builds the (unopened) link; called once in exclusive mode, per use on demand
        :param on_connected: told True/False whenever the port becomes usable or stops being so
        """
        self._make_link = make_link
        self.ownership = ownership
        self._on_connected = on_connected
        self._link: MasterLink | None = None
        self._opener: ReconnectLogic | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._stopping = False
        #: what holds the port while it is released (:meth:`released`); None: not released
        self._released_for: str | None = None
        #: the links opened on demand and in use now
        self._borrowed: set[MasterLink] = set()

    @property
    def link(self) -> MasterLink | None:
        """The open link in exclusive mode; None when it is not open or on demand."""
        return self._link if self._link is not None and self._link.is_open else None

    async def start(self) -> None:
        """In exclusive mode, start opening the port in the background; returns at once."""
        if self.ownership != "exclusive":
            return
        link = self._make_link()
        self._link = link
        self._unsubscribe = link.on_connection(self._on_event)
        # in the background a silent master may be recovered (a master left in binary mode by a daemon
        # killed mid-stream waits out its rx_timeout, 30 s): READY=1 must not wait for that
        opening = functools.partial(link.open, recover=True)
        self._opener = ReconnectLogic(f"master {link.name}", opening, policy=link.settings.reconnect)
        # the first try without delay and without recovery: a HAT that is there is used from the first
        # second, and one that is not is left to the background
        try:
            await link.open()
        except LinkError as err:
            _LOGGER.warning(
                "master: %s: not available yet (%s); trying again in the background", link.name, err
            )
            self._opener.start()

    def leave(self) -> None:
        """The daemon is stopping: streams cancelled from now on let go of the master at once
        (:meth:`MasterLink.leave <uc2otad.links.protocol.MasterLink.leave>`). Call before cancelling
        the jobs."""
        self._stopping = True
        for link in (self._link, *self._borrowed):
            if link is not None:
                link.leave()

    async def stop(self) -> None:
        self._stopping = True
        if self._opener is not None:
            await self._opener.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._link is not None:
            await self._link.close()
            self._link = None

    @contextlib.asynccontextmanager
    async def use(self, purpose: str) -> AsyncIterator[MasterLink]:
        """The open link for ``purpose``, opened and closed around it on demand.

        :raises LinkClosedError: exclusive mode and the HAT is not connected now
        :raises LinkOpenError: on demand and the port cannot be opened (PortInUseError: someone holds it)
        """
        if self._released_for is not None:
            raise LinkBusyError(f"the master's port is released for {self._released_for}", port=self._name())
        if self.ownership == "exclusive":
            link = self.link
            if link is None:
                raise LinkClosedError("the master CAN HAT is not connected", port=self._name())
            yield link
            return
        link = self._make_link()
        if self._stopping:
            link.leave()
        _LOGGER.debug("master: opening %s for %s", link.name, purpose)
        await link.open()
        self._on_connected(True)
        self._borrowed.add(link)
        try:
            yield link
        finally:
            self._borrowed.discard(link)
            await link.close()
            self._on_connected(False)

    @contextlib.asynccontextmanager
    async def released(self, purpose: str) -> AsyncIterator[None]:
        """Close the link and leave the port alone while the block runs (esptool needs it to itself).

        Reconnecting is suspended meanwhile and ``use`` refuses with LinkBusyError. At the end the
        exclusive link starts opening again in the background (:meth:`wait_connected` waits for it).

        :raises LinkBusyError: already released
        """
        if self._released_for is not None:
            raise LinkBusyError(f"the master's port is already released for {self._released_for}")
        self._released_for = purpose
        try:
            if self._opener is not None:
                await self._opener.stop()
            if self._link is not None:
                await self._link.close()
            _LOGGER.info("master: port released for %s", purpose)
            yield
        finally:
            self._released_for = None
            if self._opener is not None and not self._stopping:
                _LOGGER.info("master: %s over; opening the port again", purpose)
                self._opener.start()

    async def wait_connected(self) -> None:
        """Return once the exclusive link is open (at once on demand); bound it with a timeout."""
        link = self._link
        if self.ownership != "exclusive" or link is None or link.is_open:
            return
        connected = asyncio.Event()
        unsubscribe = link.on_connection(
            lambda event: connected.set() if event is ConnectionEvent.CONNECTED else None
        )
        try:
            if not link.is_open:
                await connected.wait()
        finally:
            unsubscribe()

    def _on_event(self, event: ConnectionEvent) -> None:
        if event is ConnectionEvent.CONNECTED:
            self._on_connected(True)
        elif event in (ConnectionEvent.LOST, ConnectionEvent.CLOSED):
            self._on_connected(False)
            stay_closed = self._stopping or self._released_for is not None
            if event is ConnectionEvent.CLOSED and self._opener is not None and not stay_closed:
                self._opener.start()  # the link gave up reconnecting: keep looking, from scratch

    def _name(self) -> str:
        return self._link.name if self._link is not None else "master"


def link_factory(url: str, baud: int, settings: HatSettings | None = None) -> LinkFactory:
    """How the daemon builds its link: the configured URL and baud, probing the other baud if silent."""
    return lambda: SerialHatLink(url, baud=baud, probe_baud=True, settings=settings)
