"""What the master's update procedures use of a link to the HAT: its JSON commands, events and raw writes.

``ota_stream`` (streaming, CANopen masters) and ``ota_wifi`` (the WiFi trigger, legacy masters) are the
master's OTA procedures. They run over a link to a master that speaks the UC2 serial JSON protocol
(``uc2-stack.md`` §2) and need only the primitives below, so they are typed against
:class:`HatChannel` and not against :class:`~uc2otad.links.serial_hat.SerialHatLink`, which calls them:
``serial_hat`` → ``ota_stream``/``ota_wifi`` → ``hat_channel``, one way.

Main constraint: this module imports neither ``serial_hat`` nor the procedures; ``SerialHatLink``
satisfies the protocol structurally.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from uc2otad.links.commands import MasterIdentity
from uc2otad.links.replies import EventStream, JsonObject, ReplyShape


class HatChannel(Protocol):
    """A link to the master, as its OTA procedures use it (:class:`~uc2otad.links.base.Link` has it all)."""

    @property
    def name(self) -> str:
        """How logs and errors name the link."""

    @property
    def identity(self) -> MasterIdentity | None:
        """What the master said about itself when the link (re)opened; None before that."""

    async def request(
        self,
        command: Mapping[str, Any],
        *,
        reply: ReplyShape | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - as Link.request: each command has its own
        send_qid: bool = True,
    ) -> JsonObject:
        """Send ``command`` and return the master's reply; see :meth:`uc2otad.links.base.Link.request`."""

    async def write_raw(self, data: bytes) -> None:
        """Write bytes as they are: the master is in binary mode after ``/ota_start``."""

    def listen(self, *keys: str) -> EventStream:
        """A stream of the messages with any of ``keys`` at top level, registered at once."""

    def exclusive(self, purpose: str) -> AbstractAsyncContextManager[None]:
        """Hold the link: while the block runs, other tasks' commands raise LinkBusyError."""

    async def end_binary_mode(self, events: EventStream, why: str) -> bool:
        """Get a master that may still be in binary mode back to reading JSON, from inside the hold.

        :param events: a stream that carries ``ota_status`` (the master's last word, when it is waited for)
        :returns: True when the master was reset, False when it was waited out
        :raises TimeoutError: the master did not come back in time
        :raises LinkError: the port went away or the master rebooted meanwhile
        """
