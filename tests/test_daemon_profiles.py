"""Issue 13's acceptance: every firmware generation updated and verified through the daemon.

Daemon subprocess, private bus, real Caddy serving the images with their ``version.json``, and a virtual
microscope whose master and boards run the firmware profiles of ``uc2otad.sim.profiles``. What a board
can prove after an update depends on its generation (docs/simulator.md "Firmware profiles";
uc2otad/methods/verify.py):

- fw-2026-09 reports the image's release string: "version"; a board that rolled back to its old image
  reports the old one: ``verification_failed``;
- fw-main-2026-07 reports the fixed "UC2-ESP v2.0" and its CANopen module's build: "build" when the
  build changed; a rolled-back board keeps its build, and the scan cannot tell it from an updated one:
  "transfer" with a warning in the log. Its master gives the erasing slave only 250 ms for the size
  write, so the first attempt ends ``size_write_failed``, retried as a transient failure;
- legacy (WiFi) reports no version: "transfer".

A July board that boots a September image becomes a September board, and a July master cuts every
release string to 39 characters; both still verify by "version".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from daemon_process import DaemonProcess
from dbus_client import add_match, call, unwrap
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from espimage import build_app_image
from signals import StatusSignals

from uc2otad.api import names
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import DEFAULT_BUILD, DEFAULT_VERSION, NodeFaults, NodeSpec, default_node
from uc2otad.sim.profiles import UNVERSIONED, Profile, rodata_for
from uc2otad.sim.timing import MasterTiming
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

NODE = 11
#: the streaming image name of the motors; the WiFi-era one for the legacy master
CAN_IMAGE_NAME = "esp32_UC2_canopen_slave_motor_release_motX.bin"
WIFI_IMAGE_NAME = "esp32_seeed_xiao_esp32s3_can_slave_motor.bin"
#: a September release string, as ``version.json`` and the image carry it
RELEASE = "v2026.2.0-beta.4-6-g2108590"
#: the manifest's version for a July image (the image itself reports no release string)
JULY_RELEASE = "v2026.1.7-3-g063e5a6"
#: a version.json version of 60 characters: longer than the July master's 39-character scan buffer
LONG_RELEASE = "v2026.2.0-beta.4-6-g2108590-t20260930092622-pr1234-dirty-abc"
assert len(LONG_RELEASE) == 60
#: the master's buffer: ``char tmp[40]`` (CANopenModule.cpp:1492-1503, 1605 @063e5a6)
JULY_SCAN_LIMIT = 39
#: the app descriptor's version field: 32 bytes with the NUL
APP_DESC_VERSION = 31

#: the firmware's delays shrunk; the size-write timeout stays the master profile's (250 ms on July,
#: 20 s on September) and the July slave's erase (0.5 s) outlasts the July master's 250 ms
TIMING = MasterTiming(
    sdo_time=0.0,
    sdo_timeout=0.2,
    restart_delay=0.0,
    node_boot_time=0.05,
    reachable_timeout=1.0,
    sdo_write_timeout=0.2,
    ota_settle=0.0,
    block_timeout=0.5,
    ota_rx_timeout=1.0,
    size_write_time=0.0,
    partition_erase_time=0.5,
    ota_reboot_delay=0.0,
)
#: the legacy master's WiFi path shrunk (as tests/test_daemon_wifi.py)
WIFI_TIMING = MasterTiming(
    node_boot_time=0.05, wifi_join_time=0.02, wifi_join_timeout=0.1, legacy_scan_wait=0.01, sdo_timeout=0.02
)
#: seconds between attempts: long enough to be told apart from an immediate retry
RETRY_DELAY = 1.0
#: what the daemon logs when a transfer is all that shows (uc2otad/methods/verify.py)
CANNOT_TELL = "this firmware cannot show which image it runs"


def september_image(release: str) -> bytes:
    """A 2026-09 image: its release string in .rodata, the app descriptor's version its first 31."""
    return build_app_image("esp32s3", version=release[:APP_DESC_VERSION], date="Nov 27 2026", time="13:14:15",
                           segment_sizes=(0x2000, 0x400, 0x1000, 0x1800),
                           rodata=rodata_for(Profile.FW_2026_09, release))  # fmt: skip


def july_image() -> bytes:
    """A FW-main image: the literal "UC2-ESP v2.0" in .rodata, no release string."""
    return build_app_image("esp32s3", version=JULY_RELEASE, date="Jul 22 2026", time="10:11:12",
                           segment_sizes=(0x2000, 0x400, 0x1000, 0x1800),
                           rodata=rodata_for(Profile.FW_MAIN_2026_07, ""))  # fmt: skip


def manifest(name: str, image: bytes, version: str) -> str:
    """``version.json`` as the firmware build publishes it (uc2-stack.md §4.3)."""
    files = {name: {"size": len(image), "sha256": hashlib.sha256(image).hexdigest()}}
    return json.dumps({"version": version, "files": files})


async def serve(caddy: CaddyServer, name: str, image: bytes, version: str) -> str:
    await asyncio.to_thread((caddy.root / name).write_bytes, image)
    await asyncio.to_thread((caddy.root / "version.json").write_text, manifest(name, image, version))
    return caddy.url


def daemon_config(*, window: float = 5.0, extra: str = "") -> str:
    """Verification shrunk; one retry ``RETRY_DELAY`` after a transient failure.

    The first scan comes after the board's reboot (ota_reboot_delay + node_boot_time), as the default
    4 s do on hardware: a scan before it would find the board still running its old image.
    """
    return (
        f"[update]\nverify_settle = 0.5\nverify_window = {window}\nverify_interval = 0.05\n"
        f"retries = 1\nretry_delay = {RETRY_DELAY}\n[firmware]\nattempts = 1\n{extra}"
    )


@pytest.fixture
async def signals(client: MessageBus) -> AsyncIterator[StatusSignals]:
    watcher = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    yield watcher


def microscope(
    tmp_path: Path,
    *nodes: NodeSpec,
    profile: Profile,
    master_profile: Profile | None = None,
    timing: MasterTiming = TIMING,
    ota_port: int = 0,
) -> VirtualMicroscope:
    config = SimConfig(
        nodes=nodes or (default_node(NODE),),
        profile=profile,
        master_profile=master_profile,
        timing=timing,
        serial_link=tmp_path / "ttyHAT",
        socket=False,
        ota_port=ota_port,
    )
    return VirtualMicroscope(config)


async def scanned(client: MessageBus, can_id: int) -> dict[str, Any]:
    """Board ``can_id`` in the daemon's ScanDevices."""
    reply = await call(client, "ScanDevices")
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    (board,) = [board for board in unwrap(reply.body[0]) if board["can_id"] == can_id]
    return dict(board)


async def start_update(client: MessageBus, options: dict[str, Variant] | None = None) -> None:
    reply = await call(client, "StartOTA", "ua{sv}", NODE, options or {})
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body


async def warnings_in(daemon: DaemonProcess) -> list[str]:
    """The daemon's log lines that say the scan cannot tell which image runs (stderr: no journald here)."""
    log = await asyncio.to_thread(daemon.log)
    return [line for line in log.splitlines() if CANNOT_TELL in line]


@dataclass(frozen=True)
class Case:
    """One streaming update: the microscope's generations, the image, and what the daemon must end with."""

    #: the generation of the boards (and of the master, unless ``master``)
    profile: Profile
    master: Profile | None
    image: bytes
    #: version.json's version for the image
    release: str
    faults: NodeFaults
    verification: str
    #: attempts in all: the July master fails the first size write after a boot
    attempts: int
    #: what the board's fwVersion says in a scan after the update
    reported: str
    #: the image boots (else the board rolled back to the one it ran)
    boots: bool = True


SEPTEMBER = september_image(RELEASE)
JULY = july_image()
LONG = september_image(LONG_RELEASE)
CASES = {
    # 2026-09 names the image it runs
    "fw-2026-09": Case(Profile.FW_2026_09, None, SEPTEMBER, RELEASE, NodeFaults(), "version", 1, RELEASE),
    # FW-main: only the module's build shows the new image; the first size write times out
    "fw-main-2026-07": Case(
        Profile.FW_MAIN_2026_07, None, JULY, JULY_RELEASE, NodeFaults(), "build", 2, UNVERSIONED
    ),
    # FW-main rolled back: nothing in its scan changed, the scan cannot tell (docs/simulator.md)
    "fw-main-2026-07-rolled-back": Case(
        Profile.FW_MAIN_2026_07, None, JULY, JULY_RELEASE, NodeFaults(boots_old_image=True), "transfer", 2,
        UNVERSIONED, boots=False,
    ),
    # a July board takes a September image and becomes a September board; a September master waits
    # out its erase, a July master does not
    "july-board-september-image": Case(
        Profile.FW_MAIN_2026_07, Profile.FW_2026_09, SEPTEMBER, RELEASE, NodeFaults(), "version", 1, RELEASE
    ),
    "july-board-and-master-september-image": Case(
        Profile.FW_MAIN_2026_07, None, SEPTEMBER, RELEASE, NodeFaults(), "version", 2, RELEASE
    ),
    # a July master with September boards: 60 characters in version.json, 39 in the scan
    "july-master-september-boards": Case(
        Profile.FW_2026_09, Profile.FW_MAIN_2026_07, LONG, LONG_RELEASE, NodeFaults(), "version", 1,
        LONG_RELEASE[:JULY_SCAN_LIMIT],
    ),
}  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_each_profile_streams_and_verifies_by_what_its_scan_can_show(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: StatusSignals,
    caddy: CaddyServer,
    tmp_path: Path,
    case: Case,
) -> None:
    server = await serve(caddy, CAN_IMAGE_NAME, case.image, case.release)
    node = replace(default_node(NODE), faults=case.faults)
    names_release = case.reported != UNVERSIONED
    neighbour = default_node(10)  # a second board of the same generation, left alone
    async with microscope(
        tmp_path, neighbour, node, profile=case.profile, master_profile=case.master
    ) as scope:
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", server)
        daemon = await start_daemon(*flags, config=daemon_config())
        before = await scanned(client, NODE)
        master_before = await scanned(client, 1)
        await start_update(client)
        final = await signals.until_final()
        after = await scanned(client, NODE)
        again = None
        if names_release:  # StartOTA agrees: nothing to do (a July board's report names no release)
            again = unwrap((await call(client, "StartOTA", "ua{sv}", NODE, {})).body[0])
        slave = scope.master.slave(NODE)
        running, profile_after = slave.running_image, slave.profile.name
        untouched = scope.master.slave(10).running_image
    history = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])

    # the scan before the update: what the generation reports about the image it was built with
    board_reports_release = case.profile is Profile.FW_2026_09
    assert before["fw_version"] == (DEFAULT_VERSION if board_reports_release else UNVERSIONED)
    assert before["build"] == DEFAULT_BUILD
    master_reports_release = (case.master or case.profile) is Profile.FW_2026_09
    assert master_before["fw_version"] == (DEFAULT_VERSION if master_reports_release else UNVERSIONED)

    assert final["upload_status"] == "success", final
    assert (final["verification"], final["firmware_version"], final["attempt"]) == (
        case.verification,
        case.release,
        case.attempts,
    )
    assert final["previous_version"] == before["fw_version"]
    assert running == (case.image if case.boots else None) and untouched is None
    (job,) = history
    assert (job["state"], job["attempt"], job["firmware_version"]) == ("success", case.attempts, case.release)
    assert job["sha256"] == hashlib.sha256(case.image).hexdigest()

    _assert_scan_after(case, before, after, again)
    if case.boots and case.image is not JULY:
        assert profile_after is Profile.FW_2026_09  # it booted a September image

    if case.attempts == 2:
        _assert_first_attempt_was_the_july_size_write(signals)
    else:
        assert [s["attempt"] for s in signals.statuses] == [1] * len(signals.statuses)

    # only a board whose scan cannot tell leaves a warning
    if case.verification == "transfer":
        (warning,) = await warnings_in(daemon)
        assert " WARNING " in warning and f"board {NODE}:" in warning and DEFAULT_BUILD in warning
    else:
        assert await warnings_in(daemon) == []


def _assert_scan_after(
    case: Case, before: dict[str, Any], after: dict[str, Any], again: dict[str, Any] | None
) -> None:
    """The scan after the update: the board reports what its (possibly new) generation can."""
    assert after["fw_version"] == case.reported, after
    assert after["reachable"] is True
    if case.verification == "build":
        assert after["build"] != before["build"]
    if case.master is Profile.FW_MAIN_2026_07:
        # the truncation path: the July master passes on 39 characters of the 60
        assert len(after["fw_version"]) == JULY_SCAN_LIMIT and len(case.release) > JULY_SCAN_LIMIT
    if again is not None:  # ScanDevices and StartOTA agree: the board runs the manifest's version
        assert after.get("update_available") is False, after
        assert (again["status"], again["message"]) == ("success", "already up to date"), again


def _assert_first_attempt_was_the_july_size_write(signals: StatusSignals) -> None:
    """FW-main's master waits 250 ms for the size write while the slave erases for longer: the first
    attempt ends ``size_write_failed``, a transient failure, retried after ``retry_delay``."""
    first, second = signals.of_attempt(1), signals.of_attempt(2)
    failed_at, failed = first[-1]
    assert [s["upload_status"] for _, s in first] == ["command_sent", "downloading", "failed"]
    assert (failed["error_code"], failed["retry_in"]) == ("master_error", round(RETRY_DELAY)), failed
    assert "error=size_write_failed" in failed["upload_error"], failed["upload_error"]
    retried_at, retried = second[0]
    assert retried["upload_status"] == "command_sent"
    assert retried_at - failed_at >= RETRY_DELAY * 0.9  # after retry_delay, not at once
    assert "error_code" not in second[-1][1] and "retry_in" not in second[-1][1]


@pytest.mark.timeout(60)
async def test_a_september_board_that_boots_its_old_image_fails_verification(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: StatusSignals,
    caddy: CaddyServer,
    tmp_path: Path,
) -> None:
    server = await serve(caddy, CAN_IMAGE_NAME, SEPTEMBER, RELEASE)
    node = replace(default_node(NODE), faults=NodeFaults(boots_old_image=True))
    async with microscope(tmp_path, node, profile=Profile.FW_2026_09) as scope:
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", server,
                           config=daemon_config(window=1.0))  # fmt: skip
        await start_update(client)
        final = await signals.until_final()
        after = await scanned(client, NODE)
        running = scope.master.slave(NODE).running_image
    (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])

    assert (final["upload_status"], final["error_code"], final["attempt"]) == (
        "failed",
        "verification_failed",
        1,
    )
    assert "retry_in" not in final  # the board committed the image: never retried
    assert DEFAULT_VERSION in final["upload_error"] and RELEASE in final["upload_error"], final[
        "upload_error"
    ]
    assert running is None and after["fw_version"] == DEFAULT_VERSION  # it rolled back
    assert (job["state"], job["error_code"]) == ("failed", "verification_failed")


@pytest.mark.timeout(60)
async def test_a_legacy_board_updated_over_wifi_is_verified_by_the_transfer(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: StatusSignals,
    caddy: CaddyServer,
    tmp_path: Path,
) -> None:
    image = build_app_image("esp32s3", version="v2026.0.9", segment_sizes=(0x2000, 0x400, 0x1000, 0x1800))
    server = await serve(caddy, WIFI_IMAGE_NAME, image, "v2026.0.9")
    scope = microscope(tmp_path, profile=Profile.LEGACY, timing=WIFI_TIMING, ota_port=_free_udp_port())
    async with scope:
        wifi = (
            f"[serial]\nbaud = 115200\n[wifi]\nota_port = {scope.config.ota_port}\njoin_timeout = 2.0\n"
            'invite_timeout = 0.2\nchunk_timeout = 0.5\nhost_ip = "127.0.0.1"\n'
        )
        flags = ("--serial-port", str(scope.config.serial_link), "--firmware-server", server)
        daemon = await start_daemon(*flags, config=daemon_config(extra=wifi))
        before = await scanned(client, NODE)
        await start_update(
            client, {"ssid": Variant("s", DEFAULT_SSID), "password": Variant("s", DEFAULT_PASSWORD)}
        )
        final = await signals.until_final()
        running = scope.master.slave(NODE).running_image

    assert (before.get("fw_version"), before.get("build")) == (None, None)  # the short legacy scan
    assert final["upload_status"] == "success", final
    assert (final["method"], final["verification"], final["attempt"]) == ("wifi", "transfer", 1)
    assert final["firmware_version"] == "v2026.0.9" and running == image
    # nothing to compare a build with: no warning either (it only says a build did not change)
    assert await warnings_in(daemon) == []


def _free_udp_port() -> int:
    """A UDP port free on loopback now: the slaves' ArduinoOTA port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
