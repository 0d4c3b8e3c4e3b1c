"""The simulated slave's SDO server, against python-canopen's client and against frames composed here.

python-canopen is an independent implementation of CiA 301: its expedited, segmented and block
transfers succeeding against our server is evidence that the server follows the standard, not just our
own reading of it. The raw frames below (built from CiA 301 §7.2.4 with their own few lines, not with
``uc2otad.sim.sdo_wire``) reach what a well-behaved client never does: a lost segment, a wrong CRC, a
client that falls silent.
"""

from __future__ import annotations

import asyncio
import binascii
import struct
import zlib
from dataclasses import replace

import pytest
from canopen.sdo.exceptions import SdoAbortedError
from espimage import build_app_image
from simcan import FAST, RawPeer, canopen_node, raw_peer, slave_on_bus

from uc2otad.sim.canopen_slave import CanOpenSlave
from uc2otad.sim.nodes import default_node

NODE = 11
REQUEST, RESPONSE = 0x600 + NODE, 0x580 + NODE
IMAGE_OBJECT, SIZE_OBJECT, CRC_OBJECT, STATUS_OBJECT = 0x2F00, 0x2F01, 0x2F02, 0x2F03


def initiate(command: int, index: int, sub: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack("<BHB", command, index, sub) + payload.ljust(4, b"\0")


def expedited_write(index: int, value: int) -> bytes:
    """ccs=1, 4 bytes, expedited, size indicated."""
    return initiate(0x23, index, 0, struct.pack("<I", value))


def abort_code(frame: bytes) -> int | None:
    return struct.unpack_from("<I", frame, 4)[0] if frame[0] == 0x80 else None


def segments(data: bytes) -> list[bytes]:
    """Block segments of 7 bytes, numbered 1… (one sub-block); the last one flagged."""
    pieces = [data[start : start + 7] for start in range(0, len(data), 7)]
    return [
        bytes([number | (0x80 if number == len(pieces) else 0)]) + piece.ljust(7, b"\0")
        for number, piece in enumerate(pieces, start=1)
    ]


def block_end(data: bytes, crc: int | None = None) -> bytes:
    unused = (7 - len(data) % 7) % 7
    crc = binascii.crc_hqx(data, 0) if crc is None else crc
    return bytes([0xC1 | unused << 2]) + struct.pack("<H", crc) + bytes(5)


async def test_canopen_reads_the_system_objects_expedited_and_segmented() -> None:
    spec = default_node(NODE)
    async with slave_on_bus(spec) as (_slave, bus), canopen_node(bus, NODE) as node:
        device_type = await asyncio.to_thread(node.sdo.upload, 0x1000, 0)  # 4 bytes: expedited
        version = await asyncio.to_thread(node.sdo.upload, 0x2500, 0)  # longer: segmented
        mac = await asyncio.to_thread(node.sdo.upload, 0x2509, 0)
    assert device_type == bytes(4)
    assert (version.decode(), mac.decode()) == (spec.version, spec.mac)


async def test_canopen_block_download_with_crc_delivers_an_image_that_the_slave_boots() -> None:
    image = build_app_image("esp32s3", version="v2099.2.0", segment_sizes=(0x2000, 0x100, 0x800, 0x1000))
    async with slave_on_bus() as (slave, bus), canopen_node(bus, NODE) as node:

        def download() -> None:
            node.sdo.download(CRC_OBJECT, 0, struct.pack("<I", zlib.crc32(image)))
            node.sdo.download(SIZE_OBJECT, 0, struct.pack("<I", len(image)))
            with node.sdo.open(IMAGE_OBJECT, 0, "wb", size=len(image), block_transfer=True) as stream:
                stream.write(image)

        await asyncio.to_thread(download)
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image is not None)
        assert slave.running_image == image
        version = await asyncio.to_thread(node.sdo.upload, 0x2500, 0)
    assert version == b"v2099.2.0"


@pytest.mark.parametrize(
    ("index", "code"),
    [(0x2500, 0x0601_0002), (0x2F03, 0x0601_0002), (0x2777, 0x0602_0000)],
    ids=["version is read-only", "status is read-only", "no such object"],
)
async def test_writes_the_dictionary_refuses_are_aborted_with_the_code_canopen_reads(
    index: int, code: int
) -> None:
    async with slave_on_bus() as (_slave, bus), canopen_node(bus, NODE) as node:
        with pytest.raises(SdoAbortedError) as caught:
            await asyncio.to_thread(node.sdo.download, index, 0, b"\x01")
    assert caught.value.code == code


async def test_a_lost_segment_is_named_in_the_acknowledgement_and_the_repeat_completes_the_image() -> None:
    image = b"\xe9" + bytes(range(69))  # an app's first byte, and 10 segments in all
    async with slave_on_bus() as (slave, bus), raw_peer(bus) as peer:
        peer.send(REQUEST, expedited_write(SIZE_OBJECT, len(image)))
        assert (await peer.next(RESPONSE))[0] == 0x60
        peer.send(REQUEST, initiate(0xC6, IMAGE_OBJECT, 0, struct.pack("<I", len(image))))  # CRC, size
        answer = await peer.next(RESPONSE)
        assert (answer[0] & 0xE4, answer[4]) == (0xA4, 127)  # block download, CRC supported, blksize 127
        sent = segments(image)
        for frame in sent[:3] + sent[4:]:  # segment 4 is lost on the way
            peer.send(REQUEST, frame)
        ack = await peer.next(RESPONSE)
        assert (ack[0], ack[1]) == (0xA2, 3)  # three in order; the client starts over after them
        for number, frame in enumerate(segments(image[21:]), start=1):
            peer.send(REQUEST, frame)
            assert frame[0] & 0x7F == number
        assert (await peer.next(RESPONSE))[:2] == bytes([0xA2, 7])
        peer.send(REQUEST, block_end(image))
        assert (await peer.next(RESPONSE))[0] == 0xA1
        async with asyncio.timeout(2):
            await slave.wait_until(lambda booted: booted.running_image is not None)
    assert slave.running_image == image


async def test_a_wrong_crc_at_the_end_aborts_and_nothing_is_committed() -> None:
    image = b"\xe9" + bytes(range(40))
    async with slave_on_bus() as (slave, bus), raw_peer(bus) as peer:
        peer.send(REQUEST, expedited_write(SIZE_OBJECT, len(image)))
        await peer.next(RESPONSE)
        peer.send(REQUEST, initiate(0xC6, IMAGE_OBJECT, 0, struct.pack("<I", len(image))))
        await peer.next(RESPONSE)
        for frame in segments(image):
            peer.send(REQUEST, frame)
        await peer.next(RESPONSE)
        peer.send(REQUEST, block_end(image, crc=binascii.crc_hqx(image, 0) ^ 0x0101))
        assert abort_code(await peer.next(RESPONSE)) == 0x0504_0004  # CRC error
        peer.send(REQUEST, initiate(0x40, STATUS_OBJECT))
        assert (await peer.next(RESPONSE))[4] == 1  # still "receiving": the watchdog will reset it
    assert slave.running_image is None


async def test_a_client_that_falls_silent_mid_transfer_is_aborted_by_the_server_timeout() -> None:
    async with slave_on_bus() as (_slave, bus), raw_peer(bus) as peer:
        peer.send(REQUEST, expedited_write(SIZE_OBJECT, 100))
        await peer.next(RESPONSE)
        peer.send(REQUEST, initiate(0xC6, IMAGE_OBJECT, 0, struct.pack("<I", 100)))
        await peer.next(RESPONSE)
        peer.send(REQUEST, segments(bytes(14))[0])
        # first CANopenNode's sub-block timeout, 0.7 of the SDO timeout, acknowledges the one segment that
        # came (CO_SDOserver.c:338, 1186-1198 @063e5a6); the SDO timeout itself is not reset by that
        # acknowledgement (:1468) and aborts the transfer
        ack = await peer.next(RESPONSE, seconds=FAST.sdo_server_timeout + 1)
        assert (ack[0], ack[1], ack[2]) == (0xA2, 1, 127)
        abort = await peer.next(RESPONSE, seconds=FAST.sdo_server_timeout + 1)
    assert abort_code(abort) == 0x0504_0000  # SDO protocol timed out
    assert struct.unpack_from("<HB", abort, 1) == (IMAGE_OBJECT, 0)


async def test_a_segment_with_the_wrong_toggle_bit_aborts_a_segmented_download() -> None:
    async with slave_on_bus() as (_slave, bus), raw_peer(bus) as peer:
        peer.send(REQUEST, initiate(0x21, CRC_OBJECT, 0, struct.pack("<I", 4)))  # segmented, size 4
        assert (await peer.next(RESPONSE))[0] == 0x60
        peer.send(REQUEST, bytes([0x10 | (3 << 1) | 1]) + b"\x01\x02\x03\x04" + bytes(3))  # toggle 1
        assert abort_code(await peer.next(RESPONSE)) == 0x0503_0000


# ---- CANopenNode's sub-block handling, as FW-main's slaves run it ---------------------------------------
# (lib/ESP32_CanOpenNode/src/301/CO_SDOserver.c @063e5a6 of youseetoo/uc2-esp32)

#: an app's first byte, and 10 segments in one sub-block
SMALL_IMAGE = b"\xe9" + bytes(range(69))


async def begin_block_download(peer: RawPeer, image: bytes) -> None:
    """The size write and the block download's initiate, answered."""
    peer.send(REQUEST, expedited_write(SIZE_OBJECT, len(image)))
    assert (await peer.next(RESPONSE))[0] == 0x60
    peer.send(REQUEST, initiate(0xC6, IMAGE_OBJECT, 0, struct.pack("<I", len(image))))
    assert (await peer.next(RESPONSE))[0] & 0xE0 == 0xA0


async def finish(peer: RawPeer, slave: CanOpenSlave, image: bytes) -> None:
    """The end frame, its answer, and the node booting the image."""
    peer.send(REQUEST, block_end(image))
    assert (await peer.next(RESPONSE))[0] == 0xA1
    async with asyncio.timeout(2):
        await slave.wait_until(lambda booted: booted.running_image is not None)
    assert slave.running_image == image


async def test_a_gap_in_the_sequence_is_acknowledged_at_once() -> None:
    # a segment out of sequence breaks the sub-block there and then (CO_SDOserver.c:105-110): the
    # acknowledgement does not wait for the end of the client's sub-block, whose rest is ignored
    sent = segments(SMALL_IMAGE)
    async with slave_on_bus() as (slave, bus), raw_peer(bus) as peer:
        await begin_block_download(peer, SMALL_IMAGE)
        for frame in sent[:3] + sent[4:5]:  # 1, 2, 3, then 5: segment 4 is lost
            peer.send(REQUEST, frame)
        assert (await peer.next(RESPONSE))[:3] == bytes([0xA2, 3, 127])
        for frame in sent[5:]:  # the rest of the broken sub-block, the last flag included: ignored
            peer.send(REQUEST, frame)
        for frame in segments(SMALL_IMAGE[21:]):  # the client starts over after segment 3
            peer.send(REQUEST, frame)
        assert (await peer.next(RESPONSE))[:2] == bytes([0xA2, 7])
        await finish(peer, slave, SMALL_IMAGE)


async def test_a_lost_last_segment_is_acknowledged_by_the_sub_block_timeout() -> None:
    # no segment for 0.7 of the SDO timeout (CO_SDOserver.c:338, 1186-1198): the server acknowledges
    # what came, and the client sends the rest; the transfer is not aborted
    # (the SDO timeout still runs from the last segment: 1.5 s leaves the client 0.45 s to go on; nothing
    # reaches the flash meanwhile, so the OTA watchdog must not strike first)
    sent = segments(SMALL_IMAGE)
    timing = replace(FAST, sdo_server_timeout=1.5, ota_idle_reset=5.0)
    async with slave_on_bus(timing=timing) as (slave, bus), raw_peer(bus) as peer:
        await begin_block_download(peer, SMALL_IMAGE)
        started = asyncio.get_running_loop().time()
        for frame in sent[:-1]:  # the last segment (10, flagged last) is lost
            peer.send(REQUEST, frame)
        assert (await peer.next(RESPONSE, seconds=timing.sdo_server_timeout))[:3] == bytes([0xA2, 9, 127])
        assert asyncio.get_running_loop().time() - started >= 0.7 * timing.sdo_server_timeout
        peer.send(REQUEST, bytes([0x81]) + sent[-1][1:])  # segment 10 again, now number 1 of its sub-block
        assert (await peer.next(RESPONSE))[:2] == bytes([0xA2, 1])
        await finish(peer, slave, SMALL_IMAGE)


async def test_a_stray_sequence_number_before_a_sub_block_is_ignored_not_aborted() -> None:
    # before the first segment of a sub-block anything but number 1 is ignored (CO_SDOserver.c:105-107);
    # CANopenNode's block download never aborts for a sequence number
    async with slave_on_bus() as (slave, bus), raw_peer(bus) as peer:
        await begin_block_download(peer, SMALL_IMAGE)
        peer.send(REQUEST, bytes([0x00]) + bytes(7))  # number 0
        peer.send(REQUEST, bytes([0x7F]) + bytes(7))  # number 127
        for frame in segments(SMALL_IMAGE):
            peer.send(REQUEST, frame)
        assert (await peer.next(RESPONSE))[:2] == bytes([0xA2, 10])
        await finish(peer, slave, SMALL_IMAGE)


async def test_more_data_than_indicated_is_length_too_high_and_too_little_too_low() -> None:
    # CANopenNode checks the size at the end before the CRC (CO_SDOserver.c:483-490): 0x06070012 for
    # more data than the initiate indicated, 0x06070013 for less
    for told, code in ((len(SMALL_IMAGE) - 1, 0x0607_0012), (len(SMALL_IMAGE) + 1, 0x0607_0013)):
        async with slave_on_bus() as (_slave, bus), raw_peer(bus) as peer:
            peer.send(REQUEST, expedited_write(SIZE_OBJECT, told))
            await peer.next(RESPONSE)
            peer.send(REQUEST, initiate(0xC6, IMAGE_OBJECT, 0, struct.pack("<I", told)))
            await peer.next(RESPONSE)
            for frame in segments(SMALL_IMAGE):
                peer.send(REQUEST, frame)
            await peer.next(RESPONSE)
            peer.send(REQUEST, block_end(SMALL_IMAGE))
            assert abort_code(await peer.next(RESPONSE)) == code


@pytest.mark.parametrize("index", [IMAGE_OBJECT, SIZE_OBJECT])
async def test_the_image_and_size_objects_cannot_be_read_back(index: int) -> None:
    # their OD extensions have no read function (CanOpenOTA.cpp:378, 390 @063e5a6), so CANopenNode's
    # OD_readDisabled answers "unsupported access" (CO_ODinterface.c:126-131, 249-250)
    async with slave_on_bus() as (_slave, bus), canopen_node(bus, NODE) as node:
        await asyncio.to_thread(node.sdo.download, SIZE_OBJECT, 0, struct.pack("<I", 1000))
        with pytest.raises(SdoAbortedError) as caught:
            await asyncio.to_thread(node.sdo.upload, index, 0)
    assert caught.value.code == 0x0601_0000
