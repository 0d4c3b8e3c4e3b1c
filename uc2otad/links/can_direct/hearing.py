"""What the direct link heard on the bus, by node: proof of life, boot-ups, other SDO clients.

The link listens to every frame on the bus but its own (python-can delivers none of a bus's own frames
unless ``receive_own_messages`` is set: ``virtual``, ``socketcan`` and python-can-remote's server, which
gives each client a bus of its own, all default to False), and keeps three facts per node, in loop time:

- heard: its boot-up or heartbeat, a TPDO, an SDO answer — the master's ``isNodeReachable``
  (``main/src/canopen/CANopenModule.cpp:611-633`` @063e5a6);
- its boot-ups (0x700 + id, data 0x00), the evidence of a reboot;
- SDO requests to it (0x600 + id) that the link did not send: another SDO client — the master CAN HAT,
  a PC tool — talks to it, and the node has one SDO server (``lib/uc2_od/OD.h:23``), so the link keeps
  off it (:attr:`~uc2otad.links.can_direct.settings.CanSettings.foreign_sdo_quiet`).

Everything here runs on the loop; the reader thread hands frames over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

_LOGGER = logging.getLogger(__name__)


class Hearing:
    """The per-node facts, and waits for them to change."""

    def __init__(self, name: str) -> None:
        self._name = name
        #: node id → loop time it was last heard
        self._heard: dict[int, float] = {}
        #: node id → loop times of its boot-up messages
        self._boots: dict[int, list[float]] = {}
        #: node id → loop time another client's SDO request to it was last heard
        self._other_client: dict[int, float] = {}
        self._changed = asyncio.Event()

    def clear(self) -> None:
        """Forget everything: the link reopened."""
        self._heard.clear()
        self._boots.clear()
        self._other_client.clear()
        self.notify()

    def nodes(self) -> list[int]:
        """Every node heard since the link opened, by id."""
        return sorted(self._heard)

    def on_heard(self, node_id: int, boot: bool) -> None:
        now = asyncio.get_running_loop().time()
        self._heard[node_id] = now
        if boot:
            _LOGGER.info("%s: boot-up of node %d", self._name, node_id)
            self._boots.setdefault(node_id, []).append(now)
        self.notify()

    def on_other_client(self, node_id: int) -> None:
        """An SDO request to ``node_id`` that the link did not send."""
        if node_id not in self._other_client:
            _LOGGER.info("%s: another CANopen client talks to node %d", self._name, node_id)
        self._other_client[node_id] = asyncio.get_running_loop().time()
        self.notify()

    def heard_within(self, node_id: int, seconds: float) -> bool:
        heard = self._heard.get(node_id)
        return heard is not None and asyncio.get_running_loop().time() - heard < seconds

    def booted_since(self, node_id: int, since: float) -> bool:
        return any(booted >= since for booted in self._boots.get(node_id, ()))

    def other_client_age(self, node_id: int) -> float | None:
        """Seconds since another client's last SDO request to the node; None: none heard."""
        heard = self._other_client.get(node_id)
        return None if heard is None else asyncio.get_running_loop().time() - heard

    def other_client_within(self, node_id: int, seconds: float) -> bool:
        age = self.other_client_age(node_id)
        return age is not None and age < seconds

    async def wait_other_client_quiet(self, node_id: int, seconds: float) -> None:
        """Until no other client's SDO request to the node was heard within ``seconds``: a wait for the
        time that is left, renewed by every request heard meanwhile."""
        while (age := self.other_client_age(node_id)) is not None and age < seconds:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), seconds - age)

    async def wait_changed(self) -> None:
        changed = self._changed
        await changed.wait()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
