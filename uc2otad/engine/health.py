"""Checks before an update (issue 19): is the microscope ready for a board to be touched?

A careful technician looks before flashing: the CAN bus is up and not failing, the node is there. So
does the daemon, after it scanned and before any board gets a command, and refuses with
:class:`~uc2otad.errors.UnhealthyError` (D-Bus ``Unhealthy``) naming the check that failed:

- ``bus``: the link's controller is running and its node operational. Through a CANopen master that
  is ``/can_get`` (``CANopenModule::get``, ``CANopenModule.cpp:1449-1487`` @063e5a6): the TWAI state
  "running" (not "stopped", "bus_off", "recovering") and NMT "OPERATIONAL"; on the direct CAN link the
  controller's state from its error frames (not bus-off, not error-passive). A legacy master has no
  ``/can_get``: nothing to ask, the check passes.
- ``errors``: the transmit and receive error counters below ``max_bus_errors`` (96 by default: the
  error-warning limit of ISO 11898-1, where a TWAI or SocketCAN controller reports "error warning";
  a bus that counts that many errors drops frames of a stream).
- ``node``: each board was heard on the bus lately (the scan's ``reachable``: within 5 s on a CANopen
  master, ``CANopenModule.cpp:611-633``; listed by a legacy master's scan).

An inhibit is checked before all of these (``Inhibited``), and cannot be skipped. StartOTA's option
``skip_checks`` names the checks to skip, for a technician who knows better (a node that boots only
into its bootloader, a bus with a known flaky stub).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from uc2otad.errors import InvalidArgumentError, UnhealthyError
from uc2otad.links.commands import NodeInfo
from uc2otad.links.protocol import LinkCapability, UpdateLink

_LOGGER = logging.getLogger(__name__)

#: the checks, as ``skip_checks`` names them
CHECKS = ("bus", "errors", "node")
#: ISO 11898-1's error-warning limit: a controller with a counter at or above it reports "error warning"
MAX_BUS_ERRORS = 96
#: controller states that carry a stream: the master's TWAI word, the direct link's states below passive
RUNNING_STATES = frozenset({"running", "error_active", "error_warning"})
OPERATIONAL = "OPERATIONAL"


@dataclass(frozen=True)
class HealthSettings:
    #: ``update.max_bus_errors``: an error counter at or above this refuses an update
    max_bus_errors: int = MAX_BUS_ERRORS
    #: ``update.rollback_on_unhealthy``: after a verified update, run the checks again (the node
    #: answers, the error counters stayed below the limit) and put the board's earlier image back when
    #: one fails (:mod:`.rollback`)
    rollback_on_unhealthy: bool = False


def skipped_checks(names: Iterable[str]) -> frozenset[str]:
    """The checks ``skip_checks`` names.

    :raises InvalidArgumentError: a name that is no check
    """
    skipped = frozenset(names)
    unknown = sorted(skipped - set(CHECKS))
    if unknown:
        raise InvalidArgumentError(f"skip_checks: no check {unknown[0]!r}; the checks: {', '.join(CHECKS)}")
    return skipped


async def check_link(link: UpdateLink, settings: HealthSettings, skip: frozenset[str]) -> None:
    """The ``bus`` and ``errors`` checks on ``link``.

    :raises UnhealthyError: the controller is not running, the node not operational, or its error
        counters at the limit
    :raises LinkError: the link could not be asked
    """
    if {"bus", "errors"} <= skip or LinkCapability.STREAM not in link.capabilities:
        return  # a legacy master has no /can_get
    health = await link.bus_health()
    if "bus" not in skip:
        if health.bus_state is not None and health.bus_state not in RUNNING_STATES:
            raise UnhealthyError(
                f"{link.name}: the CAN controller is {health.bus_state.replace('_', '-')}, not running: "
                "check the bus's wiring and termination (check 'bus')",
                check="bus",
            )
        if health.nmt_state_name is not None and health.nmt_state_name != OPERATIONAL:
            raise UnhealthyError(
                f"{link.name}: the master's CANopen state is {health.nmt_state_name}, not {OPERATIONAL} "
                "(check 'bus')",
                check="bus",
            )
    counters = [count for count in (health.tx_errors, health.rx_errors) if count is not None]
    if "errors" not in skip and counters and max(counters) >= settings.max_bus_errors:
        raise UnhealthyError(
            f"{link.name}: CAN error counters tx={health.tx_errors} rx={health.rx_errors}, at or above "
            f"{settings.max_bus_errors}: the bus drops frames (check 'errors')",
            check="errors",
        )


def check_node(can_id: int, node: NodeInfo | None, skip: frozenset[str]) -> None:
    """The ``node`` check: board ``can_id``, as its link's scan saw it (``node``), was heard lately.

    :raises UnhealthyError: it was not
    """
    if "node" not in skip and (node is None or not node.reachable):
        raise UnhealthyError(
            f"board {can_id} was not heard on the bus lately: is it powered and connected? (check 'node')",
            check="node",
        )
