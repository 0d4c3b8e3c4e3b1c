"""Both update methods from ``uc2otad-sim`` as a user runs it, and the settings that shape them.

The process is the real console script; the test talks to it only through what it prints (the port,
the nodes' addresses) and the serial port, as uc2otad would: a CANopen master streams, a legacy master
(``--profile legacy``) relays the WiFi command and the slave takes an ArduinoOTA upload.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from espimage import build_app_image

from uc2otad.errors import ConfigError
from uc2otad.links.serial_hat import HatSettings, SerialHatLink
from uc2otad.methods.arduino_ota import ArduinoOtaUploader, UploadSettings
from uc2otad.sim.can_rate import CanRate
from uc2otad.sim.config import load_config
from uc2otad.sim.nodes import NodeFaults, default_node
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

SIM = Path(sys.executable).with_name("uc2otad-sim")
#: seconds for the interpreter to start and the simulator to print its line, and to stop
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
IMAGE = build_app_image("esp32s3", version="v2099.8.0", segment_sizes=(0x1000, 0x400, 0x800, 0x800))
FAST_TIMING = """
[timing]
sdo_time = 0
ota_settle = 0
ota_reboot_delay = 0
node_boot_time = 0.05
wifi_join_time = 0.05
"""


def test_the_can_rate_the_ota_port_and_node_faults_come_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        "[can]\nbitrate = 250000\npaced = true\n[wifi]\nota_port = 0\n"
        "[[nodes]]\nid = 11\nfaults = { wifi_refused = true, drop_at_percent = 40, corrupt_offset = 7 }\n"
    )
    config = load_config(path)
    assert (config.can, config.ota_port) == (CanRate(bitrate=250_000, paced=True), 0)
    assert config.nodes[0].faults == NodeFaults(wifi_refused=True, drop_at_percent=40.0, corrupt_offset=7)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[can]\nbitrate = 0\n", "can.bitrate"),
        ("[can]\nspeed = 1\n", "can.speed"),
        ("[[nodes]]\nid = 11\nfaults = { melt = true }\n", "nodes[1].faults.melt"),
        ("[[nodes]]\nid = 11\nfaults = { drop_at_percent = -1 }\n", "nodes[1].faults.drop_at_percent"),
    ],
)
def test_a_bad_can_or_fault_setting_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key


def free_udp_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((ip, 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def uc2otad_sim(tmp_path: Path, *args: str, config: str = "") -> AsyncIterator[dict[str, Any]]:
    """The simulator as a process; yields its ready line. Stopped with SIGTERM, as a user stops it."""
    path = tmp_path / "sim.toml"
    await asyncio.to_thread(path.write_text, FAST_TIMING + config)
    process = await asyncio.create_subprocess_exec(
        str(SIM), "--config", str(path), "--nodes", "11", "--quiet-master", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(START_TIMEOUT):
            line = await process.stdout.readline()
        assert line, "uc2otad-sim printed nothing"
        yield json.loads(line)
    finally:
        process.terminate()
        async with asyncio.timeout(STOP_TIMEOUT):
            assert await process.wait() == 0


@asynccontextmanager
async def linked(ready: dict[str, Any]) -> AsyncIterator[SerialHatLink]:
    # at the baud the ready line names: a legacy HAT build's is 115200 (PinConfig.h:31 @14fa3e3)
    link = SerialHatLink(ready["serial_port"], baud=ready["baud"], settings=HatSettings(read_interval=0.01))
    await link.open()
    try:
        yield link
    finally:
        await link.close()


@pytest.mark.timeout(30)
async def test_a_canopen_microscope_takes_a_streamed_image(tmp_path: Path) -> None:
    async with uc2otad_sim(tmp_path) as ready, linked(ready) as link:
        assert ready["master"] == "canopen"
        await link.stream_ota(11, IMAGE)
        async with asyncio.timeout(5):
            while (node := (await link.scan()).node(11)) is None or node.fw_version != "v2099.8.0":
                pass  # the slave reboots into the image, then answers the scan with its version


@pytest.mark.timeout(30)
async def test_a_legacy_microscope_takes_an_image_over_wifi(tmp_path: Path) -> None:
    node_ip = default_node(11).ip
    ota_port = await asyncio.to_thread(free_udp_port, node_ip)
    async with (
        uc2otad_sim(tmp_path, "--profile", "legacy", config=f"[wifi]\nota_port = {ota_port}\n") as ready,
        linked(ready) as link,
    ):
        assert (ready["master"], ready["nodes"]["11"]["ip"]) == ("legacy", node_ip)
        joined = await link.start_wifi_ota(11, DEFAULT_SSID, DEFAULT_PASSWORD)
        settings = UploadSettings(
            invite_timeout=0.5, accept_timeout=2.0, chunk_timeout=2.0, host_ip="127.0.0.1"
        )
        result = await ArduinoOtaUploader(joined.ip, port=ota_port, settings=settings).upload(IMAGE)
    assert (joined.ip, result.size) == (node_ip, len(IMAGE))
