"""Release channels (issue 21): a stable microscope never installs a prerelease.

The openUC2 release workflow marks a release as a prerelease when its tag contains "beta" or "alpha"
(youseetoo/uc2-esp32 @063e5a6 ``.github/workflows/build-and-release.yaml:303``:
``prerelease: ${{ contains(tag, 'beta') || contains(tag, 'alpha') }}``; GitHub's ``contains`` ignores
case). The same rule reads the release a source says an image belongs to — its ``version.json``
version (the file's own, else the manifest's): on the ``stable`` channel such an image is not offered,
as if the source did not have it (the listing keeps it as refused, with why, so that a NotFound names
the reason); on ``beta`` every image is. An image the source says nothing about (no ``version.json``
entry) is offered on both: nothing marks it a prerelease.
"""

from __future__ import annotations

from typing import Literal

from uc2otad.firmware.listing import Listing, RefusedEntry
from uc2otad.firmware.manifest import Manifest

Channel = Literal["stable", "beta"]
CHANNELS: tuple[Channel, ...] = ("stable", "beta")
STABLE: Channel = "stable"
#: the default: every release. openUC2 has tagged only prereleases since it moved to calendar versions
#: (youseetoo/uc2-esp32: v2026.0.0-alpha.1 … v2026.0.0-beta.2, the newest tags at 063e5a6), so a stable
#: default would offer a lab none of the current official firmware; a lab opts in to ``stable``
DEFAULT_CHANNEL: Channel = "beta"
#: the words of a prerelease tag, as the release workflow tests them
_PRERELEASE_WORDS = ("beta", "alpha")


def is_prerelease(version: str | None) -> bool:
    """``version`` is a prerelease tag by the release workflow's rule."""
    return version is not None and any(word in version.lower() for word in _PRERELEASE_WORDS)


def on_channel(listing: Listing, manifest: Manifest | None, channel: Channel) -> Listing:
    """``listing`` as ``channel`` sees it: on ``stable``, the prereleases moved to the refused entries."""
    if channel != STABLE or manifest is None:
        return listing
    prereleases = {
        name: promise.version
        for name, promise in manifest.files.items()
        if name in listing.files and is_prerelease(promise.version)
    }
    if not prereleases:
        return listing
    files = {name: file for name, file in listing.files.items() if name not in prereleases}
    refused = tuple(
        RefusedEntry(name, f"a prerelease ({version}); not on the stable channel (firmware.channel)")
        for name, version in prereleases.items()
    )
    return Listing(files, listing.refused + refused)
