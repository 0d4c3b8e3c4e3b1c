"""What an update needs of a link, as protocols: the seam between methods (and the engine) and links.

A method updates a board through "a link to the bus", whichever it is: today the master CAN HAT on a
serial port (:class:`~uc2otad.links.serial_hat.SerialHatLink`), later a direct CAN link (SocketCAN,
python-can). Methods and the engine are typed against these protocols, never against a link class, so
that the links are interchangeable; a new link implements them (structurally: no base class to
inherit) and the engine's factory is the one place that names it.

- :class:`UpdateLink`: what every update needs — the link's name, identity and capabilities, a scan,
  restarting a node, streaming an image to a node with progress, the bus's health, exclusive use.
- :class:`WifiTriggerLink`: the WiFi trigger, which only a legacy master relays (``uc2-stack.md``
  §2.3). A link that cannot relay it still offers the method and refuses with
  :class:`~uc2otad.errors.MasterUnsupportedError`, sending nothing, as a CANopen master does;
  :attr:`UpdateLink.capabilities` says beforehand which of the two ways to update works.
- :class:`MasterLink`: the link the daemon holds (``engine/master.py``): the above, plus opening,
  closing, connection events and the daemon's leaving.
- :class:`BusLink`: a link on the CAN bus itself, the daemon a CANopen client with no master in the
  path (``links/can_direct``, ``engine/direct.py``): opened and closed by the daemon, and a
  :class:`RebootWitness` — it hears a node's boot-up message, which no master passes on.

The results (:class:`StreamResult`, :class:`WifiOtaResult`) live here too, so that a link's own
procedures (``ota_stream``, ``ota_wifi`` for the HAT) depend on this module and not the other way round.

Main constraint: this module imports no concrete link, only the shared types of ``base``, ``commands``
and ``replies``; links and their procedures import it. Counting every import (``TYPE_CHECKING`` and
function-level ones too), the ``links`` package has no circle (``tests/test_link_protocol.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from uc2otad.links.base import ConnectionEvent, LinkSettings
from uc2otad.links.commands import BusHealth, MasterIdentity, ScanResult
from uc2otad.links.replies import JsonObject

#: called with (bytes the receiving end acknowledged, image size) after every chunk
Progress = Callable[[int, int], None]


class LinkCapability(StrEnum):
    """A way to update a node that a link can offer; which ones it offers may depend on its peer."""

    #: :meth:`UpdateLink.stream_ota` updates a node (a CANopen master, ``uc2-stack.md`` §2.2)
    STREAM = "stream"
    #: :meth:`WifiTriggerLink.start_wifi_ota` makes a node join WiFi (a legacy master, §2.3)
    WIFI_TRIGGER = "wifi_trigger"


@dataclass(frozen=True)
class StreamResult:
    """The master reported "success": the slave checked the image's CRC, committed it and will reboot."""

    node_id: int
    size: int
    crc32: int
    chunks: int
    #: from ``/ota_start`` to "success"
    seconds: float


@dataclass(frozen=True)
class WifiOtaResult:
    """The slave joined the WiFi and serves ArduinoOTA at ``ip`` (UDP 3232) for the window asked for."""

    can_id: int
    status: int
    status_msg: str
    ip: str
    #: as the board reports it, ``UC2-CAN-B.local`` for node 11
    hostname: str


class UpdateLink(Protocol):
    """A link to the CAN bus, at the level of what an update needs."""

    @property
    def name(self) -> str:
        """How logs and errors name the link (its port or URL)."""

    @property
    def identity(self) -> MasterIdentity | None:
        """What the master said about itself when the link (re)opened; None before that."""

    @property
    def capabilities(self) -> frozenset[LinkCapability]:
        """The ways to update a node that work over this link now; empty while its peer is unknown."""

    async def get_identity(self) -> MasterIdentity:
        """The master's identity, asked now.

        :raises LinkError: the link is closed, held, or got no usable answer
        """

    async def scan(self, *, probe_range: tuple[int, int] | None = None) -> ScanResult:
        """The boards on the bus.

        :param probe_range: also probe these ids (inclusive) for nodes outside the routing table
        :raises ValueError: a probe range outside 1..127
        :raises LinkError: the link is closed, held, or got no usable answer in time
        """

    async def restart_node(self, node_id: int) -> None:
        """Restart node ``node_id`` (0: the master itself).

        :raises ValueError: ``node_id`` outside 0..127
        :raises MasterError: the node could not be reached
        :raises LinkError: the link is closed, held, or got no answer in time
        """

    async def stream_ota(
        self,
        node_id: int,
        image: bytes,
        *,
        progress: Progress | None = None,
        on_flashing: Callable[[], None] | None = None,
    ) -> StreamResult:
        """Stream ``image`` into node ``node_id``; the link is held for the whole stream.

        Cancelling stops between chunks; the node keeps its old image, and the link is usable again when
        this returns.

        :param progress: called with (bytes acknowledged, image size) after every chunk
        :param on_flashing: called when the node checks and commits the image
        :raises ValueError: a node id outside 1..127, an empty image
        :raises MasterUnsupportedError: the link cannot stream (no ``LinkCapability.STREAM``); nothing sent
        :raises MasterError: the transfer failed, the reason in ``.code``
        :raises LinkBusyError: another task holds the link
        :raises LinkTimeoutError: a step got no answer in time
        :raises LinkError: the link went away meanwhile
        """

    async def bus_health(self) -> BusHealth:
        """The bus's state and error counters.

        :raises LinkError: the link is closed, held, or got no usable answer in time
        """

    def exclusive(self, purpose: str) -> AbstractAsyncContextManager[None]:
        """Hold the link for one task: meanwhile other tasks' commands raise LinkBusyError.

        :raises LinkBusyError: another task holds the link
        """


class WifiTriggerLink(UpdateLink, Protocol):
    """An update link that can also ask a node to join WiFi and serve ArduinoOTA (legacy masters)."""

    async def start_wifi_ota(
        self,
        can_id: int,
        ssid: str,
        password: str,
        *,
        timeout_ms: int = ...,
        on_accepted: Callable[[JsonObject], None] | None = None,
    ) -> WifiOtaResult:
        """Make node ``can_id`` join WiFi and serve ArduinoOTA for ``timeout_ms``.

        :param on_accepted: called with the relay's immediate reply, before the node's answer comes
        :raises ValueError: an SSID or password the firmware's fields cannot carry, a bad id or timeout
        :raises MasterUnsupportedError: the link cannot relay it (no ``LinkCapability.WIFI_TRIGGER``)
        :raises MasterError: the relay refused the command
        :raises WifiJoinError: the node could not join or start ArduinoOTA
        :raises WifiJoinTimeoutError: no answer from the node in time
        :raises LinkError: the link is closed, held, or got no answer in time
        """


class MasterLink(WifiTriggerLink, Protocol):
    """The link the daemon holds to the bus (``engine/master.py``): opened, watched, closed by it."""

    @property
    def settings(self) -> LinkSettings:
        """Timeouts and limits; ``reconnect`` paces the daemon's background opener too."""

    @property
    def is_open(self) -> bool: ...

    async def open(self, *, recover: bool = False) -> None:
        """Open the link and check that its peer answers; no-op unless closed.

        :param recover: when the peer does not answer, try to bring it back first (may take long)
        :raises LinkOpenError: it cannot be opened, or no peer answers (HandshakeError)
        """

    async def close(self) -> None:
        """Close the link; safe to call twice."""

    def on_connection(self, callback: Callable[[ConnectionEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on every :class:`ConnectionEvent`; returns the unsubscriber."""

    def leave(self) -> None:
        """The daemon is stopping: what is abandoned from now on must not wait for the peer."""


@runtime_checkable
class RebootWitness(Protocol):
    """A link that hears a node's boot-up message (COB-ID 0x700 + id, data 0x00, CiA 301): the
    evidence that the node rebooted, which a method asks for when its link has it."""

    async def wait_for_boot(self, node_id: int, timeout: float, *, since: float | None = None) -> bool:  # noqa: ASYNC109
        """True once node ``node_id`` sent its boot-up message at or after event-loop time ``since``
        (default: now); False after ``timeout``."""


class BusLink(WifiTriggerLink, RebootWitness, Protocol):
    """A link on the CAN bus itself (a SocketCAN or USB CAN adapter): the daemon is the SDO client.

    It relays no WiFi trigger (``start_wifi_ota`` refuses, there is no master) and has no master to
    identify (``identity`` None)."""

    @property
    def is_open(self) -> bool: ...

    async def open(self) -> None:
        """Open the bus and start listening; no-op when open.

        :raises LinkOpenError: the interface cannot be opened
        """

    async def close(self) -> None:
        """Leave the bus; safe to call twice."""

    async def wait_failed(self) -> str:
        """Return, with the reason, once the interface failed (only reopening cures it, unlike a
        bus-off); meanwhile wake on nothing but the link's own changes."""
