"""Release channels (issue 21, ``firmware/channels.py``): on ``stable`` an image whose version.json
version is a prerelease (the release workflow's rule: "beta" or "alpha" in the tag) is not offered; on
``beta``, the default, it is. Through the daemon, with a firmware folder as the source."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from conftest import DaemonFactory
from dbus_client import call, unwrap
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from espimage import build_app_image
from test_daemon_update import FAST_UPDATE
from test_firmware_folder import MOTOR, microscope_for
from test_link_ota_stream import NODE

from uc2otad.api import names
from uc2otad.firmware.channels import is_prerelease, on_channel
from uc2otad.firmware.listing import FirmwareFile, Listing
from uc2otad.firmware.manifest import parse_manifest

#: the config file's line that makes a microscope stable
STABLE = '[firmware]\nchannel = "stable"\n'
BETA = build_app_image("esp32s3", version="v2099.7.0-beta.1", segment_sizes=(0x1000, 0x200, 0x800, 0x400))


def manifest_for(files: dict[str, tuple[bytes, str | None]], version: str = "v2099.7.0-beta.1") -> bytes:
    entries = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **({"version": v} if v else {})}
        for name, (data, v) in files.items()
    }
    return json.dumps({"version": version, "files": entries}).encode()


def test_the_release_workflows_rule_marks_prereleases() -> None:
    assert [is_prerelease(v) for v in ("v2026.1.0", "v2026.2.0-beta.1", "v2026.2.0-Alpha", None)] == [
        False,
        True,
        True,
        False,
    ]


def test_stable_moves_prereleases_to_the_refused_entries_and_beta_keeps_them() -> None:
    listing = Listing({name: FirmwareFile(name, 10) for name in ("a.bin", "b.bin", "c.bin")})
    manifest = parse_manifest(
        manifest_for(
            {"a.bin": (b"a", "v2026.1.0"), "b.bin": (b"b", "v2026.2.0-beta.1"), "c.bin": (b"c", None)},
            version="v2026.1.0",
        )
    )
    stable = on_channel(listing, manifest, "stable")
    assert list(stable.files) == ["a.bin", "c.bin"]  # c: the manifest's version, a release
    assert "a prerelease (v2026.2.0-beta.1)" in (stable.refusal_of("b.bin") or "")
    assert on_channel(listing, manifest, "beta") is listing
    assert on_channel(listing, None, "stable") is listing  # nothing says which release an image is


async def test_a_prerelease_is_offered_on_beta_and_not_on_stable(
    start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path
) -> None:
    folder = tmp_path / "firmware"

    def publish() -> None:
        folder.mkdir()
        (folder / MOTOR).write_bytes(BETA)
        (folder / "version.json").write_bytes(manifest_for({MOTOR: (BETA, None)}))

    await asyncio.to_thread(publish)
    async with microscope_for(tmp_path) as scope:
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", str(folder))
        daemon = await start_daemon(*flags, config=FAST_UPDATE.replace("[firmware]\n", STABLE))
        stable_check = unwrap((await call(client, "CheckUpdates")).body[0])
        stable_start = await call(client, "StartOTA", "ua{sv}", NODE, {})
        await asyncio.to_thread(daemon.stop)
        await asyncio.to_thread(
            daemon.config.write_text,
            FAST_UPDATE,  # the default channel: beta
        )
        await asyncio.to_thread(daemon.start)
        beta_check = unwrap((await call(client, "CheckUpdates")).body[0])

    def state(boards: list[dict[str, object]]) -> object:
        return next(board for board in boards if board["can_id"] == NODE)["state"]

    assert state(stable_check) == "no_firmware"
    assert (stable_start.message_type, stable_start.error_name) == (MessageType.ERROR, names.NOT_FOUND)
    assert "a prerelease (v2099.7.0-beta.1); not on the stable channel" in stable_start.body[0]
    assert state(beta_check) == "update_available"
