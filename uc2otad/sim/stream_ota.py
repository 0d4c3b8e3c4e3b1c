"""The CANopen master's firmware receiver (FW-main ``OtaBinaryReceive``): host bytes in, SDO to a slave.

Written from ``uc2-stack.md`` §2.2, §3.1 and §11:

- ``/ota_start`` with ``ota`` {``nodeId``, ``size``, ``crc32``} is checked (``missing_ota_object``,
  ``missing_nodeId_or_size``, ``invalid_nodeId``, ``invalid_size`` above 8 MiB); the node must have
  been heard within ``reachable_timeout`` (``slave_unreachable``); then "ready" and binary mode;
- CR/LF right after the preamble are dropped (UC2-REST ends it with a newline); every other byte is
  firmware, collected into 4096-byte chunks;
- each chunk goes to the slave before more is read: before the first, CRC-32 into 0x2F02
  (``crc_write_failed``), size into 0x2F01 (``size_write_failed``: the slave erases first), the settle
  pause, the block download's initiate (``sdo_begin_failed``); then the chunk (``sdo_chunk_failed``)
  and the bare line ``{"ota_rx": <total>}``;
- after the last byte: the running CRC-32 against the expected one (``crc_mismatch`` with computed,
  expected and a comment), ``{"ota_status":"flashing"}``, the end of the block download in which the
  slave checks and commits the image (``sdo_end_failed``), ``{"ota_status":"success"}``;
- a host silent for ``ota_rx_timeout`` while a chunk is due ends it with ``rx_timeout``.

Every end — success, error, or the master going down — gives the SDO transfer up properly and hands
the port back to JSON. Status lines are bare JSON, written as the firmware writes them: the object,
then its newline in a second write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from uc2otad.sim.master_can import BlockWriter, CanOpenClient, SdoTransferError
from uc2otad.sim.sdo_wire import MAX_NODE_ID
from uc2otad.sim.slave_objects import OTA_CRC, OTA_DATA, OTA_SIZE
from uc2otad.sim.timing import MasterTiming

_LOGGER = logging.getLogger(__name__)

#: bytes per chunk, acknowledged by one ``ota_rx`` line (the "ready" reply says so in ``chunkSize``)
CHUNK_SIZE = 4096
#: the master refuses images above 8 MiB (the slave's own limit is its 0x140000 partition)
MAX_IMAGE_SIZE = 8 * 1024 * 1024
#: what may follow the preamble before the firmware starts (§11)
_LINE_END = b"\r\n"

Line = dict[str, Any]


@dataclass(frozen=True)
class StreamRequest:
    """A valid ``/ota_start``: where the image goes, how large it is, its CRC-32 (0: not checked)."""

    node_id: int
    size: int
    crc32: int

    def ready(self) -> Line:
        """The "ready" reply that puts the master into binary mode."""
        return {"ota_status": "ready", "size": self.size, "nodeId": self.node_id, "chunkSize": CHUNK_SIZE}


def parse_ota_start(command: dict[str, Any]) -> StreamRequest | str:
    """The request in ``command``, or the firmware's error code for what is wrong with it."""
    ota = command.get("ota")
    if not isinstance(ota, dict):
        return "missing_ota_object"
    node_id, size = ota.get("nodeId"), ota.get("size")
    if node_id is None or size is None:
        return "missing_nodeId_or_size"
    if not _is_int(node_id) or not 1 <= node_id <= MAX_NODE_ID:
        return "invalid_nodeId"
    if not _is_int(size) or not 0 < size <= MAX_IMAGE_SIZE:
        return "invalid_size"
    return StreamRequest(node_id, size, _crc_value(ota.get("crc32")))


def error_line(code: str, **details: Any) -> Line:
    return {"ota_status": "error", "error": code, **details}


def _crc_value(value: Any) -> int:
    """``"0x%08X"``, a decimal string or a number; missing or unreadable is 0 (no check), as ``strtoul``."""
    if _is_int(value):
        return int(value) & 0xFFFFFFFF
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value, 16 if value.lower().startswith("0x") else 10) & 0xFFFFFFFF
    return 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _StreamError(Exception):
    """Ends a stream with the firmware's error code (and the details its line carries)."""

    def __init__(self, code: str, **details: Any) -> None:
        super().__init__(code)
        self.code = code
        self.details = details


@dataclass
class StreamStats:
    """Where the time of a stream went, for benchmarks."""

    chunks: int = 0
    bytes: int = 0
    #: from "ready" to the master's last status line
    seconds: float = 0.0
    #: moving chunks to the slave over SDO (after the first chunk's CRC and size writes and settle)
    forward_seconds: float = 0.0
    #: from each ``ota_rx`` line to the next chunk's last byte: the host's share, chunk by chunk
    host_gaps: list[float] = field(default_factory=list)


class StreamReceiver:
    """One stream from "ready" to its last status line; feed it the host's bytes while it runs.

    :param send_line: writes a bare status line to the host
    :param on_end: called once the stream is over: the port goes back to JSON
    """

    def __init__(
        self,
        request: StreamRequest,
        client: CanOpenClient,
        timing: MasterTiming,
        *,
        send_line: Callable[[Line], None],
        on_end: Callable[[StreamReceiver], None],
    ) -> None:
        self.request = request
        self.stats = StreamStats()
        self._client = client
        self._timing = timing
        self._send_line = send_line
        self._on_end = on_end
        self._buffer = bytearray()
        self._started = False
        self._arrived = asyncio.Event()
        self._last_byte = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_byte = loop.time()
        self._task = loop.create_task(self._run(), name=f"OTA stream to node {self.request.node_id}")

    async def stop(self) -> None:
        """The master goes down: end the stream now (its SDO transfer is given up)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    def feed(self, data: bytes) -> None:
        """Bytes from the host in binary mode."""
        if not self._started:
            data = data.lstrip(_LINE_END)  # the newline after the preamble is no firmware
            self._started = bool(data)
        self._buffer += data
        self._last_byte = asyncio.get_running_loop().time()
        self._arrived.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        request = self.request
        writer: BlockWriter | None = None
        started = loop.time()
        try:
            chunk = await self._next_chunk(min(CHUNK_SIZE, request.size))
            writer = await self._begin()
            crc = await self._forward_all(writer, chunk)
            self._check(crc)
            self._send_line({"ota_status": "flashing"})
            try:
                await writer.finish()
            except SdoTransferError as err:
                raise _StreamError("sdo_end_failed") from err
            last_word = {"ota_status": "success"}
            _LOGGER.info("node %d: image of %d bytes delivered", request.node_id, request.size)
        except _StreamError as err:
            _LOGGER.info("node %d: stream failed: %s", request.node_id, err.code)
            last_word = error_line(err.code, **err.details)
        finally:
            # the master cleans up before it reports: once the host reads the last word, it may send
            # the next command, and it must find the master reading JSON again
            if writer is not None:
                with contextlib.suppress(SdoTransferError):
                    await writer.abort()
            self._on_end(self)
        self.stats.seconds = loop.time() - started
        self._send_line(last_word)

    async def _forward_all(self, writer: BlockWriter, chunk: bytes) -> int:
        """Forward ``chunk`` and every chunk after it, each acknowledged; the CRC-32 of them all."""
        loop = asyncio.get_running_loop()
        stats, size = self.stats, self.request.size
        crc = 0
        arrived = loop.time()
        while True:
            try:
                await writer.write(chunk)
            except SdoTransferError as err:
                raise _StreamError("sdo_chunk_failed") from err
            crc = zlib.crc32(chunk, crc)
            stats.chunks += 1
            stats.bytes += len(chunk)
            acked = loop.time()
            stats.forward_seconds += acked - arrived
            self._send_line({"ota_rx": stats.bytes})
            if stats.bytes >= size:
                return crc
            chunk = await self._next_chunk(min(CHUNK_SIZE, size - stats.bytes))
            arrived = loop.time()
            stats.host_gaps.append(arrived - acked)

    async def _next_chunk(self, size: int) -> bytes:
        """The next ``size`` bytes from the host; ``rx_timeout`` when it falls silent meanwhile."""
        loop = asyncio.get_running_loop()
        self._last_byte = max(self._last_byte, loop.time())  # silence counts from the last ack
        while len(self._buffer) < size:
            self._arrived.clear()
            try:
                async with asyncio.timeout_at(self._last_byte + self._timing.ota_rx_timeout):
                    await self._arrived.wait()
            except TimeoutError:
                raise _StreamError("rx_timeout") from None
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk

    async def _begin(self) -> BlockWriter:
        """Before the first chunk: CRC and size into the OTA objects, the settle pause, the initiate."""
        client, timing, request = self._client, self._timing, self.request
        node = request.node_id
        try:
            await client.write(
                node, OTA_CRC, 0, request.crc32, size=4, response_timeout=timing.sdo_write_timeout
            )
        except SdoTransferError as err:
            raise _StreamError("crc_write_failed") from err
        assert timing.size_write_timeout is not None  # the master fills it in from its profile
        try:
            await client.write(
                node, OTA_SIZE, 0, request.size, size=4, response_timeout=timing.size_write_timeout
            )
        except SdoTransferError as err:
            raise _StreamError("size_write_failed") from err
        await asyncio.sleep(timing.ota_settle)
        try:
            return await client.open_block_download(node, OTA_DATA, 0, request.size)
        except SdoTransferError as err:
            raise _StreamError("sdo_begin_failed") from err

    def _check(self, crc: int) -> None:
        expected = self.request.crc32
        if expected and crc != expected:
            raise _StreamError(
                "crc_mismatch",
                computed=f"0x{crc:08X}",
                expected=f"0x{expected:08X}",
                comment="the bytes received are not the image announced",
            )
