"""A slave's OTA objects 0x2F00-0x2F05: an image written into the other app partition, checked, committed.

Written from ``uc2-stack.md`` §3.1 (FW-main ``CanOpenOTA.cpp`` as the spec describes it):

- 0x2F02 (U32) takes the expected CRC-32 (zlib's; 0 = no check); the master writes it first;
- 0x2F01 (U32) takes the size and runs ``esp_ota_begin``: status 1 (receiving); more than the 0x140000
  partition is error 7; size 0 resets;
- 0x2F00 (DOMAIN) streams the bytes into the partition (``esp_ota_write``); once all arrived the slave
  checks the CRC (error 4), lets ESP-IDF check the image (``esp_ota_end``: no 0xE9 header is error 5),
  sets the boot partition and reports status 3 — the node then reboots into it;
- 0x2F03 status (0 idle, 1 receiving, 2 verifying, 3 complete, 0xFF error), 0x2F04 bytes received,
  0x2F05 error code, read-only here (FW-main's OD makes them SDO_RW, ``lib/uc2_od/OD.c:897-911``
  @063e5a6, but nothing in its OTA reads a written value back; no client writes them);
- 0x2F01 and 0x2F00 cannot be read (their extensions have no read function, ``CanOpenOTA.cpp:378, 390``).

The inactivity watchdog (``CanOpenOTA.cpp:102-119`` @063e5a6) keys on :attr:`OtaReceiver.feeds`: the
firmware stamps its "last activity" when the size write has begun the OTA (``:223-225``) and after each
flash write of image data (``:270-273``), nothing else; its reset is :meth:`OtaReceiver.reset`
(``resetOtaState``, ``:125-145``: status idle, bytes 0, error none). Image data while no OTA runs
(never begun, reset by the watchdog, ended in an error or complete) is refused at the write with
``ODR_DEV_INCOMPAT`` and no change of state (``:238-241``), which CANopenNode sends as abort 0x06040047.

A refusal is an SDO abort, which is what the master sees of it. Pure and synchronous, like the C++; the
node adds the time the flash is busy.
"""

from __future__ import annotations

import logging
import zlib
from enum import IntEnum

from uc2otad.sim.sdo_block import DownloadSink
from uc2otad.sim.sdo_wire import AbortCode, SdoAbortError

_LOGGER = logging.getLogger(__name__)

#: app0/app1 of the slaves' ``custom_partition_esp32s3.csv``: 0x140000 bytes each (§3.1)
OTA_PARTITION_SIZE = 0x140000
#: the first byte of an ESP app image; ``esp_ota_end`` rejects anything else
IMAGE_MAGIC = 0xE9


class OtaStatus(IntEnum):
    """0x2F03."""

    IDLE = 0
    RECEIVING = 1
    VERIFYING = 2
    COMPLETE = 3
    ERROR = 0xFF


class OtaError(IntEnum):
    """0x2F05."""

    NONE = 0
    NO_PARTITION = 1
    BEGIN_FAILED = 2
    WRITE_FAILED = 3
    CRC_MISMATCH = 4
    COMMIT_FAILED = 5
    #: defined (``CanOpenOTA.h:38`` @063e5a6) but never set by FW-main
    SIZE_ZERO = 6
    TOO_LARGE = 7


class OtaReceiver:
    """The state behind the OTA objects.

    :param corrupt_offset: a fault: the flash write of the byte at this image offset goes wrong, so the
        read-back check at the end finds a CRC mismatch
    """

    def __init__(self, *, corrupt_offset: int | None = None) -> None:
        self.corrupt_offset = corrupt_offset
        self.status = OtaStatus.IDLE
        self.error = OtaError.NONE
        self.size = 0
        self.expected_crc = 0
        #: the image set as the boot partition, waiting for the reboot; None before
        self.committed: bytes | None = None
        #: how often the watchdog's last-activity time was taken (``s_lastChunkMillis``); the node stamps
        #: the clock whenever this changes, after the flash work of the request
        self.feeds = 0
        self._partition = bytearray()

    @property
    def received(self) -> int:
        """0x2F04: bytes written since the size write."""
        return len(self._partition)

    def set_expected_crc(self, crc: int) -> None:
        """0x2F02."""
        self.expected_crc = crc

    def begin(self, size: int) -> None:
        """0x2F01: ``esp_ota_begin`` for ``size`` bytes (0 resets).

        :raises SdoAbortError: larger than the partition
        """
        self._partition = bytearray()
        self.committed = None
        if size == 0:
            self.reset()
            return
        if size > OTA_PARTITION_SIZE:
            self._fail(OtaError.TOO_LARGE)
            raise SdoAbortError(AbortCode.VALUE_TOO_HIGH, f"{size} bytes > partition of {OTA_PARTITION_SIZE}")
        self.size = size
        self.status = OtaStatus.RECEIVING
        self.error = OtaError.NONE
        self.feeds += 1  # after esp_ota_begin returned: the erase does not eat the idle window (:223-225)
        _LOGGER.debug("OTA begin size=%d crc=0x%08X", size, self.expected_crc)

    def image_sink(self) -> DownloadSink:
        """0x2F00: where the image's bytes go. The download always begins: the firmware looks at its
        state only when CANopenNode hands it the first data (:meth:`write`)."""
        return _ImageSink(self)

    def reset(self) -> None:
        """Back to idle: the master's size 0, or the slave's watchdog for a half-finished OTA."""
        self.status = OtaStatus.IDLE
        self.error = OtaError.NONE
        self.size = 0
        self._partition = bytearray()

    def write(self, data: bytes) -> None:
        """``esp_ota_write``.

        :raises SdoAbortError: no OTA runs (``onOtaWriteChunk`` returns ``ODR_DEV_INCOMPAT`` and changes
            nothing, ``CanOpenOTA.cpp:238-241`` @063e5a6), or more bytes than the size written
        """
        if self.status is not OtaStatus.RECEIVING:
            raise SdoAbortError(
                AbortCode.DEVICE_INCOMPAT, f"OTA status {self.status.name}: write the size first"
            )
        start = self.received
        if start + len(data) > self.size:
            self._fail(OtaError.WRITE_FAILED)
            raise SdoAbortError(AbortCode.STORE, f"more than the {self.size} bytes announced")
        self._partition += data
        self.feeds += 1  # after esp_ota_write (CanOpenOTA.cpp:270-273)
        offset = self.corrupt_offset
        if offset is not None and start <= offset < self.received:
            self._partition[offset] ^= 0xFF

    def finish(self) -> None:
        """All bytes arrived: check the CRC (read back from flash), ``esp_ota_end``, set the boot partition.

        :raises SdoAbortError: incomplete, CRC mismatch, or not an app image
        """
        if self.status is not OtaStatus.RECEIVING or self.received != self.size:
            raise SdoAbortError(AbortCode.STORE, f"{self.received} of {self.size} bytes")
        self.status = OtaStatus.VERIFYING
        crc = zlib.crc32(self._partition)
        if self.expected_crc and crc != self.expected_crc:
            self._fail(OtaError.CRC_MISMATCH)
            raise SdoAbortError(AbortCode.STORE, f"CRC-32 0x{crc:08X}, expected 0x{self.expected_crc:08X}")
        if self._partition[0] != IMAGE_MAGIC:
            self._fail(OtaError.COMMIT_FAILED)
            raise SdoAbortError(AbortCode.STORE, f"no app image: first byte 0x{self._partition[0]:02X}")
        self.committed = bytes(self._partition)
        self.status = OtaStatus.COMPLETE
        _LOGGER.debug("OTA complete size=%d crc=0x%08X", self.size, crc)

    def _fail(self, error: OtaError) -> None:
        self.status = OtaStatus.ERROR
        self.error = error


class _ImageSink:
    """0x2F00 as a download target; an aborted transfer leaves the OTA half-finished for the watchdog."""

    def __init__(self, receiver: OtaReceiver) -> None:
        self._receiver = receiver

    def write(self, data: bytes) -> None:
        self._receiver.write(data)

    def end(self) -> None:
        self._receiver.finish()

    def abort(self) -> None:
        _LOGGER.debug("OTA transfer aborted at received=%d", self._receiver.received)
