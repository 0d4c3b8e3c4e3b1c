"""Proof that a board runs its new image, strongest evidence first (docs/api.md, "Verification").

A transfer that the board acknowledged is not yet an update: the board must reboot and come back
running the image. What a scan can prove depends on the firmware generation (uc2-stack.md §2, §4.3):

- 2026-09 firmware reports the image's release string in ``fwVersion``; ImSwitch compares it with
  ``version.json``'s ``version``. A master of July 2026 passes on only 39 characters of it
  (``CANopenModule.cpp:1492-1503`` @063e5a6), an app descriptor holds 31, so a report of exactly
  that length matches the start of a longer version ("version").
- FW-main of July 2026 reports the fixed ``"UC2-ESP v2.0"`` and its CANopen module's own compile time
  (``CANopenModule.cpp:1248-1251`` @063e5a6): neither names the image, and the build never equals the
  image's app descriptor. A build that changed since the scan before the update shows another image
  booted ("build").
- On a link that hears the bus itself (the direct CAN link), the node's boot-up message after the
  commit proves the reboot (:func:`await_reboot`), and a node that answers its SDO reads after it
  runs the image the transfer checked unless its release string says otherwise ("reboot").
- Otherwise the transfer protocol's word stands — the master's "success" (CRC checked, boot partition
  set) or ArduinoOTA's "OK" (MD5 checked) — once the board answers a scan again after ``settle``
  ("transfer"); the journal warns when its build did not change, since then the scan cannot tell
  which image runs.

Only a board that positively reports another release string than the image's — the old one, as a
rolled-back board does — fails verification.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from uc2otad.errors import BoardNotBackError, VerificationError
from uc2otad.firmware.repository import VerifiedImage
from uc2otad.firmware.versions import is_cut_from
from uc2otad.links.commands import UNVERSIONED, NodeInfo, ScanResult
from uc2otad.links.protocol import RebootWitness

_LOGGER = logging.getLogger(__name__)

#: seconds before the first scan: a slave reboots ~2 s after committing (uc2-stack.md §3.1); ImSwitch
#: waits 4 s (uc2-stack.md §4.3)
SETTLE = 4.0
#: seconds the board has to come back in all; ImSwitch polls up to 40 s (§4.3)
WINDOW = 40.0
#: seconds between scans
INTERVAL = 2.0


@dataclass(frozen=True)
class VerifySettings:
    settle: float = SETTLE
    window: float = WINDOW
    interval: float = INTERVAL


@dataclass(frozen=True)
class Expected:
    """What a board running the image can report, and what it reported before the update."""

    #: ``version.json``'s version for the image (the release string 2026-09 firmware reports)
    release: str | None
    #: the image's app-descriptor version
    app_version: str | None
    #: the board's entry in the scan before the update; None when it was not in it
    before: NodeInfo | None


def expected_of(image: VerifiedImage, before: NodeInfo | None) -> Expected:
    """What ``image`` lets a board report: the manifest's version, the app descriptor's."""
    desc = image.info.app_desc
    return Expected(
        release=image.resolved.version, app_version=desc.version if desc is not None else None, before=before
    )


def same_release(reported: str | None, expected: str | None) -> bool:
    """``reported`` names the release ``expected``: equal, or its start cut at a known buffer length."""
    if not reported or not expected:
        return False
    if reported == expected:
        return True
    return is_cut_from(reported, expected)


def is_release_string(reported: str | None) -> bool:
    """A release string names an image; FW-main's fixed ``"UC2-ESP v2.0"`` does not."""
    return bool(reported) and reported != UNVERSIONED


def evidence(node: NodeInfo, expected: Expected, *, rebooted: bool = False) -> str | None:
    """The evidence that ``node`` runs the image ("version", "build", "reboot", "transfer"), or None:
    not yet. ``rebooted``: its boot-up message after the commit was heard."""
    if same_release(node.fw_version, expected.release) or same_release(node.fw_version, expected.app_version):
        return "version"
    if is_release_string(node.fw_version):
        return None  # it names another image (until the window ends: it may not have rebooted yet)
    before = expected.before
    if before is not None and before.build and node.build and node.build != before.build:
        return "build"
    if not node.answered:
        return None
    return "reboot" if rebooted else "transfer"


#: one scan of the bus; the WiFi method borrows the link for each, so that boards of a batch that
#: verify at the same time do not hold the link for each other's whole window
Scan = Callable[[], Awaitable[ScanResult]]


async def await_reboot(
    witness: RebootWitness, can_id: int, since: float, settings: VerifySettings
) -> VerifySettings:
    """Wait for board ``can_id``'s boot-up message sent at or after loop time ``since``; the settings
    for the scans that follow (no settle: the board is back).

    :raises BoardNotBackError: no boot-up message within the window
    """
    if not await witness.wait_for_boot(can_id, settings.window, since=since):
        raise BoardNotBackError(f"board {can_id} sent no boot-up message within {settings.window:g} s")
    return replace(settings, settle=0.0)


async def await_new_image(
    scan: Scan, can_id: int, expected: Expected, settings: VerifySettings, *, rebooted: bool = False
) -> str:
    """Scan until board ``can_id`` shows it runs the image; the evidence found.

    :param rebooted: its boot-up message after the commit was heard (:func:`await_reboot`)
    :raises BoardNotBackError: the board did not answer within the window
    :raises VerificationError: it answered, reporting another release string than the image's
    """
    await asyncio.sleep(settings.settle)
    deadline = time.monotonic() + settings.window
    other_release: str | None = None
    while True:
        node = (await scan()).node(can_id)
        if node is not None and node.answered:
            found = evidence(node, expected, rebooted=rebooted)
            if found is not None:
                _warn_if_unproven(can_id, found, node, expected)
                return found
            other_release = node.fw_version
        if time.monotonic() + settings.interval > deadline:
            break
        await asyncio.sleep(settings.interval)
    if other_release is not None:
        wanted = expected.release or expected.app_version
        raise VerificationError(f"board {can_id} came back running {other_release}, not {wanted}")
    raise BoardNotBackError(f"board {can_id} did not answer within {settings.window:g} s of its reboot")


def _warn_if_unproven(can_id: int, found: str, node: NodeInfo, expected: Expected) -> None:
    before = expected.before
    unproven = found in ("transfer", "reboot")  # a rolled-back board reboots and answers too
    if unproven and before is not None and before.build and node.build == before.build:
        _LOGGER.warning(
            "board %d: the transfer was confirmed, but the board reports the build it reported before "
            "(%s): this firmware cannot show which image it runs",
            can_id,
            node.build,
            extra={"UC2_CAN_ID": can_id},
        )
