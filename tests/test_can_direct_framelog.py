"""The session's frames, logged with python-can's ``can.Logger`` (asc or blf), decode as an SDO block
download whose reassembled bytes have the image's CRC.

A third participant on the simulated bus logs every frame of a direct-link update, as a CAN logger on
the real bus (or ``candump``) would; the log is read back with ``can.LogReader`` and decoded by the few
lines of CiA 301 (§7.2.4.3.9-§7.2.4.3.11, block download) in this file — neither with the link's code nor
with the simulator's. What it shows is what a bus analyser would: the CRC written to 0x2F02, the size to
0x2F01, then the block download into 0x2F00, in the order FW-main's master writes them
(``OtaBinaryReceive.cpp:77-92`` @063e5a6 of youseetoo/uc2-esp32), and data that reassemble to the image.
The decoder honours each sub-block acknowledgement's ``ackseq``: segments after it were not taken and
come again in the next sub-block, so a lost segment changes the frames but not the bytes. A lost frame
comes from a python-can interface of this file (copied from ``test_can_direct_link.py``), registered by
name for the test. Nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import can
import pytest
from espimage import build_app_image
from lossy_bus import LOSSY
from simcan import FAST, WAIT, slave_on_bus

from uc2otad.links.can_direct import CanDirectLink, CanSettings
from uc2otad.sim.canopen_slave import CanOpenSlave

NODE = 11
REQUEST, RESPONSE = 0x600 + NODE, 0x580 + NODE
IMAGE_OBJECT, SIZE_OBJECT, CRC_OBJECT = 0x2F00, 0x2F01, 0x2F02
#: a few sub-blocks of 127 segments (889 bytes each), and a last segment that is not full
IMAGE = build_app_image("esp32s3", version="v2099.3.0", segment_sizes=(0x1000, 0x100, 0x400, 0x800))
TIMING = replace(FAST, heartbeat_interval=0.05)
#: the link's timeouts, shrunk; the size write keeps room for the erase
LINK: dict[str, Any] = {
    "sdo_timeout": 0.2,
    "size_write_timeout": 2.0,
    "restart_timeout": 0.5,
    "block_timeout": 0.5,
    "ota_settle": 0.0,
    "reachable_timeout": 0.3,
    "discovery_wait": 0.2,
}
#: seconds the log's reader thread blocks per read: bounds how long stopping it waits
LOG_READ_TIMEOUT = 0.05


# ---- the session, logged ------------------------------------------------------------------------------


@asynccontextmanager
async def logged_session(
    path: Path, interface: str = "virtual"
) -> AsyncIterator[tuple[CanOpenSlave, CanDirectLink]]:
    """Node 11 on a bus of its own, the link on the same channel, and ``can.Logger(path)`` hearing both.

    The log is complete when the block leaves: it waits until the logger has had the node's answer to
    the end of the block download (or fails), then stops its reader thread before the writer closes.
    """
    transfer_ended = threading.Event()

    def watch(message: can.Message) -> None:  # after the logger: what it saw, it has written
        if message.arbitration_id == RESPONSE and message.data[:1] == b"\xa1":
            transfer_ended.set()

    async with slave_on_bus(None, TIMING) as (slave, bus):
        raw = bus.raw_bus()
        logger = await asyncio.to_thread(can.Logger, path)  # opens the file: not on the loop
        notifier = can.Notifier(raw, [logger, watch], timeout=LOG_READ_TIMEOUT)
        try:
            link = CanDirectLink(CanSettings(interface=interface, channel=bus.channel, **LINK))
            async with link:
                yield slave, link
                assert await asyncio.to_thread(transfer_ended.wait, WAIT), "no end of the block download"
        finally:
            await asyncio.to_thread(notifier.stop)  # joins the reader thread, then stops the logger
            raw.shutdown()


async def booted_with(slave: CanOpenSlave, image: bytes) -> None:
    async with asyncio.timeout(WAIT):
        await slave.wait_until(lambda booted: booted.running_image == image)


async def read_log(path: Path) -> list[can.Message]:
    def read() -> list[can.Message]:
        with can.LogReader(path) as reader:
            return [message for message in reader if not message.is_error_frame]

    return await asyncio.to_thread(read)


# ---- CiA 301, the few lines a bus analyser needs ---------------------------------------------------------


def crc16_xmodem(data: bytes) -> int:
    """CRC-16-CCITT as CiA 301 §7.2.4.3.16 uses it for block transfers: polynomial 0x1021, initial 0,
    no reflection, no final XOR (the XMODEM variant)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = (crc << 1 ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


@dataclass
class SubBlock:
    """One sub-block as the log shows it: the segments on the bus, and the server's acknowledgement."""

    #: (sequence number, last-segment flag, 7 data bytes) in bus order, repeats and strays included
    segments: list[tuple[int, bool, bytes]] = field(default_factory=list)
    #: the acknowledgement's ackseq: segments 1..ackseq were taken, the rest comes again
    ackseq: int = 0
    #: the block size the server asks for next
    next_blksize: int = 0


@dataclass
class Session:
    """What the decoder found for one node: expedited writes, and one block download."""

    #: (index, value) of each expedited download the server confirmed, in bus order
    writes: list[tuple[int, int]] = field(default_factory=list)
    #: the objects written, in bus order: expedited writes and the block download's initiate
    order: list[int] = field(default_factory=list)
    block_index: int | None = None
    #: the size the block initiate indicated
    block_size: int | None = None
    #: the block size the server asked for at the initiate
    first_blksize: int = 0
    sub_blocks: list[SubBlock] = field(default_factory=list)
    #: the end: bytes of the last segment that are no data, and the client's CRC-16
    unused: int | None = None
    end_crc: int | None = None
    #: the server confirmed the end
    confirmed: bool = False

    @property
    def segments_on_bus(self) -> int:
        return sum(len(sub_block.segments) for sub_block in self.sub_blocks)

    def data(self) -> bytes:
        """The bytes the server took: per sub-block, segments 1..ackseq in sequence (a repeat or a
        segment after a gap was not taken); the last one cut by the end's count of unused bytes."""
        taken: list[bytes] = []
        for sub_block in self.sub_blocks:
            expected = 1
            for number, _last, payload in sub_block.segments:
                if number == expected and expected <= sub_block.ackseq:
                    taken.append(payload)
                    expected += 1
            assert expected == sub_block.ackseq + 1, (
                f"ackseq {sub_block.ackseq} names segments not on the bus"
            )
        data = b"".join(taken)
        assert self.unused is not None, "no end of the block download"
        return data[: len(data) - self.unused]

    def last_flag_taken(self) -> bool:
        """The segment flagged last was among those the final acknowledgement took."""
        final = self.sub_blocks[-1]
        return any(last and number == final.ackseq for number, last, _ in final.segments)


def decode(messages: Iterable[can.Message], node: int) -> Session:
    """The SDO traffic with ``node`` (client 0x600 + id, server 0x580 + id), CiA 301 §7.2.4."""
    request, response = 0x600 + node, 0x580 + node
    session = Session()
    state = "idle"  # idle | initiating | sub-block | ending | done
    pending: tuple[int, int] | None = None  # an expedited write waiting for its confirmation
    sub_block = SubBlock()
    for message in messages:
        data = bytes(message.data)
        if message.arbitration_id == request and len(data) == 8:
            if state == "sub-block":  # inside a sub-block every client frame is a segment
                sub_block.segments.append((data[0] & 0x7F, bool(data[0] & 0x80), data[1:8]))
                continue
            ccs = data[0] >> 5
            index = struct.unpack_from("<H", data, 1)[0]
            if ccs == 1 and data[0] & 0x02:  # download initiate, expedited
                unused = (data[0] >> 2) & 0x03 if data[0] & 0x01 else 0
                pending = (index, int.from_bytes(data[4 : 8 - unused], "little"))
            elif ccs == 6 and data[0] & 0x01 == 0 and state == "idle":  # block download initiate
                session.block_index = index
                session.block_size = struct.unpack_from("<I", data, 4)[0] if data[0] & 0x02 else None
                session.order.append(index)
                state = "initiating"
            elif ccs == 6 and data[0] & 0x03 == 1 and state == "ending":  # block download end
                session.unused = (data[0] >> 2) & 0x07
                session.end_crc = struct.unpack_from("<H", data, 1)[0]
        elif message.arbitration_id == response and len(data) == 8:
            scs = data[0] >> 5
            if data[0] == 0x80:
                code = struct.unpack_from("<I", data, 4)[0]
                raise AssertionError(f"the node aborted with 0x{code:08X} in state {state}")
            if scs == 3 and pending is not None:  # the expedited write is confirmed
                session.writes.append(pending)
                session.order.append(pending[0])
                pending = None
            elif scs == 5 and data[0] & 0x03 == 0 and state == "initiating":
                session.first_blksize = data[4]
                state = "sub-block"
            elif scs == 5 and data[0] & 0x03 == 2 and state == "sub-block":  # sub-block acknowledgement
                sub_block.ackseq, sub_block.next_blksize = data[1], data[2]
                session.sub_blocks.append(sub_block)
                sub_block = SubBlock()
                state = "ending" if session.last_flag_taken() else "sub-block"
            elif scs == 5 and data[0] & 0x03 == 1 and state == "ending":
                session.confirmed = True
                state = "done"
    return session


def assert_is_the_image(session: Session, image: bytes) -> None:
    data = session.data()
    assert session.confirmed
    assert len(data) == len(image) == session.block_size
    assert dict(session.writes)[SIZE_OBJECT] == len(image)
    assert zlib.crc32(data) == dict(session.writes)[CRC_OBJECT]
    assert session.end_crc == crc16_xmodem(data)
    assert session.order[:3] == [CRC_OBJECT, SIZE_OBJECT, IMAGE_OBJECT]  # OtaBinaryReceive.cpp:77-92
    assert session.block_index == IMAGE_OBJECT
    assert data == image


# ---- the tests ------------------------------------------------------------------------------------------


def test_the_decoders_crc16_is_xmodem() -> None:
    # the catalogue's check value of CRC-16/XMODEM, and one bit of difference shows
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert crc16_xmodem(b"123456788") != 0x31C3


@pytest.mark.parametrize("suffix", [".asc", ".blf"])
async def test_the_logged_session_is_crc_size_and_a_block_download_of_the_image(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"session{suffix}"
    async with logged_session(path) as (slave, link):
        await link.stream_ota(NODE, IMAGE)
        await booted_with(slave, IMAGE)
    session = decode(await read_log(path), NODE)
    assert_is_the_image(session, IMAGE)
    full = -(-len(IMAGE) // 7)  # segments: nothing was lost, nothing sent twice
    assert session.segments_on_bus == full
    assert [sub_block.ackseq for sub_block in session.sub_blocks[:-1]] == [session.first_blksize] * (
        len(session.sub_blocks) - 1
    )


@pytest.mark.parametrize("suffix", [".asc", ".blf"])
async def test_a_lost_segment_shows_as_a_short_acknowledgement_and_its_repeat(
    tmp_path: Path, suffix: str, lossy: dict[str, Any]
) -> None:
    # the fifth segment of the first sub-block (sequence number 5, not flagged last) never reaches the bus
    lossy["send"] = lambda msg: msg.arbitration_id == REQUEST and msg.data[0] == 0x05
    path = tmp_path / f"lossy{suffix}"
    async with logged_session(path, interface=LOSSY) as (slave, link):
        await link.stream_ota(NODE, IMAGE)
        await booted_with(slave, IMAGE)
    assert lossy["send"] is None  # it was lost
    session = decode(await read_log(path), NODE)
    first = session.sub_blocks[0]
    assert first.ackseq == 4  # taken in sequence up to the gap
    assert 5 not in [number for number, _, _ in first.segments]
    assert session.segments_on_bus > -(-len(IMAGE) // 7) - 1  # the segments after the gap came again
    assert_is_the_image(session, IMAGE)
