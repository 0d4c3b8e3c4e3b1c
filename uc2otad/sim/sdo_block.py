"""The server side of an SDO block download (CiA 301 §7.2.4.3.9-§7.2.4.3.11), into an object.

This is how the master forwards a firmware image into a slave's 0x2F00 (``uc2-stack.md`` §3.1): the
client initiates with the size, then sends sub-blocks of up to 127 numbered 7-byte segments, each
sub-block acknowledged with the last sequence number received in order (``ackseq``) and the size of
the next sub-block; a segment with bit 7 set is the last one, and the end frame carries the count of
unused bytes in it and the CRC-16/XMODEM of all data. The ``canopen`` package has only the client
side of this (its ``LocalNode`` aborts with 0x05040001), hence this module.

Data reaches the object sub-block by sub-block, as CANopenNode flushes its buffer into the OD write
extension, so an object that fails a write aborts the transfer in mid-stream; the last segment is held
back until the end frame says how much of it is data. Pure: frames in, frames out, no I/O.
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
        self._block_size = block_size
        self._crc = 0
        self._written = 0
        self._ackseq = 0
        self._segments: list[bytes] = []
        self._out_of_order = False
        self._last_seen = False
        self._tail = b""

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
        if not 1 <= sequence <= self._block_size:
            raise SdoAbortError(AbortCode.SEQUENCE, f"sequence number {sequence}")
        if sequence == self._ackseq + 1 and not self._out_of_order:
            self._ackseq = sequence
            self._segments.append(frame[1 : 1 + SEGMENT_BYTES])
            self.received += SEGMENT_BYTES
            self._last_seen = bool(frame[0] & _LAST_SEGMENT)
        else:
            # a segment was lost: ignore the rest of this sub-block; the acknowledgement names the last
            # one received in order and the client sends again from the one after it
            self._out_of_order = True
        if sequence == self._block_size or frame[0] & _LAST_SEGMENT:
            return self._acknowledge()
        return None

    def abort(self) -> None:
        """The transfer ends without its end frame (client abort, timeout, reboot): the object forgets it."""
        if self.state is not BlockState.DONE:
            self.state = BlockState.DONE
            self._sink.abort()

    def _acknowledge(self) -> bytes:
        data = b"".join(self._segments)
        self._segments.clear()
        if self._last_seen:
            data, self._tail = data[:-SEGMENT_BYTES], data[-SEGMENT_BYTES:]
            self.state = BlockState.ENDING
        self._store(data)
        frame = bytes([Response.BLOCK_DOWNLOAD << 5 | _BLOCK_ACK, self._ackseq, self._block_size])
        self._ackseq = 0
        self._out_of_order = False
        return frame.ljust(8, b"\0")

    def _end(self, frame: bytes) -> bytes:
        unused = (frame[0] >> 2) & 0x07
        self._store(self._tail[: SEGMENT_BYTES - unused])
        (crc,) = struct.unpack_from("<H", frame, 1)
        if self._crc_checked and crc != self._crc:
            raise SdoAbortError(AbortCode.CRC, f"CRC 0x{crc:04X} sent, 0x{self._crc:04X} received")
        if self.size is not None and self._written != self.size:
            raise SdoAbortError(AbortCode.LENGTH_MISMATCH, f"{self._written} bytes of {self.size}")
        self._sink.end()
        self.state = BlockState.DONE
        return bytes([Response.BLOCK_DOWNLOAD << 5 | _END_BLOCK]).ljust(8, b"\0")

    def _store(self, data: bytes) -> None:
        if self.size is not None and self._written + len(data) > self.size:
            raise SdoAbortError(AbortCode.LENGTH_MISMATCH, f"more than the {self.size} bytes announced")
        # CRC-16/XMODEM (polynomial 0x1021, initial 0) is binascii's CRC-CCITT
        self._crc = binascii.crc_hqx(data, self._crc)
        self._written += len(data)
        if data:
            self._sink.write(data)
