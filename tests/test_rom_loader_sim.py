"""The simulated ESP32 and ESP32-S3 serial bootloaders against the real esptool, run as a subprocess.

Issue 9's acceptance for the ROM-loader simulator: esptool detects the chip, writes plain and
compressed through the ROM (``--no-stub``) and through its flasher stub, verifies (MD5), reads, erases
and leaves; the flash keeps its contents across connections; after a flash the board boots the app
written and reports its version and build. Faults — a connection dropped mid-write, a wrong MD5, no SYNC —
each end in esptool's failure, never in a false success.

Where esptool never sends what needs checking (a bad checksum, a runaway frame, commands before
SYNC), the test speaks SLIP with its own few lines, written from ``esptool-rom.md``, not with the
simulator's codec.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from espimage import build_app_image, build_merged_image

from uc2otad.errors import ConfigError
from uc2otad.links.serial_hat import SerialHatLink
from uc2otad.sim.config import SimConfig, load_config
from uc2otad.sim.esp_boot import BootResult
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.rom_loader import LoaderFaults, LoaderState, RomLoader, RomLoaderConfig

if importlib.util.find_spec("esptool") is None:
    pytest.skip("esptool is not installed (pip install -e .[test])", allow_module_level=True)

#: seconds for one esptool run: interpreter start (~0.4 s), a small image, and its reconnect pause (1 s)
ESPTOOL_TIMEOUT = 15.0
CHIPS = ("esp32", "esp32s3")
APP_OFFSET = 0x10000
ERASED = b"\xff"
#: esptool's own words for what happened
VERIFIED = "Hash of data verified."
MD5_MISMATCH = "MD5 of file does not match data in flash!"
LOST_CONNECTION = "Lost connection, retrying..."
NO_CONNECTION = "Failed to connect"


@dataclass(frozen=True)
class EsptoolRun:
    returncode: int
    output: str


async def esptool(loader: RomLoader, *args: str, after: str = "no-reset") -> EsptoolRun:
    """Run ``python -m esptool`` against the loader and wait until the loader has seen the host leave."""
    connection = ("--port", loader.url, "--before", "no-reset", "--after", after)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "esptool", *connection, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(ESPTOOL_TIMEOUT):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    await loader.wait_idle()
    assert process.returncode is not None
    return EsptoolRun(process.returncode, output.decode(errors="replace"))


async def write_file(path: Path, data: bytes) -> Path:
    await asyncio.to_thread(path.write_bytes, data)
    return path


def large_app(chip: str, version: str) -> bytes:
    """About 100 KB of random-filled segments: several blocks even after compression."""
    return build_app_image(chip, version=version, segment_sizes=(0x400, 0x100, 0x8000, 0x10000))


def detected_chip(output: str) -> str:
    found = re.search(r"Detecting chip type\.\.\. (\S+)", output)
    assert found is not None, output
    return found.group(1)


# --------------------------------------------------------------------------- detect, write, verify


@pytest.mark.parametrize(("chip", "name"), [("esp32", "ESP32"), ("esp32s3", "ESP32-S3")])
async def test_esptool_detects_the_chip_and_reads_its_mac(chip: str, name: str) -> None:
    async with RomLoader(RomLoaderConfig(chip=chip, mac="24:0a:c4:12:34:56")) as loader:
        run = await esptool(loader, "--no-stub", "read-mac")
    assert run.returncode == 0, run.output
    assert detected_chip(run.output) == name
    assert re.search(r"^MAC:\s+24:0a:c4:12:34:56$", run.output, re.MULTILINE), run.output
    assert "Crystal frequency:  40MHz" in run.output


async def test_esptool_refuses_to_treat_an_esp32s3_as_the_hats_esp32() -> None:
    async with RomLoader(RomLoaderConfig(chip="esp32s3")) as loader:
        run = await esptool(loader, "--chip", "esp32", "--no-stub", "read-mac")
    assert run.returncode != 0
    assert "This chip is ESP32-S3, not ESP32" in run.output


@pytest.mark.parametrize("compress", ["--compress", "--no-compress"])
@pytest.mark.parametrize("stub", [False, True], ids=["rom", "stub"])
@pytest.mark.parametrize("chip", CHIPS)
async def test_a_merged_image_lands_byte_for_byte_and_boots(
    tmp_path: Path, chip: str, stub: bool, compress: str
) -> None:
    app = build_app_image(chip, version="v2026.9.1")
    image = build_merged_image(chip, app=app)
    path = await write_file(tmp_path / f"{chip}_merged.bin", image)
    booted: list[BootResult] = []
    async with RomLoader(RomLoaderConfig(chip=chip)) as loader:
        loader.on_boot = booted.append
        loader_args = () if stub else ("--no-stub",)
        run = await esptool(loader, *loader_args, "write-flash", compress, "0x0", str(path))

        assert run.returncode == 0, run.output
        assert VERIFIED in run.output
        assert loader.flash.read(0, len(image)) == image
        write = loader.writes[-1]
        assert (write.offset, write.stub, write.compressed) == (0, stub, compress == "--compress")
        assert loader.counters.commands["SPI_FLASH_MD5"] == 1
        assert loader.counters.stub_starts == (1 if stub else 0)
    # the host left: the board reset and boots the app it was given, as after esptool's hard reset
    [result] = booted
    assert (result.ok, result.changed, result.app) == (True, True, app)
    assert result.version == "v2026.9.1"


@pytest.mark.parametrize("chip", CHIPS)
async def test_the_products_app_image_command_keeps_the_bootloader_and_the_board_reports_the_new_app(
    tmp_path: Path, chip: str
) -> None:
    """uc2-stack.md §6: an app image goes to 0x10000 with flash mode, frequency and size kept."""
    app = build_app_image(chip, version="v2026.9.2", date="Oct  2 2026", time="10:11:12")
    path = await write_file(tmp_path / "app.bin", app)
    booted: list[BootResult] = []
    async with RomLoader(RomLoaderConfig(chip=chip)) as loader:
        loader.on_boot = booted.append
        bootloader_before = loader.flash.read(loader.chip.bootloader_offset, 0x100)
        keep = ("--flash-mode", "keep", "--flash-freq", "keep", "--flash-size", "keep")
        run = await esptool(loader, "--chip", chip, "write-flash", *keep, hex(APP_OFFSET), str(path))

        assert run.returncode == 0, run.output
        assert loader.flash.read(APP_OFFSET, len(app)) == app
        assert loader.flash.read(loader.chip.bootloader_offset, 0x100) == bootloader_before
    [result] = booted
    assert (result.ok, result.version, result.build) == (True, "v2026.9.2", "Oct  2 2026 10:11:12")


async def test_the_flash_keeps_its_contents_across_connections(tmp_path: Path) -> None:
    app = build_app_image("esp32", version="v2026.9.3")
    app_path = await write_file(tmp_path / "app.bin", app)
    other_path = await write_file(tmp_path / "other.bin", build_app_image("esp32", version="v2026.9.4"))
    async with RomLoader() as loader:
        assert (await esptool(loader, "write-flash", hex(APP_OFFSET), str(app_path))).returncode == 0

        # a second connection: the app is still there, and a look for another image finds it absent
        run = await esptool(
            loader, "verify-flash", hex(APP_OFFSET), str(app_path), "0x30000", str(other_path)
        )
        assert run.returncode != 0
        verdicts = re.findall(r"Verification (successful|failed) \(digest (matched|mismatch)\)", run.output)
        assert verdicts == [("successful", "matched"), ("failed", "mismatch")], run.output
        assert loader.counters.sessions == 2


@pytest.mark.parametrize("stub", [False, True], ids=["rom", "stub"])
async def test_read_flash_returns_what_the_flash_holds(tmp_path: Path, stub: bool) -> None:
    image = build_merged_image("esp32")
    length = 0x1400 if stub else 0x200  # the ROM reads 64 bytes per command
    async with RomLoader(RomLoaderConfig(flash_image=((0, image),))) as loader:
        loader_args = () if stub else ("--no-stub",)
        out = tmp_path / "read.bin"
        run = await esptool(loader, *loader_args, "read-flash", "0x1000", hex(length), str(out))
    assert run.returncode == 0, run.output
    assert await asyncio.to_thread(out.read_bytes) == image[0x1000 : 0x1000 + length]


# --------------------------------------------------------------------------- erase, leave


async def test_erase_flash_through_the_stub_leaves_a_board_that_boot_loops() -> None:
    async with RomLoader(RomLoaderConfig(flash_image=((0, build_merged_image("esp32")),))) as loader:
        assert loader.bootable().ok
        run = await esptool(loader, "erase-flash")
        assert run.returncode == 0, run.output
        assert loader.flash.read(0, loader.flash.size) == ERASED * loader.flash.size
    assert loader.last_boot is not None
    assert (loader.last_boot.ok, loader.last_boot.reason) == (False, "invalid header: 0xffffffff")


async def test_erase_region_through_the_rom_erases_only_that_region() -> None:
    image = build_merged_image("esp32")
    async with RomLoader(RomLoaderConfig(flash_image=((0, image),))) as loader:
        refused = await esptool(loader, "--no-stub", "erase-flash")  # esptool knows the ROM cannot
        assert refused.returncode != 0
        assert "ESP32 ROM does not support function erase_flash" in refused.output
        assert loader.flash.read(0, len(image)) == image

        run = await esptool(loader, "--no-stub", "erase-region", "0x8000", "0x1000")
        assert run.returncode == 0, run.output
        expected = image[:0x8000] + ERASED * 0x1000 + image[0x9000:]
        assert loader.flash.read(0, len(image)) == expected


async def test_soft_reset_leaves_the_loader_and_boots_while_connected(tmp_path: Path) -> None:
    app = build_app_image("esp32", version="v2026.9.5")
    path = await write_file(tmp_path / "app.bin", app)
    states: list[LoaderState] = []
    async with RomLoader() as loader:
        loader.on_boot = lambda result: states.append(loader.state)
        run = await esptool(
            loader, "--no-stub", "write-flash", hex(APP_OFFSET), str(path), after="soft-reset"
        )
        assert run.returncode == 0, run.output
        assert "Soft resetting..." in run.output
        # booted once, by FLASH_END "run user code" — the end of the connection found the app running
        assert (loader.boots, states, loader.state) == (1, [LoaderState.RUNNING], LoaderState.RUNNING)
        assert loader.last_boot is not None and loader.last_boot.app == app


async def test_without_boot_on_close_the_board_waits_in_the_loader_until_reset(tmp_path: Path) -> None:
    app = build_app_image("esp32", version="v2026.9.6")
    path = await write_file(tmp_path / "app.bin", app)
    async with RomLoader(RomLoaderConfig(boot_on_close=False)) as loader:
        run = await esptool(loader, "write-flash", hex(APP_OFFSET), str(path))
        assert run.returncode == 0, run.output
        # the stub was told to reboot ("--after no-reset"): the board is in the ROM's download mode
        assert (loader.boots, loader.state) == (0, LoaderState.WAITING_FOR_SYNC)

        await loader.reset()
        assert (loader.boots, loader.state) == (1, LoaderState.RUNNING)
        assert loader.last_boot is not None and loader.last_boot.app == app


# --------------------------------------------------------------------------- what the board boots


async def test_an_app_for_another_chip_is_written_but_does_not_boot(tmp_path: Path) -> None:
    app = build_app_image("esp32s3")
    path = await write_file(tmp_path / "app.bin", app)
    async with RomLoader(RomLoaderConfig(chip="esp32")) as loader:
        run = await esptool(loader, "--no-stub", "write-flash", hex(APP_OFFSET), str(path))
        assert run.returncode == 0, run.output  # esptool only notes the mismatch away from 0x1000
        assert loader.flash.read(APP_OFFSET, len(app)) == app
    assert loader.last_boot is not None
    assert (loader.last_boot.ok, loader.last_boot.reason) == (False, "mismatch chip ID, expected 0, found 9")


async def test_a_merged_image_in_the_s3_layout_boot_loops_on_the_esp32_hat(tmp_path: Path) -> None:
    """uc2-stack.md §6: the classic ESP32 looks for its bootloader at 0x1000, not 0x0."""
    image = build_merged_image("esp32s3", app=build_app_image("esp32"))
    path = await write_file(tmp_path / "wrong_merged.bin", image)
    async with RomLoader(RomLoaderConfig(chip="esp32")) as loader:
        run = await esptool(loader, "--no-stub", "write-flash", "0x0", str(path))
        assert run.returncode == 0, run.output
    assert loader.last_boot is not None
    assert (loader.last_boot.ok, loader.last_boot.reason) == (False, "invalid header: 0xffffffff")


# --------------------------------------------------------------------------- faults


async def test_no_sync_answer_means_esptool_cannot_connect() -> None:
    async with RomLoader(faults=LoaderFaults(ignore_sync=True)) as loader:
        run = await esptool(loader, "--connect-attempts", "1", "read-mac")
    assert run.returncode != 0
    assert NO_CONNECTION in run.output
    assert loader.counters.ignored_syncs > 0
    assert set(loader.counters.commands) == {"SYNC"}


@pytest.mark.parametrize("stub", [False, True], ids=["rom", "stub"])
async def test_a_wrong_md5_answer_fails_the_write(tmp_path: Path, stub: bool) -> None:
    app = build_app_image("esp32")
    path = await write_file(tmp_path / "app.bin", app)
    async with RomLoader(faults=LoaderFaults(corrupt_md5=True)) as loader:
        loader_args = () if stub else ("--no-stub",)
        run = await esptool(loader, *loader_args, "write-flash", hex(APP_OFFSET), str(path))
    assert run.returncode != 0
    assert MD5_MISMATCH in run.output
    assert VERIFIED not in run.output


@pytest.mark.parametrize(
    ("stub", "compress"), [(False, "--no-compress"), (True, "--compress")], ids=["rom", "stub"]
)
async def test_a_connection_dropped_mid_write_fails_esptool(
    tmp_path: Path, stub: bool, compress: str
) -> None:
    app = large_app("esp32", "v2026.9.7")
    path = await write_file(tmp_path / "app.bin", app)
    async with RomLoader(faults=LoaderFaults(drop_after_data_bytes=0x4000)) as loader:
        loader_args = () if stub else ("--no-stub",)
        run = await esptool(loader, *loader_args, "write-flash", compress, hex(APP_OFFSET), str(path))

        assert run.returncode != 0
        assert LOST_CONNECTION in run.output  # esptool reconnected once, and the cable broke again
        assert VERIFIED not in run.output
        assert loader.counters.dropped == 2
        assert loader.flash.read(APP_OFFSET, len(app)) != app
        assert loader.writes[-1].written < loader.writes[-1].size


async def test_esptool_rewrites_the_image_when_the_connection_drops_once(tmp_path: Path) -> None:
    app = large_app("esp32", "v2026.9.8")
    path = await write_file(tmp_path / "app.bin", app)
    async with RomLoader(faults=LoaderFaults(drop_after_data_bytes=0x4000)) as loader:
        downloads: list[None] = []

        def heal_on_reconnect() -> None:
            downloads.append(None)
            if len(downloads) == 2:  # esptool is back after the drop: the cable works again
                loader.faults = LoaderFaults()

        loader.on_download = heal_on_reconnect
        run = await esptool(loader, "write-flash", hex(APP_OFFSET), str(path))

        assert run.returncode == 0, run.output
        assert LOST_CONNECTION in run.output
        assert VERIFIED in run.output
        assert (loader.counters.dropped, loader.counters.sessions) == (1, 2)
        assert loader.flash.read(APP_OFFSET, len(app)) == app


# --------------------------------------------------------------------------- the wire, by hand


def slip(payload: bytes) -> bytes:
    return b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def command(op: int, data: bytes = b"", chk: int = 0) -> bytes:
    return slip(struct.pack("<BBHI", 0, op, len(data), chk) + data)


SYNC = command(0x08, b"\x07\x07\x12\x20" + b"\x55" * 32)
READ_REG = 0x0A
FLASH_BEGIN = 0x02
FLASH_DATA = 0x03


@dataclass(frozen=True)
class Reply:
    op: int
    value: int
    body: bytes


class RawHost:
    """A host that speaks SLIP with a few lines of its own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))
        await self.writer.drain()

    async def reply(self) -> Reply:
        async with asyncio.timeout(2):
            while not (frame := (await self.reader.readuntil(b"\xc0"))[:-1]):
                pass  # the opening delimiter
        packet = frame.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
        direction, op, length, value = struct.unpack_from("<BBHI", packet)
        assert (direction, length) == (1, len(packet) - 8)
        return Reply(op, value, packet[8:])

    async def sync(self) -> None:
        await self.send(SYNC)
        assert [(await self.reply()).op for _ in range(8)] == [0x08] * 8


@asynccontextmanager
async def raw_host(loader: RomLoader) -> AsyncIterator[RawHost]:
    reader, writer = await asyncio.open_connection("127.0.0.1", loader.port)
    try:
        yield RawHost(reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()


def checksum(data: bytes) -> int:
    value = 0xEF
    for byte in data:
        value ^= byte
    return value


async def test_before_sync_nothing_is_answered_and_a_runaway_frame_is_dropped() -> None:
    async with RomLoader() as loader, raw_host(loader) as host:
        runaway = slip(b"\x00\x0a" + b"\x55" * 20_000)
        await host.send(command(READ_REG, struct.pack("<I", 0x40001000)), runaway)
        await host.sync()  # the first answer is SYNC's: the read before it was ignored
        await host.send(runaway, command(READ_REG, struct.pack("<I", 0x40001000)))
        reply = await host.reply()
        assert (reply.op, reply.value, reply.body) == (READ_REG, 0x00F01D83, bytes(4))
        assert loader.counters.ignored_frames == 3


async def test_a_block_with_a_bad_checksum_gets_the_roms_checksum_error() -> None:
    block = bytes(range(256)) * 4
    async with RomLoader() as loader, raw_host(loader) as host:
        await host.sync()
        await host.send(command(FLASH_BEGIN, struct.pack("<IIII", len(block), 1, len(block), APP_OFFSET)))
        assert (await host.reply()).body == bytes(4)

        data = struct.pack("<IIII", len(block), 0, 0, 0) + block
        await host.send(command(FLASH_DATA, data, checksum(block) ^ 0x01))
        assert (await host.reply()).body == bytes([1, 0x07, 0, 0])  # status 1, 0x07 "checksum error"
        assert loader.flash.read(APP_OFFSET, len(block)) == ERASED * len(block)

        await host.send(command(FLASH_DATA, data, checksum(block)))  # esptool's retry of the same block
        assert (await host.reply()).body == bytes(4)
        assert loader.flash.read(APP_OFFSET, len(block)) == block


async def test_a_second_host_is_turned_away_while_one_is_connected() -> None:
    async with RomLoader() as loader, raw_host(loader) as first:
        await first.sync()
        reader, writer = await asyncio.open_connection("127.0.0.1", loader.port)
        try:
            assert await reader.read() == b""  # closed at once, as a serial port another program holds
        finally:
            writer.close()
            await writer.wait_closed()
        assert loader.counters.refused == 1
        await first.send(command(READ_REG, struct.pack("<I", 0x40001000)))
        assert (await first.reply()).value == 0x00F01D83  # the first host is still served


# --------------------------------------------------------------------------- in the virtual microscope


async def test_the_virtual_microscope_offers_its_masters_rom_loader(tmp_path: Path) -> None:
    config = await asyncio.to_thread(_config_with_chip, tmp_path, "esp32s3")
    async with VirtualMicroscope(config) as scope:
        assert scope.ready_info()["rom_loader"] == scope.rom_loader.url
        run = await esptool(scope.rom_loader, "--no-stub", "read-mac")
    assert run.returncode == 0, run.output
    assert detected_chip(run.output) == "ESP32-S3"
    assert f"MAC:                {scope.master.identity.mac.lower()}" in run.output


def test_the_masters_chip_is_a_config_value_and_a_wrong_one_is_named(tmp_path: Path) -> None:
    assert load_config(None).master_chip == "esp32"  # the CAN HAT (uc2-stack.md §6)
    with pytest.raises(ConfigError) as failure:
        _config_with_chip(tmp_path, "esp8266")
    assert failure.value.key == "master.chip"


def _config_with_chip(folder: Path, chip: str) -> SimConfig:
    path = folder / "sim.toml"
    path.write_text(f'[master]\nchip = "{chip}"\nserial_link = "{folder / "ttyHAT"}"\n')
    return load_config(path)


async def test_after_esptool_flashes_the_master_its_link_reports_the_new_image(tmp_path: Path) -> None:
    """CONTRACT.md §4 end to end on the simulator side: app at 0x10000, then /state_get shows it."""
    config = await asyncio.to_thread(_config_with_chip, tmp_path, "esp32")
    app = build_app_image(
        "esp32", version="v2099.1.0", project="uc2-master", date="Nov 27 2026", time="12:00:00"
    )
    path = await write_file(tmp_path / "esp32_UC2_canopen_master_release.bin", app)
    async with VirtualMicroscope(config) as scope:
        keep = ("--flash-mode", "keep", "--flash-freq", "keep", "--flash-size", "keep")
        write = ("--chip", "esp32", "write-flash", *keep, hex(APP_OFFSET), str(path))
        run = await esptool(scope.rom_loader, *write, after="hard-reset")
        assert run.returncode == 0, run.output
        link = SerialHatLink(str(scope.config.serial_link), reconnect=False)
        await link.open()
        try:
            identity = await link.get_identity()
        finally:
            await link.close()
    assert identity.version == "v2099.1.0"
    assert identity.build_date == "Nov 27 2026 12:00:00"
