"""The firmware's side of the serial JSON protocol: how the master reads commands and writes answers.

Written from ``shared/specs/uc2-stack.md`` §2 (and the FW-main sources it cites), never from
``uc2otad.links``, so that a misreading on the client side cannot be mirrored here:

- input: bytes outside a JSON object are ignored; ``{`` starts one, braces are counted (without regard
  to strings, as the firmware counts them) into an 8 KiB buffer, and at balance the text is parsed —
  the newline is a convention, not a delimiter (``SerialProcess.cpp::loop``);
- output: replies as ``++\\n<compact JSON>\\n--\\n`` and a NUL; streaming status as a bare JSON line;
  the debug log as ``[I][file.cpp:NN] …`` lines (Arduino) and ``I (ms) TAG: …`` lines (ESP-IDF);
- an int result of a handler becomes ``{"qid": <result>, "success": 1|0|-1}``; an unknown task is
  answered with the int result -1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

#: ``static char serialInputBuffer[8192]``: an object fills at most 8191 bytes (the last holds the NUL)
INPUT_BUFFER_BYTES = 8192
#: the firmware's answer to an object that does not parse
PARSE_ERROR = "Failed to parse JSON"
#: its answer to an object longer than the input buffer
OVERFLOW_ERROR = "Input buffer overflow"
#: what follows every framed reply: the C string's terminator, written with it (see :func:`reply_frame`)
FRAME_TERMINATOR = b"\0"
#: ``jsonProcessor``'s answer to a task it does not know: ``serialize(-1)``, the int reply
#: ``{"qid":-1,"success":-1}`` (``SerialProcess.cpp:831`` @063e5a6; ``:720`` @14fa3e3)
UNKNOWN_TASK_RESULT = -1

#: what a classic ESP32 (the CAN HAT) prints from ROM after a software reset, at the ROM's 115200 baud
ROM_BOOT_BANNER = (
    b"ets Jul 29 2019 12:21:46\r\n\r\n"
    b"rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
    b"configsip: 0, SPIWP:0xee\r\n"
    b"clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00\r\n"
    b"mode:DIO, clock div:1\r\n"
    b"load:0x3fff0030,len:1344\r\n"
    b"load:0x40078000,len:13964\r\n"
    b"load:0x40080400,len:3600\r\n"
    b"entry 0x400805f0\r\n"
)
#: the ROM loader's baud rate (40 MHz crystal)
ROM_BAUD = 115200


@dataclass(frozen=True)
class Received:
    """One complete object read from the host: a command, or the problem the firmware reports."""

    command: dict[str, Any] | None = None
    #: why the bytes are no command; the firmware answers ``{"error": problem}``
    problem: str | None = None
    #: where the object ended in the bytes fed: what follows it is the host's next input
    end: int = 0


class CommandReader:
    """The firmware's brace-counting input parser, fed with whatever bytes arrive."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._inside = False
        self._depth = 0

    def feed(self, data: bytes) -> list[Received]:
        received: list[Received] = []
        for index, byte in enumerate(data):
            if byte == ord("{"):
                if not self._inside:
                    self._inside = True
                    self._buffer.clear()
                    self._depth = 0
                self._depth += 1
            if not self._inside:
                continue
            if len(self._buffer) >= INPUT_BUFFER_BYTES - 1:
                self._inside = False
                self._buffer.clear()
                received.append(Received(problem=OVERFLOW_ERROR))
                continue
            self._buffer.append(byte)
            if byte == ord("}"):
                self._depth -= 1
                if self._depth == 0:
                    self._inside = False
                    received.append(replace(_parse(bytes(self._buffer)), end=index + 1))
        return received


def _parse(text: bytes) -> Received:
    try:
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Received(problem=PARSE_ERROR)
    if not isinstance(value, dict):
        return Received(problem=PARSE_ERROR)
    return Received(command=value)


def compact(value: Any) -> bytes:
    """JSON as ``cJSON_PrintUnformatted`` writes it: no spaces."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def reply_frame(value: Any) -> bytes:
    """A framed reply, and the NUL that ends the firmware's buffer: both writers of frames queue
    ``strlen(buffer) + 1`` bytes ("Include newline", but the byte after ``--\\n`` is the terminator):
    ``safeSendJsonString`` and ``serialize(int)`` (``SerialProcess.cpp:283, 555`` @063e5a6; the same at
    ``:263, 509`` @14fa3e3), and ``serialOutputTask`` writes ``msg.length`` bytes (``:119`` @063e5a6).
    The NUL arrives at the start of whatever the master writes next."""
    return b"++\n" + compact(value) + b"\n--\n" + FRAME_TERMINATOR


def bare_line(value: Any) -> bytes:
    """An unframed status line, as the streaming receiver writes ``{"ota_rx":N}``."""
    return compact(value) + b"\n"


def int_reply(result: int) -> dict[str, Any]:
    """``SerialProcess::serialize(int)``: the handler's result in "qid", its sign in "success"."""
    return {"qid": result, "success": 1 if result > 0 else -1 if result < 0 else 0}


def request_qid(command: dict[str, Any]) -> int:
    """The request's qid as handlers read it (``cJsonTool::getJsonInt``): 0 when absent or not a number."""
    qid = command.get("qid")
    return qid if isinstance(qid, int) and not isinstance(qid, bool) else 0


def arduino_log(level: str, source: str, line: int, message: str) -> bytes:
    """A ``log_x`` line of the Arduino core: ``[I][CANopenModule.cpp:512] scan(): …``."""
    return f"[{level}][{source}:{line}] {message}\n".encode()


def idf_log(level: str, uptime_ms: int, tag: str, message: str) -> bytes:
    """An ``ESP_LOGx`` line of ESP-IDF: ``I (12345) UC2_CO: …``."""
    return f"{level} ({uptime_ms}) {tag}: {message}\n".encode()


def garbled(data: bytes) -> bytes:
    """What a receiver at the wrong baud rate makes of ``data``: high bytes, never a newline."""
    return bytes(0x80 | ((byte * 37 + 11) & 0x7F) for byte in data)
