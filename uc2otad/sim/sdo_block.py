"""The server side of an SDO block download (CiA 301 §7.2.4.3.9-§7.2.4.3.11), into an object.

This is how the master forwards a firmware image into a slave's 0x2F00 (``uc2-stack.md`` §3.1): the
client initiates with the size, then sends sub-blocks of up to 127 numbered 7-byte segments, each
sub-block acknowledged with the last sequence number received in order (``ackseq``) and the size of
the next sub-block; a segment with bit 7 set is the last one, and the end frame carries the count of
unused bytes in it and the CRC-16/XMODEM of all data. The ``canopen`` package has only the client
side of this (its ``LocalNode`` aborts with 0x05040001), hence this module.

The server behaves as CANopenNode's does in FW-main (``lib/ESP32_CanOpenNode/src/301/CO_SDOserver.c``
@063e5a6 of youseetoo/uc2-esp32, with ``CO_CONFIG_SDO_SRV_BUFFER_SIZE`` 1024 from
``src/CO_driver_target.h:68``):

- a segment is taken when it is the next in sequence (``CO_SDOserver.c:84-104``); a repeat of the last
  one taken, or any segment before the first of a sub-block, is ignored; any other breaks the sub-block
  at once — the acknowledgement goes out then, naming the last segment taken (``:105-110``), and the
  rest of the client's sub-block is ignored until it starts over with sequence number 1. No sequence
  number makes it abort;
- when no segment came for 0.7 x the SDO timeout (``:338``, ``:1186-1198``), it acknowledges what it has
  (:meth:`BlockDownload.on_block_timeout`): a lost last segment of a sub-block, or a lost first one,
  costs a pause, not the transfer;
- data reach the object from its 1024-byte buffer at an acknowledgement when the buffer cannot take a
  full sub-block more (``:1440-1456``) — with 1024 bytes that is after each sub-block of more than 19
  segments — so an object that fails a write aborts the transfer in mid-stream; the sub-block with the
  last segment stays in the buffer until the end frame says how much of it is data (``:1434-1436``,
  ``:1024-1045``), and the CRC-16 is computed as the buffer is written (``:541``).

Pure: frames in, frames out, no I/O; the node keeps the clock.
"""

from __future__ import annotations

import binascii
import struct
from enum import Enum
from typing import Protocol

from uc2otad.sim.sdo_wire import (
    MAX_BLOCK_SIZE,
    SEGMENT_BYTES,
    AbortCode,
    Command,
    Response,
    SdoAbortError,
    command_of,
    initiate_frame,
)

#: byte 0 flags of the initiate request and response: CRC supported, size indicated
CRC_SUPPORTED = 0x04
SIZE_INDICATED = 0x02
#: byte 0 of a segment: bit 7 "no more segments", bits 6-0 the sequence number
_LAST_SEGMENT = 0x80
_SEQUENCE = 0x7F
#: client subcommands (bits 1-0 of byte 0) and server subcommands
_END_BLOCK = 1
_BLOCK_ACK = 2
#: ``CO_CONFIG_SDO_SRV_BUFFER_SIZE`` in FW-main (``lib/ESP32_CanOpenNode/src/CO_driver_target.h:68``
#: @063e5a6); two bytes of it stay free (``CO_SDOserver.c:1400, 1443``)
SERVER_BUFFER_SIZE = 1024
#: the sub-block timeout is this share of the SDO server timeout (``block_SDOtimeoutTime_us =
#: SDOtimeoutTime_ms * 700``, ``CO_SDOserver.c:338`` @063e5a6)
BLOCK_TIMEOUT_SHARE = 0.7


class DownloadSink(Protocol):
    """Where the bytes of one download go: an object of the slave's dictionary."""

    def write(self, data: bytes) -> None:
        """Take the next bytes.

        :raises SdoAbortError: the object cannot take them
        """

    def end(self) -> None:
        """All bytes arrived and were checked.

        :raises SdoAbortError: the object refuses the whole (a failed image check)
        """

    def abort(self) -> None:
        """The transfer ended without :meth:`end`; forget it."""


class BlockState(Enum):
    """RECEIVING → (the segment with the last bit acknowledged) → ENDING → (end frame checked) → DONE."""

    RECEIVING = "receiving"
    ENDING = "ending"
    DONE = "done"


class BlockDownload:
    """One block download into ``sink``; feed it every request frame of the transfer.

    :param size: the size the client indicated, checked at the end; None when it indicated none
    :param crc: the client asked for CRC checking (the server always supports it)
    """

    def __init__(
        self,
        index: int,
        sub: int,
        sink: DownloadSink,
        *,
        size: int | None,
        crc: bool,
        block_size: int = MAX_BLOCK_SIZE,
    ) -> None:
        if not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block size must be 1..{MAX_BLOCK_SIZE}, not {block_size}")
        self.index = index
        self.sub = sub
        self.size = size
        self.state = BlockState.RECEIVING
        #: bytes accepted so far (the held-back last segment included)
        self.received = 0
        self._sink = sink
        self._crc_checked = crc
        #: the size of the sub-block under way, and the most this server asks for
        self._block_size = block_size
        self._block_size_limit = block_size
        self._crc = 0
        self._written = 0
        self._ackseq = 0
        #: taken since the last flush into the object (``SDO->buf``)
        self._buffer = bytearray()
        self._last_seen = False

    def initiate_response(self) -> bytes:
        """The answer to the initiate request: CRC supported, and the first sub-block's size."""
        command = Response.BLOCK_DOWNLOAD << 5 | CRC_SUPPORTED
        return initiate_frame(command, self.index, self.sub, bytes([self._block_size]))

    def on_frame(self, frame: bytes) -> bytes | None:
        """The server's answer to one request frame of the transfer, or None when none is due.

        :raises SdoAbortError: the transfer must be aborted (sequence, CRC, size, or the object refused)
        """
        if self.state is BlockState.ENDING:
            if command_of(frame) != Command.BLOCK_DOWNLOAD or frame[0] & 0x03 != _END_BLOCK:
                raise SdoAbortError(AbortCode.COMMAND, "the end of the block download was expected")
            return self._end(frame)
        if self.state is BlockState.DONE:
            raise SdoAbortError(AbortCode.COMMAND, "the block download is over")
        sequence = frame[0] & _SEQUENCE
        if sequence <= self._block_size and sequence == self._ackseq + 1:  # CO_SDOserver.c:84-104
            self._ackseq = sequence
            self._buffer += frame[1 : 1 + SEGMENT_BYTES]
            self.received += SEGMENT_BYTES
            self._last_seen = bool(frame[0] & _LAST_SEGMENT)
            if self._last_seen or sequence == self._block_size:
                return self._acknowledge()
            return None
        if self._ackseq not in (0, sequence):  # a sub-block under way, and no repeat
            # a segment was lost: the acknowledgement goes out now and names the last one taken; the
            # client sends again from the one after it (:105-110)
            return self._acknowledge()
        return None  # a repeat, or the rest of a broken sub-block before the client starts over

    def on_block_timeout(self) -> bytes | None:
        """No segment came for the sub-block timeout (:data:`BLOCK_TIMEOUT_SHARE` of the SDO timeout):
        acknowledge what came, as ``CO_SDOserver.c:1186-1198`` does; None when no sub-block is open."""
        if self.state is not BlockState.RECEIVING:
            return None
        return self._acknowledge()

    def abort(self) -> None:
        """The transfer ends without its end frame (client abort, timeout, reboot): the object forgets it."""
        if self.state is not BlockState.DONE:
            self.state = BlockState.DONE
            self._sink.abort()

    def _acknowledge(self) -> bytes:
        """The sub-block's acknowledgement (``CO_SDOserver.c:1428-1470``): the last segment taken, and
        the next sub-block's size from the buffer's free space, flushed first when it has too little."""
        if self._last_seen:
            self.state = BlockState.ENDING  # the buffer waits for the end frame (:1434-1436)
        elif (SERVER_BUFFER_SIZE - 2 - len(self._buffer)) // SEGMENT_BYTES < MAX_BLOCK_SIZE:
            self._flush(bytes(self._buffer))
        free = (SERVER_BUFFER_SIZE - 2 - len(self._buffer)) // SEGMENT_BYTES
        if not self._last_seen:
            self._block_size = min(free, MAX_BLOCK_SIZE, self._block_size_limit)
        frame = bytes([Response.BLOCK_DOWNLOAD << 5 | _BLOCK_ACK, self._ackseq, self._block_size])
        self._ackseq = 0
        return frame.ljust(8, b"\0")

    def _end(self, frame: bytes) -> bytes:
        """The end frame: the size first, then the CRC-16, and only then the last data reach the object
        (``CO_SDOserver.c:1024-1045`` into ``validateAndWriteToOD``, ``:483-490``, ``:539-546``, ``:552``)."""
        unused = (frame[0] >> 2) & 0x07
        if len(self._buffer) <= unused:  # "just in case, should never happen" (:1030-1034)
            raise SdoAbortError(AbortCode.DEVICE_INCOMPAT, "the end names more unused bytes than it holds")
        data = bytes(self._buffer[: len(self._buffer) - unused])
        self._buffer.clear()
        written = self._written + len(data)
        if self.size is not None and written != self.size:
            code = AbortCode.DATA_LONG if written > self.size else AbortCode.DATA_SHORT
            raise SdoAbortError(code, f"{written} bytes of {self.size}")
        crc = binascii.crc_hqx(data, self._crc)
        (sent,) = struct.unpack_from("<H", frame, 1)
        if self._crc_checked and sent != crc:
            raise SdoAbortError(AbortCode.CRC, f"CRC 0x{sent:04X} sent, 0x{crc:04X} received")
        self._store(data)
        self._sink.end()
        self.state = BlockState.DONE
        return bytes([Response.BLOCK_DOWNLOAD << 5 | _END_BLOCK]).ljust(8, b"\0")

    def _flush(self, data: bytes) -> None:
        """The buffer into the object (``validateAndWriteToOD``)."""
        self._buffer.clear()
        self._store(data)

    def _store(self, data: bytes) -> None:
        if self.size is not None and self._written + len(data) > self.size:
            # before the end, whole segments count (:528-533)
            raise SdoAbortError(AbortCode.DATA_LONG, f"more than the {self.size} bytes announced")
        # CRC-16/XMODEM (polynomial 0x1021, initial 0) is binascii's CRC-CCITT
        self._crc = binascii.crc_hqx(data, self._crc)
        self._written += len(data)
        if data:
            self._sink.write(data)
