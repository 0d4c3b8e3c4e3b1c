"""A slave's SDO server: expedited, segmented and block download, expedited and segmented upload.

One server per slave handles every SDO transfer (CiA 301 §7.2.4), one at a time: the scan's reads of
the SYSTEM objects, the CRC and size writes, the reboot command, and the firmware image by block
download (:mod:`~uc2otad.sim.sdo_block`). The objects themselves live behind
:class:`ObjectDictionary`; a refusal there becomes an abort frame with its code. A new initiate ends an
open transfer, as CANopenNode's server does; block upload is not offered (the master never asks for it).

Pure: a request frame in, the response frame (or None) out; the node that owns the server sends it
and keeps the clock (the server timeout comes in through :meth:`SdoServer.on_timeout`).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Protocol

from uc2otad.sim.sdo_block import SIZE_INDICATED, BlockDownload, BlockState, DownloadSink
from uc2otad.sim.sdo_wire import (
    MAX_BLOCK_SIZE,
    SEGMENT_BYTES,
    AbortCode,
    Command,
    Response,
    SdoAbortError,
    abort_frame,
    command_of,
    initiate_frame,
    multiplexer,
)

_LOGGER = logging.getLogger(__name__)

#: SDO frames always carry 8 data bytes (CANopenNode drops others)
FRAME_BYTES = 8
#: byte 0 of every client abort (CiA 301): inside a sub-block it is the one byte that is no segment
_CLIENT_ABORT = Command.ABORT << 5
#: byte 0 flags of expedited and segmented initiates: expedited, size indicated; of segments: toggle
_EXPEDITED = 0x02
_SIZE_SET = 0x01
_TOGGLE = 0x10
_NO_MORE = 0x01
_CRC_REQUESTED = 0x04


class ObjectDictionary(Protocol):
    """The objects a server reads and writes."""

    def upload(self, index: int, sub: int) -> bytes:
        """The object's value.

        :raises SdoAbortError: no such object, or it cannot be read
        """

    def download(self, index: int, sub: int, size: int | None) -> DownloadSink:
        """Where a write of ``size`` bytes (None: not indicated) to the object goes.

        :raises SdoAbortError: no such object, read-only, or the size is not acceptable
        """


@dataclass
class _SegmentedDownload:
    index: int
    sub: int
    sink: DownloadSink
    size: int | None
    toggle: int = 0
    written: int = 0


@dataclass
class _SegmentedUpload:
    index: int
    sub: int
    data: bytes
    toggle: int = 0
    offset: int = 0


_Transfer = _SegmentedDownload | _SegmentedUpload | BlockDownload


class SdoServer:
    """The SDO server of one node, with ``dictionary``'s objects."""

    def __init__(self, dictionary: ObjectDictionary, *, block_size: int = MAX_BLOCK_SIZE) -> None:
        self._dictionary = dictionary
        self._block_size = block_size
        self._transfer: _Transfer | None = None

    @property
    def busy(self) -> bool:
        """A segmented or block transfer is open (the server timeout runs)."""
        return self._transfer is not None

    @property
    def block_download(self) -> BlockDownload | None:
        """The block download in progress, if one is."""
        return self._transfer if isinstance(self._transfer, BlockDownload) else None

    def on_request(self, frame: bytes) -> bytes | None:
        """The response to one request frame; None when none is due (mid sub-block, client abort)."""
        if len(frame) != FRAME_BYTES:
            return None
        if frame[0] == _CLIENT_ABORT:
            self.reset()
            return None
        command = command_of(frame)
        transfer = self._transfer
        try:
            if isinstance(transfer, BlockDownload):
                # inside a block download every frame is a segment or, after the last one, the end
                return self._block_step(transfer, frame)
            if command == Command.DOWNLOAD_INITIATE:
                return self._download_initiate(frame)
            if command == Command.DOWNLOAD_SEGMENT and isinstance(transfer, _SegmentedDownload):
                return self._download_segment(transfer, frame)
            if command == Command.UPLOAD_INITIATE:
                return self._upload_initiate(frame)
            if command == Command.UPLOAD_SEGMENT and isinstance(transfer, _SegmentedUpload):
                return self._upload_segment(transfer, frame)
            if command == Command.BLOCK_DOWNLOAD:
                return self._block_initiate(frame)
            raise SdoAbortError(AbortCode.COMMAND, f"command 0x{frame[0]:02X} not valid here")
        except SdoAbortError as err:
            index, sub = self._current_multiplexer(frame)
            _LOGGER.debug("SDO 0x%04X:%02X aborted: %s", index, sub, err)
            self.reset()
            return abort_frame(index, sub, err.code)

    def on_timeout(self) -> bytes | None:
        """The client went quiet in the middle of a transfer: abort it (CiA 301 "SDO protocol timed out")."""
        transfer = self._transfer
        if transfer is None:
            return None
        self.reset()
        return abort_frame(transfer.index, transfer.sub, AbortCode.TIMEOUT)

    def on_block_timeout(self) -> bytes | None:
        """No segment of the open sub-block came for the sub-block timeout: its acknowledgement, naming
        what came (``CO_SDOserver.c:1186-1198`` @063e5a6); None when no sub-block is open."""
        block = self.block_download
        if block is None:
            return None
        try:
            return block.on_block_timeout()
        except SdoAbortError as err:  # the flush into the object failed
            _LOGGER.debug("SDO 0x%04X:%02X aborted: %s", block.index, block.sub, err)
            self.reset()
            return abort_frame(block.index, block.sub, err.code)

    @property
    def in_sub_block(self) -> bool:
        """A block download waits for segments (the sub-block timeout runs)."""
        block = self.block_download
        return block is not None and block.state is BlockState.RECEIVING

    def reset(self) -> None:
        """Forget the open transfer (client abort, reboot); its object hears :meth:`DownloadSink.abort`."""
        transfer, self._transfer = self._transfer, None
        if isinstance(transfer, _SegmentedDownload):
            transfer.sink.abort()
        elif isinstance(transfer, BlockDownload):
            transfer.abort()

    # ---- download ---------------------------------------------------------------------------------

    def _download_initiate(self, frame: bytes) -> bytes:
        self.reset()
        index, sub = multiplexer(frame)
        if frame[0] & _EXPEDITED:
            length = 4 - ((frame[0] >> 2) & 0x03) if frame[0] & _SIZE_SET else 4
            sink = self._dictionary.download(index, sub, length)
            try:
                sink.write(frame[4 : 4 + length])
                sink.end()
            except SdoAbortError:
                sink.abort()
                raise
        else:
            size = struct.unpack_from("<I", frame, 4)[0] if frame[0] & _SIZE_SET else None
            self._transfer = _SegmentedDownload(index, sub, self._dictionary.download(index, sub, size), size)
        return initiate_frame(Response.DOWNLOAD_INITIATE << 5, index, sub)

    def _download_segment(self, transfer: _SegmentedDownload, frame: bytes) -> bytes:
        toggle = frame[0] & _TOGGLE
        if toggle != transfer.toggle:
            raise SdoAbortError(AbortCode.TOGGLE_BIT)
        data = frame[1 : FRAME_BYTES - ((frame[0] >> 1) & 0x07)]
        transfer.written += len(data)
        if transfer.size is not None and transfer.written > transfer.size:
            raise SdoAbortError(AbortCode.DATA_LONG, f"more than {transfer.size} bytes")  # CO_SDOserver.c:935
        transfer.sink.write(data)
        if frame[0] & _NO_MORE:
            if transfer.size is not None and transfer.written != transfer.size:
                raise SdoAbortError(AbortCode.DATA_SHORT, f"{transfer.written} of {transfer.size} bytes")
            transfer.sink.end()
            self._transfer = None
        transfer.toggle ^= _TOGGLE
        return bytes([Response.DOWNLOAD_SEGMENT << 5 | toggle]).ljust(FRAME_BYTES, b"\0")

    def _block_initiate(self, frame: bytes) -> bytes:
        if frame[0] & 0x01:  # client subcommand 1: end of a transfer we do not have
            raise SdoAbortError(AbortCode.COMMAND, "no block download is open")
        self.reset()
        index, sub = multiplexer(frame)
        size = struct.unpack_from("<I", frame, 4)[0] if frame[0] & SIZE_INDICATED else None
        sink = self._dictionary.download(index, sub, size)
        block = BlockDownload(
            index, sub, sink, size=size, crc=bool(frame[0] & _CRC_REQUESTED), block_size=self._block_size
        )
        self._transfer = block
        return block.initiate_response()

    def _block_step(self, block: BlockDownload, frame: bytes) -> bytes | None:
        response = block.on_frame(frame)
        if block.state is BlockState.DONE:
            self._transfer = None
        return response

    # ---- upload -----------------------------------------------------------------------------------

    def _upload_initiate(self, frame: bytes) -> bytes:
        self.reset()
        index, sub = multiplexer(frame)
        data = self._dictionary.upload(index, sub)
        if len(data) <= 4:
            command = Response.UPLOAD_INITIATE << 5 | (4 - len(data)) << 2 | _EXPEDITED | _SIZE_SET
            return initiate_frame(command, index, sub, data)
        self._transfer = _SegmentedUpload(index, sub, data)
        return initiate_frame(
            Response.UPLOAD_INITIATE << 5 | _SIZE_SET, index, sub, struct.pack("<I", len(data))
        )

    def _upload_segment(self, transfer: _SegmentedUpload, frame: bytes) -> bytes:
        toggle = frame[0] & _TOGGLE
        if toggle != transfer.toggle:
            raise SdoAbortError(AbortCode.TOGGLE_BIT)
        chunk = transfer.data[transfer.offset : transfer.offset + SEGMENT_BYTES]
        transfer.offset += len(chunk)
        last = transfer.offset >= len(transfer.data)
        if last:
            self._transfer = None
        transfer.toggle ^= _TOGGLE
        command = Response.UPLOAD_SEGMENT << 5 | toggle | (SEGMENT_BYTES - len(chunk)) << 1 | int(last)
        return bytes([command]) + chunk.ljust(SEGMENT_BYTES, b"\0")

    def _current_multiplexer(self, frame: bytes) -> tuple[int, int]:
        """The object an abort names: the open transfer's, else the one the frame addressed."""
        transfer = self._transfer
        if transfer is not None:
            return transfer.index, transfer.sub
        if command_of(frame) in (Command.DOWNLOAD_INITIATE, Command.UPLOAD_INITIATE, Command.BLOCK_DOWNLOAD):
            return multiplexer(frame)
        return 0, 0
