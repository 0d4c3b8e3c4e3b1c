"""The SDO protocol's frames as CiA 301 defines them: identifiers, command specifiers, abort codes.

Shared by the slave's SDO server (:mod:`~uc2otad.sim.sdo_server`) and its block download
(:mod:`~uc2otad.sim.sdo_block`). Written from CiA 301 §7.2.4 and ``uc2-stack.md`` §3.1; the client side
in the virtual master is the ``canopen`` package's, so our server is checked against another reading
of the standard.

Every SDO frame has 8 data bytes; byte 0 is the command, and the initiate and abort frames carry the
object's index (little-endian) and sub-index in bytes 1-3.
"""

from __future__ import annotations

import struct
from enum import IntEnum

#: the client (master) sends requests on 0x600 + node, the server answers on 0x580 + node
SDO_REQUEST_BASE = 0x600
SDO_RESPONSE_BASE = 0x580
#: boot-up message and heartbeat: 0x700 + node, one byte (0 = boot-up)
HEARTBEAT_BASE = 0x700
BOOT_UP = b"\x00"
#: node ids of CANopen (CiA 301): 1..127
MAX_NODE_ID = 127
#: segments of a block download carry 7 bytes
SEGMENT_BYTES = 7
#: at most 127 segments per block (CiA 301); the firmware's server announces the maximum (§3.1)
MAX_BLOCK_SIZE = 127

_MULTIPLEXER = struct.Struct("<BHB")


class Command(IntEnum):
    """Client command specifiers (``ccs``, bits 7-5 of byte 0)."""

    DOWNLOAD_SEGMENT = 0
    DOWNLOAD_INITIATE = 1
    UPLOAD_INITIATE = 2
    UPLOAD_SEGMENT = 3
    ABORT = 4
    BLOCK_UPLOAD = 5
    BLOCK_DOWNLOAD = 6


class Response(IntEnum):
    """Server command specifiers (``scs``)."""

    UPLOAD_SEGMENT = 0
    DOWNLOAD_SEGMENT = 1
    UPLOAD_INITIATE = 2
    DOWNLOAD_INITIATE = 3
    ABORT = 4
    BLOCK_DOWNLOAD = 5


class AbortCode(IntEnum):
    """SDO abort codes (CiA 301 table 22) that this server sends."""

    TOGGLE_BIT = 0x0503_0000
    TIMEOUT = 0x0504_0000
    COMMAND = 0x0504_0001
    BLOCK_SIZE = 0x0504_0002
    SEQUENCE = 0x0504_0003
    CRC = 0x0504_0004
    #: "unsupported access to an object": CANopenNode's answer to ``ODR_UNSUPP_ACCESS``, what an OD
    #: extension without a read function gives (``OD_readDisabled``, ``CO_ODinterface.c:126-131, 249-250``)
    UNSUPPORTED_ACCESS = 0x0601_0000
    WRITE_ONLY = 0x0601_0001
    READ_ONLY = 0x0601_0002
    NO_OBJECT = 0x0602_0000
    #: "general internal incompatibility in the device": CANopenNode's answer to ``ODR_DEV_INCOMPAT``
    #: (``OD_getSDOabCode``, ``CO_ODinterface.c:275`` @063e5a6 of youseetoo/uc2-esp32)
    DEVICE_INCOMPAT = 0x0604_0047
    LENGTH_MISMATCH = 0x0607_0010
    #: "data type does not match, length too high / too low": CANopenNode's block download when more, or
    #: at the end fewer, bytes came than the initiate indicated (``CO_SDOserver.c:483-490, 528-533``)
    DATA_LONG = 0x0607_0012
    DATA_SHORT = 0x0607_0013
    INVALID_VALUE = 0x0609_0030
    VALUE_TOO_HIGH = 0x0609_0031
    GENERAL = 0x0800_0000
    #: "data cannot be transferred or stored to the application": what an object refuses with
    STORE = 0x0800_0020
    #: "… because of the present device state"
    DEVICE_STATE = 0x0800_0022


class SdoAbortError(Exception):
    """An object, or the protocol, refuses the transfer; the server answers with this abort code."""

    def __init__(self, code: AbortCode, reason: str = "") -> None:
        super().__init__(f"SDO abort 0x{code:08X} ({code.name}){': ' + reason if reason else ''}")
        self.code = code


def command_of(frame: bytes) -> int:
    """The command specifier in bits 7-5 of byte 0."""
    return frame[0] >> 5


def multiplexer(frame: bytes) -> tuple[int, int]:
    """(index, sub-index) of an initiate or abort frame."""
    _, index, sub = _MULTIPLEXER.unpack_from(frame)
    return index, sub


def initiate_frame(command: int, index: int, sub: int, payload: bytes = b"") -> bytes:
    """A frame with byte 0 ``command``, the multiplexer, and up to 4 bytes of payload."""
    return _MULTIPLEXER.pack(command, index, sub) + payload.ljust(4, b"\0")


def abort_frame(index: int, sub: int, code: AbortCode) -> bytes:
    return initiate_frame(Response.ABORT << 5, index, sub, struct.pack("<I", code))
