"""Which esptool the daemon runs, and how it spells the command lines for it (issue 17).

esptool 5 spells commands, options and reset modes with dashes, 4.x (Debian 13's 4.7) with underscores;
4.x needs ``--before no_reset`` on a ``socket://`` port; an esptool without its flasher stub files
(Debian's build) runs with ``--no-stub``. The version comes from ``esptool version``, the stub files are
looked for beside the package the command's Python imports. Checked here against fake programs, the
test environment's esptool 5 and the 4.7 builds of :mod:`esptool4`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from esptool4 import esptool4

from uc2otad.errors import EsptoolMissingError
from uc2otad.methods.usb import esptool as esptool_module
from uc2otad.methods.usb.esptool import (
    Esptool,
    EsptoolFlavour,
    EsptoolSettings,
    detect,
    parse_version,
    python_of,
    stub_missing,
)

V4 = EsptoolFlavour((4, 7, 0), stub=True)
DEBIAN = EsptoolFlavour((4, 7, 0), stub=False)
V5 = EsptoolFlavour((5, 6, 0), stub=True)
SOCKET = "socket://127.0.0.1:4000"


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test finds out anew (the daemon keeps what it found for its life)."""
    monkeypatch.setattr(esptool_module, "_FLAVOURS", {})


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- spelling


def test_esptool_4_gets_underscores_and_5_dashes() -> None:
    words = ("write-flash", "--flash-mode", "keep", "--flash-freq", "keep", "--flash-size", "keep", "0x10000")
    assert V4.spell(*words) == [
        "write_flash", "--flash_mode", "keep", "--flash_freq", "keep", "--flash_size", "keep", "0x10000",
    ]  # fmt: skip
    assert V4.spell("flash-id") == ["flash_id"]
    assert V4.spell("erase-flash") == ["erase_flash"]
    assert V4.spell("--before", "no-reset", "--after", "hard-reset") == [
        "--before", "no_reset", "--after", "hard_reset",
    ]  # fmt: skip
    assert V4.spell("--no-stub", "--compress") == ["--no-stub", "--compress"]  # dashed in 4.7 too
    assert V5.spell(*words) == list(words)
    assert EsptoolFlavour((4, 8, 1)).dashes is False  # dashes came with 5.0.0
    assert EsptoolFlavour((5, 0, 0)).dashes is True


def test_command_lines_for_each_esptool() -> None:
    def argv(flavour: EsptoolFlavour, port: str) -> list[str]:
        tool = Esptool(port, baud=921600, settings=EsptoolSettings(program="/usr/bin/esptool"))
        tool.flavour = flavour
        return tool.command("write-flash", "--flash-mode", "keep", "0x10000", "app.bin", chip="esp32")

    board = ["--port", SOCKET, "--baud", "921600", "--chip", "esp32"]
    assert argv(V5, SOCKET) == ["/usr/bin/esptool", *board, "write-flash", "--flash-mode", "keep", "0x10000",
                                "app.bin"]  # fmt: skip
    # 4.x cannot skip the reset into the loader on a socket by itself (5.x does)
    assert argv(V4, SOCKET) == ["/usr/bin/esptool", *board, "--before", "no_reset", "write_flash",
                                "--flash_mode", "keep", "0x10000", "app.bin"]  # fmt: skip
    assert argv(DEBIAN, SOCKET) == ["/usr/bin/esptool", *board, "--before", "no_reset", "--no-stub",
                                    "write_flash", "--flash_mode", "keep", "0x10000", "app.bin"]  # fmt: skip
    tty = ["--port", "/dev/ttyUSB0", "--baud", "921600", "--chip", "esp32"]
    assert argv(DEBIAN, "/dev/ttyUSB0") == ["/usr/bin/esptool", *tty, "--no-stub", "write_flash",
                                            "--flash_mode", "keep", "0x10000", "app.bin"]  # fmt: skip
    default = Esptool("/dev/ttyUSB0", baud=115200).command("flash-id")
    assert default[:3] == [sys.executable, "-m", "esptool"] and default[-1] == "flash-id"


def test_versions_as_esptool_4_and_5_print_them() -> None:
    assert parse_version("esptool.py v4.7.0\n4.7.0\n") == (4, 7, 0)
    assert parse_version("esptool v5.6.0\n5.6.0\n") == (5, 6, 0)
    assert parse_version("WARNING: something\nesptool.py v4.8.dev3\n") == (4, 8, 0)
    assert parse_version("usage: foo\n") is None


def test_the_missing_stub_failure_of_esptool_4_and_5_is_recognised() -> None:
    debian = (
        "FileNotFoundError: [Errno 2] No such file or directory: "
        "'/usr/lib/python3/dist-packages/esptool/targets/stub_flasher/stub_flasher_32.json'"
    )
    assert stub_missing(["Traceback (most recent call last):", debian])
    assert stub_missing(["A fatal error occurred: Flasher stub data is missing for ESP32. "])
    assert not stub_missing(["A fatal error occurred: Failed to connect to ESP32: No serial data received."])


def test_the_python_of_a_program_is_read_from_its_shebang(tmp_path: Path) -> None:
    venv = script(tmp_path / "venv-esptool", f"#!{sys.executable}\nimport esptool\n")
    assert python_of(str(venv)) == sys.executable
    env = script(tmp_path / "env-esptool", "#!/usr/bin/env -S python3 -u\nimport esptool\n")
    found = python_of(str(env))
    assert found is not None and Path(found).name == "python3"
    assert python_of(str(script(tmp_path / "wrapper", '#!/bin/sh\nexec esptool "$@"\n'))) is None
    assert python_of(str(tmp_path / "missing")) is None


# --------------------------------------------------------------------------- detection


@pytest.fixture
def fake_esptool(tmp_path: Path) -> Iterator[Path]:
    """A shell program that answers ``version`` as esptool 4.7 does and counts its runs."""
    runs = tmp_path / "runs"
    yield script(
        tmp_path / "esptool",
        f'#!/bin/sh\necho run >> "{runs}"\nprintf "esptool.py v4.7.0\\n4.7.0\\n"\n',
    )


async def test_the_test_environments_esptool_5_has_its_stub() -> None:
    flavour = await detect("")
    assert flavour.version >= (5, 0, 0) and flavour.dashes and flavour.stub


async def test_a_program_is_asked_once_and_a_shell_wrapper_is_taken_to_have_its_stub(
    fake_esptool: Path,
) -> None:
    first = await detect(str(fake_esptool))
    second = await detect(str(fake_esptool))
    assert first == second == EsptoolFlavour((4, 7, 0), stub=True)  # not a Python script: cannot tell
    runs = await asyncio.to_thread((fake_esptool.parent / "runs").read_text)
    assert runs.count("run") == 1  # cached for the daemon's life


@pytest.mark.parametrize(
    ("text", "reason"),
    [("esptool.py v4.5.1\n4.5.1\n", "is too old"), ("usage: esptool\n", "does not run")],
)
async def test_an_old_or_unknown_esptool_is_not_available(tmp_path: Path, text: str, reason: str) -> None:
    program = await asyncio.to_thread(script, tmp_path / "esptool", f"#!/bin/sh\nprintf '{text}'\n")
    with pytest.raises(EsptoolMissingError, match=reason):
        await detect(str(program))


@pytest.mark.timeout(300)  # a first build of the 4.7 environments downloads it
@pytest.mark.parametrize(("build", "stub"), [("pypi", True), ("debian", False)])
async def test_esptool_4_7_with_and_without_its_stub_files(
    request: pytest.FixtureRequest, build: str, stub: bool
) -> None:
    program = await asyncio.to_thread(esptool4, request.config.cache, build)
    assert await detect(str(program)) == EsptoolFlavour((4, 7, 0), stub=stub)
