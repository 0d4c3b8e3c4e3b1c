"""What a method is, and what it sees of its job: its traits, its inputs, the steps it reports.

The engine owns jobs and the status dict; a method only reports where it is. These protocols are the
methods' side of that contract, so that methods import nothing from the engine (data flows api →
engine → methods → links, never back). A method class declares its traits (:class:`SlaveMethod`): the
engine asks them — which link capability it needs, whether it joins WiFi, whether a batch may run it in
parallel, whether StartOTA waits for the master's word — rather than comparing method names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from uc2otad.contract import Phase
from uc2otad.links.protocol import LinkCapability, WifiTriggerLink
from uc2otad.methods.verify import VerifySettings

__all__ = ["Job", "LinkUse", "Phase", "PlannedJob", "SlaveMethod", "StatusSink", "WifiCredentials"]

if TYPE_CHECKING:
    from uc2otad.firmware.repository import VerifiedImage
    from uc2otad.links.commands import NodeInfo

#: borrows the master link for the purpose named (``MasterConnection.use``)
LinkUse = Callable[[str], AbstractAsyncContextManager[WifiTriggerLink]]


@dataclass(frozen=True)
class WifiCredentials:
    """The network the slave joins, and the OTA password its ArduinoOTA may ask for; neither password
    ever shows in a repr."""

    ssid: str
    password: str = field(repr=False)
    #: the ArduinoOTA password (SetOTAPassword), read when the job is planned; None: none is stored
    ota_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PlannedJob:
    """What the engine resolved for one board before anything touched it: a method's inputs."""

    can_id: int
    use_link: LinkUse
    #: the board's image, resolved, cached and checked (called once the job runs)
    obtain: Callable[[], Awaitable[VerifiedImage]]
    verify: VerifySettings
    #: the board in the scan before the update (its build, its release string); None: not in it
    before: NodeInfo | None
    #: for a method that joins WiFi: the network, and its settings (the method's own settings type,
    #: built by the composition root, which alone knows the WiFi settings' module)
    credentials: WifiCredentials | None = None
    wifi_settings: object = None


class SlaveMethod(Protocol):
    """A way to bring an image to a slave, as a class: its traits, and a job's instance of it."""

    #: the status dict's ``method`` and StartOTA's ``method`` option
    name: ClassVar[str]
    #: what the master link must offer (``link.capabilities``)
    needs: ClassVar[LinkCapability]
    #: what a user reads when the master lacks it (InvalidArgument; the method's name follows)
    unavailable: ClassVar[str]
    #: the slave joins WiFi: the job needs credentials and the WiFi settings
    joins_wifi: ClassVar[bool]
    #: boards of a batch may run it at the same time (up to ``parallel``); else one by one
    parallel: ClassVar[bool]
    #: StartOTA returns once the master acknowledged the job's command, with its reply
    acknowledged_by_master: ClassVar[bool]

    @classmethod
    def prepare(cls, planned: PlannedJob) -> Self:
        """The method for one board's job."""

    async def run(self, job: Job) -> None: ...


class StatusSink(Protocol):
    """Where a method reports its steps (the engine's BoardStatus). Every report is synchronous and
    never waits, so a link's or an uploader's progress callback may make it directly."""

    def advance(self, phase: Phase, **fields: Any) -> None: ...

    def progress(self, percent: float) -> None: ...

    def succeed(self, *, verification: str, firmware_version: str | None = None) -> None: ...


class Job(Protocol):
    """One update as a method sees it."""

    @property
    def can_id(self) -> int: ...

    @property
    def status(self) -> StatusSink: ...

    def obtained(self, image: VerifiedImage) -> None:
        """The verified image this job transfers (its history row keeps the sha256 and version)."""

    def accepted(self, command_response: Mapping[str, Any]) -> None:
        """The master acknowledged the command that starts the update (StartOTA returns with its reply)."""

    def committed(self) -> None:
        """The board has taken the new image: from now on the job cannot be cancelled."""
