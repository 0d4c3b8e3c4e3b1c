"""ScanDevices: the boards on the bus, each with whether the firmware server has a different image."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from uc2otad.engine.planning import image_for
from uc2otad.errors import FirmwareError
from uc2otad.firmware.catalog import Catalog
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.methods.verify import same_release

if TYPE_CHECKING:
    from uc2otad.engine.master import MasterConnection

_LOGGER = logging.getLogger(__name__)

#: seconds ScanDevices waits for the firmware server (after the bus scan) to fill in update_available
SCAN_UPDATE_INFO_TIMEOUT = 2.0


async def scan_devices(master: MasterConnection, repository: FirmwareRepository) -> list[dict[str, Any]]:
    """Every board the master knows (itself first), with whether the server has a different image.

    ``update_available`` is left out when it cannot be known: the server unreachable, no image for the
    board, or a board or image that reports no version. The server is asked while the bus is scanned,
    so a slow or absent server costs at most ``SCAN_UPDATE_INFO_TIMEOUT`` and only that column.

    :raises LinkClosedError: the master is not connected
    :raises LinkBusyError: a stream holds the link
    :raises LinkError: the scan failed
    """
    catalog_task = asyncio.ensure_future(repository.catalog())
    try:
        async with master.use("scan") as link:
            scan = await link.scan()
    except BaseException:
        catalog_task.cancel()
        raise
    catalog: Catalog | None = None
    try:
        catalog = await asyncio.wait_for(catalog_task, SCAN_UPDATE_INFO_TIMEOUT)
    except (FirmwareError, TimeoutError) as err:
        _LOGGER.warning("engine: scan without update information: %s", err or "firmware server too slow")
    boards = []
    for node in ([scan.master] if scan.master else []) + list(scan.nodes):
        board: dict[str, Any] = {
            "can_id": node.can_id,
            "role": node.role,
            "reachable": node.reachable,
            "fw_version": node.fw_version,
            "build": node.build,
            "mac": node.mac,
        }
        if catalog is not None and node.fw_version:
            image = image_for(catalog, node.can_id, node.fw_image)
            if image is not None and image.version:
                # as StartOTA decides "already up to date": a report cut by a buffer names it too
                board["update_available"] = not same_release(node.fw_version, image.version)
        boards.append(board)
    return boards
