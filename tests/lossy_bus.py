"""A python-can interface that loses chosen frames: the ``virtual`` bus with a predicate per direction.

The simulator's :class:`~uc2otad.sim.can_bus.FrameLoss` loses frames its own participants send; a link
opened on python-can's ``virtual`` interface sends past it, so tests that lose the link's own frames
(a segment of a block download) open the link on this interface instead (the ``lossy`` fixture in
``conftest.py`` registers it with python-can under :data:`LOSSY`).
"""

from __future__ import annotations

from collections.abc import Callable

import can
from can.interfaces.virtual import VirtualBus

LOSSY = "uc2otad-test-lossy"
#: what the lossy interface loses next: a predicate per direction ("send", "receive"), None for nothing
LOSS: dict[str, Callable[[can.Message], bool] | None] = {"send": None, "receive": None}


class LossyVirtualBus(VirtualBus):
    """python-can's virtual bus losing the frames :data:`LOSS` picks, once each; a frame lost on
    sending never reaches the bus, so no other participant (a logger included) sees it."""

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        lose = LOSS["send"]
        if lose is not None and lose(msg):
            LOSS["send"] = None
            return
        super().send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        message, filtered = super()._recv_internal(timeout)
        lose = LOSS["receive"]
        if message is not None and lose is not None and lose(message):
            LOSS["receive"] = None
            return None, filtered
        return message, filtered
