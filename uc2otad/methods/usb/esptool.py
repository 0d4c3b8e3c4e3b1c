"""esptool as a subprocess: the board probed, erased, written; progress and output read as they come.

Run as ``[sys.executable, "-m", "esptool", …]`` (or the configured program) with stdout and stderr
merged into one pipe that the event loop reads, so a flash never blocks the loop and a hung esptool can
be stopped: cancel terminates it and kills it after :data:`TERMINATE_GRACE`, as ImSwitch does
(``uc2-stack.md`` §6). Every line goes to the journal under this module's logger; the block progress
lines at DEBUG, the rest at INFO.

Command lines are the v5 spelling of ``uc2-stack.md`` §6: ``--port P --baud B --chip C`` then
``flash-id`` (the probe: chip and flash size), ``erase-flash``, or ``write-flash [keep…] OFFSET FILE``.
No ``--before``/``--after``: esptool's defaults reset the board into its loader and out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from uc2otad.errors import EsptoolMissingError, FlashWriteError
from uc2otad.methods.usb import output
from uc2otad.methods.usb.rules import FlashPlan

_LOGGER = logging.getLogger(__name__)

#: seconds one esptool run may take in all: a 1.3 MB master image uncompressed through the ROM at
#: 921600 baud takes ~17 s (esptool-rom.md, timing table), at 115200 about 2.5 min; a hung esptool
#: (a board that stopped answering mid-block) is stopped after this. Also the usb.esptool_timeout
#: setting's default, read by the composition root (uc2otad/compose.py) only on the first FlashMaster
ESPTOOL_TIMEOUT = 300.0
#: seconds between terminate and kill when a run is stopped (ImSwitch ``_run_esptool``: 2 s)
TERMINATE_GRACE = 2.0
#: most bytes read from esptool's pipe at once
READ_CHUNK = 4096
_LINE_END = re.compile(r"\r\n|\r|\n")

ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class EsptoolSettings:
    """How esptool is run; tests shrink the timeout or point ``program`` elsewhere."""

    #: an esptool executable; "" runs the daemon's own Python with ``-m esptool``
    program: str = ""
    timeout: float = ESPTOOL_TIMEOUT


@dataclass(frozen=True)
class BoardProbe:
    """What esptool found on the port."""

    chip: str
    #: bytes; None when esptool did not say
    flash_size: int | None


class Esptool:
    """esptool for one board: ``port`` at ``baud``.

    :param on_line: also called with every output line (the engine keeps the last ones as details)
    """

    def __init__(
        self,
        port: str,
        *,
        baud: int,
        settings: EsptoolSettings | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.port = port
        self.baud = baud
        self.settings = settings or EsptoolSettings()
        self._on_line = on_line

    def command(self, *args: str, chip: str | None = None) -> list[str]:
        """The argv for ``args`` on this board."""
        program = [self.settings.program] if self.settings.program else [sys.executable, "-m", "esptool"]
        board = ["--port", self.port, "--baud", str(self.baud)] + (["--chip", chip] if chip else [])
        return [*program, *board, *args]

    async def check_available(self) -> None:
        """:raises EsptoolMissingError: the program or the module is not there"""
        program = self.settings.program
        if program:
            if await asyncio.to_thread(shutil.which, program) is None:
                raise EsptoolMissingError(f"esptool program={program!r} not found or not executable")
        elif await asyncio.to_thread(importlib.util.find_spec, "esptool") is None:
            raise EsptoolMissingError(f"esptool is not installed for python={sys.executable}")

    async def probe(self, chip: str | None = None) -> BoardProbe:
        """Connect and read the chip and the flash size (``flash-id``); the board is reset after.

        :param chip: the chip expected (from the adapter's VID:PID); esptool refuses another
        :raises ImageRefusedError: the board is not ``chip``
        :raises UsbFlashError: esptool failed (see :func:`output.failure`)
        """
        lines = await self._run("flash-id", ["flash-id"], chip=chip)
        found_chip = next((c for line in lines if (c := output.detected_chip(line))), None) or chip
        if found_chip is None:
            raise FlashWriteError(f"esptool flash-id on port={self.port} named no chip")
        size = next((s for line in lines if (s := output.flash_size(line))), None)
        return BoardProbe(found_chip, size)

    async def erase(self, chip: str) -> None:
        """Erase the whole flash (``erase-flash``).

        :raises UsbFlashError: esptool failed
        """
        await self._run("erase-flash", ["erase-flash"], chip=chip)

    async def write(self, plan: FlashPlan, image: Path, on_progress: ProgressCallback) -> None:
        """Write ``image`` as ``plan`` says; ``on_progress`` hears esptool's percent (0..100, rising).

        :raises UsbFlashError: esptool failed (lost connection, MD5 mismatch, …)
        """
        best = -1.0

        def progress(line: str) -> None:
            nonlocal best
            percent = output.write_percent(line)
            if percent is not None and percent > best:  # a rewrite after a reconnect starts again at 0
                best = percent
                on_progress(percent)

        args = ["write-flash", *plan.write_options, f"0x{plan.offset:x}", str(image)]
        await self._run("write-flash", args, chip=plan.chip, on_line=progress)

    async def _run(
        self, what: str, args: list[str], *, chip: str | None, on_line: Callable[[str], None] | None = None
    ) -> list[str]:
        """Run esptool with ``args``; its lines. Stopped (terminate, then kill) on cancel and timeout.

        :raises EsptoolMissingError: the program cannot be started
        :raises FlashWriteError: it outlasted the timeout
        :raises UsbFlashError: it exited non-zero (which error: :func:`output.failure`)
        """
        argv = self.command(*args, chip=chip)
        _LOGGER.info("esptool: %s port=%s: %s", what, self.port, " ".join(argv))
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},  # lines as they happen, not per 8 KB
            )
        except OSError as err:
            raise EsptoolMissingError(f"esptool cannot be started: argv0={argv[0]} ({err})") from err
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.settings.timeout):
                await self._read_lines(process, lines, on_line)
                returncode = await process.wait()
        except TimeoutError as err:
            raise FlashWriteError(
                f"esptool {what} on port={self.port} did not finish within {self.settings.timeout}s"
            ) from err
        finally:
            await _stop(process)
        if returncode != 0:
            raise output.failure(lines, returncode, what=what)
        _LOGGER.info("esptool: %s port=%s done in %0.3fs", what, self.port, time.monotonic() - started)
        return lines

    async def _read_lines(
        self, process: asyncio.subprocess.Process, lines: list[str], on_line: Callable[[str], None] | None
    ) -> None:
        if process.stdout is None:  # created with stdout=PIPE: never
            raise RuntimeError("esptool has no stdout pipe")
        pending = ""
        while chunk := await process.stdout.read(READ_CHUNK):
            *complete, pending = _LINE_END.split(pending + chunk.decode(errors="replace"))
            for line in complete:
                self._line(line, lines, on_line)
        if pending:
            self._line(pending, lines, on_line)

    def _line(self, line: str, lines: list[str], on_line: Callable[[str], None] | None) -> None:
        line = line.rstrip()
        if not line:
            return
        lines.append(line)
        is_progress = output.write_percent(line) is not None
        _LOGGER.log(logging.DEBUG if is_progress else logging.INFO, "esptool: %s", line)
        if on_line is not None:
            on_line(line)
        if self._on_line is not None:
            self._on_line(line)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Terminate a run that is still going, then kill it after the grace time; reap it either way."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        async with asyncio.timeout(TERMINATE_GRACE):
            await asyncio.shield(process.wait())
            return
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await asyncio.shield(process.wait())
