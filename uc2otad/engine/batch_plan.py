"""The plan of a batch (StartMultipleOTA): which boards, in which order, and what happens to each.

The plan lives in the daemon rather than in a client so that every client (uc2otactl, ImSwitch, the
weekly timer) gets the same one: the boards named by CAN id in the order given, then the boards of the
asked ``roles`` by CAN id, each with the action the batch takes ("update", or "skip" for a board that
is not due, :func:`.checking.due`), and with ``include_master`` the master last, flashed over USB
("flash_master") when its check says an update is available (or ``force``) and its port is present —
else "skip" with the reason. A dry run (``dry_run``) answers this plan and starts nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from uc2otad.contract import Link, UpdateState
from uc2otad.engine.checking import BoardCheck
from uc2otad.errors import InvalidArgumentError
from uc2otad.firmware.catalog import MASTER_CAN_ID

#: the slave roles a batch may select by (``roles``): the type names the master's scan gives them
#: (:attr:`uc2otad.links.commands.NodeInfo.role`)
ROLES = ("motor", "laser", "led", "galvo")

UPDATE, SKIP, FLASH_MASTER = "update", "skip", "flash_master"


@dataclass(frozen=True)
class PlanEntry:
    """One board of the plan: what the batch does with it, and why when it does nothing."""

    can_id: int
    role: str
    link: str
    state: str
    #: "update", "skip" or "flash_master"
    action: str
    reason: str | None = None
    #: the master's USB port, when the batch flashes it
    port: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The reply's ``plan`` entry; an unknown reason or port is left out (D-Bus has no null)."""
        return {
            "can_id": self.can_id,
            "role": self.role,
            "link": self.link,
            "state": self.state,
            "action": self.action,
            "reason": self.reason,
            "port": self.port,
        }


def check_roles(roles: Iterable[str]) -> list[str]:
    """The roles asked for, each once, in the order given.

    :raises InvalidArgumentError: a role that is not one of :data:`ROLES`
    """
    asked = list(dict.fromkeys(roles))
    for role in asked:
        if role not in ROLES:
            raise InvalidArgumentError(f"role must be one of {', '.join(ROLES)}, not {role[:40]!r}")
    return asked


def role_boards(checks: Sequence[BoardCheck], roles: Sequence[str], given: Sequence[int]) -> list[int]:
    """The slaves of the scan with one of ``roles``, by CAN id, leaving out those ``given`` already."""
    return sorted(
        check.node.can_id
        for check in checks
        if check.node.role in roles and check.node.can_id != MASTER_CAN_ID and check.node.can_id not in given
    )


def slave_entry(
    can_id: int, role: str | None, link: Link, state: UpdateState, *, due: bool, newer: str | None
) -> PlanEntry:
    """A slave's entry: updated when due; else skipped as current or (``newer``) as running a newer build."""
    if due:
        return PlanEntry(can_id, role or "unknown", str(link), str(state), UPDATE)
    reason = (
        f"runs {newer}, newer than the server's; not downgraded without allow_downgrade"
        if newer is not None
        else "already up to date"
    )
    return PlanEntry(can_id, role or "unknown", str(link), str(state), SKIP, reason)


def master_entry(check: BoardCheck | None, *, force: bool, port: str, port_problem: str | None) -> PlanEntry:
    """The master's entry (``include_master``): flashed on ``port`` when an update is available (or
    ``force``) and that port is present (``port_problem`` None)."""
    if check is None:
        return PlanEntry(MASTER_CAN_ID, "master", str(Link.MASTER), str(UpdateState.UNREACHABLE), SKIP,
                         "the master did not answer the scan")  # fmt: skip
    state = check.state
    entry = PlanEntry(MASTER_CAN_ID, "master", str(check.link), str(state), FLASH_MASTER, port=port)
    if state is not UpdateState.UPDATE_AVAILABLE and not force:
        why = "already up to date" if state is UpdateState.UP_TO_DATE else f"its check says {state}"
        return PlanEntry(entry.can_id, entry.role, entry.link, entry.state, SKIP, f"{why}; not flashed")
    if port_problem is not None:
        return PlanEntry(entry.can_id, entry.role, entry.link, entry.state, SKIP,
                         f"no USB port to flash it: {port_problem}")  # fmt: skip
    return entry
