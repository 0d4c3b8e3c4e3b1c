"""The two-command start, end to end: ``python -m uc2otad.demo``, what ``scripts/demo`` runs once the machine
is set up (scripts/bootstrap installs system packages, so the test starts after it).

The demo must update every board of the virtual microscope, leave a setup a person can use with the
``export`` line it prints, and, once stopped, leave no process behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest
from conftest import _require_program

#: the boards of the virtual microscope the demo starts
DEMO_BOARDS = {"10", "11", "12", "13", "20", "30", "40"}
#: seconds the demo may take to have updated every board (about 20 s on a laptop)
DEMO_TIMEOUT = 90.0


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        if text in command:
            found.append(f"{entry.name}: {command}")
    return found


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
async def test_the_demo_updates_every_board_keeps_running_and_leaves_nothing_behind(tmp_path: Path) -> None:
    await asyncio.to_thread(_require_program, "dbus-daemon")
    workdir = tmp_path / "demo"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uc2otad.demo", "--keep-running", "--workdir", str(workdir),
        stdout=PIPE, stderr=PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(DEMO_TIMEOUT):
            while not output or not output[-1].startswith("Press Ctrl-C"):
                line = await process.stdout.readline()
                assert line, "".join(output) + (await process.stderr.read()).decode()
                output.append(line.decode())
        text = "".join(output)
        assert "7 updated" in text
        assert "\x1b" not in text  # a pipe gets plain lines

        # the printed recipe works: the daemon answers on the demo's bus
        (address,) = re.findall(r"export DBUS_SESSION_BUS_ADDRESS=(\S+)", text)
        ctl = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uc2otad.ctl.main", "--session", "status", "--json",
            env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": address}, stdout=PIPE,
        )  # fmt: skip
        statuses = json.loads((await ctl.communicate())[0])
        assert set(statuses) == DEMO_BOARDS
        assert {status["status"] for status in statuses.values()} == {"success"}
        assert await asyncio.to_thread(_processes_mentioning, str(workdir))

        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert await asyncio.to_thread(_processes_mentioning, str(workdir)) == []
