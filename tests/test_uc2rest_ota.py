"""UC2-REST updates boards of the virtual microscope by both methods, as it updates real ones.

UC2-REST 0.2.0.43 was written against real masters: ``canota.start_can_streaming_ota_blocking`` (its
preamble ends with a newline, its ACK wait polls every 2 ms) succeeding here, and
``canota.start_ota_update`` bringing an ``ota`` callback with an address that takes an ArduinoOTA
upload, is evidence that the virtual master and slaves behave like the firmware — not merely like our
own link expects.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from espimage import build_app_image
from uc2rest_client import connect, uc2rest

from uc2otad.methods.arduino_ota import ArduinoOtaUploader, UploadSettings
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.profiles import Profile
from uc2otad.sim.timing import MasterTiming
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

MOTOR = 11
IMAGE = build_app_image("esp32s3", version="v2099.6.0", segment_sizes=(0x2000, 0x400, 0x1000, 0x1000))
TIMING = MasterTiming(sdo_timeout=0.05, ota_settle=0.05, node_boot_time=0.05, ota_reboot_delay=0.05,
                      wifi_join_time=0.05)  # fmt: skip
#: UC2-REST waits up to 10 s for the callback; our own bound, should the virtual slave never answer
ANSWER_TIMEOUT = 5.0


@pytest.fixture
def uc2rest_module() -> ModuleType:
    return uc2rest()


@asynccontextmanager
async def microscope(tmp_path: Path, profile: Profile) -> AsyncIterator[VirtualMicroscope]:
    config = SimConfig(nodes=(default_node(MOTOR),), profile=profile, timing=TIMING,
                       serial_link=tmp_path / "ttyHAT", socket=False, ota_port=0)  # fmt: skip
    async with VirtualMicroscope(config) as scope:
        yield scope


def stream_with_uc2rest(module: ModuleType, device: str, firmware: Path) -> dict[str, Any]:
    """UC2-REST's streaming upload on ``device`` (blocking).

    Its ``CANOTA`` without a parent client: with one, UC2-REST closes the client's port first and reopens
    it afterwards by looking the path up in the system's port list, which has no ptys (it would then
    try every USB serial port of the machine). The streaming exchange is the same either way.
    """
    statuses: list[tuple[str, bool]] = []
    progress: list[int] = []
    done = module.canota.CANOTA(parent=None).start_can_streaming_ota_blocking(
        MOTOR,
        str(firmware),
        progress_callback=lambda _chunk, _chunks, sent, _speed: progress.append(sent),
        status_callback=lambda text, ok: statuses.append((text, ok)),
        port=device,
        baud=921600,
    )
    return {"done": done, "statuses": statuses, "progress": progress}


@pytest.mark.timeout(30)  # UC2-REST sleeps half a second before it streams
async def test_uc2rest_streams_a_motor_update_through_the_virtual_master(
    uc2rest_module: ModuleType, tmp_path: Path
) -> None:
    firmware = tmp_path / "esp32_UC2_canopen_slave_motor_release_motX.bin"
    await asyncio.to_thread(firmware.write_bytes, IMAGE)
    async with microscope(tmp_path, Profile.FW_2026_09) as scope:
        outcome = await asyncio.to_thread(stream_with_uc2rest, uc2rest_module, scope.pty.path, firmware)
        slave = scope.master.slave(MOTOR)
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image is not None)
    failures = [text for text, ok in outcome["statuses"] if not ok]
    assert outcome["done"] is True, f"UC2-REST reports: {failures}"
    assert outcome["progress"][-1] == len(IMAGE)
    assert slave.running_image == IMAGE


def trigger_with_uc2rest(module: ModuleType, device: str, baud: int) -> dict[str, Any]:
    """``canota.start_ota_update`` with a general callback, as ImSwitch's ``registerOTACallback`` does."""
    client = connect(module, device, baud)
    answered = threading.Event()
    answers: list[dict[str, Any]] = []

    def on_answer(answer: dict[str, Any]) -> None:
        answers.append(answer)
        answered.set()

    try:
        client.canota.register_callback(0, on_answer)
        client.canota.start_ota_update(MOTOR, DEFAULT_SSID, DEFAULT_PASSWORD)
        answered.wait(ANSWER_TIMEOUT)
    finally:
        client.close()
    return answers[0] if answers else {}


@pytest.mark.timeout(60)  # UC2-REST drains the port for at least a second while connecting
async def test_uc2rest_wifi_trigger_brings_an_address_that_takes_an_arduino_ota_upload(
    uc2rest_module: ModuleType, tmp_path: Path
) -> None:
    async with microscope(tmp_path, Profile.LEGACY) as scope:
        # at the legacy HAT build's 115200 (PinConfig.h:31 @14fa3e3), as a user of an old HAT sets it
        answer = await asyncio.to_thread(
            trigger_with_uc2rest, uc2rest_module, scope.pty.path, scope.master.baud
        )
        assert answer.get("success") is True, f"no successful ota answer: {answer!r}"
        slave = scope.master.slave(MOTOR)
        async with asyncio.timeout(2):  # ArduinoOTA listens ota_listen_delay after the answer (wifi_ota.py)
            await slave.wait_until(lambda node: node.wifi.board is not None)
        assert slave.wifi.board is not None
        settings = UploadSettings(
            invite_timeout=0.5, accept_timeout=2.0, chunk_timeout=2.0, host_ip="127.0.0.1"
        )
        upload = ArduinoOtaUploader(answer["ip"], port=slave.wifi.board.port, settings=settings)
        await upload.upload(IMAGE)
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image == IMAGE)
    assert (answer["canId"], answer["ip"], answer["hostname"]) == (
        MOTOR,
        default_node(MOTOR).ip,
        "UC2-CAN-B.local",
    )
