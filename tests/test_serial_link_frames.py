"""The frame parser on what a real UART delivers: any split, merged writes, noise, oversize, bad JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ptypeer import frame, line

from uc2otad.links.frames import MAX_FRAME_BYTES, FrameParser, FrameType, Item

REPLY = {"state": {"pindef": "UC2_canopen_master"}, "qid": 7}
LOG = b"[I][CANopenModule.cpp:512] scan(): probing node 20\n"
IDF_LOG = b"\x1b[0;32mI (12345) UC2_CO: node 11 boot-up\x1b[0m\n"


def parse(*chunks: bytes) -> list[Item]:
    parser = FrameParser()
    return [item for chunk in chunks for item in parser.feed(chunk)]


def of_type(items: list[Item], kind: FrameType) -> list[Any]:
    return [payload for item_kind, payload in items if item_kind is kind]


def sized_frame(json_bytes: int) -> bytes:
    """A frame whose JSON text is exactly ``json_bytes`` long."""
    empty = len(json.dumps({"pad": ""}, separators=(",", ":")))
    return frame({"pad": "x" * (json_bytes - empty)})


def test_a_reply_split_into_single_bytes_is_one_frame() -> None:
    data = frame(REPLY)
    assert parse(*(data[i : i + 1] for i in range(len(data)))) == [(FrameType.FRAME, REPLY)]


def test_two_frames_and_a_line_in_one_write_come_out_in_order() -> None:
    items = parse(frame({"qid": 1, "a": 1}) + line({"ota_rx": 4096}) + frame({"qid": 2}))
    assert items == [
        (FrameType.FRAME, {"qid": 1, "a": 1}),
        (FrameType.LINE, {"ota_rx": 4096}),
        (FrameType.FRAME, {"qid": 2}),
    ]


def test_log_lines_inside_a_frame_are_passed_through_and_the_frame_survives() -> None:
    # older firmware printed "++", the JSON and "--" as separate writes: the log can land between
    items = parse(b"++\n" + LOG + json.dumps(REPLY).encode() + b"\n" + IDF_LOG + b"--\n")
    assert of_type(items, FrameType.FRAME) == [REPLY]
    assert len(of_type(items, FrameType.LOG)) == 2


def test_a_frame_body_over_several_lines_is_joined() -> None:
    assert of_type(parse(b'++\n{"scan":[],\n"qid":3}\n--\n'), FrameType.FRAME) == [{"scan": [], "qid": 3}]


def test_a_frame_of_8_kib_is_accepted_and_one_byte_more_is_dropped_without_losing_the_next() -> None:
    largest, too_large = sized_frame(MAX_FRAME_BYTES), sized_frame(MAX_FRAME_BYTES + 1)
    items = parse(largest + too_large + frame({"qid": 9}))
    frames = of_type(items, FrameType.FRAME)
    assert [len(json.dumps(value, separators=(",", ":"))) for value in frames] == [MAX_FRAME_BYTES, 9]
    assert of_type(items, FrameType.INVALID) == [f"frame larger than {MAX_FRAME_BYTES} bytes dropped"]


def test_an_endless_line_is_dropped_up_to_its_newline_and_memory_stays_bounded() -> None:
    parser = FrameParser()
    items = [item for _ in range(40) for item in parser.feed(b"\xaa" * 1024)]  # 40 KiB, no newline
    assert [kind for kind, _ in items] == [FrameType.INVALID]
    assert len(parser._pending) <= MAX_FRAME_BYTES + 1024
    assert parser.feed(b"tail of the noise\n" + frame(REPLY)) == [(FrameType.FRAME, REPLY)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'++\n{"qid":1,\n--\n', "invalid JSON in frame"),
        (b"++\n[1,2]\n--\n", "frame is not a JSON object"),
        (b'{"ota_rx":40\n', "invalid JSON line"),
        (b'++\n{"qid":1\n', "frame without end marker"),  # the master rebooted mid-frame
    ],
)
def test_unusable_input_is_reported_and_parsing_goes_on(data: bytes, reason: str) -> None:
    items = parse(data, frame(REPLY))
    invalid = of_type(items, FrameType.INVALID)
    assert len(invalid) == 1 and invalid[0].startswith(reason)
    assert of_type(items, FrameType.FRAME)[-1] == REPLY


def test_noise_before_a_frame_marker_and_nul_after_an_end_marker_do_not_hide_anything() -> None:
    # boot garbage without a newline of its own, and the NUL some builds send after "--\n"
    items = parse(
        b"\xff\x00ets garbage++\n" + json.dumps(REPLY).encode() + b"\n--\n\x00" + line({"ota_rx": 1})
    )
    assert of_type(items, FrameType.FRAME) == [REPLY]
    assert of_type(items, FrameType.LINE) == [{"ota_rx": 1}]


def test_a_log_line_written_between_a_status_line_and_its_newline_is_split_off() -> None:
    items = parse(b'{"ota_rx":4096}' + LOG)
    assert items == [(FrameType.LINE, {"ota_rx": 4096}), (FrameType.LOG, LOG.decode().strip())]


def test_crlf_line_ends_are_accepted() -> None:
    assert parse(frame(REPLY).replace(b"\n", b"\r\n")) == [(FrameType.FRAME, REPLY)]


def test_a_log_line_ending_in_plus_signs_does_not_open_a_frame() -> None:
    items = parse(b"[D][Counter.cpp:10] i++\n" + line({"ota_rx": 8}))
    assert of_type(items, FrameType.LINE) == [{"ota_rx": 8}]


@pytest.mark.parametrize("split", [0, 1], ids=["one write", "byte by byte"])
def test_the_nul_after_every_frame_opens_the_next_line_and_hides_nothing(split: int) -> None:
    # FW-main and FW-legacy write each frame as strlen + 1 bytes: its NUL comes first on the next line
    # (SerialProcess.cpp:283, 555 @063e5a6), before another frame, a bare status line or the log
    nul = b"\x00"
    data = (
        frame(REPLY) + nul + frame({"qid": 1, "success": 1}) + nul + line({"ota_rx": 4096})
        + frame({"ota_status": "flashing"}) + nul + LOG + frame({"qid": 2}) + nul + IDF_LOG
        + frame({"qid": 3}) + nul
    )  # fmt: skip
    chunks = [data[i : i + 1] for i in range(len(data))] if split else [data]
    items = parse(*chunks)
    assert [kind for kind, _ in items] == [
        FrameType.FRAME, FrameType.FRAME, FrameType.LINE, FrameType.FRAME, FrameType.LOG, FrameType.FRAME,
        FrameType.LOG, FrameType.FRAME,
    ]  # fmt: skip
    assert of_type(items, FrameType.FRAME) == [REPLY, {"qid": 1, "success": 1}, {"ota_status": "flashing"},
                                               {"qid": 2}, {"qid": 3}]  # fmt: skip
    assert of_type(items, FrameType.LINE) == [{"ota_rx": 4096}]
    assert of_type(items, FrameType.LOG) == [LOG.decode().strip(), IDF_LOG.decode().strip()]
