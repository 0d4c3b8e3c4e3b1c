"""esptool as a subprocess: the board probed, erased, written; progress and output read as they come.

Run as ``[sys.executable, "-m", "esptool", …]`` (or the configured program) with stdout and stderr
merged into one pipe that the event loop reads, so a flash never blocks the loop and a hung esptool can
be stopped: cancel terminates it and kills it after :data:`TERMINATE_GRACE`, as ImSwitch does
(``uc2-stack.md`` §6). Every line goes to the journal under this module's logger; the block progress
lines at DEBUG, the rest at INFO.

Command lines are those of ``uc2-stack.md`` §6: ``--port P --baud B --chip C`` then ``flash-id`` (the
probe: chip and flash size), ``erase-flash``, or ``write-flash [keep…] OFFSET FILE``. No ``--after``:
esptool's default resets the board into its loader and out again.

Which esptool runs is found out once per command (:func:`detect`, cached for the daemon's life) before
the board is touched, and the command lines follow it (:class:`EsptoolFlavour`):

- esptool 5 spells commands, options and reset modes with dashes (``write-flash``, ``--flash-mode``,
  ``no-reset``); 4.x (Debian 13 ships 4.7) with underscores (``write_flash``, ``--flash_mode``,
  ``no_reset``): the spelling changed in v5.0.0 ("cli: Commands and options use dashes instead of
  underscores", esptool's CHANGELOG.md; v4.8.1's ``esptool/__init__.py`` still has ``--flash_mode``).
  The version is what ``esptool version`` prints, first line ``esptool.py v4.7.0`` or ``esptool v5.6.0``.
- esptool 5 skips the reset into the loader by itself on a ``socket://`` port; 4.x tries DTR/RTS ioctls
  on the socket and dies (``OSError: [Errno 25]``), so it is told ``--before no_reset`` there.
- Debian's esptool ships without the flasher stubs (``esptool/targets/stub_flasher/*.json``, binaries
  without source; espressif/esptool#1159: ``FileNotFoundError`` right after connecting). Without them
  every run gets ``--no-stub`` and talks to the ROM loader itself. The files are looked for beside the
  esptool package that command runs (the daemon's Python for ``-m esptool``; a program's Python from its
  ``#!`` line), without touching the board; when that cannot be told (a program that is not a Python
  script), a run that fails with the missing-stub error is run once more with ``--no-stub`` — that
  error comes right after the connect, before anything is erased or written.
- Without the stub, esptool refuses ``erase-flash`` (4.7: ``erase_flash`` and ``erase_region`` are
  ``@stub_function_only`` in ``esptool/loader.py``). The ROM erases every sector a FLASH_BEGIN covers, so
  the whole flash is erased by writing it full of 0xFF, compressed (a 4 MB flash is 4 KB on the wire):
  ``write-flash --compress 0x0 <flash size of 0xFF>``.
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
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
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

#: the oldest esptool the daemon drives: Debian 13's (pyproject.toml's lower bound too)
MIN_VERSION = (4, 7)
#: the first esptool that spells commands, options and reset modes with dashes
DASHES_SINCE = (5, 0)
#: seconds ``esptool version`` and the stub look-up may take
DETECT_TIMEOUT = 30.0
#: bytes of 0xFF written at once into the erase image (a flash is 4 to 16 MB)
ERASE_BLOCK = 64 * 1024
#: the v5 words the daemon uses, as esptool 4.x spells them (esptool v4.7.0, ``esptool/__init__.py``);
#: ``--port``, ``--baud``, ``--chip``, ``--no-stub``, ``--compress`` and ``keep`` are the same in both
V4_SPELLING = {
    "flash-id": "flash_id",
    "erase-flash": "erase_flash",
    "write-flash": "write_flash",
    "--flash-mode": "--flash_mode",
    "--flash-freq": "--flash_freq",
    "--flash-size": "--flash_size",
    "no-reset": "no_reset",
    "hard-reset": "hard_reset",
}
_VERSION = re.compile(r"^esptool(?:\.py)? v(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)
#: the failure of an esptool whose flasher stub files are missing: 4.x's open() of the JSON
#: (espressif/esptool#1159), 5.x's FatalError (``esptool/loader.py``, ``StubFlasher._get_json_path``)
_STUB_MISSING = re.compile(r"FileNotFoundError: .*stub_flasher|Flasher stub data is missing")
#: run by the Python that runs esptool: are the stub files there, next to the module it imports?
#: (find_spec locates the package without running it)
_STUB_PROBE = (
    "import importlib.util, pathlib, sys\n"
    "spec = importlib.util.find_spec('esptool')\n"
    "if spec is None or spec.origin is None: sys.exit(3)\n"
    "stubs = pathlib.Path(spec.origin).parent / 'targets' / 'stub_flasher'\n"
    "print(spec.origin)\n"
    "print('stub' if any(stubs.rglob('*.json')) else 'no-stub')\n"
)


@dataclass(frozen=True)
class EsptoolSettings:
    """How esptool is run; tests shrink the timeout or point ``program`` elsewhere."""

    #: an esptool executable; "" runs the daemon's own Python with ``-m esptool``
    program: str = ""
    timeout: float = ESPTOOL_TIMEOUT


@dataclass(frozen=True)
class EsptoolFlavour:
    """What the esptool run is: its version and whether its flasher stub is there; how to spell for it."""

    version: tuple[int, int, int]
    #: the flasher stub files ship with it (not in Debian's build: then every run adds ``--no-stub``)
    stub: bool = True

    @property
    def dashes(self) -> bool:
        """esptool 5 spelling: ``write-flash``, ``--flash-mode``, ``no-reset``."""
        return self.version[:2] >= DASHES_SINCE

    def spell(self, *words: str) -> list[str]:
        """``words``, written in the v5 spelling, as this esptool spells them."""
        return list(words) if self.dashes else [V4_SPELLING.get(word, word) for word in words]

    def __str__(self) -> str:
        return f"esptool {'.'.join(map(str, self.version))} ({'stub' if self.stub else 'no stub: --no-stub'})"


#: what each esptool command is, found once per command for the daemon's life (an upgraded esptool
#: needs a daemon restart to be seen)
_FLAVOURS: dict[tuple[str, ...], EsptoolFlavour] = {}


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The version of ``esptool version``'s output (``esptool.py v4.7.0``, ``esptool v5.6.0``)."""
    found = _VERSION.search(text)
    if found is None:
        return None
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch or 0)


def stub_missing(lines: list[str]) -> bool:
    """esptool failed because its flasher stub files are not there (Debian's build)."""
    return any(_STUB_MISSING.search(line) for line in lines)


def base_command(program: str) -> list[str]:
    """How esptool is started: ``program``, or the daemon's own Python with ``-m esptool``."""
    return [program] if program else [sys.executable, "-m", "esptool"]


def python_of(program: str) -> str | None:
    """The Python that runs ``program`` (a path or a name on PATH): its ``#!`` line's, when it is a
    Python script (pip's console scripts and Debian's /usr/bin/esptool are); None otherwise."""
    path = shutil.which(program)
    if path is None:
        return None
    try:
        with open(path, "rb") as script:
            first = script.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if words and Path(words[0]).name == "env":
        words = [word for word in words[1:] if not word.startswith("-")]
        interpreter = shutil.which(words[0]) if words else None
    else:
        interpreter = words[0] if words else None
    if interpreter is None or not Path(interpreter).name.startswith("python"):
        return None
    return interpreter


async def detect(program: str) -> EsptoolFlavour:
    """The esptool ``program`` runs ("" for ``python -m esptool``); found once, then cached.

    :raises EsptoolMissingError: it does not start, says no version, or is older than :data:`MIN_VERSION`
    """
    command = tuple(base_command(program))
    known = _FLAVOURS.get(command)
    if known is not None:
        return known
    returncode, text = await _capture([*command, "version"])
    version = parse_version(text)
    if returncode != 0 or version is None:
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise EsptoolMissingError(
            f"esptool does not run: {' '.join(command)} version exit={returncode}: {last[0]}"
        )
    if version[:2] < MIN_VERSION:
        raise EsptoolMissingError(
            f"esptool {'.'.join(map(str, version))} is too old: {' '.join(command)}; "
            f"uc2otad needs {'.'.join(map(str, MIN_VERSION))} or newer"
        )
    python = sys.executable if not program else await asyncio.to_thread(python_of, program)
    stub = True  # not a Python script: a run that misses its stub is run again with --no-stub
    if python is not None:
        returncode, text = await _capture([python, "-c", _STUB_PROBE])
        said = text.strip().splitlines()
        if returncode == 0 and len(said) >= 2 and said[-1] in ("stub", "no-stub"):
            stub = said[-1] == "stub"
            _LOGGER.debug("esptool: %s imports %s", " ".join(command), said[-2])
    flavour = EsptoolFlavour(version, stub=stub)
    _LOGGER.info("esptool: %s is %s", " ".join(command), flavour)
    _FLAVOURS[command] = flavour
    return flavour


async def _capture(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` without a board; exit status and output. A program that cannot start: 127."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as err:
        return 127, str(err)
    try:
        async with asyncio.timeout(DETECT_TIMEOUT):
            output, _ = await process.communicate()
    except TimeoutError:
        return -1, f"no answer within {DETECT_TIMEOUT}s"
    finally:
        await _stop(process)
    return process.returncode or 0, output.decode(errors="replace")


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
        #: the esptool that runs, once :meth:`detect` found out
        self.flavour: EsptoolFlavour | None = None
        #: what the last :meth:`probe` found
        self.board: BoardProbe | None = None

    def command(self, *args: str, chip: str | None = None) -> list[str]:
        """The argv for ``args`` (v5 spelling) on this board, as the detected esptool spells them."""
        flavour = self.flavour or EsptoolFlavour((5, 0, 0))
        board = ["--port", self.port, "--baud", str(self.baud)] + (["--chip", chip] if chip else [])
        if not flavour.dashes and self.port.startswith("socket://"):
            board += flavour.spell("--before", "no-reset")  # 5.x does this by itself
        if not flavour.stub:
            board.append("--no-stub")
        return [*base_command(self.settings.program), *board, *flavour.spell(*args)]

    async def check_available(self) -> None:
        """:raises EsptoolMissingError: the program or the module is not there"""
        program = self.settings.program
        if program:
            if await asyncio.to_thread(shutil.which, program) is None:
                raise EsptoolMissingError(f"esptool program={program!r} not found or not executable")
        elif await asyncio.to_thread(importlib.util.find_spec, "esptool") is None:
            raise EsptoolMissingError(f"esptool is not installed for python={sys.executable}")

    async def detect(self) -> EsptoolFlavour:
        """Find out which esptool runs (:func:`detect`, cached); the board is not touched.

        :raises EsptoolMissingError: it does not run, or is too old
        """
        self.flavour = await detect(self.settings.program)
        return self.flavour

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
        self.board = BoardProbe(found_chip, size)
        return self.board

    async def erase(self, chip: str) -> None:
        """Erase the whole flash: ``erase-flash`` through the stub; without it, the flash written full of
        0xFF through the ROM (which erases what a write covers), since esptool refuses ``erase-flash``.

        :raises UsbFlashError: esptool failed, or without the stub the flash size is unknown (probe first)
        """
        if self.flavour is None or self.flavour.stub:
            await self._run("erase-flash", ["erase-flash"], chip=chip)
            return
        size = self.board.flash_size if self.board is not None else None
        if size is None:
            raise FlashWriteError(
                f"cannot erase port={self.port} through the ROM (esptool has no flasher stub): "
                "esptool flash-id told no flash size"
            )
        async with _erased_image(size) as fill:
            await self._run("erase-flash", ["write-flash", "--compress", "0x0", str(fill)], chip=chip)

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
        """Run esptool with ``args``; its lines. An esptool found to lack its flasher stub only now (the
        error comes right after the connect, before any command) is remembered and run again with
        ``--no-stub``.

        :raises EsptoolMissingError: the program cannot be started
        :raises FlashWriteError: it outlasted the timeout
        :raises UsbFlashError: it exited non-zero (which error: :func:`output.failure`)
        """
        started = time.monotonic()
        returncode, lines = await self._run_once(what, args, chip=chip, on_line=on_line)
        flavour = self.flavour
        if returncode != 0 and flavour is not None and flavour.stub and stub_missing(lines):
            self.flavour = _FLAVOURS[tuple(base_command(self.settings.program))] = replace(
                flavour, stub=False
            )
            _LOGGER.warning(
                "esptool: it has no flasher stub files; running it with --no-stub from now on: %s",
                self.flavour,
            )
            returncode, lines = await self._run_once(what, args, chip=chip, on_line=on_line)
        if returncode != 0:
            raise output.failure(lines, returncode, what=what)
        _LOGGER.info("esptool: %s port=%s done in %0.3fs", what, self.port, time.monotonic() - started)
        return lines

    async def _run_once(
        self, what: str, args: list[str], *, chip: str | None, on_line: Callable[[str], None] | None
    ) -> tuple[int, list[str]]:
        """One esptool run: its exit status and lines."""
        argv = self.command(*args, chip=chip)
        _LOGGER.info("esptool: %s port=%s: %s", what, self.port, " ".join(argv))
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
        return returncode, lines

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


@contextlib.asynccontextmanager
async def _erased_image(size: int) -> AsyncIterator[Path]:
    """A file of ``size`` bytes of 0xFF, in a private folder removed when the block ends.

    :raises FlashWriteError: it cannot be written (before the board is touched)
    """
    try:
        folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="uc2otad-erase-"))
    except OSError as err:
        raise FlashWriteError(f"cannot make the erase image: {err.strerror}") from err
    try:
        path = folder / f"erased-{size // 1024}K.bin"
        try:
            await asyncio.to_thread(_write_erased, path, size)
        except OSError as err:
            raise FlashWriteError(f"cannot write the erase image into {folder}: {err.strerror}") from err
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)


def _write_erased(path: Path, size: int) -> None:
    """``size`` bytes of 0xFF into the new file ``path`` (0600), 64 KiB at a time."""
    block = b"\xff" * ERASE_BLOCK
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as sink:
        for start in range(0, size, ERASE_BLOCK):
            sink.write(block[: size - start])


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
