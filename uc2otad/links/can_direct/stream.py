"""One image into one node, the way FW-main's master does it on the bus (youseetoo/uc2-esp32 @063e5a6).

``OtaBinaryReceive.cpp:70-118, 263-274``: the node must have been heard within 10 s (``:155``,
``slave_unreachable``); CRC-32 into 0x2F02 (``:78``, ``crc_write_failed``), size into 0x2F01 (``:88``,
``size_write_failed``) — the slave runs ``esp_ota_begin`` inside the write and so answers only after
erasing the partition (``CanOpenOTA.cpp:202-215``), hence ``size_write_timeout``; a 500 ms settle
(``OtaBinaryReceive.cpp:93-96``); the SDO **block** download of the image into 0x2F00 with a 15 s
timeout (``CANopenModule.cpp:814-816, 854-859``, ``sdo_begin_failed``, ``sdo_chunk_failed``); the end of
the transfer, in which the slave checks the CRC, commits the image and sets the boot partition before it
answers (``CanOpenOTA.cpp:296-357``, ``sdo_end_failed``). After a failure the slave's own status 0x2F03
and error code 0x2F05 (``CanOpenOTA.h:21-40``; ``setError`` keeps them readable,
``CanOpenOTA.cpp:150-154``) are read back as FW-main's PC tool does (``tools/canopen/uc2_ota_can.py:143-162``)
and go into the error's details; after success 0x2F03 is read once more while the node has not
rebooted yet (3, complete; only 0xFF refutes it).

Where the sources disagree, the code the master runs wins: the comments ``CanOpenOTA.cpp:10-12``,
``CanOpenOTA.h:10`` and ``CanOpenOTAStreaming.h:28-31`` say size first, then CRC, but the master writes
the CRC first (``OtaBinaryReceive.cpp:77-92``), as ``uc2-stack.md`` §3.1 says.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from canopen.sdo.exceptions import SdoAbortedError

from uc2otad.aio import StoppedError
from uc2otad.errors import LinkClosedError, LinkLostError, MasterError
from uc2otad.links.can_direct.objects import (
    OTA_COMPLETE,
    OTA_CRC,
    OTA_DATA,
    OTA_ERROR,
    OTA_ERROR_NAMES,
    OTA_SIZE,
    OTA_STATUS,
    OTA_STATUS_ERROR,
    OTA_STATUS_NAMES,
    SEGMENT_BYTES,
)
from uc2otad.links.can_direct.sdo import SEND_ERRORS, SdoChannel, SdoFailedError
from uc2otad.links.can_direct.settings import CanSettings
from uc2otad.links.ota_stream import CHUNK_SIZE, MASTER_ERROR_TEXT
from uc2otad.links.protocol import Progress, StreamResult

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamTarget:
    """What a stream needs of its link: the SDO client, and the link's checks."""

    #: the link's name, for errors
    name: str
    settings: CanSettings
    sdo: SdoChannel
    #: ``wait_heard(node_id, timeout)``: True once the node is heard, False after ``timeout``
    wait_heard: Callable[[int, float], Awaitable[bool]]
    #: ``check(node_id)`` before the first frame to the node: raises when the link must not send to it
    check: Callable[[int], None]


class ImageStream:
    """One image into one node over a held link."""

    def __init__(self, target: StreamTarget, node_id: int, image: bytes, crc32: int) -> None:
        self._target = target
        self._sdo = target.sdo
        self._node_id = node_id
        self._image = image
        self._crc32 = crc32
        self._settings = target.settings
        self._name = f"{target.name}: node {node_id}"

    async def run(self, progress: Progress | None, on_flashing: Callable[[], None] | None) -> StreamResult:
        """CRC, size, settle, the block download, the check of 0x2F03; see the module.

        :raises MasterError: a step failed (``.code``: the master's code for it)
        :raises LinkError: the link was lost or refused meanwhile
        """
        target, settings, node_id, size = self._target, self._settings, self._node_id, len(self._image)
        loop = asyncio.get_running_loop()
        started = loop.time()
        _LOGGER.info("%s: streaming size=%d crc32=0x%08X", self._name, size, self._crc32)
        if not await target.wait_heard(node_id, settings.reachable_timeout):
            raise MasterError(
                f"{self._name}: {MASTER_ERROR_TEXT['slave_unreachable']} "
                f"within {settings.reachable_timeout}s (error=slave_unreachable)",
                port=target.name,
                code="slave_unreachable",
                node_id=node_id,
            )
        target.check(node_id)
        await self._write_u32(OTA_CRC, self._crc32, settings.sdo_timeout, "crc_write_failed")
        await self._write_u32(OTA_SIZE, size, settings.size_write_timeout, "size_write_failed")
        await asyncio.sleep(settings.ota_settle)
        chunks = await self._push(progress, on_flashing)
        await self._confirm()
        seconds = loop.time() - started
        _LOGGER.info("%s: success in %0.3fs (%0.1f KiB/s)", self._name, seconds, size / 1024 / seconds)
        return StreamResult(node_id, size, self._crc32, chunks, seconds)

    async def _confirm(self) -> None:
        """0x2F03 once more, as FW-main's PC tool reads it (``uc2_ota_can.py:143-162``): the end of the
        transfer was answered only after the commit (``CanOpenOTA.cpp:339-357``), so only an error
        status refutes it; no answer or idle means the node is rebooting already.

        :raises MasterError: the node reports an OTA error (``sdo_end_failed``, its 0x2F05 in the details)
        """
        status = await self._sdo.read_number(self._node_id, OTA_STATUS, self._settings.sdo_timeout)
        if status == OTA_COMPLETE:
            return
        if status != OTA_STATUS_ERROR:
            _LOGGER.info("%s: status after the image: %s (rebooting)", self._name, status)
            return
        details = await self._slave_state()
        raise MasterError(
            f"{self._name}: {MASTER_ERROR_TEXT['sdo_end_failed']} (error=sdo_end_failed "
            f"ota_error={details.get('ota_error')})",
            port=self._target.name,
            code="sdo_end_failed",
            node_id=self._node_id,
            details=details,
        )

    async def _write_u32(self, index: int, value: int, timeout: float, code: str) -> None:  # noqa: ASYNC109
        data = struct.pack("<I", value)
        try:
            await self._sdo.run(self._node_id, timeout, lambda sdo: sdo.download(index, 0, data))
        except SdoFailedError as failure:
            raise failure.as_error(self._target.name, code, details=await self._slave_state()) from None

    async def _slave_state(self) -> dict[str, Any]:
        """0x2F03 and 0x2F05 as the slave reports them after a failure (those that answer)."""
        facts: dict[str, Any] = {}
        timeout = self._settings.sdo_timeout
        status = await self._sdo.read_number(self._node_id, OTA_STATUS, timeout)
        if status is not None:
            facts["ota_status"] = OTA_STATUS_NAMES.get(status, str(status))
        error = await self._sdo.read_number(self._node_id, OTA_ERROR, timeout)
        if error:
            facts["ota_error"] = OTA_ERROR_NAMES.get(error, str(error))
        return facts

    async def _push(self, progress: Progress | None, on_flashing: Callable[[], None] | None) -> int:
        """The block download: initiate, the image chunk by chunk, the end. Returns the chunks sent."""
        size = len(self._image)
        loop = asyncio.get_running_loop()
        state = _PushState()

        def report(acknowledged: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, acknowledged, size)

        def flashing() -> None:
            if on_flashing is not None:
                loop.call_soon_threadsafe(on_flashing)

        try:
            return await self._sdo.run_stoppable(
                self._node_id,
                self._settings.block_timeout,
                lambda sdo, stop: self._blocking_push(sdo, stop, state, report, flashing),
            )
        except SdoFailedError as failure:
            code = {"begin": "sdo_begin_failed", "data": "sdo_chunk_failed"}.get(state.step, "sdo_end_failed")
            raise failure.as_error(self._target.name, code, details=await self._slave_state()) from None
        except asyncio.CancelledError:
            await self._reset()
            raise

    def _blocking_push(
        self,
        sdo: Any,
        stop: threading.Event,
        state: _PushState,
        report: Callable[[int], None],
        flashing: Callable[[], None],
    ) -> int:
        """In a worker thread: canopen's block download stream, fed 7 bytes at a time, checked per chunk."""
        image, size = self._image, len(self._image)
        stream = sdo.open(OTA_DATA, 0, "wb", size=size, block_transfer=True, buffering=0)
        state.step = "data"
        chunks = 0
        try:
            for offset in range(0, size, SEGMENT_BYTES):
                stream.write(image[offset : offset + SEGMENT_BYTES])  # the last one ends the transfer
                sent = min(offset + SEGMENT_BYTES, size)
                if sent // CHUNK_SIZE == offset // CHUNK_SIZE and sent < size:
                    continue
                chunks += 1  # a chunk's worth (the master's 4 KB) went out: report, check, go on
                report(_acknowledged(stream))
                if stop.is_set():
                    raise StoppedError
                self._sdo.raise_if_lost()
            flashing()
            state.step = "end"
            stream.close()  # the end frame with the CRC; the slave checks and commits before it answers
        except SdoAbortedError:
            io.RawIOBase.close(stream)  # the node ended it: no end frame from the collector later
            raise
        except BaseException:
            if not stream.closed:
                io.RawIOBase.close(stream)
                with contextlib.suppress(LinkLostError, *SEND_ERRORS):  # a courtesy: the bus may be gone
                    sdo.abort()
            raise
        return chunks

    async def _reset(self) -> None:
        """The host gave up mid-stream: size 0 resets the slave's OTA at once (``CanOpenOTA.cpp:172-176``).
        Never raises but CancelledError; the slave's 30 s watchdog does the same if this does not arrive."""
        data = struct.pack("<I", 0)
        with contextlib.suppress(SdoFailedError, LinkLostError, LinkClosedError):
            await self._sdo.run(
                self._node_id, self._settings.sdo_timeout, lambda sdo: sdo.download(OTA_SIZE, 0, data)
            )


@dataclass
class _PushState:
    #: which part of the block download runs: the initiate, the data, the end (the master's codes differ)
    step: str = "begin"


def _acknowledged(stream: Any) -> int:
    """Bytes of ``stream`` whose sub-blocks the node acknowledged: those sent, less the sub-block still
    open. canopen 2.4 exposes no acknowledged count; its segments waiting for an acknowledgement are in
    ``_current_block`` (7 bytes each but the last)."""
    pending = getattr(stream, "_current_block", [])
    return max(0, int(stream.tell()) - sum(len(segment) for segment in pending))
