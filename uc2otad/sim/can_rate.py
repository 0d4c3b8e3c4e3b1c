"""How long a CAN frame occupies the wire, and a clock that makes the virtual bus that slow.

The UC2 bus runs at 500 kbit/s with 11-bit identifiers (``uc2-stack.md`` §3.1). A frame's length is
counted bit by bit as ISO 11898-1 lays it out — SOF, identifier, RTR, IDE, r0, DLC, data, CRC-15, then
the unstuffed CRC delimiter, ACK, end of frame and interframe space — with the stuff bits its actual
content needs, so a firmware image full of 0x00 and 0xFF runs at its real, slower pace.

Main constraint: the model is off by default (tests stay fast). When it is on, the thread that streams
sleeps for the frames it sends; senders on the event loop only book their frames' time, since they may
not sleep, and the streaming thread then waits for it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

#: the UC2 firmware's bit rate (``TWAI_TIMING_CONFIG_500KBITS()``, §3.1)
DEFAULT_BITRATE = 500_000
#: the largest standard identifier
MAX_STANDARD_ID = 0x7FF
#: CRC-15 of CAN: x^15 + x^14 + x^10 + x^8 + x^7 + x^4 + x^3 + 1
_CRC15_POLY = 0x4599
#: after the CRC: delimiter 1, ACK slot 1, ACK delimiter 1, end of frame 7, interframe space 3
_TAIL_BITS = 13
#: SOF, 11 identifier bits, RTR, IDE, r0 and the 4 DLC bits
_HEADER_BITS = 19
#: a sender sleeps once it is this far ahead of the wire; a sleep ends ~0.1 ms late, so sleeping per
#: 250 µs frame would make the bus a third slower than modelled, per 5 ms it costs about 2 %
PACE_SLICE = 0.005


@dataclass(frozen=True)
class CanRate:
    """The CAN-rate model: off (frames are instant) unless ``paced``."""

    bitrate: int = DEFAULT_BITRATE
    paced: bool = False

    def __post_init__(self) -> None:
        if self.bitrate <= 0:
            raise ValueError(f"bit rate must be positive, not {self.bitrate}")

    def frame_seconds(self, can_id: int, data: bytes) -> float:
        """Time on the wire of a data frame with ``can_id`` and ``data``."""
        return frame_bits(can_id, data) / self.bitrate


def frame_bits(can_id: int, data: bytes) -> int:
    """Bits of a standard data frame on the wire, stuff bits and interframe space included.

    :raises ValueError: an extended identifier (the UC2 bus has none) or more than 8 data bytes
    """
    if not 0 <= can_id <= MAX_STANDARD_ID:
        raise ValueError(f"not a standard CAN identifier: 0x{can_id:X}")
    if len(data) > 8:
        raise ValueError(f"a classic CAN frame carries at most 8 bytes, not {len(data)}")
    # SOF is 0, RTR, IDE and r0 are 0 for a standard data frame: the header is the id and the DLC
    header = (can_id << 7) | len(data)
    length = _HEADER_BITS + 8 * len(data)
    bits = format((header << (8 * len(data))) | int.from_bytes(data, "big"), f"0{length}b")
    stuffed_part = bits + format(_crc15(bits), "015b")
    return len(stuffed_part) + _stuff_bits(stuffed_part) + _TAIL_BITS


def _crc15(bits: str) -> int:
    crc = 0
    for bit in bits:
        feedback = (bit == "1") != bool(crc & 0x4000)
        crc = (crc << 1) & 0x7FFF
        if feedback:
            crc ^= _CRC15_POLY
    return crc


def _stuff_bits(bits: str) -> int:
    """After five equal bits the sender inserts the opposite one, which starts the next run."""
    count = 0
    run = 1
    previous = bits[0]
    for bit in bits[1:]:
        if bit != previous:
            previous, run = bit, 1
            continue
        run += 1
        if run == 5:
            count += 1
            previous, run = ("1" if bit == "0" else "0"), 1
    return count


class BusClock:
    """When the shared wire is next free; every participant's frames book their time on it.

    Thread-safe: the master's SDO client sends from a worker thread, the slaves from the event loop.
    """

    def __init__(self, rate: CanRate) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._free_at = 0.0
        #: seconds of wire time booked so far, for benchmarks
        self.busy_seconds = 0.0
        self.frames = 0

    def book(self, can_id: int, data: bytes) -> float:
        """Put a frame on the wire after those already booked; seconds until it has been sent.

        Zero or less means it is through already (the wire was idle).
        """
        duration = self.rate.frame_seconds(can_id, data)
        with self._lock:
            now = time.monotonic()
            self._free_at = max(now, self._free_at) + duration
            self.busy_seconds += duration
            self.frames += 1
            return self._free_at - now
