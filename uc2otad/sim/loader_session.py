"""One host's connection to a simulated ESP serial bootloader: the commands, from SYNC to the end.

Written from ``shared/specs/esptool-rom.md``: what the ROM loader and esptool's flasher stub do with
each request, and how they answer (:mod:`uc2otad.sim.loader_wire`). The board itself — its chip,
flash, boots and faults — is :class:`~uc2otad.sim.rom_loader.RomLoader`, which outlives connections;
a session holds what a chip reset clears: registers written, the baud rate, the flash size told by
SPI_SET_PARAMS, a write or RAM upload in progress.

ROM and stub differ where the spec says they do: status bytes (4 or 2), error codes, SPI_ATTACH's
length, SPI_FLASH_MD5 as hex text or raw bytes, erasing up front or as the data arrives, READ_FLASH_SLOW
(ROM) against READ_FLASH/ERASE_FLASH/ERASE_REGION (stub), and the SYNC value (non-zero or 0).

Main constraint: every length read off the wire is bounded — frames, blocks, RAM and flash ranges,
inflated data — and a broken request gets the loader's error answer, never an exception.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from uc2otad.sim import slip
from uc2otad.sim.esp_chips import CRYSTAL_HZ, SPI_CMD_USR, ChipProfile
from uc2otad.sim.loader_wire import (
    DATA_PREFIX,
    HEADER,
    ROM_ERRORS,
    ROM_STATUS_LEN,
    ROM_SYNC_VALUE,
    STUB_ERRORS,
    STUB_GREETING,
    STUB_STATUS_LEN,
    STUB_SYNC_VALUE,
    SYNC_DATA,
    SYNC_REPLIES,
    Failure,
    Op,
    Request,
    checksum,
    parse_request,
    response,
)
from uc2otad.sim.spi_flash import SECTOR_SIZE, SpiFlash

_LOGGER = logging.getLogger(__name__)
#: per-frame traffic, below DEBUG (the level uc2otad.links uses; sim imports nothing from links)
TRAFFIC = 9

#: the largest block esptool sends: the stub's 16 KB flash blocks (the ROM's are 1 KB, RAM blocks 6 KB)
MAX_BLOCK = 0x4000
#: a request holds at most a header, the 16-byte data prefix and one block
MAX_REQUEST = HEADER.size + DATA_PREFIX.size + MAX_BLOCK
#: the flash size the ROM assumes until SPI_SET_PARAMS; it refuses to go beyond (spec)
ROM_FLASH_LIMIT = 2 * 1024 * 1024
#: esptool syncs at 115200 baud, which the ROM measures (auto-baud)
ROM_BAUD = 115200
#: no RAM image larger than the chips' internal SRAM (512 KB on the S3, 520 KB on the ESP32) loads
MAX_RAM_IMAGE = 512 * 1024
#: READ_FLASH blocks the stub keeps unacknowledged at most (esptool asks for 64)
MAX_READ_IN_FLIGHT = 64
#: READ_FLASH_SLOW answers 64 bytes per command, whatever was asked (spec)
SLOW_READ_BLOCK = 64
#: SPI1 holds at most 16 data words (W0-W15)
_SPI_DATA_BYTES = 64
#: SPI_USR bits: the command has an address phase, a MISO (read) phase
_SPI_USR_ADDR = 1 << 30
_SPI_USR_MISO = 1 << 28
_SPI_USR1_ADDR_BITLEN_SHIFT = 26
_SECURITY_INFO = struct.Struct("<IBBBBBBBBII")
_READ_SIZE = 65536


class LoaderState(Enum):
    """What the board is doing, as far as its serial port shows.

    RUNNING → (a host connects: reset into download mode) → WAITING_FOR_SYNC → (SYNC) → ROM
    ROM → (MEM_END with an entry point: the flasher stub starts and says "OHAI") → STUB
    ROM → (FLASH_END or FLASH_DEFL_END "run user code") → RUNNING: the board boots its flash
    ROM, STUB → (FLASH_END or FLASH_DEFL_END "reboot") → WAITING_FOR_SYNC (still in download mode)
    any but RUNNING → (the connection ends; ``boot_on_close``) → RUNNING: the board boots its flash
    In RUNNING the board ignores what the host sends: an app does not speak SLIP. Before SYNC the ROM
    has not locked on to the host's baud rate and ignores everything else.
    """

    RUNNING = "running"
    WAITING_FOR_SYNC = "waiting_for_sync"
    ROM = "rom"
    STUB = "stub"


@dataclass(frozen=True)
class LoaderFaults:
    """Switchable misbehaviour; the default is a healthy board."""

    #: abort the connection once more than this many bytes of flash data (FLASH_DATA and
    #: FLASH_DEFL_DATA blocks as sent) arrived on it; the block that crosses is not written
    drop_after_data_bytes: int | None = None
    #: answer SPI_FLASH_MD5 with a digest that is not the flash's
    corrupt_md5: bool = False
    #: never answer SYNC, so no host gets to talk to the loader
    ignore_sync: bool = False


@dataclass
class LoaderCounters:
    """What happened so far, for tests and benchmarks."""

    sessions: int = 0
    #: connections closed at once because another host held the port
    refused: int = 0
    #: requests by opcode name (unknown ones as ``0x..``)
    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    #: requests answered with an error
    failed: int = 0
    #: frames ignored: before SYNC, while the app runs, not a request, or dropped by the decoder
    ignored_frames: int = 0
    #: SYNCs left unanswered by the ``ignore_sync`` fault
    ignored_syncs: int = 0
    #: connections aborted by the ``drop_after_data_bytes`` fault
    dropped: int = 0
    #: flash data received (compressed bytes where compressed), over all connections
    data_bytes: int = 0
    stub_starts: int = 0


@dataclass
class FlashWrite:
    """One FLASH_BEGIN or FLASH_DEFL_BEGIN and what came of it."""

    offset: int
    #: the size the host announced (uncompressed; the ROM's compressed size is rounded up to 1 KB)
    size: int
    compressed: bool
    #: written through the flasher stub rather than the ROM
    stub: bool
    #: bytes programmed so far, including the 0xFF padding of a last uncompressed block
    written: int = 0


class Board(Protocol):
    """What a session needs of the board it runs on (:class:`~uc2otad.sim.rom_loader.RomLoader`)."""

    chip: ChipProfile
    flash: SpiFlash
    mac: bytes
    faults: LoaderFaults
    counters: LoaderCounters
    writes: collections.deque[FlashWrite]

    @property
    def state(self) -> LoaderState: ...

    def enter_state(self, state: LoaderState) -> None: ...

    def note_flash_changed(self) -> None:
        """The flash was written or erased: the next boot is of new contents."""

    def boot(self) -> None:
        """The board leaves the loader and boots from flash."""


class _CommandError(Exception):
    """A request the loader answers with an error."""

    def __init__(self, failure: Failure, detail: str = "") -> None:
        super().__init__(f"{failure.value} {detail}".strip())
        self.failure = failure


@dataclass
class _FlashOperation:
    """The flash write between a *_BEGIN and its *_END."""

    record: FlashWrite
    blocks: int
    block_size: int
    #: the next block number expected
    seq: int = 0
    #: flash below this address is erased for this write (the ROM erases up front, the stub as it goes)
    erased_to: int = 0
    inflater: zlib._Decompress | None = None


@dataclass
class _RamUpload:
    """The RAM image between MEM_BEGIN and MEM_END (stored nowhere: no code runs here)."""

    size: int
    blocks: int
    block_size: int
    seq: int = 0
    received: int = 0


class LoaderSession:
    """One host's connection: the loader's command handling, from SYNC to the end.

    :param board: the board the commands act on; its state outlives the session
    """

    def __init__(self, board: Board, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._board = board
        self._flash = board.flash
        self._reader = reader
        self._writer = writer
        self._decoder = slip.SlipDecoder(MAX_REQUEST)
        self._pending: collections.deque[bytes] = collections.deque()
        self._closed = False
        #: flash data received on this connection (the drop fault counts it)
        self._data_bytes = 0
        #: registers as the chip has them after a reset, plus what the host wrote
        self._registers: dict[int, int] = {}
        self._baud = ROM_BAUD
        self._flash_limit = ROM_FLASH_LIMIT
        self._flash_operation: _FlashOperation | None = None
        self._ram_upload: _RamUpload | None = None
        self._reset_chip()
        common: dict[int, Callable[[Request], Awaitable[None]]] = {
            Op.SYNC: self._sync,
            Op.READ_REG: self._read_reg,
            Op.WRITE_REG: self._write_reg,
            Op.SPI_SET_PARAMS: self._spi_set_params,
            Op.SPI_ATTACH: self._spi_attach,
            Op.CHANGE_BAUDRATE: self._change_baudrate,
            Op.FLASH_BEGIN: self._flash_begin,
            Op.FLASH_DATA: self._flash_data,
            Op.FLASH_END: self._flash_end,
            Op.FLASH_DEFL_BEGIN: self._flash_begin,
            Op.FLASH_DEFL_DATA: self._flash_data,
            Op.FLASH_DEFL_END: self._flash_end,
            Op.SPI_FLASH_MD5: self._spi_flash_md5,
            Op.MEM_BEGIN: self._mem_begin,
            Op.MEM_DATA: self._mem_data,
            Op.MEM_END: self._mem_end,
        }
        if board.chip.has_security_info:
            common[Op.GET_SECURITY_INFO] = self._get_security_info
        self._handlers = {
            LoaderState.ROM: {**common, Op.READ_FLASH_SLOW: self._read_flash_slow},
            LoaderState.STUB: {
                **common,
                Op.ERASE_FLASH: self._erase_flash,
                Op.ERASE_REGION: self._erase_region,
                Op.READ_FLASH: self._read_flash,
            },
        }

    @property
    def _stub(self) -> bool:
        return self._board.state is LoaderState.STUB

    async def run(self) -> None:
        while not self._closed and (frame := await self._next_frame()) is not None:
            await self._handle(frame)

    def abort(self) -> None:
        """Drop the connection at once (a fault, or the board was reset)."""
        self._closed = True
        self._writer.transport.abort()

    async def _next_frame(self) -> bytes | None:
        """The next SLIP frame from the host; None once the connection ended."""
        while not self._pending:
            data = await self._reader.read(_READ_SIZE)
            if not data or self._closed:
                return None
            dropped = self._decoder.dropped
            self._pending.extend(self._decoder.feed(data))
            self._board.counters.ignored_frames += self._decoder.dropped - dropped
        return self._pending.popleft()

    async def _handle(self, frame: bytes) -> None:
        board, counters = self._board, self._board.counters
        request = parse_request(frame)
        state = board.state
        if (
            request is None
            or state is LoaderState.RUNNING
            or (state is LoaderState.WAITING_FOR_SYNC and not _is_sync(request))
        ):
            counters.ignored_frames += 1
            return
        name = _op_name(request.op)
        counters.commands[name] += 1
        _LOGGER.log(TRAFFIC, "%s: << %s %d bytes", board, name, len(request.data))
        # before SYNC only SYNC gets here, and the ROM handles it
        handler = self._handlers[LoaderState.STUB if self._stub else LoaderState.ROM].get(request.op)
        try:
            if handler is None:
                raise _CommandError(Failure.UNKNOWN_COMMAND, name)
            if not request.length_ok:
                raise _CommandError(Failure.BAD_LENGTH, "the header's length is not the data's")
            await handler(request)
        except _CommandError as error:
            counters.failed += 1
            _LOGGER.debug("%s: %s refused: %s", board, name, error)
            errors, padding = (STUB_ERRORS, b"") if self._stub else (ROM_ERRORS, b"\0\0")
            self._send(response(request.op, status=bytes([1, errors[error.failure]]) + padding))

    def _reply(self, op: int, *, value: int = 0, data: bytes = b"") -> None:
        status = bytes(STUB_STATUS_LEN if self._stub else ROM_STATUS_LEN)
        self._send(response(op, value=value, data=data, status=status))

    def _send(self, packet: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(slip.encode(packet))

    # --- commands ----------------------------------------------------------------------------

    async def _sync(self, request: Request) -> None:
        if request.data != SYNC_DATA:
            raise _CommandError(Failure.INVALID_MESSAGE, "not the SYNC pattern")
        if self._board.faults.ignore_sync:
            self._board.counters.ignored_syncs += 1
            return
        if self._board.state is LoaderState.WAITING_FOR_SYNC:
            self._board.enter_state(LoaderState.ROM)
        value = STUB_SYNC_VALUE if self._stub else ROM_SYNC_VALUE
        for _ in range(SYNC_REPLIES):
            self._reply(Op.SYNC, value=value)

    async def _get_security_info(self, request: Request) -> None:
        _expect_length(request, 0)
        info = _SECURITY_INFO.pack(0, 0, *bytes(7), self._board.chip.image_chip_id, 0)
        self._reply(Op.GET_SECURITY_INFO, data=info)

    async def _read_reg(self, request: Request) -> None:
        _expect_length(request, 4)
        (address,) = struct.unpack("<I", request.data)
        self._reply(Op.READ_REG, value=self._read_word(address))

    async def _write_reg(self, request: Request) -> None:
        # one or more (address, value, mask, delay_us) entries; esptool adds a second for a delay
        if not request.data or len(request.data) % 16:
            raise _CommandError(Failure.BAD_LENGTH, f"{len(request.data)} bytes")
        for address, value, mask, _ in struct.iter_unpack("<IIII", request.data):
            word = (self._read_word(address) & ~mask | value & mask) & 0xFFFFFFFF
            if address == self._board.chip.spi.cmd and word & SPI_CMD_USR:
                self._run_spi_command()
                word &= ~SPI_CMD_USR  # done at once: the host's poll of the USR bit sees 0
            self._registers[address] = word
        self._reply(Op.WRITE_REG)

    async def _spi_set_params(self, request: Request) -> None:
        _expect_length(request, 24)
        _, total_size, _, _, _, _ = struct.unpack("<IIIIII", request.data)
        self._flash_limit = total_size
        self._reply(Op.SPI_SET_PARAMS)

    async def _spi_attach(self, request: Request) -> None:
        # the ROM takes ``u32 pins, u8 is_legacy, 3 x 0``; the stub only the pins (spec)
        _expect_length(request, 4 if self._stub else 8)
        self._reply(Op.SPI_ATTACH)

    async def _change_baudrate(self, request: Request) -> None:
        _expect_length(request, 8)
        new, _ = struct.unpack("<II", request.data)
        if new == 0:
            raise _CommandError(Failure.INVALID_MESSAGE, "baud rate 0")
        self._reply(Op.CHANGE_BAUDRATE)
        self._baud = new  # after the answer, which still goes out at the old rate

    async def _flash_begin(self, request: Request) -> None:
        compressed = request.op == Op.FLASH_DEFL_BEGIN
        if len(request.data) not in (16, 20):  # the ESP32 ROM takes 4 words, the others a 5th (encrypt)
            raise _CommandError(Failure.BAD_LENGTH, f"{len(request.data)} bytes")
        size, blocks, block_size, offset = struct.unpack_from("<IIII", request.data)
        if blocks and not 0 < block_size <= MAX_BLOCK:
            raise _CommandError(Failure.BAD_BLOCK_SIZE, f"{block_size}")
        if not self._in_range(offset, size):
            raise _CommandError(
                Failure.FAILED, f"0x{offset:x}+{size} is beyond the flash (limit {self._flash_limit})"
            )
        record = FlashWrite(offset=offset, size=size, compressed=compressed, stub=self._stub)
        operation = _FlashOperation(
            record,
            blocks,
            block_size,
            erased_to=offset,
            inflater=zlib.decompressobj() if compressed else None,
        )
        if size and not self._stub:  # the ROM erases the whole region before it answers
            _, operation.erased_to = self._flash.erase(offset, size)
            self._board.note_flash_changed()
        if size:
            self._board.writes.append(record)
        self._flash_operation = operation
        self._reply(request.op)

    async def _flash_data(self, request: Request) -> None:
        operation = self._flash_operation
        if operation is None or operation.record.compressed != (request.op == Op.FLASH_DEFL_DATA):
            raise _CommandError(Failure.NOT_IN_FLASH_MODE)
        block = self._block(request, operation.seq, operation.block_size)
        if operation.seq >= operation.blocks:
            raise _CommandError(Failure.TOO_MUCH_DATA, f"block {operation.seq} of {operation.blocks}")
        if self._fault_drops(len(block)):
            return
        self._data_bytes += len(block)
        self._board.counters.data_bytes += len(block)
        data = self._inflate(operation, block) if operation.inflater is not None else block
        self._program(operation, data)
        operation.seq += 1
        self._reply(request.op)

    async def _flash_end(self, request: Request) -> None:
        _expect_length(request, 4)
        (run_user_code,) = struct.unpack("<I", request.data)
        operation, self._flash_operation = self._flash_operation, None
        if self._stub:  # the stub checks that the write it finishes is complete; the ROM just leaves
            if operation is None:
                raise _CommandError(Failure.NOT_IN_FLASH_MODE)
            if operation.record.written < operation.record.size:
                raise _CommandError(
                    Failure.NOT_ENOUGH_DATA, f"{operation.record.written} of {operation.record.size}"
                )
        self._reply(request.op)
        if not run_user_code:  # a reboot, into download mode again: the host still holds the strap
            self._reset_chip()
            self._board.enter_state(LoaderState.WAITING_FOR_SYNC)
        elif not self._stub:
            self._board.boot()

    async def _spi_flash_md5(self, request: Request) -> None:
        _expect_length(request, 16)
        offset, size, _, _ = struct.unpack("<IIII", request.data)
        if not self._in_range(offset, size):
            raise _CommandError(Failure.FAILED, f"0x{offset:x}+{size} is beyond the flash")
        digest = self._flash.md5(offset, size)
        if self._board.faults.corrupt_md5:
            digest = bytes([digest[0] ^ 0x01]) + digest[1:]
        # the ROM answers 32 lowercase hex digits, the stub 16 raw bytes (spec)
        self._reply(Op.SPI_FLASH_MD5, data=digest if self._stub else digest.hex().encode())

    async def _read_flash_slow(self, request: Request) -> None:
        _expect_length(request, 8)
        offset, length = struct.unpack("<II", request.data)
        if length > SLOW_READ_BLOCK:
            raise _CommandError(Failure.READ_LENGTH, f"{length}")
        if not self._in_range(offset, length):
            raise _CommandError(Failure.FAILED, f"0x{offset:x}+{length} is beyond the flash")
        data = self._flash.read(offset, length).ljust(SLOW_READ_BLOCK, b"\xff")
        self._reply(Op.READ_FLASH_SLOW, data=data)

    async def _read_flash(self, request: Request) -> None:
        """Stream ``length`` bytes in ``block_size`` frames, each acknowledged, then their raw MD5."""
        _expect_length(request, 16)
        offset, length, block_size, in_flight = struct.unpack("<IIII", request.data)
        if not self._in_range(offset, length):
            raise _CommandError(Failure.FAILED, f"0x{offset:x}+{length} is beyond the flash")
        if not 0 < block_size <= MAX_BLOCK or not 0 < in_flight <= MAX_READ_IN_FLIGHT:
            raise _CommandError(Failure.BAD_BLOCK_SIZE, f"{block_size} x {in_flight}")
        self._reply(Op.READ_FLASH)
        data = self._flash.read(offset, length)
        sent = acknowledged = 0
        while acknowledged < length:
            while sent < length and sent - acknowledged < block_size * in_flight:
                self._send(data[sent : sent + block_size])
                sent = min(length, sent + block_size)
            await self._writer.drain()
            ack = await self._next_frame()
            if ack is None or len(ack) != 4:
                _LOGGER.debug("%s: READ_FLASH ended without its acknowledgements", self._board)
                return
            (acknowledged,) = struct.unpack("<I", ack)
            if acknowledged > sent:
                _LOGGER.debug("%s: READ_FLASH acknowledged %d of %d sent", self._board, acknowledged, sent)
                return
        self._send(hashlib.md5(data, usedforsecurity=False).digest())

    async def _erase_flash(self, request: Request) -> None:
        _expect_length(request, 0)
        self._flash.erase_all()
        self._board.note_flash_changed()
        self._reply(Op.ERASE_FLASH)

    async def _erase_region(self, request: Request) -> None:
        _expect_length(request, 8)
        offset, size = struct.unpack("<II", request.data)
        if offset % SECTOR_SIZE or size % SECTOR_SIZE:
            raise _CommandError(Failure.FAILED, f"0x{offset:x}+{size} is not sector-aligned")
        if not self._in_range(offset, size):
            raise _CommandError(Failure.FAILED, f"0x{offset:x}+{size} is beyond the flash")
        self._flash.erase(offset, size)
        self._board.note_flash_changed()
        self._reply(Op.ERASE_REGION)

    async def _mem_begin(self, request: Request) -> None:
        _expect_length(request, 16)
        size, blocks, block_size, _ = struct.unpack("<IIII", request.data)
        if size > MAX_RAM_IMAGE:
            raise _CommandError(Failure.RAM_SIZE, f"{size}")
        if blocks and not 0 < block_size <= MAX_BLOCK:
            raise _CommandError(Failure.BAD_BLOCK_SIZE, f"{block_size}")
        self._ram_upload = _RamUpload(size, blocks, block_size)
        self._reply(Op.MEM_BEGIN)

    async def _mem_data(self, request: Request) -> None:
        upload = self._ram_upload
        if upload is None:
            raise _CommandError(Failure.INVALID_MESSAGE, "no MEM_BEGIN")
        block = self._block(request, upload.seq, upload.block_size)
        if upload.received + len(block) > upload.size:
            raise _CommandError(Failure.TOO_MUCH_DATA, f"{upload.received + len(block)} of {upload.size}")
        upload.received += len(block)
        upload.seq += 1
        self._reply(Op.MEM_DATA)

    async def _mem_end(self, request: Request) -> None:
        """End a RAM upload; with an entry point, the code runs — taken to be esptool's flasher stub."""
        _expect_length(request, 8)
        no_entry, _ = struct.unpack("<II", request.data)
        upload, self._ram_upload = self._ram_upload, None
        if upload is None or upload.received < upload.size:
            raise _CommandError(Failure.NOT_ENOUGH_DATA, "the RAM image is incomplete")
        self._reply(Op.MEM_END)
        if no_entry or self._stub:
            return
        # no Xtensa code runs here: any program started from RAM is taken for the stub
        self._board.counters.stub_starts += 1
        self._board.enter_state(LoaderState.STUB)
        self._send(STUB_GREETING)

    # --- helpers -----------------------------------------------------------------------------

    def _reset_chip(self) -> None:
        """Forget what a chip reset clears: registers written, baud rate, flash size, open transfers."""
        self._registers = self._board.chip.registers(self._board.mac)
        self._baud = ROM_BAUD
        self._flash_limit = ROM_FLASH_LIMIT
        self._flash_operation = None
        self._ram_upload = None

    def _read_word(self, address: int) -> int:
        chip = self._board.chip
        if address == chip.uart_clkdiv_addr:  # the ROM's UART runs from the crystal at the host's rate
            return CRYSTAL_HZ // self._baud
        return self._registers.get(address, 0)

    def _run_spi_command(self) -> None:
        """Run the SPI user command set up in SPI1's registers; its answer lands in W0…"""
        spi, words = self._board.chip.spi, self._registers
        user = words.get(spi.usr, 0)
        opcode = words.get(spi.usr2, 0) & 0xFF
        address = words.get(spi.addr, 0)
        if user & _SPI_USR_ADDR and spi.addr_msb:
            address_bits = (words.get(spi.usr1, 0) >> _SPI_USR1_ADDR_BITLEN_SHIFT & 0x3F) + 1
            address >>= max(0, 32 - address_bits)
        read_bits = words.get(spi.miso_dlen, 0) + 1 if user & _SPI_USR_MISO else 0
        answer = self._flash.user_command(opcode, address, min(_SPI_DATA_BYTES, -(-read_bits // 8)))
        _LOGGER.log(
            TRAFFIC, "%s: SPI command 0x%02x address=0x%x -> %s", self._board, opcode, address, answer.hex()
        )
        for index in range(0, len(answer), 4):
            words[spi.w0 + index] = int.from_bytes(answer[index : index + 4].ljust(4, b"\0"), "little")

    def _block(self, request: Request, seq: int, block_size: int) -> bytes:
        """The data of a *_DATA request, checked: prefix, length, sequence number, checksum."""
        if len(request.data) < DATA_PREFIX.size:
            raise _CommandError(Failure.BAD_LENGTH, f"{len(request.data)} bytes")
        length, number, _, _ = DATA_PREFIX.unpack_from(request.data)
        block = request.data[DATA_PREFIX.size :]
        if length != len(block) or length > block_size:
            raise _CommandError(
                Failure.BAD_LENGTH, f"block says {length}, carries {len(block)} (size {block_size})"
            )
        if number != seq:
            raise _CommandError(Failure.INVALID_MESSAGE, f"block {number}, expected {seq}")
        if checksum(block) != request.checksum:
            raise _CommandError(Failure.BAD_CHECKSUM, f"block {number}")
        return block

    def _inflate(self, operation: _FlashOperation, block: bytes) -> bytes:
        assert operation.inflater is not None
        room = operation.record.size - operation.record.written
        try:
            data = operation.inflater.decompress(block, room + 1)  # bounded: one byte more tells overflow
        except zlib.error as err:
            raise _CommandError(Failure.DEFLATE, str(err)) from err
        if len(data) > room or operation.inflater.unconsumed_tail:
            raise _CommandError(
                Failure.TOO_MUCH_DATA, f"more than the {operation.record.size} bytes announced"
            )
        return data

    def _program(self, operation: _FlashOperation, data: bytes) -> None:
        start = operation.record.offset + operation.record.written
        end = start + len(data)
        if not self._in_range(start, len(data)):
            raise _CommandError(Failure.FAILED, f"0x{start:x}+{len(data)} is beyond the flash")
        if self._stub and end > operation.erased_to:  # the stub erases each sector as the data reaches it
            _, operation.erased_to = self._flash.erase(operation.erased_to, end - operation.erased_to)
        self._flash.program(start, data)
        self._board.note_flash_changed()
        operation.record.written += len(data)

    def _in_range(self, offset: int, length: int) -> bool:
        return offset + length <= self._flash_limit and self._flash.holds(offset, length)

    def _fault_drops(self, block_len: int) -> bool:
        limit = self._board.faults.drop_after_data_bytes
        if limit is None or self._data_bytes + block_len <= limit:
            return False
        _LOGGER.info(
            "%s: fault: dropping the connection after %d bytes of flash data", self._board, self._data_bytes
        )
        self._board.counters.dropped += 1
        self.abort()
        return True


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"0x{op:02x}"


def _is_sync(request: Request) -> bool:
    return request.op == Op.SYNC and request.length_ok and request.data == SYNC_DATA


def _expect_length(request: Request, length: int) -> None:
    if len(request.data) != length:
        raise _CommandError(Failure.BAD_LENGTH, f"{len(request.data)} bytes, expected {length}")
