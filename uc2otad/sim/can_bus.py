"""The virtual microscope's CAN bus: python-can's ``virtual`` interface, one channel per microscope.

Every participant — the master and each slave — gets a :class:`CanPort`: its own python-can bus on the
microscope's channel (a name unique to the instance, so microscopes in one process never hear each
other), a receive filter for the identifiers it listens to, and a ``can.Notifier`` that reads it. As
on a real bus, a frame sent by one participant reaches all others. With the CAN-rate model on
(:class:`~uc2otad.sim.can_rate.CanRate`), sending takes the frame's time on the wire.

Main constraint: python-can's virtual bus reads in a thread per participant. Its notifier either hands
frames to the event loop (``loop=``; the slaves) or calls listeners in its own thread (the master's
SDO client, which blocks in worker threads). Closing wakes that thread at once instead of waiting out
its read timeout, so stopping a microscope takes milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import can
from can.interfaces.virtual import VirtualBus

from uc2otad.sim.can_rate import PACE_SLICE, BusClock, CanRate

#: seconds a notifier thread blocks per read; closing wakes it, so this only bounds a missed wake-up
NOTIFIER_TIMEOUT = 1.0
#: frames a SocketCAN device queues for sending (``tx_queue_len``, linux ``drivers/net/can/dev/dev.c``)
SOCKETCAN_TX_QUEUE = 10
#: seconds to wait for a notifier thread to end on close
CLOSE_TIMEOUT = 2.0
_channel_numbers = itertools.count(1)
# what close() puts into a port's own queue to end its notifier's read at once
_WAKE_UP = can.Message(arbitration_id=0, is_error_frame=True)


class FrameLoss:
    """A switchable fault: frames that take their time on the wire but reach no receiver.

    On a real bus a frame garbled on the wire is not lost — every controller flags the error and the
    sender repeats it — but a receiver that does not empty its buffers in time drops what arrives: the
    MCP2515 of a Raspberry Pi CAN HAT has two receive buffers and sets RX0OVR/RX1OVR in EFLG when a
    third frame comes before the driver read them (Microchip DS20001801, §4.0, EFLG register), and
    ``candump`` shows the overrun as an error frame. For the peers that matters as one frame lost.
    Thread-safe: participants send from their own threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Callable[[can.Message], bool]] = []
        #: the frames lost so far, in order
        self.lost: list[can.Message] = []

    def lose_next(self, matches: Callable[[can.Message], bool]) -> None:
        """Lose the next frame for which ``matches`` is true (once; call again for more)."""
        with self._lock:
            self._pending.append(matches)

    def take(self, message: can.Message) -> bool:
        """True if ``message`` is to be lost (and it is counted as such)."""
        with self._lock:
            for index, matches in enumerate(self._pending):
                if matches(message):
                    del self._pending[index]
                    self.lost.append(message)
                    return True
        return False


class _PacedVirtualBus(VirtualBus):
    """python-can's virtual bus whose sends take their time on the wire when the rate model is on."""

    def __init__(
        self,
        channel: str,
        clock: BusClock,
        *,
        wait_for_wire: bool,
        filters: Sequence[int] | None,
        loss: FrameLoss | None = None,
        tx_queue: float | None = None,
    ) -> None:
        """
        :param tx_queue: seconds of frames the sender may queue ahead of the wire (a SocketCAN
            device's transmit queue); None: it waits for each frame to leave the wire
        """
        can_filters = (
            None if filters is None else [{"can_id": can_id, "can_mask": 0x7FF} for can_id in filters]
        )
        super().__init__(channel=channel, can_filters=can_filters)
        self._clock = clock
        self._wait_for_wire = wait_for_wire
        self._loss = loss
        self._tx_queue = tx_queue

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self._clock.rate.paced:
            ahead = self._clock.book(msg.arbitration_id, bytes(msg.data))
            queue = self._tx_queue
            if queue is not None and self._wait_for_wire:
                if ahead > 2 * queue:  # blocked while the queue is full, until it is half empty
                    time.sleep(ahead - queue)
            elif self._wait_for_wire and ahead > PACE_SLICE:
                time.sleep(ahead)  # only ever in a worker thread (wait_for_wire)
        if self._loss is not None and self._loss.take(msg):
            return
        super().send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        message, filtered = super()._recv_internal(timeout)
        # the wake-up passes the filters: returning no message would only make recv() wait again
        return message, filtered or message is _WAKE_UP

    def wake_up(self) -> None:
        """End a read that is waiting now; the notifier thread then sees that it was stopped.

        Its listeners may still get the wake-up, an error frame: every listener ignores error frames.
        """
        self.queue.put_nowait(_WAKE_UP)


class CanPort:
    """One participant's connection to the bus; :meth:`close` when done (safe twice)."""

    def __init__(
        self,
        bus: SimCanBus,
        listeners: Iterable[Any],
        *,
        filters: Sequence[int] | None,
        loop: asyncio.AbstractEventLoop | None,
        wait_for_wire: bool,
    ) -> None:
        self._bus = _PacedVirtualBus(
            bus.channel, bus.clock, wait_for_wire=wait_for_wire, filters=filters, loss=bus.loss
        )
        self._notifier = can.Notifier(self._bus, list(listeners), timeout=NOTIFIER_TIMEOUT, loop=loop)
        self._closed = False

    @property
    def can_bus(self) -> can.BusABC:
        """The python-can bus, for libraries that send on it themselves (canopen's ``Network``)."""
        return self._bus

    def send(self, can_id: int, data: bytes) -> None:
        """Put a frame on the bus. Never blocks on the event loop: loop senders only book wire time."""
        if not self._closed:
            self._bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=False))

    async def close(self) -> None:
        """Stop reading and leave the bus."""
        if self._closed:
            return
        self._closed = True
        self._notifier.stop(timeout=0)  # marks it stopped without waiting for its thread
        self._bus.wake_up()
        await asyncio.to_thread(self._notifier.stop, CLOSE_TIMEOUT)  # now its thread ends at once
        self._bus.shutdown()


class SimCanBus:
    """The bus of one virtual microscope: its channel, its wire clock, and the ports on it."""

    def __init__(self, rate: CanRate | None = None) -> None:
        self.rate = rate or CanRate()
        #: a name no other microscope in this process uses
        self.channel = f"uc2otad-sim-{os.getpid()}-{next(_channel_numbers)}"
        self.clock = BusClock(self.rate)
        #: frames lost on the way (a switchable fault, off until a frame is chosen)
        self.loss = FrameLoss()

    def __repr__(self) -> str:
        paced = f"{self.rate.bitrate} bit/s" if self.rate.paced else "unpaced"
        return f"SimCanBus({self.channel}, {paced})"

    def open_port(
        self,
        listeners: Iterable[Any],
        *,
        filters: Sequence[int] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        wait_for_wire: bool = False,
    ) -> CanPort:
        """Join the bus.

        :param listeners: python-can listeners or callables, called with every frame that passes
            ``filters``: on ``loop`` when given, else in the port's reader thread
        :param filters: the 11-bit identifiers to receive; None for all
        :param wait_for_wire: sends sleep for the frame's wire time (rate model on); only for ports
            that send from worker threads
        """
        return CanPort(self, listeners, filters=filters, loop=loop, wait_for_wire=wait_for_wire)

    def raw_bus(self) -> _PacedVirtualBus:
        """A bare python-can bus on the channel, for a participant that reads it itself (another
        process's client, ``remote_bus.py``): it hears every frame, and its sends take their wire time
        in the sending thread when the rate model is on. ``wake_up()`` ends a read; ``shutdown()`` leaves.

        Such a client stands for a host on SocketCAN, whose writes return once the frame is in the
        device's transmit queue: ``can_setup()`` gives every CAN device ``tx_queue_len = 10``
        (linux ``drivers/net/can/dev/dev.c``), and the controller empties it back to back. So the
        sender runs up to ten full frames ahead of the wire instead of waking for each one, which
        would leave the wire idle for every late wake-up (``bench/can_direct.py`` measured 2 s of an
        850 KB image).
        """
        queue = SOCKETCAN_TX_QUEUE * self.rate.frame_seconds(0x7FF, bytes(8))
        return _PacedVirtualBus(
            self.channel, self.clock, wait_for_wire=True, filters=None, loss=self.loss, tx_queue=queue
        )
