"""The ESP serial bootloader's packets: opcodes, request and response layout, checksums, error codes.

Written from ``shared/specs/esptool-rom.md`` ("Protocol facts the simulator needed") and the error
names esptool prints; the behaviour behind the packets lives in :mod:`uc2otad.sim.rom_loader`. A
request is ``<BBHI`` (direction 0, opcode, data length, checksum) and its data; a response is
``<BBHI`` (direction 1, the same opcode, data length, ``value``), its data, then the status bytes:
four from the ROM (``status, error, 0, 0``), two from the flasher stub (``status, error``).

Main constraint: nothing here trusts the host — a request whose length field disagrees with its data
is reported as such, never read past.
"""

from __future__ import annotations

import functools
import operator
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum

HEADER = struct.Struct("<BBHI")
REQUEST = 0x00
RESPONSE = 0x01
#: the seed of the data checksum: 0xEF XOR every data byte (only the *_DATA commands carry one)
CHECKSUM_SEED = 0xEF
#: the 16-byte ``<len, seq, 0, 0>`` prefix of MEM_DATA, FLASH_DATA and FLASH_DEFL_DATA
DATA_PREFIX = struct.Struct("<IIII")
#: SYNC's data: ``07 07 12 20`` and 32 x 0x55
SYNC_DATA = b"\x07\x07\x12\x20" + b"\x55" * 32
#: the ROM answers SYNC this many times; esptool reads all eight (one, then seven more)
SYNC_REPLIES = 8
#: a ROM's SYNC ``value`` must be non-zero (0 tells esptool the stub is already running); the
#: real ROM's number was not checked, any non-zero value works (the spec's choice)
ROM_SYNC_VALUE = 0x20120707
STUB_SYNC_VALUE = 0
#: what the flasher stub sends, unasked, when it starts
STUB_GREETING = b"OHAI"
ROM_STATUS_LEN = 4
STUB_STATUS_LEN = 2


class Op(IntEnum):
    """Commands of the ROM loader (0x02-0x14) and of esptool's flasher stub (0xD0-0xD2)."""

    FLASH_BEGIN = 0x02
    FLASH_DATA = 0x03
    FLASH_END = 0x04
    MEM_BEGIN = 0x05
    MEM_END = 0x06
    MEM_DATA = 0x07
    SYNC = 0x08
    WRITE_REG = 0x09
    READ_REG = 0x0A
    SPI_SET_PARAMS = 0x0B
    SPI_ATTACH = 0x0D
    READ_FLASH_SLOW = 0x0E
    CHANGE_BAUDRATE = 0x0F
    FLASH_DEFL_BEGIN = 0x10
    FLASH_DEFL_DATA = 0x11
    FLASH_DEFL_END = 0x12
    SPI_FLASH_MD5 = 0x13
    GET_SECURITY_INFO = 0x14
    ERASE_FLASH = 0xD0
    ERASE_REGION = 0xD1
    READ_FLASH = 0xD2


class Failure(Enum):
    """Why a command failed, before it is turned into the ROM's or the stub's error byte."""

    INVALID_MESSAGE = "invalid message"
    UNKNOWN_COMMAND = "unknown command"
    BAD_LENGTH = "bad data length"
    BAD_CHECKSUM = "bad checksum"
    BAD_BLOCK_SIZE = "bad block size"
    #: a well-formed request the loader cannot carry out (out of range, not aligned)
    FAILED = "failed"
    NOT_IN_FLASH_MODE = "not in flash mode"
    DEFLATE = "inflate error"
    TOO_MUCH_DATA = "too much data"
    NOT_ENOUGH_DATA = "not enough data"
    READ_LENGTH = "read length"
    RAM_SIZE = "invalid RAM binary size"


#: the ROM's error byte (esptool's table: 0x05 invalid message, 0x06 failed, 0x07 checksum, 0x0A read
#: length, 0x0B deflate, 0x0E RAM binary size); the ROM has fewer words, so several failures share one
ROM_ERRORS: dict[Failure, int] = {
    Failure.INVALID_MESSAGE: 0x05,
    Failure.UNKNOWN_COMMAND: 0x05,
    Failure.BAD_LENGTH: 0x05,
    Failure.BAD_CHECKSUM: 0x07,
    Failure.BAD_BLOCK_SIZE: 0x05,
    Failure.FAILED: 0x06,
    Failure.NOT_IN_FLASH_MODE: 0x05,
    Failure.DEFLATE: 0x0B,
    Failure.TOO_MUCH_DATA: 0x0B,
    Failure.NOT_ENOUGH_DATA: 0x06,
    Failure.READ_LENGTH: 0x0A,
    Failure.RAM_SIZE: 0x0E,
}
#: the stub's error byte (esptool's table: 0xC0 bad data length … 0xC9 too much data, 0xFF not
#: implemented)
STUB_ERRORS: dict[Failure, int] = {
    Failure.INVALID_MESSAGE: 0xC3,
    Failure.UNKNOWN_COMMAND: 0xFF,
    Failure.BAD_LENGTH: 0xC0,
    Failure.BAD_CHECKSUM: 0xC1,
    Failure.BAD_BLOCK_SIZE: 0xC2,
    Failure.FAILED: 0xC4,
    Failure.NOT_IN_FLASH_MODE: 0xC6,
    Failure.DEFLATE: 0xC7,
    Failure.TOO_MUCH_DATA: 0xC9,
    Failure.NOT_ENOUGH_DATA: 0xC8,
    Failure.READ_LENGTH: 0xC0,
    Failure.RAM_SIZE: 0xC0,
}


@dataclass(frozen=True)
class Request:
    """One command as the host sent it; ``length_ok`` is False when the header's length lies."""

    op: int
    data: bytes
    checksum: int
    length_ok: bool


def parse_request(frame: bytes) -> Request | None:
    """The request in a decoded frame; None for a frame that is no request (too short, direction 1)."""
    if len(frame) < HEADER.size:
        return None
    direction, op, length, chk = HEADER.unpack_from(frame)
    if direction != REQUEST:
        return None
    data = frame[HEADER.size :]
    return Request(op=op, data=data, checksum=chk, length_ok=length == len(data))


def checksum(data: bytes) -> int:
    """The checksum a *_DATA request carries for ``data`` (the block after the 16-byte prefix)."""
    return functools.reduce(operator.xor, data, CHECKSUM_SEED)


def response(op: int, *, value: int = 0, data: bytes = b"", status: bytes) -> bytes:
    """A response packet (not yet SLIP-framed): header, data, then the status bytes."""
    body = data + status
    return HEADER.pack(RESPONSE, op, len(body), value) + body
