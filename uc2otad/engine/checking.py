"""Whether each board needs an update: its firmware against the server's, one rule for every caller.

CheckUpdates lists the state of every board; ScanDevices' ``update_available`` is "the state is
``update_available``"; StartOTA and StartMultipleOTA leave out a board that is ``up_to_date`` (unless
``force``) or ``device_newer`` (unless ``allow_downgrade``). One function decides all of them
(:func:`board_state`), so a board can never be "current" to one call and "outdated" to another.

The versions are compared by :mod:`uc2otad.firmware.versions`. A board that reports no release string
(FW-main of July 2026: the fixed "UC2-ESP v2.0") cannot say what it runs; the daemon's own history
can: when the last update that succeeded on it installed the very image offered now (same sha256), it
is ``up_to_date``, else ``unknown`` — never ``update_available``, so a scheduled update does not
reflash such a board every night for lack of a version. A later failed job does not count against
it: a transfer that failed before its commit leaves the board on the image it ran (the slave switches
its boot partition only after checking the whole image's CRC).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from uc2otad.contract import Link, UpdateState
from uc2otad.errors import FirmwareError
from uc2otad.firmware.catalog import MASTER_CAN_ID, Catalog, ResolvedImage
from uc2otad.firmware.versions import Order, compare
from uc2otad.links.commands import NodeInfo
from uc2otad.methods.verify import is_release_string

#: the sha256 of the image the daemon last installed on a board, successfully; None: none known
Installed = Callable[[int], Awaitable[str | None]]

_BY_ORDER = {Order.SAME: UpdateState.UP_TO_DATE, Order.OLDER: UpdateState.UPDATE_AVAILABLE,
             Order.NEWER: UpdateState.DEVICE_NEWER}  # fmt: skip


@dataclass(frozen=True)
class BoardCheck:
    """One board of CheckUpdates: what it runs, what the server offers, and the state."""

    node: NodeInfo
    link: Link
    #: the server's image for it; None: none, or the server was not reached
    image: ResolvedImage | None
    state: UpdateState

    def as_dict(self) -> dict[str, Any]:
        """The D-Bus entry; unknown values are left out (D-Bus has no null)."""
        image = self.image
        return {
            "can_id": self.node.can_id,
            "role": self.node.role,
            "link": str(self.link),
            "state": str(self.state),
            "running_version": self.node.fw_version or None,
            "offered_version": image.version if image is not None else None,
            "running_image": self.node.fw_image or None,
            "offered_image": image.name if image is not None else None,
        }


async def board_state(
    node: NodeInfo | None, image: ResolvedImage | None, installed: Installed, *, catalog_known: bool = True
) -> UpdateState:
    """The state of a board as a scan saw it (None: not in the scan), against ``image``.

    :param catalog_known: the server answered (else nothing is known about what it offers)
    :param installed: asked only for a board that reports no release string
    """
    if node is None or not node.reachable:
        return UpdateState.UNREACHABLE
    if not catalog_known:
        return UpdateState.UNKNOWN
    if image is None:
        return UpdateState.NO_FIRMWARE
    if not is_release_string(node.fw_version):
        sha256 = image.promise.sha256 if image.promise is not None else None
        given = await installed(node.can_id) if sha256 is not None else None
        return UpdateState.UP_TO_DATE if given is not None and given == sha256 else UpdateState.UNKNOWN
    if node.fw_version is None or image.version is None:
        return UpdateState.UNKNOWN
    order = compare(node.fw_version, image.version)
    return _BY_ORDER[order] if order is not None else UpdateState.UNKNOWN


async def check_board(
    node: NodeInfo, link: Link, catalog: Catalog | None, installed: Installed
) -> BoardCheck:
    """:func:`board_state` for a board of a scan, with the image ``catalog`` has for it."""
    image = image_for(catalog, node.can_id, node.fw_image) if catalog is not None else None
    state = await board_state(node, image, installed, catalog_known=catalog is not None)
    return BoardCheck(node, link, image, state)


def image_for(catalog: Catalog, can_id: int, reported: str | None) -> ResolvedImage | None:
    """The image ``catalog`` has for a board that reports running ``reported``, if any."""
    try:
        return (
            catalog.resolve_master()
            if can_id == MASTER_CAN_ID
            else catalog.resolve(can_id, reported_image=reported)
        )
    except FirmwareError:
        return None


def due(state: UpdateState, *, force: bool = False, allow_downgrade: bool = False) -> bool:
    """Whether an update asked for installs on a board in ``state``: not on one that runs the offered
    release (unless ``force``: install the same again) nor on one that runs a newer build (unless
    ``allow_downgrade``). An unknown state is due: the caller named the board."""
    if state is UpdateState.UP_TO_DATE:
        return force
    if state is UpdateState.DEVICE_NEWER:
        return allow_downgrade
    return True
