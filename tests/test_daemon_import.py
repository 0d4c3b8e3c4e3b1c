"""ImportFirmware through ``uc2otactl import`` (issue 21): a bundle in the release workflow's layout
(``firmware-index.json``, merged images named by board id) updates the virtual microscope with no
firmware server at all — the slave gets the app its merged image carries; a corrupted bundle is refused
whole and the import before it stays. The daemon runs as a subprocess on a private bus; the ctl is the
real command line, which passes the open file."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from pathlib import Path

from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from espimage import build_app_image, build_merged_image
from signals import StatusSignals
from test_ctl import ctl, ctl_json
from test_daemon_update import FAST_UPDATE
from test_firmware_folder import microscope_for
from test_link_ota_stream import NODE

from uc2otad.api import names
from uc2otad.ctl.client import EXIT_FAILED
from uc2otad.sim.private_bus import PrivateBus

RELEASE = "v2099.8.0"
APP = build_app_image("esp32s3", version=RELEASE, segment_sizes=(0x1000, 0x200, 0x800, 0x400))
MERGED = build_merged_image("esp32s3", app=APP)


def release_zip(*, corrupt: bool = False) -> bytes:
    """A release as the workflow publishes it (youseetoo/uc2-esp32 build-and-release.yaml:185-270)."""
    board = "uc2-can-slave-motor"
    index = {"version": RELEASE, "generated": "2026-12-01T00:00:00Z", "repository": "youseetoo/uc2-esp32",
             "cdn_base": "https://example.invalid",
             "firmware": [{"id": board, "name": "UC2 CAN motor", "chipFamily": "ESP32-S3",
                           "manifest": f"{board}-manifest.json", "binary": f"{board}.bin"}]}  # fmt: skip
    manifest = {"name": "UC2 CAN motor", "version": RELEASE, "builds": [
        {"chipFamily": "ESP32-S3", "parts": [{"path": f"{board}.bin", "offset": 0}]}]}  # fmt: skip
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("firmware-index.json", json.dumps(index))
        archive.writestr(f"{board}-manifest.json", json.dumps(manifest))
        archive.writestr(f"{board}.bin", MERGED)
    data = bytearray(buffer.getvalue())
    if corrupt:  # a bit flipped on the stick, inside the image's compressed data
        at = data.index(b"PK\x03\x04", data.index(f"{board}.bin".encode()) - 40) + 200
        data[at] ^= 0x40
    return bytes(data)


async def test_a_release_bundle_updates_a_board_with_no_server_and_a_corrupted_one_is_refused(
    start_daemon: DaemonFactory, client: MessageBus, private_bus: PrivateBus, tmp_path: Path
) -> None:
    good, bad = tmp_path / "release.zip", tmp_path / "damaged.zip"
    await asyncio.to_thread(good.write_bytes, release_zip())
    await asyncio.to_thread(bad.write_bytes, release_zip(corrupt=True))
    signals = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    async with microscope_for(tmp_path) as scope:
        # no firmware server: the configured one refuses connections
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server",
                           "http://127.0.0.1:9/firmware", config=FAST_UPDATE)  # fmt: skip
        before = await call(client, "StartOTA", "ua{sv}", NODE, {})
        imported = await ctl_json(private_bus, "import", str(good))
        refused = await ctl(private_bus, "import", str(bad), "--json")
        listed = unwrap((await call(client, "ListFirmware")).body[0])
        started = await call(client, "StartOTA", "ua{sv}", NODE, {})
        final = await signals.until("success")
        running = scope.master.slave(NODE).running_image
    signals.close()

    assert before.message_type is MessageType.ERROR  # nothing to install before the import
    assert imported["version"] == RELEASE
    assert set(imported["images"]) == {"uc2-can-slave-motor.bin", "uc2-can-slave-motor_merged.bin"}
    code, stdout, _ = refused
    assert code == EXIT_FAILED and "download_corrupt" not in stdout  # a D-Bus error, not a job's
    assert json.loads(stdout)["error"]["name"] == names.FAILED
    entry = listed["firmware"][str(NODE)]
    assert (entry["filename"], entry["source"], entry["version"]) == (
        "uc2-can-slave-motor.bin",
        "bundle",
        RELEASE,
    )
    assert started.message_type is MessageType.METHOD_RETURN, started.body
    assert (final["upload_status"], final["firmware_version"]) == ("success", RELEASE)
    assert running == APP  # the app the release's merged image carries, cut out
