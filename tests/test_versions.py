"""Release strings: which of a board's and the server's is newer (uc2otad/firmware/versions.py).

The cases are the release forms of ImSwitch's docs/FIRMWARE_VERSIONING.md @33e3850: a tag, a tag's
prerelease, ``git describe`` with the author time, a PR build, a dirty build; and the cuts a report
suffers on its way (39 characters through a July master, 31 in an app descriptor).
"""

from __future__ import annotations

import pytest

from uc2otad.firmware.versions import Order, Version, compare, parse

TAG = "v2026.1.0"
DESCRIBE = "v2026.0.0-beta.4-6-g2108590-t20260930092622"
#: 56 characters: longer than both buffers
LONG = "v2026.2.0-beta.4-6-g2108590-t20260930092622-pr1234-dirty"


def test_every_documented_form_parses_into_its_parts() -> None:
    assert parse(TAG) == Version(release=(2026, 1, 0))
    assert parse(DESCRIBE) == Version(
        release=(2026, 0, 0), prerelease="beta.4", commits=6, commit="2108590", stamp="20260930092622"
    )
    assert parse(DESCRIBE + "-pr123") == Version(
        release=(2026, 0, 0),
        prerelease="beta.4",
        commits=6,
        commit="2108590",
        stamp="20260930092622",
        pull_request=123,
    )
    dirty = parse("v2026.1.0-2-gabcdef0-t20261001120000-dirty")
    assert dirty is not None and dirty.dirty and dirty.commits == 2 and dirty.prerelease is None
    stamped_tag = parse("v2026.1.0-t20261001120000")
    assert stamped_tag is not None and (stamped_tag.prerelease, stamped_tag.stamp) == (None, "20261001120000")


@pytest.mark.parametrize(
    "text",
    ["UC2-ESP v2.0", "", "2026.1.0", "v2026.1", "v26.1.0", "v2026.1.0-", "v2026.1.0-6", "v2026.1.0 beta",
     "v2026.1.0-t2026"],
)  # fmt: skip
def test_anything_else_does_not_parse(text: str) -> None:
    assert parse(text) is None


@pytest.mark.parametrize(
    ("running", "offered", "order"),
    [
        (TAG, TAG, Order.SAME),
        ("v2026.0.9", TAG, Order.OLDER),
        ("v2026.10.0", "v2026.9.0", Order.NEWER),  # numbers, not text
        ("v2025.12.3", TAG, Order.OLDER),
        # a prerelease comes before its release, and beta.4 before beta.10
        ("v2026.1.0-beta.4", TAG, Order.OLDER),
        ("v2026.1.0-beta.10", "v2026.1.0-beta.4", Order.NEWER),
        ("v2026.1.0-beta.4", "v2026.1.0-rc.1", Order.OLDER),
        ("v2026.1.0-rc10", "v2026.1.0-rc9", Order.NEWER),
        # a describe form is N commits newer than its tag
        ("v2026.1.0-3-gabcdef0", TAG, Order.NEWER),
        ("v2026.1.0-3-gabcdef0", "v2026.1.0-4-g1234567", Order.OLDER),
        ("v2026.1.0-beta.4-6-g2108590", "v2026.1.0", Order.OLDER),  # still before the release
        # two stamped builds compare by their stamps, whatever their tags say
        ("v2026.1.0-3-gabcdef0-t20261002000000", "v2026.1.0-9-g1234567-t20261001000000", Order.NEWER),
        ("v2026.2.0-1-gabcdef0-t20260901000000", "v2026.1.0-9-g1234567-t20261001000000", Order.OLDER),
        (DESCRIBE + "-pr123", DESCRIBE.replace("0930", "1001", 1), Order.OLDER),
        ("v2026.1.0-2-gabcdef0-t20261101000000-dirty", "v2026.1.0-2-gabcdef0-t20261001000000", Order.NEWER),
        # a stamped build against a tag: by the tag and N
        ("v2026.1.0-2-gabcdef0-t20261101000000", "v2026.2.0", Order.OLDER),
    ],
)
def test_versions_order_by_release_prerelease_commits_and_stamp(
    running: str, offered: str, order: Order
) -> None:
    assert compare(running, offered) is order
    opposite = {Order.OLDER: Order.NEWER, Order.NEWER: Order.OLDER, Order.SAME: Order.SAME}[order]
    assert compare(offered, running) is opposite


@pytest.mark.parametrize(
    ("running", "offered"),
    [
        ("UC2-ESP v2.0", TAG),  # July firmware: no release string
        (TAG, "nightly"),  # a server version that does not parse
        ("v2026.1.0-3-gabcdef0", "v2026.1.0-3-g1234567"),  # same point, another commit, no stamps
        ("v2026.1.0-3-gabcdef0-dirty", "v2026.1.0-3-gabcdef0"),  # the same commit, changed locally
        (DESCRIBE + "-pr123", DESCRIBE),  # a PR build of the same stamp
        ("v2026.1.0-dirty", TAG),
    ],
)
def test_what_cannot_be_ordered_is_unknown(running: str, offered: str) -> None:
    assert compare(running, offered) is None


def test_a_report_cut_by_a_buffer_is_the_release_it_starts() -> None:
    assert compare(LONG[:39], LONG) is Order.SAME  # a July master's scan buffer
    assert compare(LONG[:31], LONG) is Order.SAME  # an app descriptor's version field
    assert compare(LONG[:30], LONG) is None  # no buffer cuts there: another string, and it does not parse


def test_a_cut_report_of_another_release_is_ordered_by_what_survived_the_cut() -> None:
    older = "v2026.1.0-beta.4-6-g2108590-t20260930092622"[:39]  # the stamp cut in the middle
    assert compare(older, LONG) is Order.OLDER  # v2026.1.0-beta.4-6 is before v2026.2.0-beta.4-6
    newer = "v2026.3.0-beta.1-2-g1234567-t20261201000000"[:39]
    assert compare(newer, LONG) is Order.NEWER
    # the same tag and N, its stamp cut away: nothing tells the two apart
    same_point = "v2026.2.0-beta.4-6-g2108590-t20261201000000"[:39]
    assert compare(same_point, LONG) is None
