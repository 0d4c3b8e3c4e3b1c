"""ScanDevices: the boards on the bus, each with whether the firmware server has a different image."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from uc2otad.contract import Link
from uc2otad.engine.planning import image_for
from uc2otad.errors import FirmwareError, LinkError
from uc2otad.firmware.catalog import Catalog
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.methods.verify import same_release

if TYPE_CHECKING:
    from uc2otad.engine.direct import DirectConnection
    from uc2otad.engine.master import MasterConnection
    from uc2otad.links.commands import NodeInfo, ScanResult

_LOGGER = logging.getLogger(__name__)

#: seconds ScanDevices waits for the firmware server (after the bus scan) to fill in update_available
SCAN_UPDATE_INFO_TIMEOUT = 2.0


async def scan_devices(
    master: MasterConnection | None, direct: DirectConnection | None, repository: FirmwareRepository
) -> list[dict[str, Any]]:
    """Every board the links know (the master first), with whether the server has a different image.

    With both links each board is listed once, with ``link`` the way an update of it goes: "can" for a
    board that answers CANopen on the direct link, "master" for the rest (see :mod:`.planning`). The
    two scans run at once; one link failing leaves its boards out when the other answered.

    ``update_available`` is left out when it cannot be known: the server unreachable, no image for the
    board, or a board or image that reports no version. The server is asked while the bus is scanned,
    so a slow or absent server costs at most ``SCAN_UPDATE_INFO_TIMEOUT`` and only that column.

    :raises LinkClosedError: no link is connected
    :raises LinkBusyError: a stream holds the only link
    :raises LinkError: the scan failed on every link
    """
    catalog_task = asyncio.ensure_future(repository.catalog())
    try:
        master_scan, direct_scan = await _scan_both(master, direct)
    except BaseException:
        catalog_task.cancel()
        raise
    catalog: Catalog | None = None
    try:
        catalog = await asyncio.wait_for(catalog_task, SCAN_UPDATE_INFO_TIMEOUT)
    except (FirmwareError, TimeoutError) as err:
        _LOGGER.warning("engine: scan without update information: %s", err or "firmware server too slow")
    return [_board(node, link, catalog) for node, link in _merged(master_scan, direct_scan)]


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


def _board(node: NodeInfo, link: Link, catalog: Catalog | None) -> dict[str, Any]:
    board: dict[str, Any] = {
        "can_id": node.can_id,
        "role": node.role,
        "reachable": node.reachable,
        "fw_version": node.fw_version,
        "build": node.build,
        "mac": node.mac,
        "link": str(link),
    }
    if catalog is not None and node.fw_version:
        image = image_for(catalog, node.can_id, node.fw_image)
        if image is not None and image.version:
            # as StartOTA decides "already up to date": a report cut by a buffer names it too
            board["update_available"] = not same_release(node.fw_version, image.version)
    return board
