"""The verification rules (docs/api.md, "Verification"): what each firmware generation's scan proves.

Scans as the real masters report them (uc2-stack.md §2 corrections): July 2026 firmware reports
``"UC2-ESP v2.0"`` and its CANopen module's build; 2026-09 firmware its release string, which a July
master cuts to 39 characters.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from uc2otad.errors import BoardNotBackError, VerificationError
from uc2otad.links.commands import UNVERSIONED, NodeInfo, ScanResult
from uc2otad.methods.verify import (
    Expected,
    VerifySettings,
    await_new_image,
    await_reboot,
    evidence,
    same_release,
)

RELEASE = "v2026.2.0-beta.4-6-g2108590-t20260930092622-pr1234-dirty-0001"
OLD_RELEASE = "v2026.1.0"
OLD_BUILD = "Oct  1 2026 09:26:22"
NEW_BUILD = "Dec  1 2026 10:00:00"
FAST = VerifySettings(settle=0.0, window=0.05, interval=0.01)


def node(fw_version: str | None, build: str | None, *, answered: bool = True) -> NodeInfo:
    return NodeInfo(
        can_id=11, device_type=1, role="motor", reachable=True, status="idle",
        build=build, fw_version=fw_version, mac="02:55:43:32:00:0B" if answered else None, answered=answered,
    )  # fmt: skip


def expected(before: NodeInfo | None, *, release: str | None = RELEASE, app: str | None = None) -> Expected:
    return Expected(release=release, app_version=app, before=before)


def test_a_release_string_cut_by_a_july_master_or_a_descriptor_matches_the_start_of_the_version() -> None:
    assert len(RELEASE) > 39
    assert same_release(RELEASE[:39], RELEASE)
    assert same_release(RELEASE[:31], RELEASE)
    assert same_release(RELEASE, RELEASE)
    assert not same_release(RELEASE[:30], RELEASE)  # no buffer cuts there: another string
    assert not same_release(RELEASE[:39] + "x", RELEASE)
    assert not same_release(UNVERSIONED, RELEASE)
    assert not same_release(None, RELEASE)
    assert not same_release(RELEASE, None)


def test_september_firmware_proves_the_image_by_its_release_string() -> None:
    before = node(OLD_RELEASE, OLD_BUILD)
    assert evidence(node(RELEASE, NEW_BUILD), expected(before)) == "version"
    assert (
        evidence(node("v2099.0.0", NEW_BUILD), expected(before, release=None, app="v2099.0.0")) == "version"
    )


def test_july_firmware_proves_another_image_by_a_build_that_changed() -> None:
    before = node(UNVERSIONED, OLD_BUILD)
    assert evidence(node(UNVERSIONED, NEW_BUILD), expected(before)) == "build"


def test_july_firmware_with_an_unchanged_build_leaves_only_the_transfer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = node(UNVERSIONED, OLD_BUILD)
    assert evidence(node(UNVERSIONED, OLD_BUILD), expected(before)) == "transfer"
    assert evidence(node(UNVERSIONED, OLD_BUILD, answered=False), expected(before)) is None


def test_a_boot_up_heard_after_the_commit_makes_the_transfer_a_reboot() -> None:
    before = node(UNVERSIONED, OLD_BUILD)
    assert evidence(node(UNVERSIONED, OLD_BUILD), expected(before), rebooted=True) == "reboot"
    assert evidence(node(UNVERSIONED, NEW_BUILD), expected(before), rebooted=True) == "build"
    assert evidence(node(UNVERSIONED, OLD_BUILD, answered=False), expected(before), rebooted=True) is None
    assert (
        evidence(node(OLD_RELEASE, OLD_BUILD), expected(node(OLD_RELEASE, OLD_BUILD)), rebooted=True) is None
    )


class Witness:
    """A link that heard the boot-up messages at the loop times given."""

    def __init__(self, *boots: float) -> None:
        self.boots = boots

    async def wait_for_boot(self, node_id: int, timeout: float, *, since: float | None = None) -> bool:  # noqa: ASYNC109
        return any(booted >= (since or 0.0) for booted in self.boots)


async def test_no_boot_up_after_the_commit_is_board_not_back() -> None:
    with pytest.raises(BoardNotBackError, match="no boot-up message"):
        await await_reboot(Witness(1.0), 11, since=2.0, settings=FAST)
    scans = await await_reboot(Witness(1.0, 3.0), 11, since=2.0, settings=replace(FAST, settle=4.0))
    assert scans.settle == 0.0  # the board is back: the scans start at once


def test_a_board_that_answers_with_another_release_string_is_not_yet_verified() -> None:
    assert evidence(node(OLD_RELEASE, OLD_BUILD), expected(node(OLD_RELEASE, OLD_BUILD))) is None


async def test_a_board_that_keeps_reporting_its_old_release_fails_verification() -> None:
    async def scan() -> ScanResult:
        return ScanResult(nodes=(node(OLD_RELEASE, OLD_BUILD),), master=None)

    with pytest.raises(VerificationError, match=OLD_RELEASE):
        await await_new_image(scan, 11, expected(node(OLD_RELEASE, OLD_BUILD)), FAST)


async def test_a_board_heard_but_not_answering_is_not_back() -> None:
    async def scan() -> ScanResult:
        return ScanResult(nodes=(node(None, None, answered=False),), master=None)

    with pytest.raises(BoardNotBackError):
        await await_new_image(scan, 11, expected(node(UNVERSIONED, OLD_BUILD)), FAST)


async def test_the_journal_says_when_the_scan_cannot_tell_which_image_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scan() -> ScanResult:
        return ScanResult(nodes=(node(UNVERSIONED, OLD_BUILD),), master=None)

    with caplog.at_level(logging.WARNING, logger="uc2otad.methods.verify"):
        found = await await_new_image(scan, 11, expected(node(UNVERSIONED, OLD_BUILD)), FAST)
    assert found == "transfer"
    assert "cannot show which image it runs" in caplog.text
