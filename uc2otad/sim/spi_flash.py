"""The SPI NOR flash chip of a simulated ESP32 board: its contents and the few commands esptool sends it.

Written from ``shared/specs/esptool-rom.md``: erasing sets whole 4 KB sectors to 0xFF and programming
is a bitwise AND, as on NOR flash, so a write that skipped its erase leaves visibly wrong bytes. The
chip answers JEDEC RDID (0x9F) as a Winbond part of its size, reads its SFDP table (0x5A) — which
starts with ``"SFDP"`` — and takes the flash reset pair 0x66/0x99.

Main constraint: the contents outlive every connection (only :meth:`erase` and :meth:`program` change
them), and nothing reads or writes outside the chip: callers check :meth:`holds` first.
"""

from __future__ import annotations

import hashlib

SECTOR_SIZE = 0x1000
#: the CAN HAT's ESP32 module carries 4 MB (ESP32-WROOM-32); the spec's ESP32-S3 board had 8 MB
DEFAULT_FLASH_SIZE = 4 * 1024 * 1024
#: JEDEC manufacturer id of Winbond, the spec's flash (``EF 40 17`` for 8 MB)
WINBOND = 0xEF
#: Winbond's W25Q (SPI) memory type; the third RDID byte is log2 of the size
W25Q_MEMORY_TYPE = 0x40
ERASED = 0xFF

RDID = 0x9F
RDSFDP = 0x5A
#: status register reads answer 0: not busy, no write protection
READ_STATUS = frozenset({0x05, 0x35, 0x15})

#: the SFDP table as far as a host reads it: the header (signature, revision 1.6, two parameter
#: headers), the JEDEC basic table's parameter header, and a vendor table's whose id is the JEDEC
#: manufacturer id — esptool's XMC check reads that byte at 0x10. Beyond it the chip reads 0xFF.
_SFDP = (
    b"SFDP\x06\x01\x01\xff"
    + bytes([0x00, 0x06, 0x01, 0x10, 0x80, 0x00, 0x00, 0xFF])
    + bytes([WINBOND, 0x00, 0x01, 0x03, 0xC0, 0x00, 0x00, 0xFF])
)


class SpiFlash:
    """A NOR flash chip of ``size`` bytes (a power of two, 1-16 MB), erased at the start."""

    def __init__(self, size: int = DEFAULT_FLASH_SIZE) -> None:
        if size.bit_count() != 1 or not 1 << 20 <= size <= 1 << 24:
            raise ValueError(f"flash size must be a power of two from 1 MB to 16 MB, not {size}")
        self.size = size
        self._data = bytearray([ERASED]) * size

    def __repr__(self) -> str:
        return f"SpiFlash({self.size // (1 << 20)} MB)"

    @property
    def jedec_id(self) -> bytes:
        """What RDID answers: manufacturer, memory type, capacity (log2 of the size in bytes)."""
        return bytes([WINBOND, W25Q_MEMORY_TYPE, self.size.bit_length() - 1])

    def holds(self, offset: int, length: int) -> bool:
        """Whether ``[offset, offset + length)`` lies on the chip."""
        return offset >= 0 and length >= 0 and offset + length <= self.size

    def read(self, offset: int, length: int) -> bytes:
        """The stored bytes; the caller checked :meth:`holds`."""
        return bytes(self._data[offset : offset + length])

    def md5(self, offset: int, length: int) -> bytes:
        return hashlib.md5(self._data[offset : offset + length], usedforsecurity=False).digest()

    def erase(self, offset: int, length: int) -> tuple[int, int]:
        """Erase every sector that ``[offset, offset + length)`` touches; returns the erased range."""
        start = offset - offset % SECTOR_SIZE
        end = min(self.size, -(-(offset + length) // SECTOR_SIZE) * SECTOR_SIZE)
        self._data[start:end] = bytes([ERASED]) * (end - start)
        return start, end

    def erase_all(self) -> None:
        self._data[:] = bytes([ERASED]) * self.size

    def load(self, offset: int, data: bytes) -> None:
        """Set ``data`` at ``offset`` as the factory left it, whatever was there: for setting up a board,
        not a flash operation (those are :meth:`erase` and :meth:`program`)."""
        self._data[offset : offset + len(data)] = data

    def program(self, offset: int, data: bytes) -> None:
        """Program ``data`` at ``offset``: bits can only go from 1 to 0 (NOR), so unerased bytes AND."""
        end = offset + len(data)
        stored = int.from_bytes(self._data[offset:end], "little")
        self._data[offset:end] = (stored & int.from_bytes(data, "little")).to_bytes(len(data), "little")

    def user_command(self, opcode: int, address: int, read_bytes: int) -> bytes:
        """The bytes the chip shifts out for an SPI command: RDID, SFDP, status; nothing for others.

        :param address: the command's address phase (SFDP); ignored by the others
        :param read_bytes: how many bytes the host clocks in; the answer is cut or 0xFF-padded to it
        """
        if opcode == RDID:
            answer = self.jedec_id
        elif opcode == RDSFDP:
            answer = _SFDP[address : address + read_bytes]
        elif opcode in READ_STATUS:
            answer = bytes(read_bytes)
        else:  # write enable, reset enable/reset, …: no data phase of their own
            answer = b""
        return answer[:read_bytes].ljust(read_bytes, b"\xff")
