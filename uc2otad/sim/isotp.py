"""ISO-TP (ISO 15765-2) as the legacy firmware uses it on the raw bus, for the WiFi OTA command.

Written from ``uc2-stack.md`` §3.3 (FW-legacy ``CanIsoTp.cpp``): every frame of a message carries the
*receiver's* node id as its CAN identifier, and the receiver's flow control goes back on that same
identifier. Single frame ``0L``, first frame ``1L LL`` (12-bit length), consecutive frames ``2N``, flow
control ``30 BS STmin``; the firmware's receivers ask for STmin 2 ms.

Only what the legacy OTA exchange needs: messages up to 4095 bytes, one at a time per identifier, no
padding checks. Main constraint: the sender runs on the event loop, so STmin and the wait for flow
control are asyncio waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

#: protocol control information: the high nibble of byte 0
SINGLE = 0x0
FIRST = 0x1
CONSECUTIVE = 0x2
FLOW_CONTROL = 0x3
#: a single frame carries up to 7 bytes; the 12-bit length of a first frame allows 4095
MAX_SINGLE = 7
MAX_MESSAGE = 4095
#: flow status in the low nibble of a flow control frame
CONTINUE = 0x0
WAIT = 0x1
OVERFLOW = 0x2
#: the firmware's receivers: continue, no block limit, 2 ms between consecutive frames (§3.3)
RECEIVER_FLOW_CONTROL = bytes([FLOW_CONTROL << 4 | CONTINUE, 0, 2])
#: N_Bs, the sender's wait for flow control (ISO 15765-2: 1000 ms)
FLOW_CONTROL_TIMEOUT = 1.0


class IsoTpError(Exception):
    """A message could not be sent: no flow control, or the receiver reported an overflow."""


def frames_of(payload: bytes) -> list[bytes]:
    """The message as frames: one single frame, or a first frame and consecutive frames.

    :raises ValueError: longer than 4095 bytes
    """
    if len(payload) <= MAX_SINGLE:
        return [bytes([SINGLE << 4 | len(payload)]) + payload]
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"an ISO-TP message holds at most {MAX_MESSAGE} bytes, not {len(payload)}")
    frames = [bytes([FIRST << 4 | len(payload) >> 8, len(payload) & 0xFF]) + payload[:6]]
    for number, start in enumerate(range(6, len(payload), 7), start=1):
        frames.append(bytes([CONSECUTIVE << 4 | number % 16]) + payload[start : start + 7])
    return frames


def separation_seconds(st_min: int) -> float:
    """STmin as seconds: 0-127 ms, or 100-900 µs for 0xF1-0xF9; reserved values mean the maximum."""
    if st_min <= 0x7F:
        return st_min / 1000
    if 0xF1 <= st_min <= 0xF9:
        return (st_min - 0xF0) / 10000
    return 0.127


class Reassembler:
    """The receiving side for one identifier: frames in, complete messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._length = 0
        self._next = 0

    def feed(self, frame: bytes) -> tuple[bytes | None, bool]:
        """(the message this frame completed or None, whether to send flow control now)."""
        if not frame:
            return None, False
        kind = frame[0] >> 4
        if kind == SINGLE:
            length = frame[0] & 0x0F
            return (bytes(frame[1 : 1 + length]), False) if 0 < length <= MAX_SINGLE else (None, False)
        if kind == FIRST:
            self._length = (frame[0] & 0x0F) << 8 | frame[1]
            self._buffer = bytearray(frame[2:])
            self._next = 1
            return None, True
        if kind == CONSECUTIVE and self._length and frame[0] & 0x0F == self._next:
            self._buffer += frame[1:]
            self._next = (self._next + 1) % 16
            if len(self._buffer) >= self._length:
                message = bytes(self._buffer[: self._length])
                self._length = 0
                return message, False
        return None, False


class IsoTpSender:
    """Sends messages and takes the flow control frames meant for them.

    :param send: puts one frame with the given identifier on the bus
    """

    def __init__(self, send: Callable[[int, bytes], None]) -> None:
        self._send = send
        self._waiting: dict[int, asyncio.Queue[bytes]] = {}

    def on_frame(self, can_id: int, frame: bytes) -> bool:
        """Take a flow control frame for a message being sent to ``can_id``; False when it is none."""
        queue = self._waiting.get(can_id)
        if queue is None or not frame or frame[0] >> 4 != FLOW_CONTROL:
            return False
        queue.put_nowait(frame)
        return True

    async def send(self, can_id: int, payload: bytes, *, timeout: float = FLOW_CONTROL_TIMEOUT) -> None:  # noqa: ASYNC109
        """Send ``payload`` to the node ``can_id``, honouring its flow control.

        :raises IsoTpError: no flow control within ``timeout``, or the receiver has no room
        """
        frames = frames_of(payload)
        if len(frames) == 1:
            self._send(can_id, frames[0])
            return
        if can_id in self._waiting:
            raise IsoTpError(f"a message to node {can_id} is already being sent")
        control: asyncio.Queue[bytes] = asyncio.Queue()
        self._waiting[can_id] = control  # before the first frame: the answer may come at once
        try:
            self._send(can_id, frames[0])
            pending = frames[1:]
            while pending:
                block_size, gap = await _clear_to_send(control, can_id, timeout)
                batch, pending = (
                    (pending, []) if block_size == 0 else (pending[:block_size], pending[block_size:])
                )
                for frame in batch:
                    await asyncio.sleep(gap)
                    self._send(can_id, frame)
        finally:
            with contextlib.suppress(KeyError):
                del self._waiting[can_id]


async def _clear_to_send(control: asyncio.Queue[bytes], can_id: int, timeout: float) -> tuple[int, float]:  # noqa: ASYNC109
    """Wait for "continue" and return (block size, separation time); "wait" frames restart the wait."""
    while True:
        try:
            async with asyncio.timeout(timeout):
                frame = await control.get()
        except TimeoutError:
            raise IsoTpError(f"node {can_id} sent no flow control within {timeout}s") from None
        status = frame[0] & 0x0F
        if status == OVERFLOW:
            raise IsoTpError(f"node {can_id} has no room for the message")
        if status == CONTINUE:
            return (frame[1] if len(frame) > 1 else 0), separation_seconds(frame[2] if len(frame) > 2 else 0)
