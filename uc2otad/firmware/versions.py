"""Release strings of uc2-esp32 builds, and which of two is newer.

A board reports the release it was built from (scan ``fwVersion``, OD 0x2500) and the firmware server
publishes the release of its images (``version.json``); whether a board needs an update, runs exactly
the offered image or runs a developer's newer build is decided here, for CheckUpdates, ScanDevices'
``update_available`` and StartOTA's "already up to date" alike, so that the three never disagree.

The form (ImSwitch ``docs/FIRMWARE_VERSIONING.md`` @33e3850, uc2-stack.md §4.3)::

    vYYYY.M.P[-pre][-N-gHASH][-tYYYYMMDDhhmmss][-prN][-dirty]

a tag (``v2026.1.0``, ``v2026.0.0-beta.4``), or ``git describe`` (N commits after the tag, at HASH)
with the commit's author time, a pull request's number and ``-dirty`` for uncommitted changes. A
prerelease starts with a letter and is not one of the later parts (``t<digit>``, ``pr<digit>``,
``dirty``), so that each string reads one way only.

Order:

1. two stamped builds compare by their stamps: the stamp orders builds in time, whichever tag they
   descend from;
2. otherwise by the tag: the release numbers, then the prerelease (a prerelease comes before its
   release, as in SemVer; ``beta.4`` before ``beta.10``), then N: a describe form is N commits newer
   than its tag;
3. two builds at the same point that differ otherwise (another hash, a PR build, ``-dirty``) have no
   order: unknown, as is anything that does not parse. Unknown is never taken for "older": a board is
   not reflashed on a guess.

A reported string may have been cut by a buffer on its way: a master of July 2026 passes on 39
characters of a node's string, an app descriptor holds 31 (:data:`CUT_LENGTHS`). Such a string that
starts the offered version names that very release; one that does not is compared by what survived
the cut (the tag and N), never by its stamp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

#: lengths at which a reported release string may have been cut: the app descriptor's 32-byte version
#: field (31 characters and its NUL) and the July 2026 master's 40-byte scan buffer (39 characters)
CUT_LENGTHS = frozenset({31, 39})

_VERSION = re.compile(
    r"v(?P<year>\d{4})\.(?P<minor>\d+)\.(?P<patch>\d+)"
    r"(?:-(?!t\d|pr\d|dirty(?:-|$))(?P<pre>[A-Za-z][0-9A-Za-z]*(?:\.[0-9A-Za-z]+)*))?"
    r"(?:-(?P<commits>\d+)-g(?P<hash>[0-9a-f]{4,40}))?"
    r"(?:-t(?P<stamp>\d{14}))?"
    r"(?:-pr(?P<pr>\d+))?"
    r"(?P<dirty>-dirty)?"
)
_CHUNK = re.compile(r"\d+|\D+")


class Order(IntEnum):
    """How a running version stands to an offered one."""

    OLDER = -1
    SAME = 0
    NEWER = 1


@dataclass(frozen=True)
class Version:
    """A parsed release string."""

    release: tuple[int, int, int]
    #: the tag's prerelease ("beta.4"); None for a release
    prerelease: str | None = None
    #: commits after the tag (``git describe``'s N); 0 for the tag itself
    commits: int = 0
    commit: str | None = None
    #: the author time, ``YYYYMMDDhhmmss`` (UTC)
    stamp: str | None = None
    pull_request: int | None = None
    dirty: bool = False

    def tag_key(self) -> tuple[tuple[int, int, int], tuple[tuple[int, int | str], ...], int]:
        """The position on the release line: tag (release before its prereleases' end), then N."""
        return self.release, _prerelease_key(self.prerelease), self.commits


def parse(text: str) -> Version | None:
    """``text`` as a :class:`Version`; None when it is not of the form above."""
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    return Version(
        release=(int(match["year"]), int(match["minor"]), int(match["patch"])),
        prerelease=match["pre"],
        commits=int(match["commits"] or 0),
        commit=match["hash"],
        stamp=match["stamp"],
        pull_request=int(match["pr"]) if match["pr"] else None,
        dirty=match["dirty"] is not None,
    )


def compare(running: str, offered: str) -> Order | None:
    """How ``running`` (a board's report) stands to ``offered`` (the server's); None: unknown.

    ``running`` may have been cut (:data:`CUT_LENGTHS`); ``offered`` comes whole from ``version.json``.
    """
    if running == offered or is_cut_from(running, offered):
        return Order.SAME
    theirs = parse(offered)
    if theirs is None:
        return None
    ours = parse(running)
    if ours is not None:
        return _ordered(ours, theirs)
    if len(running) in CUT_LENGTHS:
        survived = _uncut(running)
        if survived is not None:
            return _by_tag(survived, theirs)
    return None


def is_cut_from(reported: str, expected: str) -> bool:
    """``reported`` is ``expected`` cut at one of the buffer lengths on its way."""
    return len(reported) in CUT_LENGTHS and len(expected) > len(reported) and expected.startswith(reported)


def _ordered(ours: Version, theirs: Version) -> Order | None:
    if ours == theirs:
        return Order.SAME
    if ours.stamp is not None and theirs.stamp is not None and ours.stamp != theirs.stamp:
        return Order.NEWER if ours.stamp > theirs.stamp else Order.OLDER
    return _by_tag(ours, theirs)


def _by_tag(ours: Version, theirs: Version) -> Order | None:
    """Ordered by tag and N; the same point on the release line is no order (unknown)."""
    mine, other = ours.tag_key(), theirs.tag_key()
    if mine == other:
        return None
    return Order.NEWER if mine > other else Order.OLDER


def _uncut(text: str) -> Version | None:
    """What a cut string still says: its parts before the one the cut went through, if they parse."""
    head = text
    while "-" in head:
        head = head.rsplit("-", 1)[0]
        version = parse(head)
        if version is not None:
            return version
    return None


def _prerelease_key(prerelease: str | None) -> tuple[tuple[int, int | str], ...]:
    """SemVer's precedence with numbers read as numbers inside identifiers too ("rc10" after "rc9"):
    a release sorts after all its prereleases."""
    if prerelease is None:
        return ((2, 0),)
    key: list[tuple[int, int | str]] = []
    for identifier in prerelease.split("."):
        for chunk in _CHUNK.findall(identifier):
            key.append((0, int(chunk)) if chunk.isdigit() else (1, chunk))
    return tuple(key)
