"""``uc2otactl update`` and ``cancel`` against the real daemon and the virtual microscope.

What a technician and a script see: plain progress lines in a pipe, bars redrawn in place on a real
pseudo-terminal, one JSON document with ``--json`` (checked against the schema), the contract's exit
codes, a retry followed to its end, and Ctrl-C that cancels and leaves the board on its old image.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import pty
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import DaemonFactory
from dbus_client import call, unwrap
from dbus_fast.aio import MessageBus
from test_ctl import ctl
from test_daemon_update import FAST_UPDATE
from test_link_ota_stream import IMAGE, NEW_VERSION, OLD_VERSION, TIMING

from uc2otad.ctl import schemas
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import NodeFaults, NodeSpec, default_node
from uc2otad.sim.private_bus import PrivateBus

#: the standard image names of the two motors these tests update (uc2otad/firmware/images.toml)
IMAGE_NAMES = {
    11: "esp32_UC2_canopen_slave_motor_release_motX.bin",
    12: "esp32_UC2_canopen_slave_motor_release_motY.bin",
}
#: seconds uc2otactl may take to print the line a test waits for
LINE_TIMEOUT = 15.0

Microscope = Callable[..., Awaitable[VirtualMicroscope]]


def node(can_id: int, **faults: Any) -> NodeSpec:
    return replace(default_node(can_id), faults=NodeFaults(**faults))


def write_firmware(folder: Path) -> None:
    """IMAGE for each motor, and the manifest that tells the daemon its version before a download."""
    folder.mkdir(exist_ok=True)
    files = {}
    for name in IMAGE_NAMES.values():
        (folder / name).write_bytes(IMAGE)
        files[name] = {"size": len(IMAGE), "sha256": hashlib.sha256(IMAGE).hexdigest()}
    (folder / "version.json").write_text(json.dumps({"version": NEW_VERSION, "files": files}))


@pytest.fixture
async def microscope(tmp_path: Path, start_daemon: DaemonFactory) -> AsyncIterator[Microscope]:
    """``await microscope(*nodes, config=…)``: the virtual microscope serving IMAGE, and uc2otad on it."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(*nodes: NodeSpec, config: str = FAST_UPDATE) -> VirtualMicroscope:
            folder = tmp_path / "firmware"
            await asyncio.to_thread(write_firmware, folder)
            settings = SimConfig(nodes=nodes, timing=TIMING, serial_link=tmp_path / "ttyHAT", socket=False,
                                 ota_port=0, firmware_dir=folder)  # fmt: skip
            scope = await stack.enter_async_context(VirtualMicroscope(settings))
            server = scope.ready_info()["firmware_server"]
            flags = ("--serial-port", str(settings.serial_link), "--firmware-server", server)
            await start_daemon(*flags, config=config)
            return scope

        yield make


async def ctl_update_json(bus: PrivateBus, *args: str, exit_code: int = 0) -> Any:
    code, stdout, stderr = await ctl(bus, "update", *args, "--json")
    assert code == exit_code, (stdout, stderr)
    document = json.loads(stdout)
    jsonschema.validate(document, schemas.COMMANDS["update"])
    assert document["exit_code"] == exit_code
    return document


async def start_ctl(bus: PrivateBus, *args: str, **streams: Any) -> asyncio.subprocess.Process:
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus.address, **streams.pop("env", {})}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uc2otad.ctl.main", "--session", *args, env=env, **streams
    )


async def read_until(stream: asyncio.StreamReader, prefix: str) -> list[str]:
    """Lines up to and including the first that starts with ``prefix``."""
    lines: list[str] = []
    async with asyncio.timeout(LINE_TIMEOUT):
        while not lines or not lines[-1].startswith(prefix):
            line = await stream.readline()
            assert line, f"uc2otactl ended before {prefix!r}: {lines}"
            lines.append(line.decode().rstrip("\n"))
    return lines


# ---- output ---------------------------------------------------------------------------------------------


async def test_one_board_in_a_pipe_gives_a_line_per_change_and_a_summary(
    microscope: Microscope, private_bus: PrivateBus
) -> None:
    scope = await microscope(node(11))
    code, stdout, stderr = await ctl(private_bus, "update", "11")
    assert code == 0, (stdout, stderr)
    assert scope.master.slave(11).running_image == IMAGE
    lines = stdout.splitlines()
    assert "\x1b" not in stdout
    progress = [line for line in lines if line.startswith("CAN 11: ")]
    assert progress[: 2 + 10] == [
        "CAN 11: command_sent", "CAN 11: downloading", *[f"CAN 11: uploading {p}%" for p in range(0, 100, 10)]
    ]  # fmt: skip
    assert progress[-3:-1] == ["CAN 11: flashing 100%", "CAN 11: verifying"]
    assert progress[-1].startswith("CAN 11: success")
    assert len(progress) == len(set(progress))  # each change once
    summary = lines[lines.index("") + 2].split()
    assert summary[:5] == ["11", "updated", OLD_VERSION, "->", NEW_VERSION]
    assert lines[-1] == "1 updated"


async def test_several_boards_go_as_one_batch_and_json_is_one_document(
    microscope: Microscope, private_bus: PrivateBus, client: MessageBus
) -> None:
    scope = await microscope(node(11), node(12))
    document = await ctl_update_json(private_bus, "11", "12", "--delay", "0")
    assert document["result"] == "success"
    assert set(document["boards"]) == {"11", "12"}
    for can_id in (11, 12):
        board = document["boards"][str(can_id)]
        assert (board["result"], board["status"]["firmware_version"]) == ("success", NEW_VERSION)
        assert board["status"]["batch_id"] == document["batch_id"]
        assert scope.master.slave(can_id).running_image == IMAGE
    (job,) = unwrap((await call(client, "GetHistory", "u", 12)).body[0])
    assert job["job_id"] == document["boards"]["12"]["job_id"]


async def test_progress_bars_are_redrawn_in_place_on_a_pseudo_terminal(
    microscope: Microscope, private_bus: PrivateBus
) -> None:
    await microscope(node(11))
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = await start_ctl(private_bus, "update", "11", stdin=terminal, stdout=terminal, stderr=terminal,
                              env={"TERM": "xterm"})  # fmt: skip
    os.close(terminal)
    output = (await asyncio.to_thread(_read_terminal, controller)).decode()
    assert await process.wait() == 0, output
    redraws = output.split("\x1b[1F")  # one board: back one line, then the bar again
    assert len(redraws) >= 12
    bars = [part.split("\x1b[2K", 1)[1].split("\r\n", 1)[0] for part in redraws[1:]]
    assert bars[-1].split() == ["CAN", "11", "[" + "#" * 24 + "]", "100%", "success"]
    assert ["CAN", "11", "[" + "#" * 12 + "." * 12 + "]", "50%", "uploading"] in [bar.split() for bar in bars]
    assert "CAN 11: uploading" not in output  # no plain lines on a terminal
    assert max(len(line) for line in output.split("\r\n")) < 120 + 20  # escapes aside, no line wraps


def _read_terminal(controller: int) -> bytes:
    """Everything written to the terminal until the last program using it has closed it."""
    chunks = []
    try:
        while chunk := os.read(controller, 4096):
            chunks.append(chunk)
    except OSError:  # EIO: the other side is closed
        pass
    finally:
        os.close(controller)
    return b"".join(chunks)


# ---- outcomes and exit codes ------------------------------------------------------------------------


async def test_a_failed_board_is_exit_1_and_the_other_board_still_updates(
    microscope: Microscope, private_bus: PrivateBus
) -> None:
    scope = await microscope(node(11), node(12, corrupt_offset=100))
    document = await ctl_update_json(private_bus, "11", "12", "--delay", "0", exit_code=1)
    assert document["result"] == "failed"
    failed = document["boards"]["12"]
    assert (failed["result"], failed["status"]["status"]) == ("failed", "failed")
    assert failed["status"]["error_code"]
    assert document["boards"]["11"]["result"] == "success"
    assert scope.master.slave(11).running_image == IMAGE
    assert scope.master.slave(12).running_image != IMAGE


async def test_a_failed_attempt_that_is_retried_is_followed_to_its_success(
    microscope: Microscope, private_bus: PrivateBus
) -> None:
    config = "[update]\nverify_settle = 0.05\nverify_window = 5.0\nverify_interval = 0.05\nretries = 1\n" \
             "retry_delay = 0.2\n[firmware]\nattempts = 1\n"  # fmt: skip
    scope = await microscope(node(11, drop_at_percent=50.0, transfer_faults_once=True), config=config)
    code, stdout, stderr = await ctl(private_bus, "update", "11")
    assert code == 0, (stdout, stderr)
    progress = [line for line in stdout.splitlines() if line.startswith("CAN 11: ")]
    first_failure = next(i for i, line in enumerate(progress) if line.startswith("CAN 11: failed"))
    assert "CAN 11: command_sent" in progress[first_failure:]  # the second attempt, followed
    assert progress[-1].startswith("CAN 11: success")
    assert scope.master.slave(11).running_image == IMAGE


async def test_boards_already_current_are_exit_2(microscope: Microscope, private_bus: PrivateBus) -> None:
    scope = await microscope(replace(node(11), version=NEW_VERSION))
    code, stdout, _ = await ctl(private_bus, "update", "11")
    assert code == 2
    assert "CAN 11: already up to date" in stdout
    document = await ctl_update_json(private_bus, "--all", exit_code=2)  # the master is left out
    assert document["result"] == "up_to_date"
    assert document["boards"] == {
        "11": {"can_id": 11, "result": "up_to_date", "message": "already up to date"}
    }
    assert scope.master.slave(11).running_image != IMAGE  # never sent


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (("update", "20"), 3),  # no image for the laser on the server
        (("cancel", "11"), 3),  # no update running
        (("update",), 64),
        (("update", "11", "--all"), 64),
        (("update", "1"), 64),  # the master is flashed over USB
        (("update", "11", "--password-file", "/nonexistent"), 64),  # without --ssid
        (("update", "11", "--method", "usb"), 64),
    ],
)
async def test_errors_give_the_contracts_exit_codes(
    microscope: Microscope, private_bus: PrivateBus, args: tuple[str, ...], exit_code: int
) -> None:
    await microscope(node(11))
    code, stdout, stderr = await ctl(private_bus, *args, "--json")
    assert code == exit_code, (stdout, stderr)
    if stdout:  # argparse's own usage errors go to stderr only
        document = json.loads(stdout)
        jsonschema.validate(document, schemas.ERROR)
        assert document["error"]["exit_code"] == exit_code


async def test_no_daemon_is_exit_5(private_bus: PrivateBus) -> None:
    code, stdout, _ = await ctl(private_bus, "update", "11", "--json")
    assert code == 5 and json.loads(stdout)["error"]["exit_code"] == 5


# ---- cancelling ---------------------------------------------------------------------------------------


async def test_sigint_during_an_update_cancels_it_and_the_board_keeps_its_image(
    microscope: Microscope, private_bus: PrivateBus, client: MessageBus
) -> None:
    scope = await microscope(node(11, stall_at_percent=50.0))
    process = await start_ctl(private_bus, "update", "11", stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    await read_until(process.stdout, "CAN 11: uploading 0%")
    process.send_signal(signal.SIGINT)
    rest = (await process.stdout.read()).decode()
    assert await process.wait() == 1, rest
    assert "CAN 11: cancelled; the board keeps the firmware it had" in rest
    assert rest.splitlines()[-1] == "1 cancelled"
    status = unwrap((await call(client, "GetStatus", "u", 11)).body[0])
    assert (status["status"], status["error_code"]) == ("failed", "cancelled")
    assert scope.master.slave(11).running_image != IMAGE


async def test_cancel_stops_an_update_started_without_waiting(
    microscope: Microscope, private_bus: PrivateBus
) -> None:
    scope = await microscope(node(11, stall_at_percent=50.0))
    started = await ctl_update_json(private_bus, "11", "--no-wait")
    assert started["result"] == "started"
    assert started["boards"]["11"]["job_id"]

    code, stdout, stderr = await ctl(private_bus, "cancel", "11", "--json")
    assert code == 0, (stdout, stderr)
    document = json.loads(stdout)
    jsonschema.validate(document, schemas.COMMANDS["cancel"])
    assert document["status"]["error_code"] == "cancelled"
    assert document["status"]["job_id"] == started["boards"]["11"]["job_id"]
    assert scope.master.slave(11).running_image != IMAGE

    code, _, stderr = await ctl(private_bus, "cancel", "11")
    assert code == 3 and "no running update" in stderr


# ---- the batch's plan (issue 19, item 3) --------------------------------------------------------------


async def test_all_with_a_failing_board_stops_there_and_reports_the_rest_skipped(
    microscope: Microscope, private_bus: PrivateBus
) -> None:
    scope = await microscope(node(11, corrupt_offset=100), node(12))
    document = await ctl_update_json(private_bus, "--all", "--delay", "0", exit_code=1)
    assert [(entry["can_id"], entry["action"]) for entry in document["plan"]] == [
        (11, "update"),
        (12, "update"),
    ]
    assert document["boards"]["11"]["result"] == "failed"
    skipped = document["boards"]["12"]
    assert (skipped["result"], skipped["status"]["error_code"]) == ("skipped", "skipped")
    assert scope.master.slave(12).running_image != IMAGE


async def test_all_prints_the_plan_before_the_progress(
    microscope: Microscope, private_bus: PrivateBus
) -> None:
    await microscope(node(11), replace(node(12), version=NEW_VERSION))
    code, stdout, stderr = await ctl(private_bus, "update", "--all", "--keep-going")
    assert code == 0, (stdout, stderr)
    lines = stdout.splitlines()
    plan = lines.index("plan:")
    assert lines[plan + 1].split() == ["CAN", "ROLE", "LINK", "STATE", "ACTION", "NOTE"]
    assert lines[plan + 2].split() == ["11", "motor", "master", "update_available", "update", "-"]
    first_progress = next(i for i, line in enumerate(lines) if line.startswith("CAN 11: "))
    assert plan < first_progress


async def test_dry_run_prints_the_plan_and_changes_nothing(
    microscope: Microscope, private_bus: PrivateBus, client: MessageBus
) -> None:
    scope = await microscope(node(11), replace(node(12), version=NEW_VERSION))
    code, stdout, stderr = await ctl(private_bus, "update", "--all", "--dry-run")
    document = await ctl_update_json(private_bus, "--all", "--dry-run")
    explicit = await ctl_update_json(private_bus, "11", "12", "--dry-run")

    assert code == 0, (stdout, stderr)
    assert "dry run: nothing is changed" in stdout
    assert ["11", "motor", "master", "update_available", "update", "-"] in [
        line.split() for line in stdout.splitlines()
    ]
    assert document["result"] == "dry_run"
    assert [(entry["can_id"], entry["action"]) for entry in document["plan"]] == [(11, "update")]
    assert (document["boards"]["11"]["result"], document["boards"]["12"]["result"]) == (
        "planned",
        "up_to_date",
    )
    assert [(entry["can_id"], entry["action"]) for entry in explicit["plan"]] == [
        (11, "update"),
        (12, "skip"),
    ]
    assert scope.master.slave(11).running_image != IMAGE
    assert unwrap((await call(client, "GetHistory", "u", 0)).body[0]) == []
    assert unwrap((await call(client, "GetAllStatus")).body[0]) == {}


async def test_dry_run_with_nothing_due_is_exit_2(microscope: Microscope, private_bus: PrivateBus) -> None:
    await microscope(replace(node(11), version=NEW_VERSION))
    document = await ctl_update_json(private_bus, "11", "--dry-run", exit_code=2)
    assert document["result"] == "dry_run"
    assert [(entry["can_id"], entry["action"]) for entry in document["plan"]] == [(11, "skip")]


async def test_role_takes_the_boards_of_that_role(microscope: Microscope, private_bus: PrivateBus) -> None:
    scope = await microscope(node(11), node(12))
    planned = await ctl_update_json(private_bus, "--role", "motor", "--dry-run")
    document = await ctl_update_json(private_bus, "--role", "motor", "--delay", "0")

    assert [(entry["can_id"], entry["action"]) for entry in planned["plan"]] == [
        (11, "update"),
        (12, "update"),
    ]
    assert {can_id: board["result"] for can_id, board in planned["boards"].items()} == {
        "11": "planned", "12": "planned"
    }  # fmt: skip
    assert {can_id: board["result"] for can_id, board in document["boards"].items()} == {
        "11": "success", "12": "success"
    }  # fmt: skip
    assert scope.master.slave(12).running_image == IMAGE
