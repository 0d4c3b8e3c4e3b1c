"""What a method sees of its job: the steps it reports and the point of no return.

The engine owns jobs and the status dict; a method only reports where it is. These protocols are the
methods' side of that contract, so that methods import nothing from the engine (data flows api →
engine → methods → links, never back).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from uc2otad.contract import Phase

__all__ = ["Job", "Phase", "StatusSink"]

if TYPE_CHECKING:
    from uc2otad.firmware.repository import VerifiedImage


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
