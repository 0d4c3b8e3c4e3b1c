"""How uc2otactl shows boards while they update: a bar per board on a terminal, a line per change otherwise.

Main constraint: on a terminal the bars are redrawn in place (cursor up, clear, rewrite), so nothing
else may write to that terminal between two redraws (notes go through :meth:`TerminalBars.note`), and
no line may be wider than the terminal — a wrapped line would throw off the count of lines to go back.
Anything that is not a terminal (a pipe, a log file, CI) gets plain ``CAN 11: uploading 40%`` lines,
each printed once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TextIO

#: characters of a progress bar between its brackets
BAR_WIDTH = 24
#: ANSI/ECMA-48: erase the whole line; cursor to the start of the line N lines up; erase to the end
_ERASE_LINE = "\x1b[2K"
_LINES_UP = "\x1b[{}F"
_ERASE_BELOW = "\x1b[J"
#: phases after the last byte reached the board: the transfer is complete
_TRANSFERRED = ("flashing", "verifying", "success")


def status_line(status: Mapping[str, Any]) -> str:
    """``uploading 40%``, ``failed (upload_timeout): …``: one board's state in a few words."""
    phase = status.get("upload_status") or status.get("status", "?")
    progress = status.get("upload_progress")
    text = f"{phase} {progress}%" if phase in ("uploading", "flashing") and progress is not None else phase
    if status.get("error_code"):
        text += f" ({status['error_code']})"
    if status.get("message") and phase in ("failed", "success"):
        text += f": {status['message']}"
    return str(text)


def percent_of(status: Mapping[str, Any]) -> int:
    """How much of the image has reached the board, 0-100."""
    if status.get("upload_status") in _TRANSFERRED:
        return 100
    return int(status.get("upload_progress") or 0)


class ProgressView(Protocol):
    """Where an update's progress goes."""

    def show(self, can_id: int, status: Mapping[str, Any]) -> None:
        """Board ``can_id`` has a new status."""

    def note(self, text: str) -> None:
        """A line that is not a board's status (cancelling, a warning)."""

    def close(self) -> None:
        """The update has ended; later output goes below."""


class PlainLines:
    """One line per change of a board's state, for pipes and logs."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last: dict[int, str] = {}

    def show(self, can_id: int, status: Mapping[str, Any]) -> None:
        line = f"CAN {can_id}: {status_line(status)}"
        if self._last.get(can_id) != line:
            self._last[can_id] = line
            self._write(line)

    def note(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        pass

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class TerminalBars:
    """A bar per board, redrawn in place; boards in CAN id order."""

    def __init__(self, stream: TextIO, can_ids: Iterable[int], roles: Mapping[int, str]) -> None:
        self._stream = stream
        self._roles = roles
        self._statuses: dict[int, Mapping[str, Any]] = {can_id: {} for can_id in sorted(can_ids)}
        self._drawn = 0
        self._draw()

    def show(self, can_id: int, status: Mapping[str, Any]) -> None:
        self._statuses[can_id] = status
        self._draw()

    def note(self, text: str) -> None:
        self._stream.write(self._back() + _ERASE_BELOW + self._fit(text) + "\n")
        self._drawn = 0
        self._draw()

    def close(self) -> None:
        self._stream.flush()

    def bar_line(self, can_id: int, status: Mapping[str, Any]) -> str:
        """``CAN 11  motor  [############............]  50%  uploading``"""
        percent = percent_of(status)
        filled = BAR_WIDTH * percent // 100
        phase = status.get("upload_status") or "waiting"
        if status.get("error_code"):
            phase += f" ({status['error_code']})"
        role = self._roles.get(can_id, "")
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"CAN {can_id:<3} {role:<6} [{bar}] {percent:>3}%  {phase}"

    def _draw(self) -> None:
        lines = [self._fit(self.bar_line(can_id, status)) for can_id, status in self._statuses.items()]
        self._stream.write(self._back() + "".join(_ERASE_LINE + line + "\n" for line in lines))
        self._stream.flush()
        self._drawn = len(lines)

    def _back(self) -> str:
        return _LINES_UP.format(self._drawn) if self._drawn else ""

    @staticmethod
    def _fit(line: str) -> str:
        # one column spare: a line exactly as wide as the terminal wraps on some terminals
        return line[: max(shutil.get_terminal_size().columns - 1, 20)]


def view_for(stream: TextIO, can_ids: Iterable[int], roles: Mapping[int, str]) -> ProgressView:
    """Bars on a terminal that understands cursor movement, plain lines anywhere else."""
    if stream.isatty() and os.environ.get("TERM", "dumb") != "dumb":
        return TerminalBars(stream, can_ids, roles)
    return PlainLines(stream)
