"""Inhibits: while any is held, no job starts (CONTRACT.md §1 Inhibit), as systemd-inhibit holds off a
shutdown. An inhibit ends with its cookie, or when the D-Bus client that took it leaves the bus, crashed
or not, so that a forgotten inhibit cannot block updates for good.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from uc2otad.errors import UnknownCookieError

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Inhibitor:
    reason: str
    owner: str


class Inhibitors:
    """The inhibits held, by cookie; ``on_change`` hears whether any is held after every change."""

    def __init__(self, on_change: Callable[[bool], None]) -> None:
        self._held: dict[str, _Inhibitor] = {}
        self._on_change = on_change

    @property
    def held(self) -> bool:
        return bool(self._held)

    @property
    def owners(self) -> set[str]:
        return {inhibitor.owner for inhibitor in self._held.values()}

    def inhibit(self, reason: str, owner: str) -> str:
        """Hold off new jobs until :meth:`uninhibit` or until ``owner`` goes away; returns the cookie."""
        cookie = secrets.token_hex(8)
        self._held[cookie] = _Inhibitor(reason, owner)
        _LOGGER.info("engine: inhibited by %s: %s", owner, reason)
        self._on_change(True)
        return cookie

    def uninhibit(self, cookie: str) -> None:
        """:raises UnknownCookieError: no inhibit with this cookie"""
        if self._held.pop(cookie, None) is None:
            raise UnknownCookieError(f"no inhibit with cookie {cookie!r}")
        self._on_change(self.held)

    def release_owner(self, owner: str) -> None:
        """Drop every inhibit held by ``owner`` (a D-Bus client that left the bus)."""
        for cookie in [cookie for cookie, held in self._held.items() if held.owner == owner]:
            _LOGGER.info("engine: %s left; its inhibit %r ends", owner, self._held[cookie].reason)
            del self._held[cookie]
        self._on_change(self.held)
