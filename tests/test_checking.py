"""A board's update state from what a scan saw, the server offers and the history knows
(uc2otad/engine/checking.py): the edges the daemon-level test (test_daemon_check_updates.py) does not
reach, and which boards an update asked for installs on."""

from __future__ import annotations

import pytest

from uc2otad.contract import UpdateState
from uc2otad.engine.checking import Installed, board_state, due
from uc2otad.firmware.catalog import ResolvedImage
from uc2otad.firmware.listing import FirmwareFile
from uc2otad.firmware.manifest import ManifestFile
from uc2otad.links.commands import UNVERSIONED, NodeInfo

SHA = "a" * 64
IMAGE = ResolvedImage(
    can_id=11,
    file=FirmwareFile("esp32_UC2_canopen_slave_motor_release_motX.bin", 1024),
    source="standard",
    promise=ManifestFile(size=1024, sha256=SHA, version="v2026.2.0-beta.4-6-g2108590-t20260930092622"),
)
#: a file the server lists without a version.json entry
UNLISTED = ResolvedImage(can_id=11, file=IMAGE.file, source="standard")


def board(version: str | None, *, reachable: bool = True) -> NodeInfo:
    return NodeInfo(11, 1, "motor", reachable, "idle", fw_version=version, answered=reachable)


def history(sha256: str | None) -> Installed:
    async def installed(can_id: int) -> str | None:
        assert can_id == 11
        return sha256

    return installed


@pytest.mark.parametrize(
    ("node", "image", "given", "state"),
    [
        (None, IMAGE, None, UpdateState.UNREACHABLE),  # not in the scan at all
        (board(None, reachable=False), IMAGE, None, UpdateState.UNREACHABLE),
        (board("v2026.1.0"), None, None, UpdateState.NO_FIRMWARE),
        (board("v2026.1.0"), UNLISTED, None, UpdateState.UNKNOWN),  # the image has no version
        # a July 2026 master passes on 39 characters: that very release
        (board("v2026.2.0-beta.4-6-g2108590-t2026093009"), IMAGE, None, UpdateState.UP_TO_DATE),
        (board("v2026.2.0-beta.4-7-g1234567-t20261001000000"), IMAGE, None, UpdateState.DEVICE_NEWER),
        (board("v2026.2.0-beta.3"), IMAGE, None, UpdateState.UPDATE_AVAILABLE),
        # no release string: the history decides, by the image's sha256
        (board(UNVERSIONED), IMAGE, SHA, UpdateState.UP_TO_DATE),
        (board(UNVERSIONED), IMAGE, "b" * 64, UpdateState.UNKNOWN),
        (board(UNVERSIONED), IMAGE, None, UpdateState.UNKNOWN),
        (board(UNVERSIONED), UNLISTED, SHA, UpdateState.UNKNOWN),  # no promised sha256 to compare
        (board(None), IMAGE, SHA, UpdateState.UP_TO_DATE),  # a legacy node reports nothing at all
    ],
)
async def test_the_state_follows_the_versions_and_for_unversioned_boards_the_history(
    node: NodeInfo | None, image: ResolvedImage | None, given: str | None, state: UpdateState
) -> None:
    assert await board_state(node, image, history(given)) is state


async def test_nothing_is_known_without_the_server() -> None:
    state = await board_state(board("v2026.1.0"), None, history(None), catalog_known=False)
    assert state is UpdateState.UNKNOWN


@pytest.mark.parametrize(
    ("state", "force", "allow_downgrade", "installs"),
    [
        (UpdateState.UPDATE_AVAILABLE, False, False, True),
        (UpdateState.UNKNOWN, False, False, True),  # the caller named the board
        (UpdateState.UP_TO_DATE, False, False, False),
        (UpdateState.UP_TO_DATE, True, False, True),  # force: install the same again
        (UpdateState.DEVICE_NEWER, True, False, False),  # force does not downgrade
        (UpdateState.DEVICE_NEWER, False, True, True),
    ],
)
def test_an_update_installs_unless_current_or_a_downgrade_not_allowed(
    state: UpdateState, force: bool, allow_downgrade: bool, installs: bool
) -> None:
    assert due(state, force=force, allow_downgrade=allow_downgrade) is installs
