"""The virtual CAN bus: frame lengths of the rate model, pacing, and microscopes that never cross-talk.

Frame lengths are checked against bit counts worked out by hand from ISO 11898-1 (the frame's fields,
CRC-15 and stuffing) and against the standard's bounds; pacing only against lower bounds, which a slow
machine cannot break.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from uc2otad.sim.can_bus import SimCanBus
from uc2otad.sim.can_rate import PACE_SLICE, CanRate, frame_bits

#: 8 data bytes, no stuff bit: 47 bits of frame (interframe space included) + 64 of data
UNSTUFFED_8_BYTES = 111
#: the standard's worst case for 8 data bytes: 111 + floor((34 + 64 - 1) / 4) stuff bits
WORST_CASE_8_BYTES = 135


def test_a_frame_of_zeros_needs_a_stuff_bit_after_every_five() -> None:
    # SOF, id 0, RTR, IDE, r0, DLC 0 and the CRC of all that (0) are 34 zero bits: 6 stuff bits, then
    # the 13 recessive bits of delimiters, end of frame and interframe space
    assert frame_bits(0x000, b"") == 34 + 6 + 13


@pytest.mark.parametrize(
    "data", [bytes(8), b"\xff" * 8, b"\x55" * 8, bytes(range(8)), b"\xe9\x05\x02\x2f" * 2]
)
def test_eight_byte_frames_lie_between_no_stuffing_and_the_worst_case(data: bytes) -> None:
    assert UNSTUFFED_8_BYTES <= frame_bits(0x60B, data) <= WORST_CASE_8_BYTES


def test_firmware_full_of_zeros_is_slower_on_the_wire_than_mixed_bytes() -> None:
    assert frame_bits(0x60B, bytes(8)) > frame_bits(0x60B, b"\x55" * 8)


def test_frames_the_uc2_bus_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="standard"):
        frame_bits(0x800, b"")
    with pytest.raises(ValueError, match="8 bytes"):
        frame_bits(0x60B, bytes(9))


async def test_a_paced_sender_takes_at_least_the_wire_time_it_booked() -> None:
    bus = SimCanBus(CanRate(bitrate=500_000, paced=True))
    sender = bus.open_port([], wait_for_wire=True)
    frames = 400
    data = bytes(range(8))

    def send_all() -> float:
        started = time.monotonic()
        for _ in range(frames):
            sender.send(0x60B, data)
        return time.monotonic() - started

    try:
        elapsed = await asyncio.to_thread(send_all)
    finally:
        await sender.close()
    assert bus.clock.frames == frames
    assert bus.clock.busy_seconds == pytest.approx(frames * frame_bits(0x60B, data) / 500_000)
    assert elapsed >= bus.clock.busy_seconds - PACE_SLICE


async def test_an_unpaced_bus_books_no_wire_time() -> None:
    bus = SimCanBus()
    sender = bus.open_port([])
    sender.send(0x60B, bytes(8))
    await sender.close()
    assert (bus.clock.frames, bus.clock.busy_seconds) == (0, 0.0)


async def test_two_microscopes_never_hear_each_other_and_filters_hold() -> None:
    first, second = SimCanBus(), SimCanBus()
    heard: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def listener(name: str) -> object:
        return lambda message: (
            None if message.is_error_frame else heard.put_nowait((name, message.arbitration_id))
        )

    ports = [
        first.open_port([listener("first")], filters=[0x58B], loop=loop),
        second.open_port([listener("second")], loop=loop),
        first.open_port([]),
    ]
    try:
        ports[2].send(0x60B, b"\x40")  # not in the first listener's filter
        ports[2].send(0x58B, b"\x60")
        async with asyncio.timeout(2):
            assert await heard.get() == ("first", 0x58B)
    finally:
        for port in ports:
            await port.close()
    assert heard.empty()
    assert first.channel != second.channel
