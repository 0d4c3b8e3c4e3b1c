"""A slave's object dictionary: the SYSTEM objects a scan reads and the OTA objects a stream writes.

From ``uc2-stack.md`` §3.1 and §7: 0x1000 device type (CiA 301's one mandatory object, what a probing
scan asks for), 0x2500 firmware version, 0x2501 image name, 0x2507 reboot command (write 1), 0x2508
build time, 0x2509 MAC, and 0x2F00-0x2F05 (:mod:`~uc2otad.sim.ota_objects`). What a slave reports
follows its configured style: a board that reports nothing (legacy) has no version, build or MAC
objects, and a board without an image name has no 0x2501.

Pure, like the SDO server above it: the erase time a size write costs, and the check and commit at
the end of an image, are added to :attr:`SlaveObjects.busy_seconds` for the node to spend before it
answers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from uc2otad.sim.ota_objects import OtaReceiver
from uc2otad.sim.sdo_block import DownloadSink
from uc2otad.sim.sdo_wire import AbortCode, SdoAbortError

DEVICE_TYPE = 0x1000
FIRMWARE_VERSION = 0x2500
IMAGE_NAME = 0x2501
REBOOT = 0x2507
BUILD_TIME = 0x2508
MAC_ADDRESS = 0x2509
OTA_DATA = 0x2F00
OTA_SIZE = 0x2F01
OTA_CRC = 0x2F02
OTA_STATUS = 0x2F03
OTA_RECEIVED = 0x2F04
OTA_ERROR = 0x2F05
#: what 0x1000 holds: no CiA device profile
NO_PROFILE = 0
_READ_ONLY = frozenset(
    {DEVICE_TYPE, FIRMWARE_VERSION, IMAGE_NAME, BUILD_TIME, MAC_ADDRESS, OTA_STATUS, OTA_RECEIVED, OTA_ERROR}
)


@dataclass(frozen=True)
class Reported:
    """What the slave reports about itself now; None: that object does not exist on this board."""

    version: str | None
    build: str | None
    mac: str | None
    image: str | None


class _ValueSink:
    """A small object's download: collect the bytes, hand them over at the end."""

    def __init__(self, store: Callable[[bytes], None]) -> None:
        self._store = store
        self._data = bytearray()

    def write(self, data: bytes) -> None:
        self._data += data

    def end(self) -> None:
        self._store(bytes(self._data))

    def abort(self) -> None:
        self._data.clear()


class _CommittingSink:
    """The image's download: once its end checked and committed the image, that work is owed."""

    def __init__(self, sink: DownloadSink, committed: Callable[[], None]) -> None:
        self._sink = sink
        self._committed = committed

    def write(self, data: bytes) -> None:
        self._sink.write(data)

    def end(self) -> None:
        self._sink.end()
        self._committed()

    def abort(self) -> None:
        self._sink.abort()


class SlaveObjects:
    """The objects of one slave.

    :param reported: what the board reports now (it changes when it boots another image)
    :param ota: the OTA objects' state
    :param on_reboot: the reboot command was written
    :param erase_seconds: how long the next size write keeps the flash busy
    :param commit_seconds: how long checking and committing a complete image takes
    """

    def __init__(
        self,
        reported: Callable[[], Reported],
        ota: OtaReceiver,
        *,
        on_reboot: Callable[[], None],
        erase_seconds: Callable[[], float],
        commit_seconds: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._reported = reported
        self.ota = ota
        self._on_reboot = on_reboot
        self._erase_seconds = erase_seconds
        self._commit_seconds = commit_seconds
        #: flash time owed for the last request; the node spends it before answering
        self.busy_seconds = 0.0

    def take_busy_seconds(self) -> float:
        busy, self.busy_seconds = self.busy_seconds, 0.0
        return busy

    def upload(self, index: int, sub: int) -> bytes:
        if sub != 0:
            raise SdoAbortError(AbortCode.NO_OBJECT, f"0x{index:04X}:{sub:02X}")
        reported = self._reported()
        texts = {
            FIRMWARE_VERSION: reported.version,
            IMAGE_NAME: reported.image,
            BUILD_TIME: reported.build,
            MAC_ADDRESS: reported.mac,
        }
        if index in texts:
            text = texts[index]
            if text is None:
                raise SdoAbortError(AbortCode.NO_OBJECT, f"0x{index:04X} is not on this board")
            return text.encode()
        ota = self.ota
        numbers = {
            DEVICE_TYPE: struct.pack("<I", NO_PROFILE),
            REBOOT: b"\x00",
            OTA_CRC: struct.pack("<I", ota.expected_crc),
            OTA_STATUS: bytes([ota.status]),
            OTA_RECEIVED: struct.pack("<I", ota.received),
            OTA_ERROR: bytes([ota.error]),
        }
        if index in numbers:
            return numbers[index]
        if index in (OTA_DATA, OTA_SIZE):
            # both are SDO_RW in the OD (lib/uc2_od/OD.c:882-891 @063e5a6), but their write extensions
            # have no read function (CanOpenOTA.cpp:378, 390): CANopenNode's OD_readDisabled answers
            raise SdoAbortError(AbortCode.UNSUPPORTED_ACCESS, f"0x{index:04X} cannot be read")
        raise SdoAbortError(AbortCode.NO_OBJECT, f"0x{index:04X}")

    def download(self, index: int, sub: int, size: int | None) -> DownloadSink:
        if sub != 0:
            raise SdoAbortError(AbortCode.NO_OBJECT, f"0x{index:04X}:{sub:02X}")
        if index == OTA_DATA:
            return _CommittingSink(self.ota.image_sink(), self._owe_commit)
        if index == OTA_SIZE:
            return _ValueSink(self._set_size)
        if index == OTA_CRC:
            return _ValueSink(lambda data: self.ota.set_expected_crc(_unsigned(data)))
        if index == REBOOT:
            return _ValueSink(self._reboot)
        if index in _READ_ONLY:
            raise SdoAbortError(AbortCode.READ_ONLY, f"0x{index:04X}")
        raise SdoAbortError(AbortCode.NO_OBJECT, f"0x{index:04X}")

    def _set_size(self, data: bytes) -> None:
        size = _unsigned(data)
        if size:
            self.busy_seconds += self._erase_seconds()
        self.ota.begin(size)

    def _owe_commit(self) -> None:
        self.busy_seconds += self._commit_seconds()

    def _reboot(self, data: bytes) -> None:
        if _unsigned(data) != 1:
            raise SdoAbortError(AbortCode.INVALID_VALUE, "write 1 to reboot")
        self._on_reboot()


def _unsigned(data: bytes) -> int:
    """A little-endian unsigned value of 1 to 4 bytes, as an expedited write carries it."""
    if not 1 <= len(data) <= 4:
        raise SdoAbortError(AbortCode.LENGTH_MISMATCH, f"{len(data)} bytes for a number")
    return int.from_bytes(data, "little")
