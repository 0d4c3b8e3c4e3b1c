"""uc2otactl against the real daemon: human and --json output, exit codes, secrets, signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import properties, wait_for_property
from dbus_fast.aio import MessageBus
from espimage import build_app_image

from uc2otad.ctl import schemas
from uc2otad.sim.private_bus import PrivateBus

PASSWORD = "ctl-secret-Passw0rd"


async def ctl(bus: PrivateBus, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run uc2otactl on the private bus; (exit code, stdout, stderr)."""
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus.address}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uc2otad.ctl.main", "--session", *args, env=env,
        stdin=PIPE, stdout=PIPE, stderr=PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def ctl_json(bus: PrivateBus, command: str, *args: str, stdin: str = "") -> Any:
    code, stdout, stderr = await ctl(bus, command, *args, "--json", stdin=stdin)
    assert code == 0, (stdout, stderr)
    document = json.loads(stdout)
    jsonschema.validate(document, schemas.COMMANDS[command])
    return document


async def test_status_firmware_and_history_in_both_forms(
    start_daemon: DaemonFactory, private_bus: PrivateBus, caddy: CaddyServer
) -> None:
    image = build_app_image("esp32s3", version="v2026.1.0")
    await asyncio.to_thread(
        (caddy.root / "esp32_UC2_canopen_slave_motor_release_motX.bin").write_bytes, image
    )
    await start_daemon("--firmware-server", caddy.url)

    assert await ctl_json(private_bus, "status") == {}
    assert await ctl_json(private_bus, "status", "11", "20") == {
        "11": {"can_id": 11, "status": "idle"},
        "20": {"can_id": 20, "status": "idle"},
    }
    code, stdout, _ = await ctl(private_bus, "status", "11")
    assert code == 0 and stdout.split("\n")[0].split() == ["CAN", "STATUS", "PHASE", "PROGRESS", "FIRMWARE",
                                                           "ERROR", "MESSAGE"]  # fmt: skip
    assert stdout.split("\n")[1].split()[:2] == ["11", "idle"]

    listing = await ctl_json(private_bus, "firmware")
    assert listing["firmware"]["11"]["size"] == len(image)
    code, stdout, _ = await ctl(private_bus, "firmware")
    assert code == 0 and "esp32_UC2_canopen_slave_motor_release_motX.bin" in stdout

    assert await ctl_json(private_bus, "history") == []


async def test_settings_commands_and_the_password_stays_off_argv_and_output(
    start_daemon: DaemonFactory, private_bus: PrivateBus, client: MessageBus, tmp_path: Path
) -> None:
    daemon = await start_daemon()
    result = await ctl_json(private_bus, "set-wifi", "uc2-lab", stdin=PASSWORD + "\n")
    assert result == {"ssid": "uc2-lab", "password_set": True}
    password_file = tmp_path / "pw"
    await asyncio.to_thread(password_file.write_text, PASSWORD + "\n")
    code, stdout, stderr = await ctl(
        private_bus, "set-wifi", "uc2-lab-2", "--password-file", str(password_file)
    )
    assert code == 0 and PASSWORD not in stdout + stderr
    assert (await properties(client))["WiFiSSID"] == "uc2-lab-2"
    assert await asyncio.to_thread((daemon.state_dir / "wifi-password").read_text) == PASSWORD

    assert (await ctl_json(private_bus, "set-server", "http://127.0.0.1:9/firmware"))["firmware_server"] == (
        "http://127.0.0.1:9/firmware"
    )
    cleared = {"cleared": True, "deleted": 0, "known_good_deleted": 0, "known_good_kept": 0}
    assert await ctl_json(private_bus, "clear-cache") == cleared


async def test_set_ota_password_reads_stdin_or_a_file_never_argv(
    start_daemon: DaemonFactory, private_bus: PrivateBus, tmp_path: Path
) -> None:
    daemon = await start_daemon()
    secret_file = daemon.state_dir / "ota-password"
    assert await ctl_json(private_bus, "set-ota-password", stdin=PASSWORD + "\n") == {"password_set": True}
    assert await asyncio.to_thread(secret_file.read_text) == PASSWORD
    assert (await asyncio.to_thread(secret_file.stat)).st_mode & 0o777 == 0o600
    password_file = tmp_path / "ota-pw"
    await asyncio.to_thread(password_file.write_text, "other-" + PASSWORD + "\n")
    code, stdout, stderr = await ctl(private_bus, "set-ota-password", "--password-file", str(password_file))
    assert (code, stdout.strip()) == (0, "OTA password stored") and PASSWORD not in stdout + stderr
    assert await asyncio.to_thread(secret_file.read_text) == "other-" + PASSWORD
    assert await ctl_json(private_bus, "set-ota-password", stdin="\n") == {"password_set": False}
    assert not await asyncio.to_thread(secret_file.exists)  # empty clears it: the file is gone
    code, _, stderr = await ctl(private_bus, "set-ota-password", PASSWORD)
    assert code == 64 and "unrecognized arguments" in stderr  # no way to put it on argv
    code, _, stderr = await ctl(private_bus, "set-ota-password", "--password", PASSWORD)
    assert code == 64
    code, stdout, _ = await ctl(private_bus, "set-ota-password", "--json", stdin="p" * 65 + "\n")
    assert code == 64 and json.loads(stdout)["error"]["name"] == "org.openuc2.OTA1.Error.InvalidArgument"
    assert "p" * 65 not in stdout  # the refusal never quotes the password


@pytest.mark.parametrize(
    ("args", "exit_code", "error_name"),
    [
        (("status", "0"), 64, "org.openuc2.OTA1.Error.InvalidArgument"),
        (("set-server", "ftp://lab/firmware"), 64, "org.openuc2.OTA1.Error.InvalidArgument"),
        (("set-wifi", "x" * 40), 64, "org.openuc2.OTA1.Error.InvalidArgument"),
        (("scan",), 1, "org.openuc2.OTA1.Error.NotConnected"),  # the daemon is there; the HAT is not
    ],
)
async def test_errors_give_the_contracts_exit_codes_and_json(
    start_daemon: DaemonFactory,
    private_bus: PrivateBus,
    args: tuple[str, ...],
    exit_code: int,
    error_name: str,
) -> None:
    await start_daemon()
    code, stdout, _ = await ctl(private_bus, *args, "--json", stdin=PASSWORD + "\n")
    assert code == exit_code
    document = json.loads(stdout)
    jsonschema.validate(document, schemas.ERROR)
    assert document["error"]["name"] == error_name
    assert document["error"]["exit_code"] == exit_code


async def test_no_daemon_is_exit_5_and_a_bad_command_line_64(private_bus: PrivateBus) -> None:
    code, stdout, stderr = await ctl(private_bus, "status")
    assert code == 5
    assert "not running" in stderr and stdout == ""
    code, stdout, _ = await ctl(private_bus, "status", "--json")
    assert code == 5 and json.loads(stdout)["error"]["exit_code"] == 5
    code, _, stderr = await ctl(private_bus, "no-such-command")
    assert code == 64 and "invalid choice" in stderr


async def test_inhibit_holds_until_sigint(
    start_daemon: DaemonFactory, private_bus: PrivateBus, client: MessageBus
) -> None:
    await start_daemon()
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": private_bus.address}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uc2otad.ctl.main", "--session", "inhibit", "lab course",
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    assert (await process.stdout.readline()).startswith(b"updates inhibited until Ctrl-C")
    await wait_for_property(client, "Inhibited", True)
    process.send_signal(signal.SIGINT)
    assert await process.wait() == 0
    await wait_for_property(client, "Inhibited", False)
