"""``uc2otad-sim`` as a user runs it: a real process, its one JSON line, a real client, and a clean exit.

CONTRACT.md §5: one JSON line on stdout once ready, logs on stderr, runs until SIGTERM/SIGINT, then
leaves no process, pty, symlink, folder or socket behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from espimage import build_app_image

from uc2otad.errors import ConfigError
from uc2otad.links.serial_hat import HatSettings, SerialHatLink
from uc2otad.sim.config import SimConfig, load_config

SIM = Path(sys.executable).with_name("uc2otad-sim")
#: seconds for the interpreter to start and the simulator to print its line
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PASSWORD = "not-for-the-log-4711"


@dataclass
class Running:
    process: asyncio.subprocess.Process
    ready: dict[str, Any]
    stderr: bytearray = field(default_factory=bytearray)
    stdout_rest: bytes = b""


@asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[Running]:
    if not await asyncio.to_thread(SIM.exists):
        pytest.fail(f"{SIM} is missing: install the project (pip install -e .) to get the console script")
    process = await asyncio.create_subprocess_exec(
        str(SIM), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    stderr = bytearray()
    draining = asyncio.create_task(_drain(process.stderr, stderr))
    try:
        async with asyncio.timeout(START_TIMEOUT):
            line = await process.stdout.readline()
        assert line, f"uc2otad-sim printed nothing: {stderr.decode(errors='replace')}"
        running = Running(process, json.loads(line), stderr)
        yield running
    finally:
        if process.returncode is None:  # the test failed before stopping it: stop it kindly, then not
            process.terminate()
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        await draining


async def stop(running: Running, signum: int) -> int:
    running.process.send_signal(signum)
    async with asyncio.timeout(STOP_TIMEOUT):
        returncode = await running.process.wait()
        assert running.process.stdout is not None
        running.stdout_rest = await running.process.stdout.read()
    return returncode


async def run_to_exit(*args: str) -> tuple[int | None, bytes, bytes]:
    """Run ``uc2otad-sim`` expecting it to exit by itself: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(SIM), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(START_TIMEOUT):
        stdout, stderr = await process.communicate()
    return process.returncode, stdout, stderr


async def _drain(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(4096):
        into += chunk


def port_of(url: str) -> int:
    found = re.search(r":(\d+)", url.split("//", 1)[1])
    assert found is not None
    return int(found.group(1))


def refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def firmware_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "firmware"
    folder.mkdir()
    (folder / "esp32_UC2_canopen_slave_laser_release.bin").write_bytes(build_app_image("esp32s3"))
    return folder


@pytest.mark.timeout(20)
async def test_ready_line_a_working_microscope_and_nothing_left_after_sigterm(firmware_dir: Path) -> None:
    options = ["--nodes", "10,11,20", "--firmware-dir", str(firmware_dir), "--log-level", "debug"]
    async with simulator(*options, "--password", PASSWORD) as running:
        ready = running.ready
        assert re.fullmatch(r"/dev/pts/\d+", ready["serial_port"])
        assert (ready["baud"], ready["wifi"]) == (921600, {"ssid": "uc2-lab"})
        assert (ready["master"], ready["profile"]) == ("canopen", "fw-2026-09")  # the newest, by default
        assert re.fullmatch(r"socket://127\.0\.0\.1:\d+", ready["rom_loader"])
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/firmware", ready["firmware_server"])
        defaults = SimConfig()
        assert ready["nodes"] == {
            "10": {
                "role": "motor",
                "ip": "127.0.0.110",
                "version": defaults.master_version,
                "profile": "fw-2026-09",
            },
            "11": {
                "role": "motor",
                "ip": "127.0.0.111",
                "version": defaults.master_version,
                "profile": "fw-2026-09",
            },
            "20": {
                "role": "laser",
                "ip": "127.0.0.120",
                "version": defaults.master_version,
                "profile": "fw-2026-09",
            },
        }

        link = SerialHatLink(ready["serial_port"], settings=HatSettings(request_timeout=2.0))
        await link.open()
        try:
            assert [node.can_id for node in (await link.scan()).nodes] == [10, 11, 20]
        finally:
            await link.close()
        listing = await asyncio.to_thread(_get_json, ready["firmware_server"] + "/")
        assert [entry["name"] for entry in listing] == ["esp32_UC2_canopen_slave_laser_release.bin"]

        assert await stop(running, signal.SIGTERM) == 0
        assert running.stdout_rest == b""  # exactly one line
        leftovers = [ready["serial_link"], str(Path(ready["serial_link"]).parent), ready["serial_port"]]
        assert [path for path in leftovers if await asyncio.to_thread(os.path.lexists, path)] == []
        ports = [port_of(ready[key]) for key in ("serial_socket", "firmware_server", "rom_loader")]
        assert [port for port in ports if not await asyncio.to_thread(refused, port)] == []
        assert PASSWORD.encode() not in running.stderr


@pytest.mark.timeout(20)
async def test_sigint_stops_it_as_cleanly(tmp_path: Path) -> None:
    link_path = tmp_path / "ttyHAT"
    async with simulator("--serial-link", str(link_path), "--quiet-master") as running:
        assert running.ready["serial_link"] == str(link_path)
        assert await asyncio.to_thread(os.path.realpath, link_path) == running.ready["serial_port"]
        assert await stop(running, signal.SIGINT) == 0
        assert not await asyncio.to_thread(os.path.lexists, link_path)
        assert await asyncio.to_thread(refused, port_of(running.ready["serial_socket"]))


@pytest.mark.timeout(20)
async def test_a_config_file_describes_the_microscope(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    text = (
        'profile = "fw-main-2026-07"\n[master]\nprofile = "legacy"\nbaud = 115200\n[wifi]\nssid = "bench"\n'
        '[[nodes]]\nid = 11\nversion = "v2025.11.0"\nprofile = "legacy"\n'
        '[[nodes]]\nid = 70\nrole = "galvo"\n'
    )
    await asyncio.to_thread(config.write_text, text)
    default_version = SimConfig().nodes[0].version
    async with simulator("--config", str(config)) as running:
        assert (running.ready["master"], running.ready["profile"]) == ("legacy", "legacy")
        assert (running.ready["baud"], running.ready["wifi"]) == (115200, {"ssid": "bench"})
        assert running.ready["nodes"] == {
            "11": {"role": "motor", "ip": "127.0.0.111", "version": "v2025.11.0", "profile": "legacy"},
            "70": {  # no profile of its own: the microscope's
                "role": "galvo",
                "ip": "127.0.0.170",
                "version": default_version,
                "profile": "fw-main-2026-07",
            },
        }
        assert await stop(running, signal.SIGTERM) == 0


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--nodes", "10,99"], "nodes"),
        (["--nodes", "10,x"], "nodes"),
        (["--firmware-dir", "/nonexistent/firmware"], "firmware_dir"),
    ],
)
async def test_a_bad_option_exits_2_naming_the_key(args: list[str], key: str) -> None:
    returncode, stdout, stderr = await run_to_exit(*args)
    assert (returncode, stdout) == (2, b"")
    assert stderr.decode().startswith(f"uc2otad-sim: {key}")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[master]\nprofile = "quantum"\n', "master.profile"),
        ('profile = "quantum"\n', "profile"),
        ('[[nodes]]\nid = 11\nprofile = "quantum"\n', "nodes[1].profile"),
        ('[master]\nkind = "legacy"\n', "master.kind"),  # the old key: refused, not silently ignored
        ("[master]\nbaud = true\n", "master.baud"),
        ("[wifi]\npasword = 'typo'\n", "wifi.pasword"),
        ("[[nodes]]\nrole = 'motor'\n", "nodes[1].id"),
        ("[[nodes]]\nid = 11\n[[nodes]]\nid = 11\n", "nodes[2].id"),
        ("[timing]\nrestart_delay = -1\n", "timing.restart_delay"),
        ("not toml at all", "config"),
    ],
)
def test_a_bad_config_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as failure:
        load_config(config)
    assert failure.value.key == key


async def test_an_existing_file_is_never_replaced_by_the_serial_link(tmp_path: Path) -> None:
    precious = tmp_path / "ttyUSB0"
    await asyncio.to_thread(precious.write_text, "not ours")
    returncode, stdout, stderr = await run_to_exit("--serial-link", str(precious))
    assert (returncode, stdout) == (1, b"")
    assert b"is not a symlink" in stderr
    assert await asyncio.to_thread(precious.read_text) == "not ours"
