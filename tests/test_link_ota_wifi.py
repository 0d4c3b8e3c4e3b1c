"""The WiFi method through a legacy master: the link against the virtual microscope, ArduinoOTA after it.

The link asks the master (a real pty); the master relays ``OTA_START`` over ISO-TP on the virtual CAN
bus; the slave joins the virtual WiFi and opens ArduinoOTA on its own loopback address; its ``OTA_ACK``
comes back as the ``ota`` message. Then our ArduinoOTA uploader sends an image over real sockets, and
the slave reboots into it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from espimage import build_app_image

from uc2otad.errors import MasterUnsupportedError, WifiJoinError, WifiJoinTimeoutError
from uc2otad.links.base import TRAFFIC
from uc2otad.links.ota_wifi import WifiOtaSettings
from uc2otad.links.serial_hat import HatSettings, SerialHatLink
from uc2otad.methods.arduino_ota import ArduinoOtaUploader, UploadSettings
from uc2otad.sim.canopen_slave import CanOpenSlave
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, NodeSpec, default_node
from uc2otad.sim.profiles import Profile
from uc2otad.sim.timing import MasterTiming
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

NODE = 11
IMAGE = build_app_image("esp32s3", version="v2099.5.0", segment_sizes=(0x1000, 0x400, 0x800, 0x1000))
TIMING = MasterTiming(
    node_boot_time=0.05, wifi_join_time=0.02, wifi_join_timeout=0.1, legacy_scan_wait=0.01, sdo_timeout=0.02
)
LINK = HatSettings(read_interval=0.01, wifi_ota=WifiOtaSettings(command_timeout=1.0, event_timeout=1.0))
UPLOAD = UploadSettings(invite_timeout=0.3, invite_attempts=3, accept_timeout=1.0, chunk_timeout=1.0,
                        host_ip="127.0.0.1")  # fmt: skip


@asynccontextmanager
async def legacy_microscope(
    tmp_path: Path, *nodes: NodeSpec, **config: object
) -> AsyncIterator[tuple[VirtualMicroscope, SerialHatLink]]:
    settings = SimConfig(nodes=nodes or (default_node(NODE),), profile=Profile.LEGACY, timing=TIMING,
                         serial_link=tmp_path / "tty", socket=False, ota_port=0)  # fmt: skip
    async with VirtualMicroscope(replace(settings, **config)) as scope:  # type: ignore[arg-type]
        # the master's own baud: the legacy HAT build's 115200 (PinConfig.h:31 @14fa3e3)
        link = SerialHatLink(scope.pty.url, baud=scope.master.baud, settings=LINK)
        await link.open()
        try:
            yield scope, link
        finally:
            await link.close()


async def listening(slave: CanOpenSlave) -> None:
    """Until the slave's ArduinoOTA is bound: ``ota_listen_delay`` after its success ack."""
    async with asyncio.timeout(2):
        await slave.wait_until(lambda node: node.wifi.board is not None)


async def test_the_slave_joins_serves_arduino_ota_and_reboots_into_the_uploaded_image(tmp_path: Path) -> None:
    async with legacy_microscope(tmp_path) as (scope, link):
        accepted: list[object] = []
        result = await link.start_wifi_ota(NODE, DEFAULT_SSID, DEFAULT_PASSWORD, on_accepted=accepted.append)
        slave = scope.master.slave(NODE)
        await listening(slave)  # ota_port 0: the port is known once ArduinoOTA is bound
        assert slave.wifi.board is not None
        upload = await ArduinoOtaUploader(result.ip, port=slave.wifi.board.port, settings=UPLOAD).upload(
            IMAGE
        )
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image == IMAGE and booted.reachable)
        node = (await link.scan()).node(NODE)
    assert (result.status, result.status_msg) == (0, "Success")
    assert (result.ip, result.hostname) == (default_node(NODE).ip, "UC2-CAN-B.local")
    assert accepted == [{"qid": 0, "success": 0}]
    assert upload.size == len(IMAGE)  # the board checked the MD5 before its "OK"
    assert node is not None and node.reachable
    assert slave.wifi.board is None  # WiFi is off again after the reboot


@pytest.mark.parametrize(
    ("password", "faults", "status", "status_msg"),
    [
        ("not-the-password", NodeFaults(), 1, "WiFi connection failed"),
        (DEFAULT_PASSWORD, NodeFaults(wifi_refused=True), 1, "WiFi connection failed"),
        (DEFAULT_PASSWORD, NodeFaults(ota_start_fails=True), 2, "OTA start failed"),
    ],
    ids=["wrong password", "out of range", "ArduinoOTA does not start"],
)
async def test_a_slave_that_cannot_join_or_serve_is_a_typed_wifi_error(
    tmp_path: Path, password: str, faults: NodeFaults, status: int, status_msg: str
) -> None:
    spec = replace(default_node(NODE), faults=faults)
    async with legacy_microscope(tmp_path, spec) as (scope, link):
        with pytest.raises(WifiJoinError) as caught:
            await link.start_wifi_ota(NODE, DEFAULT_SSID, password)
        assert scope.master.slave(NODE).wifi.board is None
    error = caught.value
    assert (error.can_id, error.status, error.status_msg, error.error_code) == (
        NODE,
        status,
        status_msg,
        "wifi_failed",
    )
    assert password not in str(error)


async def test_asked_again_with_the_same_ssid_the_serving_slave_only_confirms(tmp_path: Path) -> None:
    async with legacy_microscope(tmp_path) as (scope, link):
        first = await link.start_wifi_ota(NODE, DEFAULT_SSID, DEFAULT_PASSWORD)
        await listening(scope.master.slave(NODE))
        board = scope.master.slave(NODE).wifi.board
        again = await link.start_wifi_ota(NODE, DEFAULT_SSID, DEFAULT_PASSWORD)
        assert (again, scope.master.slave(NODE).wifi.board) == (first, board)


async def test_when_the_window_ends_without_an_upload_the_slave_reboots_its_old_image(tmp_path: Path) -> None:
    async with legacy_microscope(tmp_path, timing=replace(TIMING, wifi_ota_min_window=0.1)) as (scope, link):
        await link.start_wifi_ota(NODE, DEFAULT_SSID, DEFAULT_PASSWORD, timeout_ms=1)
        slave = scope.master.slave(NODE)
        async with asyncio.timeout(2):
            await slave.wait_until(lambda rebooted: rebooted.boots == 2 and rebooted.reachable)
    assert (slave.running_image, slave.wifi.board) == (None, None)


async def test_a_slave_off_the_bus_never_answers(tmp_path: Path) -> None:
    async with legacy_microscope(tmp_path, replace(default_node(NODE), online=False)) as (_scope, link):
        with pytest.raises(WifiJoinTimeoutError, match="no answer"):
            await link.start_wifi_ota(NODE, DEFAULT_SSID, DEFAULT_PASSWORD)


async def test_a_canopen_master_is_not_asked_for_wifi_ota(tmp_path: Path) -> None:
    commands: list[object] = []
    async with legacy_microscope(tmp_path, profile=Profile.FW_2026_09) as (scope, link):
        scope.master.on_command = commands.append
        with pytest.raises(MasterUnsupportedError, match="CANopen master"):
            await link.start_wifi_ota(NODE, DEFAULT_SSID, DEFAULT_PASSWORD)
    assert commands == []


async def test_the_wifi_password_reaches_no_log_on_either_side(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "a-secret-of-the-lab-4711"
    caplog.set_level(TRAFFIC)
    async with legacy_microscope(tmp_path, password=secret) as (_scope, link):
        result = await link.start_wifi_ota(NODE, DEFAULT_SSID, secret)
    assert result.status == 0  # it did travel, over the pty and the CAN bus
    assert secret not in caplog.text


async def test_an_invitation_sent_before_arduino_ota_listens_is_lost_and_a_later_try_is_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # FW-legacy acks before mDNS and ArduinoOTA.begin() (can_controller.cpp:2377 vs :2451 @14fa3e3): the
    # host, inviting at once, finds no socket; the uploader's default tries (espota's 10) recover it
    node = default_node(NODE)
    port = await asyncio.to_thread(free_udp_port, node.ip)
    settings = UploadSettings(invite_timeout=0.2, accept_timeout=1.0, chunk_timeout=1.0, host_ip="127.0.0.1")
    timing = replace(TIMING, ota_listen_delay=0.5)
    async with legacy_microscope(tmp_path, timing=timing, ota_port=port) as (scope, link):
        joined = await link.start_wifi_ota(NODE, DEFAULT_SSID, DEFAULT_PASSWORD)
        slave = scope.master.slave(NODE)
        assert slave.wifi.board is None  # acknowledged, not listening yet
        upload = await ArduinoOtaUploader(joined.ip, port=port, settings=settings).upload(IMAGE)
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image == IMAGE and booted.reachable)
    assert upload.size == len(IMAGE)
    assert f"no answer to invitation attempt=1/{settings.invite_attempts}" in caplog.text
    assert settings.invite_attempts == 10


def free_udp_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((ip, 0))
        port: int = probe.getsockname()[1]
        return port
