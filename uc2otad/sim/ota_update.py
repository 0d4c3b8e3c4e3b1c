"""The simulated board's ``Update`` library: 4 KB sector buffer, flash erase and write, MD5, activation.

Written from ``arduino-ota.md`` §3.2-§3.3 (UPD). What a host can observe comes from here: how many
bytes each write takes (the ack), when flash work stalls the board (every 4 KB a sector write, every
64 KB a block erase), that the 0xE9 check fires only at the first 4 KB flush, and which error string the
board prints at the end. After any error the update resets, and then counts as "finished", which is what
ends the board's receive loop so that it prints the error.

Main constraint: synchronous and pure, like the C++ class. Flash work does not sleep here; it adds to
:attr:`FlashUpdate.busy_seconds`, and the board sleeps that long before it acks, as the real
``Update.write`` blocks its caller.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

#: ``SPI_FLASH_SEC_SIZE``: the write buffer and the smallest erase
SECTOR_SIZE = 4096
#: ``SPI_FLASH_BLOCK_SIZE``: the erase unit at 64 KB boundaries
BLOCK_SIZE = 0x10000
#: ``ENCRYPTED_BLOCK_SIZE``: the first bytes of an app are held back until the end, so that a partial
#: image is never bootable
HELD_BACK_LEN = 16
#: first byte of an ESP app image (``ESP_IMAGE_HEADER_MAGIC``)
IMAGE_MAGIC = 0xE9
#: invitation commands (``U_FLASH``, ``U_SPIFFS``, §1.1)
U_FLASH = 0
U_SPIFFS = 100
_ERASED = 0xFF


class UpdateError(IntEnum):
    """``UPDATE_ERROR_*`` codes; :data:`ERROR_TEXT` has what ``printError`` prints for each."""

    OK = 0
    WRITE = 1
    ERASE = 2
    READ = 3
    SPACE = 4
    SIZE = 5
    STREAM = 6
    MD5 = 7
    MAGIC_BYTE = 8
    ACTIVATE = 9
    NO_PARTITION = 10
    BAD_ARGUMENT = 11
    ABORT = 12
    DECRYPT = 13


#: UPD ``_err2str``, exactly (§3.3)
ERROR_TEXT: dict[UpdateError, str] = {
    UpdateError.OK: "No Error",
    UpdateError.WRITE: "Flash Write Failed",
    UpdateError.ERASE: "Flash Erase Failed",
    UpdateError.READ: "Flash Read Failed",
    UpdateError.SPACE: "Not Enough Space",
    UpdateError.SIZE: "Bad Size Given",
    UpdateError.STREAM: "Stream Read Timeout",
    UpdateError.MD5: "MD5 Check Failed",
    UpdateError.MAGIC_BYTE: "Wrong Magic Byte",
    UpdateError.ACTIVATE: "Could Not Activate The Firmware",
    UpdateError.NO_PARTITION: "Partition Could Not be Found",
    UpdateError.BAD_ARGUMENT: "Bad Argument",
    UpdateError.ABORT: "Aborted",
    UpdateError.DECRYPT: "Decryption error",
}


@dataclass(frozen=True)
class FlashTiming:
    """Seconds the flash chip is busy per operation; all zero is an infinitely fast flash."""

    #: writing one 4 KB sector
    sector_write: float = 0.0
    #: erasing one 4 KB sector (only the tail of an image is erased sector by sector)
    sector_erase: float = 0.0
    #: erasing one 64 KB block
    block_erase: float = 0.0


class FlashUpdate:
    """One partition being written, as ``UpdateClass`` does it (partition assumed 64 KB aligned, as the
    Arduino ``app0``/``app1``/``spiffs`` partitions are).

    :param timing: how long flash operations take
    :param write_error_at: a fault: the sector write that would cover this image offset fails
    """

    def __init__(self, timing: FlashTiming | None = None, *, write_error_at: int | None = None) -> None:
        self.timing = timing or FlashTiming()
        self.write_error_at = write_error_at
        self.error = UpdateError.OK
        #: flash time owed since the last :meth:`take_busy_seconds`
        self.busy_seconds = 0.0
        #: the image of the last update that ended well; None before
        self.image: bytes | None = None
        self._size = 0
        self._progress = 0
        self._command = U_FLASH
        self._buffer = bytearray()
        self._held_back = b""
        self._partition = bytearray()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._target_md5 = ""

    @property
    def error_text(self) -> str:
        return ERROR_TEXT[self.error]

    @property
    def finished(self) -> bool:
        """``isFinished()``: every byte flushed, or (size 0 after a reset) nothing left to do."""
        return self._progress == self._size

    @property
    def remaining(self) -> int:
        """``remaining()``: bytes not yet flushed; buffered bytes still count as remaining."""
        return self._size - self._progress

    def begin(self, size: int, command: int, partition_size: int) -> bool:
        """Start writing ``size`` bytes into a partition of ``partition_size``; False with :attr:`error`."""
        if self._size > 0:
            return False  # "already running"
        self._reset()
        self.error = UpdateError.OK
        self._target_md5 = ""
        self._md5 = hashlib.md5(usedforsecurity=False)
        if size == 0:
            self.error = UpdateError.SIZE
            return False
        if command not in (U_FLASH, U_SPIFFS):
            self.error = UpdateError.BAD_ARGUMENT
            return False
        # size is a signed int on the board and a size_t here: a negative one is huge, hence too large
        if size < 0 or size > partition_size:
            self.error = UpdateError.SIZE
            return False
        self._size = size
        self._command = command
        self._partition = bytearray([_ERASED]) * partition_size
        return True

    def set_md5(self, md5_hex: str) -> bool:
        """The MD5 the whole image must have; compared in lower case at :meth:`end`."""
        if len(md5_hex) != 32:
            return False
        self._target_md5 = md5_hex.lower()
        return True

    def write(self, data: bytes) -> int:
        """Take the bytes of one read; return how many were taken (the board acks that number).

        0 means an error (or no update running); a short count means the sector write that the data
        completed failed.
        """
        if self.error is not UpdateError.OK or self._size == 0:
            return 0
        if len(data) > self.remaining:
            self._abort(UpdateError.SPACE)
            return 0
        left = len(data)
        while len(self._buffer) + left > SECTOR_SIZE:
            take = SECTOR_SIZE - len(self._buffer)
            start = len(data) - left
            self._buffer += data[start : start + take]
            if not self._write_buffer():
                return len(data) - left
            left -= take
        self._buffer += data[len(data) - left :]
        if len(self._buffer) == self.remaining and not self._write_buffer():
            return len(data) - left
        return len(data)

    def end(self) -> bool:
        """Check the MD5, write the held-back bytes and activate; False with :attr:`error` otherwise."""
        if self.error is not UpdateError.OK or self._size == 0:
            return False
        if not self.finished:
            self._abort(UpdateError.ABORT)  # "premature end"
            return False
        if self._target_md5 and self._target_md5 != self._md5.hexdigest():
            self._abort(UpdateError.MD5)
            return False
        if self._command == U_FLASH:
            self._partition[:HELD_BACK_LEN] = self._held_back
            if self._partition[0] != IMAGE_MAGIC:  # _partitionIsBootable
                self._abort(UpdateError.READ)
                return False
        self.image = bytes(self._partition[: self._size])
        self._reset()
        return True

    def abort(self) -> None:
        self._abort(UpdateError.ABORT)

    def take_busy_seconds(self) -> float:
        """The flash time owed since the last call, which the caller now spends; resets it."""
        busy, self.busy_seconds = self.busy_seconds, 0.0
        return busy

    # ---- one sector ---------------------------------------------------------------------------------

    def _write_buffer(self) -> bool:
        """Flush the sector buffer: magic check on the first, erase, write, hash (UPD ``_writeBuffer``)."""
        buffer = self._buffer
        self._md5.update(buffer)
        skip = 0
        if self._progress == 0 and self._command == U_FLASH:
            if buffer[0] != IMAGE_MAGIC:
                self._abort(UpdateError.MAGIC_BYTE)
                return False
            skip = HELD_BACK_LEN
            self._held_back = bytes(buffer[:HELD_BACK_LEN])
        offset = self._progress
        block_erase = self._size - offset >= BLOCK_SIZE and offset % BLOCK_SIZE == 0
        tail_sector = offset >= self._size // BLOCK_SIZE * BLOCK_SIZE
        if block_erase or tail_sector:
            length = BLOCK_SIZE if block_erase else SECTOR_SIZE
            self._partition[offset : offset + length] = bytes([_ERASED]) * length
            self.busy_seconds += self.timing.block_erase if block_erase else self.timing.sector_erase
        if self.write_error_at is not None and offset <= self.write_error_at < offset + len(buffer):
            self._abort(UpdateError.WRITE)
            return False
        # the library skips writing sectors that are all 0xFF (``_chkDataInBlock``): erased already
        if buffer.count(_ERASED, skip) < len(buffer) - skip:
            self._partition[offset + skip : offset + len(buffer)] = buffer[skip:]
            self.busy_seconds += self.timing.sector_write
        self._progress += len(buffer)
        self._buffer = bytearray()
        return True

    def _abort(self, error: UpdateError) -> None:
        self._reset()
        self.error = error

    def _reset(self) -> None:
        self._buffer = bytearray()
        self._held_back = b""
        self._progress = 0
        self._size = 0
        self._command = U_FLASH
