"""Stream a firmware image through the master to a slave: ``/ota_start``, ACK-paced 4 KB chunks, the result.

The exchange of ``uc2-stack.md`` §2.2, as UC2-REST 0.2.0.43 performs it against real masters:

1. ``{"task":"/ota_start","ota":{"nodeId":N,"size":S,"crc32":"0x%08X"}}`` without a qid; the master
   answers "ready" (framed) and switches to binary mode, or names what is wrong (``slave_unreachable``…);
2. raw 4096-byte chunks, each written only after ``{"ota_rx": <total>}`` acknowledged the one before:
   the master forwards each chunk over CAN before it reads more;
3. ``{"ota_status":"flashing"}`` while the slave checks and commits the image, then "success".
   Any ``{"ota_status":"error"}`` ends the stream with the master's code (:class:`MasterError`).

Main constraint: from "ready" to its last word the master swallows every byte as firmware, so the link
is held (:meth:`Link.exclusive`) for the whole stream, and a stream the host abandons — cancelled, or a
host-side timeout — leaves a master that goes on swallowing until its own 30 s ``rx_timeout``. Such a
stream restores the master before it lets go of the link (§2.2 step 6): it resets the board through
DTR/RTS where the port has modem lines, as UC2-REST reopens with a reset; otherwise it waits for the
master's own last word — except while the daemon stops, which must not wait 30 s: then the next start's
recovery waits instead (:meth:`SerialHatLink.leave`).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uc2otad.errors import LinkError, LinkTimeoutError, MasterError, MasterUnsupportedError
from uc2otad.links.commands import MAX_NODE_ID, ota_start_reply
from uc2otad.links.hat_channel import HatChannel
from uc2otad.links.protocol import Progress, StreamResult
from uc2otad.links.replies import EventStream, JsonObject

_LOGGER = logging.getLogger(__name__)

#: bytes per write, each acknowledged before the next (UC2-REST ``CHUNK_SIZE``; the master's buffer)
CHUNK_SIZE = 4096
#: seconds for "ready": UC2-REST's 15 s, longer than the master's 10 s wait for the node (§2.2 step 2)
READY_TIMEOUT = 15.0
#: seconds for each chunk's ``ota_rx``: UC2-REST's ``ACK_TIMEOUT_S`` (the first one includes the slave's
#: erase, which the master waits up to 20 s for)
ACK_TIMEOUT = 30.0
#: seconds from the last acknowledgement to "success": UC2-REST's ``FLASH_TIMEOUT_S``
FLASH_TIMEOUT = 600.0
#: the master gives up on a silent host after 30 s (``rx_timeout``, §2.2 step 4)
MASTER_RX_TIMEOUT = 30.0
#: seconds beyond that before the restore stops waiting for the master's last word
RECOVERY_MARGIN = 5.0
#: seconds RTS holds the board in reset: UC2-REST's pulse (``tryToConnect``: 0.1 s)
RESET_PULSE = 0.1
#: seconds for a reset master to answer ``/state_get`` again (ROM, bootloader, setup; UC2-REST drains
#: boot output for at least 1 s before it asks)
RESET_BOOT_TIMEOUT = 5.0

#: what each of the master's codes means, in the words a user reads (§2.2 steps 2 and 4)
MASTER_ERROR_TEXT = {
    "missing_ota_object": "the master found no ota object in /ota_start",
    "missing_nodeId_or_size": "the master found no nodeId or size in /ota_start",
    "invalid_nodeId": "the master does not accept that node id",
    "invalid_size": "the master does not accept that image size (0, or above 8 MiB)",
    "slave_unreachable": "the master has not heard the node on the CAN bus",
    "crc_write_failed": "the node did not take the image's CRC (SDO write to 0x2F02)",
    "size_write_failed": "the node did not take the image size in time (SDO write to 0x2F01; it erases)",
    "sdo_begin_failed": "the node refused the start of the block download into 0x2F00",
    "sdo_chunk_failed": "the node stopped taking the image (SDO block download)",
    "rx_timeout": "the master waited too long for the next bytes from the host",
    "crc_mismatch": "the bytes the master received do not match the CRC announced",
    "sdo_end_failed": "the node refused the finished image (its CRC or image check failed)",
}


@dataclass(frozen=True)
class StreamSettings:
    """Timeouts of a stream; the defaults are UC2-REST's and the firmware's (see the constants)."""

    ready_timeout: float = READY_TIMEOUT
    ack_timeout: float = ACK_TIMEOUT
    flash_timeout: float = FLASH_TIMEOUT
    master_rx_timeout: float = MASTER_RX_TIMEOUT
    recovery_margin: float = RECOVERY_MARGIN
    reset_boot_timeout: float = RESET_BOOT_TIMEOUT


def ota_start_command(node_id: int, size: int, crc32: int) -> dict[str, Any]:
    """The preamble, with the CRC as UC2-REST formats it."""
    return {"task": "/ota_start", "ota": {"nodeId": node_id, "size": size, "crc32": f"0x{crc32:08X}"}}


async def stream_image(
    link: HatChannel,
    node_id: int,
    image: bytes,
    *,
    settings: StreamSettings,
    progress: Progress | None = None,
    on_flashing: Callable[[], None] | None = None,
) -> StreamResult:
    """Stream ``image`` to node ``node_id``; see :meth:`SerialHatLink.stream_ota`."""
    if not 1 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node id must be 1..{MAX_NODE_ID}, not {node_id}")
    if not image:
        raise ValueError("the image is empty")
    if link.identity is not None and not link.identity.is_canopen:
        raise MasterUnsupportedError(
            f"{link.name}: a legacy master ({link.identity.pindef}) cannot stream; use the WiFi method",
            port=link.name,
            code="unsupported",
            node_id=node_id,
        )
    crc32 = await asyncio.to_thread(zlib.crc32, image)
    async with link.exclusive(f"streaming to node {node_id}"), link.listen("ota_rx", "ota_status") as events:
        stream = _Stream(link, events, node_id=node_id, image=image, crc32=crc32, settings=settings)
        return await stream.run(progress, on_flashing)


class _Stream:
    """One stream over a held link, its status messages arriving on ``events``."""

    def __init__(
        self,
        link: HatChannel,
        events: EventStream,
        *,
        node_id: int,
        image: bytes,
        crc32: int,
        settings: StreamSettings,
    ) -> None:
        self._link = link
        self._events = events
        self._node_id = node_id
        self._image = image
        self._crc32 = crc32
        self._settings = settings
        self._name = f"{link.name}: node {node_id}"

    async def run(self, progress: Progress | None, on_flashing: Callable[[], None] | None) -> StreamResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        size = len(self._image)
        _LOGGER.info("%s: streaming size=%d crc32=0x%08X", self._name, size, self._crc32)
        try:
            reply = await self._link.request(
                ota_start_command(self._node_id, size, self._crc32),
                reply=ota_start_reply(self._node_id, size),
                timeout=self._settings.ready_timeout,
                send_qid=False,  # as UC2-REST: the master answers /ota_start without one
            )
            self._check(reply)
            await self._skip_to_ready()
            chunks = await self._send_chunks(progress)
            await self._await_success(on_flashing)
        except MasterError:
            raise  # the master ended the stream itself and reads JSON again
        except (asyncio.CancelledError, LinkTimeoutError):
            await self._restore()
            raise
        seconds = loop.time() - started
        _LOGGER.info("%s: success in %0.3fs (%0.1f KiB/s)", self._name, seconds, size / 1024 / seconds)
        return StreamResult(self._node_id, size, self._crc32, chunks, seconds)

    async def _skip_to_ready(self) -> None:
        """Drop what the stream heard before "ready": a status line left over from an earlier stream."""
        while True:
            message = await self._events.get()
            if message.get("ota_status") == "ready":
                return
            _LOGGER.debug("%s: stale status before ready: %s", self._name, message)

    async def _send_chunks(self, progress: Progress | None) -> int:
        size, sent, chunks = len(self._image), 0, 0
        while sent < size:
            chunk = self._image[sent : sent + CHUNK_SIZE]
            await self._link.write_raw(chunk)
            sent += len(chunk)
            chunks += 1
            acknowledged = await self._await_ack(sent)
            if progress is not None:
                progress(acknowledged, size)
        return chunks

    async def _await_ack(self, sent: int) -> int:
        timeout = self._settings.ack_timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self._events.get()
                    received = message.get("ota_rx")
                    if isinstance(received, int) and received >= sent:
                        return received
                    self._check(message)
        except TimeoutError as err:
            raise LinkTimeoutError(
                f"{self._name}: no ota_rx for {sent} bytes within {timeout}s", port=self._link.name
            ) from err

    async def _await_success(self, on_flashing: Callable[[], None] | None) -> None:
        timeout = self._settings.flash_timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self._events.get()
                    self._check(message)
                    status = message.get("ota_status")
                    if status == "success":
                        return
                    if status == "flashing" and on_flashing is not None:
                        on_flashing()
        except TimeoutError as err:
            raise LinkTimeoutError(
                f"{self._name}: no result within {timeout}s of the last chunk", port=self._link.name
            ) from err

    def _check(self, message: JsonObject) -> None:
        """:raises MasterError: ``message`` is the master's ``{"ota_status":"error"}``"""
        if message.get("ota_status") != "error":
            return
        code = str(message.get("error", ""))
        details = {key: value for key, value in message.items() if key not in ("ota_status", "error")}
        text = MASTER_ERROR_TEXT.get(code, "the master reports an error")
        facts = "".join(f" {key}={value}" for key, value in details.items())
        raise MasterError(
            f"{self._name}: {text} (error={code}{facts})",
            port=self._link.name,
            code=code,
            node_id=self._node_id,
            details=details,
        )

    async def _restore(self) -> None:
        """The host stopped mid-stream: get the master out of binary mode before the link is let go
        (:meth:`SerialHatLink.end_binary_mode <uc2otad.links.serial_hat.SerialHatLink.end_binary_mode>`).

        Never raises but CancelledError (a second cancel): it runs while the first error propagates.
        """
        try:
            await self._link.end_binary_mode(self._events, "stream interrupted")
        except TimeoutError:
            _LOGGER.error("%s: the master did not come back; it may swallow the next command", self._name)
        except LinkError as err:  # the port went away or the master rebooted: binary mode is over anyway
            _LOGGER.debug("%s: restore ended: %s", self._name, err)
