"""The simulated slave's OTA objects, reboots, reports and faults, seen from the CAN bus.

A python-canopen client does what the master does (``uc2-stack.md`` §3.1: CRC, size, block download,
read 0x2F03/0x2F05), so every expectation here is about frames on the bus and the image the slave boots.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from dataclasses import replace
from typing import Any

import pytest
from canopen.sdo.exceptions import SdoAbortedError, SdoCommunicationError
from espimage import build_app_image
from simcan import FAST, RawPeer, canopen_node, raw_peer, slave_on_bus

from uc2otad.sim.app_desc import module_build
from uc2otad.sim.canopen_slave import HEARTBEAT_OPERATIONAL, CanOpenSlave
from uc2otad.sim.nodes import NodeFaults, default_node
from uc2otad.sim.profiles import UNVERSIONED, Profile

NODE = 11
IMAGE_OBJECT, SIZE_OBJECT, CRC_OBJECT, STATUS_OBJECT, ERROR_OBJECT = 0x2F00, 0x2F01, 0x2F02, 0x2F03, 0x2F05
NEW_VERSION = "v2099.3.0"
IMAGE = build_app_image("esp32s3", version=NEW_VERSION, date="Nov 27 2026", time="12:00:00",
                        segment_sizes=(0x1000, 0x100, 0x400, 0x800))  # fmt: skip


def stream(node: Any, image: bytes, *, crc: int | None = None) -> None:
    """The master's sequence, blocking (run it in a thread)."""
    node.sdo.download(CRC_OBJECT, 0, struct.pack("<I", zlib.crc32(image) if crc is None else crc))
    node.sdo.download(SIZE_OBJECT, 0, struct.pack("<I", len(image)))
    with node.sdo.open(IMAGE_OBJECT, 0, "wb", size=len(image), block_transfer=True) as sink:
        sink.write(image)


async def read_number(node: Any, index: int) -> int:
    return int.from_bytes(await asyncio.to_thread(node.sdo.upload, index, 0), "little")


async def boot_up(peer: RawPeer) -> bytes:
    """The next frame on the node's NMT error-control identifier that is not an operational heartbeat
    (CANopen slaves beat every second, ``OD.c:38`` @063e5a6): the boot-up message, if all is well."""
    while (frame := await peer.next(0x700 + NODE)) == HEARTBEAT_OPERATIONAL:
        pass
    return frame


async def booted_with(slave: CanOpenSlave, image: bytes) -> None:
    async with asyncio.timeout(2):
        await slave.wait_until(lambda booted: booted.running_image == image)


# the build (0x2508) is the CANopen module's compile time, never the app descriptor's "Nov 27 2026
# 12:00:00" (CANopenModule.cpp:1250-1251 @063e5a6): module_build(IMAGE)
@pytest.mark.parametrize(
    ("profile", "version"), [(Profile.FW_2026_09, NEW_VERSION), (Profile.FW_MAIN_2026_07, UNVERSIONED)]
)
async def test_after_an_update_the_slave_reports_the_new_image_in_its_style(
    profile: Profile, version: str
) -> None:
    spec = replace(default_node(NODE), profile=profile)
    async with slave_on_bus(spec) as (slave, bus), raw_peer(bus) as peer, canopen_node(bus, NODE) as node:
        await asyncio.to_thread(stream, node, IMAGE)
        await booted_with(slave, IMAGE)
        assert await boot_up(peer) == b"\x00"  # the boot-up message
        reported = [
            (await asyncio.to_thread(node.sdo.upload, index, 0)).decode() for index in (0x2500, 0x2508)
        ]
    assert reported == [version, module_build(IMAGE)]


async def test_an_image_larger_than_the_partition_is_refused_at_the_size_write() -> None:
    async with slave_on_bus() as (_slave, bus), canopen_node(bus, NODE) as node:
        with pytest.raises(SdoAbortedError):
            await asyncio.to_thread(node.sdo.download, SIZE_OBJECT, 0, struct.pack("<I", 0x140001))
        assert (await read_number(node, STATUS_OBJECT), await read_number(node, ERROR_OBJECT)) == (0xFF, 7)


def image_only(node: Any, image: bytes) -> None:
    """The block download of ``image`` into 0x2F00 without the CRC and size writes, blocking."""
    with node.sdo.open(IMAGE_OBJECT, 0, "wb", size=len(image), block_transfer=True) as sink:
        sink.write(image)


async def test_image_bytes_without_a_size_are_refused_at_the_first_data_and_change_nothing() -> None:
    # onOtaWriteChunk refuses data while no OTA runs with ODR_DEV_INCOMPAT and no setError
    # (CanOpenOTA.cpp:238-241 @063e5a6), CANopenNode's abort 0x06040047 (CO_ODinterface.c:275); error 6
    # "size 0" is defined (CanOpenOTA.h:38) but FW-main never sets it
    async with slave_on_bus() as (_slave, bus), raw_peer(bus) as peer, canopen_node(bus, NODE) as node:
        with pytest.raises(SdoAbortedError):
            await asyncio.to_thread(image_only, node, IMAGE)
        assert (await peer.next(0x580 + NODE))[0] == 0xA4  # the download begins: the object is writable
        refusal = await peer.next(0x580 + NODE)  # instead of the first sub-block's acknowledgement
        assert refusal[0] == 0x80 and struct.unpack_from("<I", refusal, 4)[0] == 0x0604_0047
        assert (await read_number(node, STATUS_OBJECT), await read_number(node, ERROR_OBJECT)) == (0, 0)


@pytest.mark.parametrize(
    ("image", "faults", "error"),
    [
        (IMAGE, NodeFaults(corrupt_offset=5000), 4),  # the flash read-back finds a CRC mismatch
        (b"\x00" + IMAGE[1:], NodeFaults(), 5),  # ESP-IDF refuses an image without the 0xE9 header
    ],
    ids=["crc mismatch", "not an app image"],
)
async def test_an_image_the_slave_refuses_at_the_end_is_aborted_and_it_keeps_running_its_old_one(
    image: bytes, faults: NodeFaults, error: int
) -> None:
    spec = replace(default_node(NODE), faults=faults)
    async with slave_on_bus(spec) as (slave, bus), canopen_node(bus, NODE) as node:
        with pytest.raises(SdoAbortedError):
            await asyncio.to_thread(stream, node, image)
        assert (await read_number(node, STATUS_OBJECT), await read_number(node, ERROR_OBJECT)) == (
            0xFF,
            error,
        )
    assert (slave.running_image, slave.boots) == (None, 1)


async def test_the_reboot_command_takes_the_node_off_the_bus_until_its_boot_up_message() -> None:
    async with slave_on_bus() as (slave, bus), raw_peer(bus) as peer, canopen_node(bus, NODE) as node:
        await asyncio.to_thread(node.sdo.download, 0x2507, 0, b"\x01")
        assert await boot_up(peer) == b"\x00"
        assert slave.boots == 2 and slave.reachable


async def test_a_half_finished_ota_is_reset_by_the_idle_watchdog() -> None:
    async with slave_on_bus() as (slave, bus), canopen_node(bus, NODE) as node:
        await asyncio.to_thread(node.sdo.download, SIZE_OBJECT, 0, struct.pack("<I", 1000))
        assert await read_number(node, STATUS_OBJECT) == 1
        async with asyncio.timeout(FAST.ota_idle_reset + 1):
            await slave.wait_until(lambda idle: idle.ota_status == 0)
        assert await read_number(node, STATUS_OBJECT) == 0


async def test_the_idle_window_starts_after_the_erase_not_at_the_size_write() -> None:
    # FW-main stamps the watchdog's last activity after esp_ota_begin has erased the partition
    # (CanOpenOTA.cpp:202-225 @063e5a6): an erase longer than the idle window must not have reset the OTA
    # when the image follows the size write's answer at once
    spec = replace(default_node(NODE), profile=Profile.FW_MAIN_2026_07)
    timing = replace(FAST, partition_erase_time=0.6, ota_idle_reset=0.3)
    async with (
        slave_on_bus(spec, timing) as (slave, bus),
        canopen_node(bus, NODE, response_timeout=timing.partition_erase_time + 1) as node,
    ):
        await asyncio.to_thread(stream, node, IMAGE)
        await booted_with(slave, IMAGE)


async def test_status_reads_do_not_keep_a_half_finished_ota_alive() -> None:
    # only the size write and flash writes of image data feed the watchdog (CanOpenOTA.cpp:225, 273
    # @063e5a6): a client that keeps reading 0x2F03 still sees the OTA reset, to idle without an error
    async with slave_on_bus() as (_slave, bus), canopen_node(bus, NODE) as node:
        await asyncio.to_thread(node.sdo.download, CRC_OBJECT, 0, struct.pack("<I", zlib.crc32(IMAGE)))
        await asyncio.to_thread(node.sdo.download, SIZE_OBJECT, 0, struct.pack("<I", len(IMAGE)))
        reads = 0
        async with asyncio.timeout(FAST.ota_idle_reset + FAST.ota_watchdog_period + 1):
            while await read_number(node, STATUS_OBJECT) != 0:
                reads += 1
        assert reads > 1 and await read_number(node, ERROR_OBJECT) == 0
        assert await read_number(node, 0x2F04) == 0


async def test_the_watchdog_waits_for_its_window_and_then_strikes() -> None:
    # the reset comes at the watchdog's first look (every 2 s, CanOpenOTA.cpp:104 @063e5a6) after more
    # than the idle window (:110) passed since the size write's answer: neither before, nor much after
    timing = replace(FAST, ota_idle_reset=0.4, ota_watchdog_period=0.25)
    async with slave_on_bus(timing=timing) as (slave, bus), canopen_node(bus, NODE) as node:
        loop = asyncio.get_running_loop()
        asked = loop.time()  # the slave's stamp comes after this and before the answer
        await asyncio.to_thread(node.sdo.download, SIZE_OBJECT, 0, struct.pack("<I", 1000))
        answered = loop.time()
        async with asyncio.timeout(timing.ota_idle_reset + timing.ota_watchdog_period + 1):
            await slave.wait_until(lambda idle: idle.ota_status == 0)
        reset = loop.time()
    assert reset - asked > timing.ota_idle_reset
    assert reset - answered <= timing.ota_idle_reset + timing.ota_watchdog_period + 0.2  # 0.2: scheduling


async def test_on_july_firmware_only_the_first_size_write_after_a_boot_outlasts_a_short_timeout() -> None:
    # esp_ota_begin erases before the size write is answered (CanOpenOTA.cpp:202-208 @063e5a6)
    spec = replace(default_node(NODE), profile=Profile.FW_MAIN_2026_07)
    short = FAST.partition_erase_time / 4  # the July master's 250 ms (CANopenModule.h:61) against the erase
    async with (
        slave_on_bus(spec) as (slave, bus),
        raw_peer(bus) as peer,
        canopen_node(bus, NODE, response_timeout=short) as node,
    ):
        with pytest.raises(SdoCommunicationError):
            await asyncio.to_thread(node.sdo.download, SIZE_OBJECT, 0, struct.pack("<I", len(IMAGE)))
        late = await peer.next(0x580 + NODE, seconds=FAST.partition_erase_time + 1)
        assert late[:3] == bytes([0x60]) + struct.pack("<H", SIZE_OBJECT)  # answered once the erase was done
        # python-canopen's client got it too, in its own thread: taken out, it cannot pass for the answer to
        # the next request
        assert await asyncio.to_thread(node.sdo.responses.get, True, 2.0) == late
        await asyncio.to_thread(stream, node, IMAGE)  # the same short timeout: this erase is quick
        await booted_with(slave, IMAGE)
