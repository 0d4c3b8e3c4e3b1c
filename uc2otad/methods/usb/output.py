"""What esptool's output lines say: write progress, the chip and flash it found, why it failed.

esptool 5 has no progress callback for a subprocess; with stdout not a terminal it prints one line per
block, ``Writing at 0x0013d620 ━━━…━ 100.0% 182.15kB/182.15kB [0s]`` (``esptool-rom.md``, "Progress
reporting"); esptool 4 printed ``Writing at 0x00010000... (10 %)``. Both are read. Its failures are
plain text ahead of exit status 1 or 2, so the text decides which of the document's USB error rows a
failure is.
"""

from __future__ import annotations

import re

from uc2otad.errors import (
    ConfigError,
    EsptoolMissingError,
    FlashWriteError,
    ImageRefusedError,
    NoSerialPortError,
    PortAccessError,
    UsbFlashError,
)
from uc2otad.firmware.chips import normalize_chip_name

_PROGRESS = re.compile(r"Writing at (0x[0-9a-fA-F]+)\b.*?(\d+(?:\.\d+)?) ?%")
_DETECTED = re.compile(r"(?:Detecting chip type\.\.\.|Connected to|Chip is) (ESP[0-9A-Za-z-]+)")
_FLASH_SIZE = re.compile(r"Detected flash size: (\d+)\s*(KB|MB)")
_WRONG_CHIP = re.compile(r"This chip is (ESP[0-9A-Za-z-]+),? not (ESP[0-9A-Za-z-]+)")
_ERROR_LINE = re.compile(r"^(?:A fatal error occurred|ERROR|Error|FatalError)\b")
_UNITS = {"KB": 1024, "MB": 1024 * 1024}


def write_percent(line: str) -> float | None:
    """The percent of a ``Writing at …`` progress line; None for any other line."""
    found = _PROGRESS.search(line)
    return float(found.group(2)) if found else None


def detected_chip(line: str) -> str | None:
    """The chip a detection line names, as ``--chip`` spells it (``esp32s3``); None otherwise."""
    found = _DETECTED.search(line)
    if found is None:
        return None
    try:
        return normalize_chip_name(found.group(1).split("-D0WD")[0])
    except ConfigError:
        return None


def flash_size(line: str) -> int | None:
    """Bytes of a ``Detected flash size: 4MB`` line; None otherwise."""
    found = _FLASH_SIZE.search(line)
    return int(found.group(1)) * _UNITS[found.group(2)] if found else None


def failure(lines: list[str], returncode: int, *, what: str) -> UsbFlashError:
    """The error for a run that exited with ``returncode``, from what it printed.

    :param what: the run's purpose, for the message ("write-flash")
    """
    text = "\n".join(lines)
    reason = _reason(lines)
    facts = f"esptool {what} exit={returncode}: {reason}"
    if "No module named esptool" in text:
        return EsptoolMissingError(f"{facts} (install it: pip install esptool)")
    if "Permission denied" in text or "[Errno 13]" in text:
        return PortAccessError(facts)
    wrong = _WRONG_CHIP.search(text)
    if wrong is not None:
        return ImageRefusedError(f"the board is {wrong.group(1)}, not {wrong.group(2)}: {facts}")
    if "could not open port" in text and "No such file or directory" in text:
        return NoSerialPortError(facts)
    return FlashWriteError(facts)


def _reason(lines: list[str]) -> str:
    """esptool's own error line, else its last words."""
    for line in lines:
        if _ERROR_LINE.match(line.strip()):
            return line.strip()
    meaningful = [
        line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("│", "╭", "╰"))
    ]
    return meaningful[-1] if meaningful else "no output"
