"""The direct link's SDO client: canopen's, one transfer at a time, each in a worker thread.

canopen's SDO calls block (a response queue with a timeout), so each runs in a worker thread
(:func:`~uc2otad.aio.run_stoppable`), one at a time like the firmware's single SDO client
(``OD_CNT_SDO_CLI 1``, ``lib/uc2_od/OD.h:24`` @063e5a6). Its failures become
:class:`SdoFailedError` (no answer, an abort: the caller names the step with the master's code) or
:class:`~uc2otad.errors.LinkLostError` (the bus or the interface failed): a send that the interface
refuses — python-can's ``CanError``, or the ``OSError`` of an interface on a socket (python-can-remote's
``BrokenPipeError``, ``ConnectionResetError``) — ends the transfer at once, and a transfer waiting for an
answer that will not come is woken (:meth:`SdoChannel.wake`) instead of waiting out its timeout.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import can
import canopen
from canopen.sdo.exceptions import SdoAbortedError, SdoCommunicationError

from uc2otad.aio import run_stoppable
from uc2otad.errors import LinkClosedError, LinkLostError, MasterError, NodeTimeoutError
from uc2otad.links.ota_stream import MASTER_ERROR_TEXT

T = TypeVar("T")

#: what canopen says when an answer did not come in time (``SdoClient.read_response``)
_NO_RESPONSE = "No SDO response received"
#: a general-error abort frame put into a waiting SDO client to wake it when the bus is lost
_WAKE_ABORT = bytes([0x80, 0, 0, 0]) + struct.pack("<I", 0x08000000)
#: what an interface raises when it cannot send: python-can's errors, and the OS's for interfaces on a
#: socket (python-can-remote: ``BrokenPipeError``, ``ConnectionResetError``; a closed socket: ``OSError``)
SEND_ERRORS: tuple[type[Exception], ...] = (can.CanError, OSError)


class SdoFailedError(Exception):
    """An SDO transfer did not go through: no answer in time, an abort, or an answer out of protocol."""

    def __init__(
        self, node_id: int, reason: str, *, abort_code: int | None = None, timed_out: bool = False
    ) -> None:
        super().__init__(f"node {node_id}: {reason}")
        self.node_id = node_id
        self.reason = reason
        self.abort_code = abort_code
        self.timed_out = timed_out

    def as_error(
        self, port: str, code: str, text: str | None = None, details: dict[str, Any] | None = None
    ) -> MasterError:
        """The master's error for the step that failed: ``code`` as the master names it."""
        facts = dict(details or {})
        if self.abort_code is not None:
            facts["abort_code"] = f"0x{self.abort_code:08X}"
        words = text or MASTER_ERROR_TEXT.get(code, "the node refused")
        listed = "".join(f" {key}={value}" for key, value in facts.items())
        message = f"{port}: node {self.node_id}: {words} (error={code}{listed}; {self.reason})"
        kind = NodeTimeoutError if self.timed_out else MasterError
        return kind(message, port=port, code=code, node_id=self.node_id, details=facts)


class _GuardedNetwork(canopen.Network):
    """canopen's network, refusing every frame once the bus is lost.

    A transfer that starts while the bus is being lost would otherwise wait out its timeout: canopen
    empties the client's response queue before it sends (``SdoClient.request_response``), which throws
    away the abort :meth:`SdoChannel.wake` put there, and python-can-remote's client drops frames
    silently once its server closed the connection. Checking before each frame closes that gap: lost
    before the check, the frame is refused; lost after it, the wake comes after the emptying.
    """

    def __init__(self, bus: can.BusABC, check: Callable[[], None]) -> None:
        super().__init__(bus)
        self._check = check

    def send_message(self, can_id: int, data: bytes, remote: bool = False) -> None:
        self._check()
        super().send_message(can_id, data, remote)


class SdoChannel:
    """The link's SDO client on :attr:`network` (None while the link is closed)."""

    def __init__(
        self,
        name: str,
        lost: Callable[[], str | None],
        on_send_failed: Callable[[Exception], None],
    ) -> None:
        """:param name: the link's, for errors
        :param lost: why the bus is unusable now, None while it is usable (any thread)
        :param on_send_failed: the interface refused a frame (any thread; before the error is raised)"""
        self._name = name
        self._lost = lost
        self._on_send_failed = on_send_failed
        self.network: canopen.Network | None = None
        self._lock = asyncio.Lock()
        #: the node whose SDO transfer is under way (worker thread), to wake it when the bus is lost
        self._transfer_node: Any = None

    def attach(self, bus: can.BusABC) -> canopen.Network:
        """The client on ``bus`` from now on; the network's listeners must hear every frame of it."""
        self.network = _GuardedNetwork(bus, self.raise_if_lost)
        return self.network

    def detach(self) -> None:
        """The link closed: transfers from now on raise LinkClosedError."""
        self.network = None

    async def run(self, node_id: int, timeout: float, work: Callable[[Any], T]) -> T:  # noqa: ASYNC109
        """``work(sdo_client)`` for the node in a worker thread, ``timeout`` for each answer; the
        transfers one at a time. A cancelled caller waits for the call (bounded by ``timeout``).

        :raises SdoFailedError: no answer, or an abort
        :raises LinkLostError: the bus or the interface was lost meanwhile
        :raises LinkClosedError: the link is closed
        """
        return await self.run_stoppable(node_id, timeout, lambda sdo, _stop: work(sdo))

    async def run_stoppable(
        self,
        node_id: int,
        timeout: float,  # noqa: ASYNC109 - canopen's per-answer timeout, not a deadline of this call
        work: Callable[[Any, threading.Event], T],
    ) -> T:
        """:meth:`run` for work that checks ``stop`` (set when the caller is cancelled) between steps."""
        async with self._lock:
            return await run_stoppable(
                lambda stop: self._transfer(node_id, timeout, lambda sdo: work(sdo, stop))
            )

    async def send_and_listen(self, frames: Sequence[tuple[int, bytes]], listen: float) -> None:
        """Send raw ``frames`` (COB-ID, data) and keep the client for ``listen`` seconds, so that no
        transfer's answers mix with the answers to them.

        :raises LinkLostError: the interface refused a frame
        :raises LinkClosedError: the link is closed
        """
        async with self._lock:
            await asyncio.to_thread(self._send_each, frames)
            await asyncio.sleep(listen)

    async def read_text(self, node_id: int, index: int, timeout: float) -> str | None:  # noqa: ASYNC109
        """A VISIBLE_STRING object, None when the node has none or does not answer."""
        try:
            data: bytes = await self.run(node_id, timeout, lambda sdo: sdo.upload(index, 0))
        except SdoFailedError:
            return None
        return data.rstrip(b"\0").decode("utf-8", errors="replace") or None

    async def read_number(self, node_id: int, index: int, timeout: float) -> int | None:  # noqa: ASYNC109
        """A small unsigned object, None when it does not come."""
        try:
            data: bytes = await self.run(node_id, timeout, lambda sdo: sdo.upload(index, 0))
        except SdoFailedError:
            return None
        return int.from_bytes(data, "little") if data else None

    def raise_if_lost(self) -> None:
        """:raises LinkLostError: the bus or the interface is lost (any thread)"""
        reason = self._lost()
        if reason is not None:
            raise LinkLostError(f"{self._name}: {reason}", port=self._name)

    def wake(self) -> None:
        """Wake a transfer that waits for an answer that will not come (any thread): it ends with an
        abort, which :meth:`run` turns into LinkLostError since the bus is lost by then."""
        node = self._transfer_node
        if node is not None:
            node.sdo.responses.put(_WAKE_ABORT)

    def _send_each(self, frames: Sequence[tuple[int, bytes]]) -> None:
        network = self._network()
        try:
            for cob_id, data in frames:
                network.send_message(cob_id, data)
        except SEND_ERRORS as err:
            raise self._send_failed(err) from err

    def _network(self) -> canopen.Network:
        network = self.network
        if network is None:
            raise LinkClosedError(f"{self._name}: link is closed", port=self._name)
        return network

    def _transfer(self, node_id: int, timeout: float, work: Callable[[Any], T]) -> T:
        """In a worker thread: ``work`` on the node's SDO client, its failures as :class:`SdoFailedError`."""
        network = self._network()
        node: Any = network.nodes.get(node_id) or network.add_node(node_id)  # no EDS: objects by index only
        node.sdo.RESPONSE_TIMEOUT = timeout
        self._transfer_node = node  # from now on a loss wakes it: lost before, it is refused here
        try:
            self.raise_if_lost()
            return work(node.sdo)
        except SdoAbortedError as err:
            self.raise_if_lost()
            raise SdoFailedError(node_id, f"aborted: {err}", abort_code=err.code) from err
        except SdoCommunicationError as err:
            self.raise_if_lost()
            if str(err) == _NO_RESPONSE:
                raise SdoFailedError(node_id, f"no answer within {timeout}s", timed_out=True) from err
            raise SdoFailedError(node_id, f"unexpected answer: {err}") from err
        except SEND_ERRORS as err:
            raise self._send_failed(err) from err
        finally:
            self._transfer_node = None

    def _send_failed(self, err: Exception) -> LinkLostError:
        """The error for a frame the interface refused: the loss already known, or this one."""
        self._on_send_failed(err)
        reason = self._lost() or f"sending failed: {err}"
        return LinkLostError(f"{self._name}: {reason}", port=self._name)
