"""Split the bytes a master CAN HAT sends into replies, bare JSON lines and log lines.

The master writes its replies as ``++\\n<json>\\n--\\n``, its streaming status as bare JSON lines
(``{"ota_rx":4096}``), and its debug log (``[I][file.cpp:12] …``) on the same UART, between frames and,
with older firmware that printed a frame line by line, even inside one (``uc2-stack.md`` §2.1). This
module turns that stream into ``(FrameType, payload)`` items and knows nothing else: not qids, not
commands, not what a key means (the split that aioesphomeapi's frame helper makes).

Main constraint: the peer is a microcontroller whose output we do not control, so every buffer is
bounded while parsing (a frame body or a line is at most :data:`MAX_FRAME_BYTES`, the firmware's own
limit), and nothing the line carries — noise, a half frame after a reboot, invalid JSON — can raise:
it comes out as a ``LOG`` or ``INVALID`` item instead.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any

#: largest JSON text of one frame: the firmware refuses to send longer ones
#: (FW-main ``SerialProcess.cpp::safeSendJsonString``: ``len > 8192``)
MAX_FRAME_BYTES = 8192
#: longest line we buffer: a frame's JSON line plus room for a CR, a NUL and noise before it
MAX_LINE_BYTES = MAX_FRAME_BYTES + 64
#: how much of an unusable text an INVALID item quotes
EXCERPT_CHARS = 80

_FRAME_START = "++"
_FRAME_END = "--"
# what ends up around a line besides its text: CR, padding, and the NUL some firmware builds send
# after the end marker (they write strlen + 1 bytes)
_LINE_JUNK = " \t\r\n\x00"
# Arduino-ESP32 ``log_x`` lines (``[I][file.cpp:12] …``, newer cores prefix ``[  1234]``) and ESP-IDF
# ``ESP_LOGx`` lines (``I (1234) TAG: …``), either possibly wrapped in an ANSI colour code
_LOG_LINE = re.compile(
    r"^(?:\x1b\[[0-9;]*m)?(?:\[\s*\d+\])?\[[VDIWE]\]\["  # Arduino
    r"|^(?:\x1b\[[0-9;]*m)?[VDIWE] \(\d+\) "  # ESP-IDF
)
_DECODER = json.JSONDecoder()


class FrameType(Enum):
    """What a parsed item is; its payload type follows from it."""

    #: a ``++``/``--`` frame; payload: the JSON object (dict)
    FRAME = "frame"
    #: a bare JSON line outside frames (``{"ota_rx":4096}``); payload: the JSON object (dict)
    LINE = "line"
    #: text that is not JSON: the firmware's log, boot output, noise; payload: the text (str)
    LOG = "log"
    #: a frame or line that cannot be used (invalid JSON, too long, cut off); payload: why (str)
    INVALID = "invalid"


Item = tuple[FrameType, Any]


class FrameParser:
    """Incremental parser: feed it bytes as they arrive, in any split, and collect the items.

    States: outside a frame (a line is bare JSON or log) and inside one (a line is body, except log
    lines, which pass through). A line longer than :data:`MAX_LINE_BYTES` is dropped up to its newline;
    a frame whose body outgrows :data:`MAX_FRAME_BYTES` is dropped up to its end marker.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        #: bytes of ``_pending`` already searched for a newline
        self._scanned = 0
        #: dropping bytes up to the next newline (an over-long line)
        self._skip_line = False
        #: body lines of the frame being read; None outside a frame
        self._body: list[str] | None = None
        self._body_bytes = 0
        #: the frame being read is too large: drop its lines up to the end marker
        self._skip_frame = False

    def feed(self, data: bytes) -> list[Item]:
        """Parse ``data`` (the continuation of everything fed before) and return the completed items."""
        items: list[Item] = []
        self._pending += data
        while (newline := self._pending.find(b"\n", self._scanned)) >= 0:
            raw = bytes(self._pending[:newline])
            del self._pending[: newline + 1]
            self._scanned = 0
            if self._skip_line:
                self._skip_line = False
            elif len(raw) > MAX_LINE_BYTES:
                self._overlong(items)
            else:
                self._line(raw.decode("utf-8", errors="replace").strip(_LINE_JUNK), items)
        self._scanned = len(self._pending)
        if self._scanned > MAX_LINE_BYTES:
            if not self._skip_line:
                self._overlong(items)
                self._skip_line = True
            self._pending.clear()
            self._scanned = 0
        return items

    def _overlong(self, items: list[Item]) -> None:
        if self._body is None:
            items.append((FrameType.INVALID, f"line longer than {MAX_LINE_BYTES} bytes dropped"))
        else:
            self._drop_frame_body(items)

    def _line(self, text: str, items: list[Item]) -> None:
        if not text:
            return
        if self._body is None:
            self._outside_frame(text, items)
        else:
            self._inside_frame(self._body, text, items)

    def _outside_frame(self, text: str, items: list[Item]) -> None:
        if _LOG_LINE.match(text):
            items.append((FrameType.LOG, text))
        elif text.endswith(_FRAME_START):
            # noise without a newline of its own (boot output, garbage) may precede the marker
            prefix = text[: -len(_FRAME_START)].strip(_LINE_JUNK)
            if prefix:
                items.append((FrameType.LOG, prefix))
            self._start_frame()
        elif text.startswith("{"):
            self._bare_json(text, items)
        else:
            items.append((FrameType.LOG, text))

    def _inside_frame(self, body: list[str], text: str, items: list[Item]) -> None:
        if _LOG_LINE.match(text):
            items.append((FrameType.LOG, text))
        elif text.endswith(_FRAME_END):
            self._end_frame(body, items)
        elif text.endswith(_FRAME_START):
            # a new frame before this one ended: the master rebooted or lost bytes mid-frame
            items.append((FrameType.INVALID, f"frame without end marker: {_excerpt(''.join(body))}"))
            self._start_frame()
        elif not self._skip_frame:
            self._body_bytes += len(text.encode())
            if self._body_bytes > MAX_FRAME_BYTES:
                self._drop_frame_body(items)
            else:
                body.append(text)

    def _bare_json(self, text: str, items: list[Item]) -> None:
        """A line that starts like JSON: the object, then whatever log text was written after it.

        The firmware writes a status line and its newline as two UART writes (``uc2-stack.md`` §8
        item 6), so a log line can land between them: ``{"ota_rx":4096}[I][…] …``.
        """
        try:
            value, end = _DECODER.raw_decode(text)
        except json.JSONDecodeError as err:
            items.append((FrameType.INVALID, f"invalid JSON line ({err.msg}): {_excerpt(text)}"))
            return
        if not isinstance(value, dict):
            items.append((FrameType.INVALID, f"JSON line is not an object: {_excerpt(text)}"))
            return
        items.append((FrameType.LINE, value))
        rest = text[end:].strip(_LINE_JUNK)
        if rest:
            items.append((FrameType.LOG, rest))

    def _start_frame(self) -> None:
        self._body = []
        self._body_bytes = 0
        self._skip_frame = False

    def _drop_frame_body(self, items: list[Item]) -> None:
        if not self._skip_frame:
            items.append((FrameType.INVALID, f"frame larger than {MAX_FRAME_BYTES} bytes dropped"))
            self._skip_frame = True
        if self._body is not None:
            self._body.clear()

    def _end_frame(self, body: list[str], items: list[Item]) -> None:
        skipped = self._skip_frame
        self._body = None
        self._skip_frame = False
        if skipped:
            return
        text = "".join(body)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            items.append((FrameType.INVALID, f"invalid JSON in frame ({err.msg}): {_excerpt(text)}"))
            return
        if not isinstance(value, dict):
            items.append((FrameType.INVALID, f"frame is not a JSON object: {_excerpt(text)}"))
            return
        items.append((FrameType.FRAME, value))


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"
