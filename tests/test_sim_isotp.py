"""The legacy firmware's ISO-TP as the simulator speaks it (``uc2-stack.md`` §3.3), frame by frame.

The frames are compared with the layout the spec gives (single frame ``0L``, first frame ``1L LL``,
consecutive ``2N``, flow control ``30 BS STmin``), written out here, not produced by the code under test.
"""

from __future__ import annotations

import asyncio

import pytest

from uc2otad.sim.isotp import IsoTpError, IsoTpSender, Reassembler, frames_of, separation_seconds

#: the OTA command's size: type, ssid[32], password[64], timeout_ms
OTA_START_LENGTH = 101


def test_a_short_message_is_one_single_frame() -> None:
    assert frames_of(b"\x61\x00\x0b\x7f\x00\x00\x6f") == [b"\x07\x61\x00\x0b\x7f\x00\x00\x6f"]


def test_a_long_message_is_a_first_frame_and_numbered_consecutive_frames_that_reassemble() -> None:
    payload = bytes(range(OTA_START_LENGTH))
    frames = frames_of(payload)
    assert frames[0] == bytes([0x10, OTA_START_LENGTH]) + payload[:6]
    assert [frame[0] for frame in frames[1:]] == [0x20 | number % 16 for number in range(1, len(frames))]
    assert all(len(frame) <= 8 for frame in frames)
    receiver = Reassembler()
    results = [receiver.feed(frame) for frame in frames]
    assert results[0] == (None, True)  # the first frame asks for flow control
    assert results[-1] == (payload, False)


def test_a_consecutive_frame_out_of_order_is_not_taken() -> None:
    frames = frames_of(bytes(20))
    receiver = Reassembler()
    receiver.feed(frames[0])
    assert receiver.feed(frames[2]) == (None, False)
    assert receiver.feed(frames[1]) == (None, False)  # frame 1 fits; the message is still short of 20
    assert receiver.feed(frames[2])[0] == bytes(20)


@pytest.mark.parametrize(("st_min", "seconds"), [(0, 0.0), (2, 0.002), (0x7F, 0.127), (0xF3, 0.0003)])
def test_separation_times(st_min: int, seconds: float) -> None:
    assert separation_seconds(st_min) == pytest.approx(seconds)


async def test_the_sender_waits_for_flow_control_and_honours_its_block_size() -> None:
    sent: list[bytes] = []
    sender = IsoTpSender(lambda _can_id, frame: sent.append(frame))
    sending = asyncio.create_task(sender.send(11, bytes(40)))  # first frame + 5 consecutive frames
    await asyncio.sleep(0)
    assert len(sent) == 1  # only the first frame before flow control
    assert sender.on_frame(11, bytes([0x30, 2, 0]))  # two frames, then wait
    for _ in range(20):  # loop turns, not time: a sender that did not wait would use them to go on
        await asyncio.sleep(0)
    assert len(sent) == 3
    assert sender.on_frame(11, bytes([0x30, 0, 0]))  # the rest
    await sending
    assert len(sent) == 6


async def test_no_flow_control_or_an_overflow_fails_the_send() -> None:
    sender = IsoTpSender(lambda _can_id, _frame: None)
    with pytest.raises(IsoTpError, match="no flow control"):
        await sender.send(11, bytes(40), timeout=0.05)
    sending = asyncio.create_task(sender.send(12, bytes(40)))
    await asyncio.sleep(0)
    sender.on_frame(12, bytes([0x32, 0, 0]))
    with pytest.raises(IsoTpError, match="no room"):
        await sending
