"""``python -m uc2otad.espota`` as a user runs it: a real process against the board simulator.

The exit code is the interface (CONTRACT.md §5): 0 success, 1 connection failed, 2 upload timeout,
3 verification failed, 64 usage error. The password comes from a file and must never show up in the
process's output.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from otasim import BOARD_IP, HOST_IP, app_image, board_config, wait_for

from uc2otad.sim.ota_board import BoardFaults, OtaBoard

IMAGE = app_image()
PASSWORD = "espota cli secret"
#: the CLI starts a Python interpreter: allow for a slow machine
RUN_TIMEOUT = 20.0


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The image and password files (written here, outside the event loop)."""
    paths = {
        "image": tmp_path / "firmware.bin",
        "password": tmp_path / "ota-password",
        "wrong": tmp_path / "wrong-password",
        "empty": tmp_path / "empty-password",
    }
    paths["image"].write_bytes(IMAGE)
    paths["password"].write_text(PASSWORD + "\n")
    paths["wrong"].write_text("not it\n")
    paths["empty"].write_text("\n")
    return paths


@pytest.fixture
async def board() -> AsyncIterator[OtaBoard]:
    async with OtaBoard(board_config(password=PASSWORD)) as board:
        yield board


async def espota(*args: str | Path) -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uc2otad.espota",
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


def board_args(board: OtaBoard, files: dict[str, Path], password: str = "password") -> list[str | Path]:
    return ["-i", BOARD_IP, "-p", str(board.port), "--host-ip", HOST_IP, "--password-file", files[password]]


async def test_success_exits_0_with_progress_on_stderr_and_no_password_anywhere(
    board: OtaBoard, files: dict[str, Path]
) -> None:
    run = await espota(*board_args(board, files), "-t", "1", "--chunk-timeout", "2", files["image"])

    assert run.code == 0, run.stderr
    assert "Uploading: 50%" in run.stderr and "Uploading: 100%" in run.stderr
    assert PASSWORD not in run.stdout + run.stderr
    await wait_for(board, lambda b: b.boots == 1)
    assert board.running_image == IMAGE


async def test_wrong_password_exits_1(board: OtaBoard, files: dict[str, Path]) -> None:
    run = await espota(*board_args(board, files, "wrong"), files["image"])

    assert run.code == 1
    assert "Authentication Failed" in run.stderr
    assert PASSWORD not in run.stdout + run.stderr


async def test_stall_exits_2(board: OtaBoard, files: dict[str, Path]) -> None:
    board.faults = BoardFaults(stall_at_percent=30)

    run = await espota(*board_args(board, files), "--chunk-timeout", "0.3", files["image"])

    assert run.code == 2, run.stderr


async def test_md5_failure_exits_3_with_the_boards_words(board: OtaBoard, files: dict[str, Path]) -> None:
    board.faults = BoardFaults(corrupt_offset=1234)

    run = await espota(*board_args(board, files), files["image"])

    assert run.code == 3, run.stderr
    assert "MD5 Check Failed" in run.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],  # no -i, no FILE
        ["-i", BOARD_IP],  # no FILE
        ["-i", BOARD_IP, "-p", "0", "x.bin"],
        ["-i", BOARD_IP, "--chunk-timeout", "-1", "x.bin"],
        ["-i", BOARD_IP, "--host-ip", "not-an-ip", "x.bin"],
        ["-i", BOARD_IP, "--password", "secret", "x.bin"],  # no password on the command line
        ["-i", BOARD_IP, "missing.bin"],
    ],
)
async def test_usage_errors_exit_64(args: list[str]) -> None:
    run = await espota(*args)

    assert run.code == 64, run.stderr


async def test_empty_password_file_is_a_usage_error(board: OtaBoard, files: dict[str, Path]) -> None:
    run = await espota(*board_args(board, files, "empty"), files["image"])

    assert run.code == 64
    assert "empty" in run.stderr


def test_missing_arguments_are_named_in_the_usage_error() -> None:
    command = [sys.executable, "-m", "uc2otad.espota"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 64
    assert "required" in result.stderr and "-i" in result.stderr
