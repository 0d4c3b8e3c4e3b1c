"""The WiFi method end to end: daemon subprocess, private bus, a virtual microscope with a legacy master,
real Caddy, real ArduinoOTA over loopback sockets.

A client sees the procedure document's sequence as OTAStatusChanged signals; each failure of the
network half ends with its error code and the document's row, retried when it may pass; Cancel leaves
the board on its old image and a next update goes through.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call, unwrap
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from espimage import build_app_image
from signals import StatusSignals

from uc2otad.api import names
from uc2otad.engine.status import ERROR_ROWS
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, NodeSpec, default_node
from uc2otad.sim.profiles import Profile
from uc2otad.sim.timing import MasterTiming
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

NODE = 11
#: the WiFi-era image name of the motors (the procedure document's)
IMAGE_NAME = "esp32_seeed_xiao_esp32s3_can_slave_motor.bin"
#: larger than what the sockets buffer between host and board, so that a stalled board holds up the host
IMAGE = build_app_image("esp32s3", version="v2099.6.0", segment_sizes=(0x10000, 0x8000, 0x10000, 0x10000))
TIMING = MasterTiming(
    node_boot_time=0.05, wifi_join_time=0.02, wifi_join_timeout=0.1, legacy_scan_wait=0.01, sdo_timeout=0.02
)


def free_port() -> int:
    """A UDP port free on loopback now: the slaves' ArduinoOTA port (each slave has its own address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def daemon_config(ota_port: int, *, retries: int = 0, verify_window: float = 5.0) -> str:
    """Every wait shrunk; ``retries`` soon after each other, so that a retried failure shows attempt 2.

    A legacy slave reports no version: the first scan must come after its reboot (node_boot_time), as
    the default 4 s do on hardware. The invitation's answer gets 1 s: at 0.2 s a loaded machine (two
    test suites at once) made a retried upload_timeout end as upload_connection_failed.
    """
    return (
        f"[update]\nverify_settle = 0.3\nverify_window = {verify_window}\nverify_interval = 0.05\n"
        f"retries = {retries}\nretry_delay = 0.05\n"
        "[firmware]\nattempts = 1\n"
        f"[wifi]\nota_port = {ota_port}\njoin_timeout = 2.0\ninvite_timeout = 1.0\nchunk_timeout = 0.5\n"
        'host_ip = "127.0.0.1"\n'
    )


@pytest.fixture
async def served(caddy: CaddyServer) -> str:
    await asyncio.to_thread((caddy.root / IMAGE_NAME).write_bytes, IMAGE)
    return caddy.url


@pytest.fixture
async def signals(client: MessageBus) -> AsyncIterator[StatusSignals]:
    watcher = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    yield watcher


def legacy_scope(tmp_path: Path, *nodes: NodeSpec, timing: MasterTiming = TIMING) -> VirtualMicroscope:
    config = SimConfig(nodes=nodes or (default_node(NODE),), profile=Profile.LEGACY, timing=timing,
                       serial_link=tmp_path / "ttyHAT", socket=False, ota_port=free_port())  # fmt: skip
    return VirtualMicroscope(config)


async def start_for(
    start_daemon: DaemonFactory, scope: VirtualMicroscope, server: str, **config: Any
) -> None:
    await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", server,
                       config=daemon_config(scope.config.ota_port, **config))  # fmt: skip


def credentials(password: str = DEFAULT_PASSWORD) -> dict[str, Variant]:
    return {"ssid": Variant("s", DEFAULT_SSID), "password": Variant("s", password)}


async def test_a_wifi_update_walks_the_documents_sequence_and_records_it(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served: str, tmp_path: Path
) -> None:
    async with legacy_scope(tmp_path) as scope:
        await start_for(start_daemon, scope, served)
        stored = await call(client, "SetWiFiCredentials", "ss", DEFAULT_SSID, DEFAULT_PASSWORD)
        assert stored.message_type is MessageType.METHOD_RETURN
        reply = await call(client, "StartOTA", "ua{sv}", NODE, {})  # the stored credentials
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        accepted = unwrap(reply.body[0])
        final = await signals.until("success")
        running = scope.master.slave(NODE).running_image

    assert (accepted["status"], accepted["message"]) == ("success", f"OTA update initiated for device {NODE}")
    assert accepted["command_response"] == {"qid": 0, "success": 0}  # the master's immediate answer
    assert running == IMAGE
    steps = [(s["upload_status"], s["upload_progress"]) for s in signals.statuses]
    assert steps == [
        ("command_sent", 0), ("wifi_connected", 0), ("downloading", 0),
        *[("uploading", p) for p in range(0, 100, 10)], ("verifying", 100), ("success", 100),
    ]  # fmt: skip
    assert [s["status"] for s in signals.statuses[:2]] == ["initiated", "wifi_connected"]
    assert final["status"] == "success" and final["message"] == "✅ Firmware uploaded successfully"
    # legacy firmware reports no version: the evidence is the transfer (MD5 checked) and the board's return
    assert (final["verification"], final["method"], final["attempt"]) == ("transfer", "wifi", 1)
    assert (final["ip"], final["hostname"], final["success"]) == (
        default_node(NODE).ip,
        "UC2-CAN-B.local",
        True,
    )
    assert final["firmware"] == IMAGE_NAME and "upload_timestamp" in final
    assert all(DEFAULT_PASSWORD not in repr(status) for status in signals.statuses)
    (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
    assert (job["state"], job["method"], job["job_id"]) == ("success", "wifi", accepted["job_id"])


#: (error code, node faults, timing, StartOTA options, attempts made): transient failures are retried
#: once (retries = 1) and fail again, permanent ones are not
FAILURES = [
    ("wifi_failed", NodeFaults(), TIMING, credentials("not-the-password"), 1),
    ("upload_connection_failed", NodeFaults(drop_at_percent=40), TIMING, credentials(), 2),
    ("upload_timeout", NodeFaults(stall_at_percent=40, stall_seconds=1.0), TIMING, credentials(), 2),
    ("verification_failed", NodeFaults(corrupt_offset=0x2000), TIMING, credentials(), 1),
    ("board_not_back", NodeFaults(), replace(TIMING, node_boot_time=30.0), credentials(), 1),
]


@pytest.mark.parametrize(
    ("code", "faults", "timing", "options", "attempts"),
    FAILURES,
    ids=[failure[0] for failure in FAILURES],
)
async def test_each_failure_ends_with_its_code_and_the_documents_row(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: StatusSignals,
    served: str,
    tmp_path: Path,
    code: str,
    faults: NodeFaults,
    timing: MasterTiming,
    options: dict[str, Variant],
    attempts: int,
) -> None:
    node = replace(default_node(NODE), faults=faults)
    window = 0.3 if code == "board_not_back" else 5.0
    async with legacy_scope(tmp_path, node, timing=timing) as scope:
        await start_for(start_daemon, scope, served, retries=1, verify_window=window)
        reply = await call(client, "StartOTA", "ua{sv}", NODE, options)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        final = await signals.until("failed", attempt=attempts)
        kept_old_image = scope.master.slave(NODE).running_image is None

    assert (final["upload_status"], final["error_code"], final["attempt"]) == ("failed", code, attempts)
    assert final["message"] == f"❌ {ERROR_ROWS[code]}"
    assert final["status"] == ("wifi_failed" if code == "wifi_failed" else "failed")
    if code == "wifi_failed":
        assert (final["statusMsg"], final["success"]) == ("WiFi connection failed", False)
    assert kept_old_image  # board_not_back: it took the image and is still booting it
    (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
    assert (job["state"], job["error_code"]) == ("failed", code)


async def test_a_flaky_upload_is_retried_and_the_second_attempt_succeeds(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served: str, tmp_path: Path
) -> None:
    flaky = NodeFaults(drop_at_percent=40, transfer_faults_once=True)
    async with legacy_scope(tmp_path, replace(default_node(NODE), faults=flaky)) as scope:
        await start_for(start_daemon, scope, served, retries=1)
        assert (await call(client, "StartOTA", "ua{sv}", NODE, credentials())).message_type is (
            MessageType.METHOD_RETURN
        )
        final = await signals.until("success", attempt=2)
        assert scope.master.slave(NODE).running_image == IMAGE

    first, second = _attempts(signals.statuses)
    assert first[-1]["upload_status"] == "failed" and first[-1]["error_code"] == "upload_connection_failed"
    assert [s["upload_status"] for s in second][:3] == ["command_sent", "wifi_connected", "downloading"]
    assert (final["upload_status"], final["attempt"]) == ("success", 2)
    assert "error_code" not in final and "retry_in" not in final
    assert first[-1]["retry_in"] == 0  # the failed attempt said that another one follows
    (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])
    assert (job["state"], job["attempt"]) == ("success", 2)


def _attempts(statuses: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for status in statuses:
        by_attempt.setdefault(status["attempt"], []).append(status)
    return [by_attempt[attempt] for attempt in sorted(by_attempt)]


async def test_cancel_mid_upload_keeps_the_old_image_and_the_next_update_succeeds(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served: str, tmp_path: Path
) -> None:
    stalls = NodeFaults(stall_at_percent=50, stall_seconds=0.5)
    async with legacy_scope(tmp_path, replace(default_node(NODE), faults=stalls)) as scope:
        await start_for(start_daemon, scope, served)
        assert (await call(client, "StartOTA", "ua{sv}", NODE, credentials())).message_type is (
            MessageType.METHOD_RETURN
        )
        await signals.until("uploading")
        cancelled = await call(client, "Cancel", "u", NODE)
        slave = scope.master.slave(NODE)
        kept = slave.running_image
        slave.faults = NodeFaults()
        signals.statuses.clear()
        again = await call(client, "StartOTA", "ua{sv}", NODE, credentials())
        final = await signals.until("success")
        updated = slave.running_image

    assert cancelled.message_type is MessageType.METHOD_RETURN, cancelled.body
    assert kept is None  # still the image it booted with
    assert again.message_type is MessageType.METHOD_RETURN, again.body
    assert (final["upload_status"], updated) == ("success", IMAGE), final.get("upload_error")
    cancelled_job, _done = reversed(unwrap((await call(client, "GetHistory", "u", NODE)).body[0]))
    assert (cancelled_job["state"], cancelled_job["error_code"]) == ("failed", "cancelled")


async def test_the_method_must_suit_the_master_and_credentials_must_exist(
    start_daemon: DaemonFactory, client: MessageBus, served: str, tmp_path: Path
) -> None:
    async with legacy_scope(tmp_path) as scope:
        await start_for(start_daemon, scope, served)
        streaming = await call(client, "StartOTA", "ua{sv}", NODE, {"method": Variant("s", "can")})
        no_wifi = await call(client, "StartOTA", "ua{sv}", NODE, {})
        short = await call(client, "StartOTA", "ua{sv}", NODE, credentials("short"))
        status = unwrap((await call(client, "GetStatus", "u", NODE)).body[0])
        touched = scope.master.slave(NODE).wifi.board is not None
    for refused in (streaming, no_wifi, short):
        assert (refused.message_type, refused.error_name) == (MessageType.ERROR, names.INVALID_ARGUMENT)
    assert "legacy" in streaming.body[0] and "SetWiFiCredentials" in no_wifi.body[0]
    assert "short" not in short.body[0]  # a password is never quoted back
    assert status == {"can_id": NODE, "status": "idle"} and not touched
