"""ScanDevices and CheckUpdates: the boards on the bus, each with how its firmware stands to the server's.

Both scan both links the same way (:func:`scan_boards`); CheckUpdates reports each board's state
(:mod:`.checking`), ScanDevices whether that state is ``update_available``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from uc2otad.contract import Link, UpdateState
from uc2otad.engine.checking import BoardCheck, Installed, check_board
from uc2otad.errors import FirmwareError, LinkError
from uc2otad.firmware.catalog import Catalog
from uc2otad.firmware.repository import FirmwareRepository

if TYPE_CHECKING:
    from uc2otad.engine.direct import DirectConnection
    from uc2otad.engine.master import MasterConnection
    from uc2otad.links.commands import NodeInfo, ScanResult

_LOGGER = logging.getLogger(__name__)

#: seconds ScanDevices waits for the firmware server (after the bus scan) to fill in update_available
SCAN_UPDATE_INFO_TIMEOUT = 2.0


#: the states in which a board's ``update_available`` is known (true or false); left out otherwise
_KNOWN = frozenset({UpdateState.UP_TO_DATE, UpdateState.UPDATE_AVAILABLE, UpdateState.DEVICE_NEWER})


async def scan_devices(
    master: MasterConnection | None,
    direct: DirectConnection | None,
    repository: FirmwareRepository,
    installed: Installed,
) -> list[dict[str, Any]]:
    """Every board the links know (the master first), with whether the server has a different image.

    With both links each board is listed once, with ``link`` the way an update of it goes: "can" for a
    board that answers CANopen on the direct link, "master" for the rest (see :mod:`.planning`). The
    two scans run at once; one link failing leaves its boards out when the other answered.

    ``update_available`` is whether the board's state is ``update_available``; it is left out when
    the state says nothing about that: the server unreachable, no image for the board, versions that
    cannot be ordered. The server is asked while the bus is scanned, so a slow or absent server costs
    at most ``SCAN_UPDATE_INFO_TIMEOUT`` and only that column.

    :raises LinkClosedError: no link is connected
    :raises LinkBusyError: a stream holds the only link
    :raises LinkError: the scan failed on every link
    """
    return [_board(check) for check in await scan_boards(master, direct, repository, installed)]


async def scan_boards(
    master: MasterConnection | None,
    direct: DirectConnection | None,
    repository: FirmwareRepository,
    installed: Installed,
    *,
    server_timeout: float | None = SCAN_UPDATE_INFO_TIMEOUT,
) -> list[BoardCheck]:
    """Every board the links know (the master first), each checked against the server's image
    (:func:`.checking.check_board`).

    :param server_timeout: seconds the firmware server has after the scan; one that fails or is
        slower leaves every state that needs it ``unknown``. None: as long as the server's own
        timeouts allow, and its failure is raised (CheckUpdates: "unknown" for every board would
        hide that the server is down)
    :raises LinkClosedError, LinkBusyError, LinkError: as :func:`scan_devices`
    :raises FirmwareError: ``server_timeout`` None and the server's listing or manifest failed
    """
    catalog_task = asyncio.ensure_future(repository.catalog())
    try:
        master_scan, direct_scan = await _scan_both(master, direct)
    except BaseException:
        catalog_task.cancel()
        raise
    catalog: Catalog | None = None
    try:
        catalog = await asyncio.wait_for(catalog_task, server_timeout)
    except (FirmwareError, TimeoutError) as err:
        if server_timeout is None:
            raise
        _LOGGER.warning("engine: scan without update information: %s", err or "firmware server too slow")
    return [
        await check_board(node, link, catalog, installed) for node, link in _merged(master_scan, direct_scan)
    ]


async def _scan_both(
    master: MasterConnection | None, direct: DirectConnection | None
) -> tuple[ScanResult | None, ScanResult | None]:
    """Both links' scans, at once; a link's failure is raised only when no link answered."""

    async def scan_over(connection: MasterConnection | DirectConnection | None) -> ScanResult | None:
        if connection is None:
            return None
        async with connection.use("scan") as link:
            return await link.scan()

    results = await asyncio.gather(scan_over(master), scan_over(direct), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    for failure in failures:
        if not isinstance(failure, LinkError):
            raise failure
    scans = [result if not isinstance(result, BaseException) else None for result in results]
    if failures and not any(scans):
        raise failures[0]
    for failure in failures:
        _LOGGER.warning("engine: scan without one link: %s", failure)
    return scans[0], scans[1]


def _merged(master_scan: ScanResult | None, direct_scan: ScanResult | None) -> list[tuple[NodeInfo, Link]]:
    """Each board once, with the link an update of it takes; the master first, then by CAN id."""
    entries: dict[int, tuple[NodeInfo, Link]] = {}
    for node in direct_scan.nodes if direct_scan is not None else ():
        entries[node.can_id] = (node, Link.CAN)
    for node in master_scan.nodes if master_scan is not None else ():
        known = entries.get(node.can_id)
        if known is None or not known[0].canopen:
            entries[node.can_id] = (node, Link.MASTER)
    first = [(master_scan.master, Link.MASTER)] if master_scan is not None and master_scan.master else []
    return first + [entries[can_id] for can_id in sorted(entries)]


def _board(check: BoardCheck) -> dict[str, Any]:
    node = check.node
    board: dict[str, Any] = {
        "can_id": node.can_id,
        "role": node.role,
        "reachable": node.reachable,
        "fw_version": node.fw_version,
        "build": node.build,
        "mac": node.mac,
        "link": str(check.link),
    }
    if check.state in _KNOWN:  # as CheckUpdates and StartOTA decide (uc2otad.engine.checking)
        board["update_available"] = check.state is UpdateState.UPDATE_AVAILABLE
    return board
