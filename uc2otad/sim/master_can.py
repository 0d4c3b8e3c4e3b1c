"""The CANopen master's side of the bus: its SDO client, and which nodes it has heard.

FW-main's master is an SDO client to every slave (``uc2-stack.md`` §3.1): a scan reads the SYSTEM
objects, a restart writes 0x2507, a stream writes 0x2F02, 0x2F01 and then the image into 0x2F00 by
block download. Here the client is the ``canopen`` package's — an implementation of CiA 301 written
independently of our slave's server, so each side is checked against the other. Its calls block, so
they run in worker threads, one at a time like the firmware's single SDO client; its network reads
the bus in the port's own thread.

"Reachable" means what the firmware means by it: the master heard the node within the last
``node_liveness`` seconds — a boot-up or heartbeat, a TPDO, an SDO answer (``isNodeReachable``,
``CANopenModule.cpp:611-633`` @063e5a6). A master reboot forgets them.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import can
import canopen
from canopen.sdo.exceptions import SdoAbortedError, SdoCommunicationError

from uc2otad.aio import run_stoppable
from uc2otad.sim.can_bus import CanPort, SimCanBus
from uc2otad.sim.sdo_wire import (
    BOOT_UP,
    HEARTBEAT_BASE,
    MAX_NODE_ID,
    SDO_REQUEST_BASE,
    SDO_RESPONSE_BASE,
    SEGMENT_BYTES,
    AbortCode,
    Command,
    initiate_frame,
)
from uc2otad.sim.timing import MasterTiming

# canopen's SdoClient and its streams are passed as Any: several of their methods have no annotations
T = TypeVar("T")

#: what a probing scan reads from every id: 0x1000, the one object CiA 301 makes mandatory
PROBE_OBJECT = (0x1000, 0)
#: COB-ID bases whose frames prove a node is there: TPDO1, SDO answer, boot-up/heartbeat
_PROOF_OF_LIFE = (0x180, SDO_RESPONSE_BASE, HEARTBEAT_BASE)


class SdoTransferError(Exception):
    """An SDO transfer did not go through: no answer in time, or the node aborted it."""

    def __init__(self, node_id: int, reason: str, *, abort_code: int | None = None) -> None:
        super().__init__(f"node {node_id}: {reason}")
        self.node_id = node_id
        #: the node's abort code; None when it did not answer
        self.abort_code = abort_code


class CanOpenClient:
    """The master's CANopen side on ``bus``; :meth:`start` before use, :meth:`stop` after."""

    def __init__(self, bus: SimCanBus, timing: MasterTiming) -> None:
        self._bus = bus
        self._timing = timing
        #: called with the node id of every boot-up message (the master logs them)
        self.on_boot_up: Callable[[int], None] | None = None
        self._network = canopen.Network()
        #: the SDO clients, one per node asked (worker threads only)
        self._nodes: dict[int, canopen.RemoteNode] = {}
        self._port: CanPort | None = None
        self._lock = asyncio.Lock()
        #: node id → loop time it was last heard
        self._heard: dict[int, float] = {}
        self._heard_changed = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        network = self._network
        on_frame = _proof_of_life(lambda *heard: loop.call_soon_threadsafe(self._on_heard, *heard))
        # no loop: canopen's listeners run in the port's thread, where its blocked client waits for them
        self._port = self._bus.open_port([*network.listeners, on_frame], wait_for_wire=True)
        network.bus = self._port.can_bus

    async def stop(self) -> None:
        if self._port is not None:
            await self._port.close()
            self._port = None
            self._network.bus = None

    # ---- who is there ---------------------------------------------------------------------------------

    def forget_heard(self) -> None:
        """A master reboot: RAM is gone, nobody has been heard."""
        self._heard.clear()

    def is_reachable(self, node_id: int) -> bool:
        """``isNodeReachable``: heard within the last ``node_liveness`` seconds."""
        heard = self._heard.get(node_id)
        return heard is not None and asyncio.get_running_loop().time() - heard < self._timing.node_liveness

    # the wait is the question asked (waitForNodeReachable's 10 s), not a deadline around an operation
    async def wait_heard(self, node_id: int, timeout: float) -> bool:  # noqa: ASYNC109
        """``waitForNodeReachable``: True once the node is reachable, False after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self.is_reachable(node_id):
                    changed = self._heard_changed
                    await changed.wait()
        except TimeoutError:
            return False
        return True

    def _on_heard(self, node_id: int, boot_up: bool) -> None:
        self._heard[node_id] = asyncio.get_running_loop().time()
        self._heard_changed.set()
        self._heard_changed = asyncio.Event()
        if boot_up and self.on_boot_up is not None:
            self.on_boot_up(node_id)

    async def probe(self, node_ids: Iterable[int]) -> list[int]:
        """Ask every id at once for 0x1000 and return those that answered within ``sdo_timeout``.

        One wait for the whole range, so absent ids cost nothing each.
        """
        ids = list(node_ids)
        started = asyncio.get_running_loop().time()
        request = initiate_frame(Command.UPLOAD_INITIATE << 5, *PROBE_OBJECT)
        async with self._lock:
            await asyncio.to_thread(
                self._send_each, [(SDO_REQUEST_BASE + node_id, request) for node_id in ids]
            )
            await asyncio.sleep(self._timing.sdo_timeout)
        return [node_id for node_id in ids if self._heard.get(node_id, -1.0) >= started]

    # ---- SDO transfers ----------------------------------------------------------------------------------

    async def read(self, node_id: int, index: int, sub: int = 0) -> bytes:
        """An SDO upload, waiting ``sdo_timeout`` for each answer.

        :raises SdoTransferError: no answer, or an abort
        """
        data: bytes = await self.call(node_id, self._timing.sdo_timeout, lambda sdo: sdo.upload(index, sub))
        return data

    async def read_texts(self, node_id: int, indexes: Iterable[int], limit: int) -> list[str | None]:
        """The text objects ``indexes`` (sub-index 0) of a node, as a scan reads them: each on its own
        (``readNodeString``, ``CANopenModule.cpp:1492-1503`` @063e5a6), cut to ``limit`` characters
        (the master's buffer); None for one that did not come (no answer, or an abort)."""
        texts: list[str | None] = []
        for index in indexes:
            try:
                data = await self.read(node_id, index)
            except SdoTransferError:
                texts.append(None)
            else:
                texts.append(data[:limit].decode("utf-8", errors="replace"))
        return texts

    async def write(
        self, node_id: int, index: int, sub: int, value: int, *, size: int, response_timeout: float
    ) -> None:
        """An expedited SDO download of ``value`` as a ``size``-byte little-endian number.

        :raises SdoTransferError: no answer within ``response_timeout``, or an abort
        """
        data = value.to_bytes(size, "little")
        await self.call(node_id, response_timeout, lambda sdo: sdo.download(index, sub, data))

    async def open_block_download(self, node_id: int, index: int, sub: int, size: int) -> BlockWriter:
        """Initiate a block download of ``size`` bytes (``block_timeout`` for every answer).

        :raises SdoTransferError: the node did not accept it
        """
        timeout = self._timing.block_timeout
        stream = await self.call(
            node_id,
            timeout,
            lambda sdo: sdo.open(index, sub, "wb", size=size, block_transfer=True, buffering=0),
        )
        return BlockWriter(self, node_id, stream, size, timeout=timeout)

    async def call(self, node_id: int, response_timeout: float, work: Callable[[Any], T]) -> T:
        """``work(sdo_client)`` for the node in a worker thread, ``response_timeout`` for each answer.

        A cancelled caller waits for the call to end (bounded by the timeouts): the client is free after.

        :raises SdoTransferError: no answer, or an abort
        """
        async with self._lock:
            return await run_stoppable(lambda _stop: self._call(node_id, response_timeout, work))

    def _call(self, node_id: int, response_timeout: float, work: Callable[[Any], T]) -> T:
        if not 1 <= node_id <= MAX_NODE_ID:
            raise SdoTransferError(node_id, "not a CANopen node id")
        node = self._nodes.get(node_id)
        if node is None:  # no EDS: objects by index only
            node = self._nodes[node_id] = self._network.add_node(node_id)
        node.sdo.RESPONSE_TIMEOUT = response_timeout
        try:
            return work(node.sdo)
        except SdoAbortedError as err:
            raise SdoTransferError(node_id, f"aborted: {err}", abort_code=err.code) from err
        except (SdoCommunicationError, can.CanError) as err:
            raise SdoTransferError(node_id, str(err)) from err

    def _send_each(self, frames: list[tuple[int, bytes]]) -> None:
        for cob_id, data in frames:
            self._network.send_message(cob_id, data)


class BlockWriter:
    """A block download the master feeds chunk by chunk, as ``OtaBinaryReceive`` pushes each 4 KB.

    Segments carry 7 bytes, chunks are 4096: what does not fill a segment waits for the next chunk.
    Every path ends the stream — :meth:`finish` or :meth:`abort` — so it never sends an end frame by
    itself later (an unclosed canopen stream does that when it is collected).
    """

    def __init__(
        self, client: CanOpenClient, node_id: int, stream: Any, size: int, *, timeout: float
    ) -> None:
        self._client = client
        self.node_id = node_id
        self.size = size
        self._stream = stream
        self._timeout = timeout
        self._carry = b""
        self._closed = False

    async def write(self, data: bytes) -> None:
        """Push ``data`` to the node; returns when it took it (sub-blocks acknowledged on the way).

        :raises SdoTransferError: no acknowledgement within the block timeout, or an abort
        """
        await self._client.call(self.node_id, self._timeout, lambda _sdo: self._push(data))

    async def finish(self) -> None:
        """Send the end of the transfer (with the CRC) and wait for the node's answer: its image check.

        :raises SdoTransferError: the node refused the image (an abort), or did not answer
        """
        await self._client.call(self.node_id, self._timeout, lambda _sdo: self._end())

    async def abort(self, code: AbortCode = AbortCode.GENERAL) -> None:
        """Give the transfer up: an abort frame to the node (unless it ended already), the stream closed."""
        await self._client.call(self.node_id, self._timeout, lambda sdo: self._abort(sdo, code))

    def _push(self, data: bytes) -> None:
        buffer = self._carry + data
        position = 0
        while position < len(buffer):
            taken = self._stream.write(buffer[position : position + SEGMENT_BYTES])
            if taken is None:  # fewer than 7 bytes before the end: they wait for the next chunk
                break
            position += taken
        self._carry = buffer[position:]

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.close()  # the end frame with the CRC; raises when the node refuses

    def _abort(self, sdo: Any, code: AbortCode) -> None:
        if not self._closed:
            self._closed = True
            io.RawIOBase.close(self._stream)  # closed without canopen's end frame
            sdo.abort(int(code))


def _proof_of_life(on_heard: Callable[[int, bool], Any]) -> Callable[[can.Message], None]:
    """A listener that reports (node, is it a boot-up) for every frame that proves a node is on the bus."""

    def listener(message: can.Message) -> None:
        if message.is_error_frame:
            return
        base, node_id = message.arbitration_id & 0x780, message.arbitration_id & 0x7F
        if base in _PROOF_OF_LIFE and node_id:
            on_heard(node_id, base == HEARTBEAT_BASE and bytes(message.data) == BOOT_UP)

    return listener
