"""Who holds a link: one task at a time may use it exclusively, and the tasks it starts with it.

Every link offers ``exclusive(purpose)`` (:class:`~uc2otad.links.protocol.UpdateLink`): a firmware
stream puts the HAT master in binary mode, and a direct CAN link's block download must not be
interleaved with another transfer, so while one task streams, other tasks' commands are refused
(:class:`~uc2otad.errors.LinkBusyError`) instead of corrupting the stream. The holder is a token in a
:class:`contextvars.ContextVar`, so that tasks started inside the block inherit it (asyncio copies the
context into a new task) and their commands go through. One class, shared by the links, so that the
rule is the same on every link.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from uc2otad.errors import LinkBusyError

# which hold() block the current task runs in, for every holder; tasks it starts inherit it
_CURRENT: contextvars.ContextVar[object | None] = contextvars.ContextVar("uc2otad_link_holder", default=None)


class LinkHolder:
    """The exclusive use of one link: at most one :meth:`hold` block at a time."""

    def __init__(self) -> None:
        self._held: tuple[str, object] | None = None

    @property
    def purpose(self) -> str | None:
        """What the link is held for now; None when it is free."""
        return None if self._held is None else self._held[0]

    @asynccontextmanager
    async def hold(self, name: str, purpose: str) -> AsyncIterator[None]:
        """Hold the link named ``name`` while the block runs.

        :raises LinkBusyError: the link is held already (by this task too: holds do not nest)
        """
        if self._held is not None:
            raise LinkBusyError(f"{name}: link is held for {self._held[0]}", port=name)
        token = object()
        self._held = (purpose, token)
        context = _CURRENT.set(token)
        try:
            yield
        finally:
            _CURRENT.reset(context)
            self._held = None

    def check(self, name: str) -> None:
        """Refuse a command of a task outside the hold block (and not started inside it).

        :raises LinkBusyError: another task holds the link named ``name``
        """
        held = self._held
        if held is not None and _CURRENT.get() is not held[1]:
            raise LinkBusyError(f"{name}: link is held for {held[0]}", port=name)
