"""The direct link's reader: one thread reads the bus and hands every frame to the listeners.

python-can's :class:`can.Notifier` does this too, but not the way a link needs when the interface fails:
when ``bus.recv`` raises — python-can-remote's ``WebsocketClosed`` when its server goes away, a
``BrokenPipeError``/``ConnectionResetError`` from its socket, a ``ValueError`` from ``select`` on the
socket it closed, a SocketCAN ``CanOperationError`` when ``can0`` goes down — the notifier either
re-raises in its thread (an unhandled exception, printed by ``threading.excepthook``) or, when a
listener's ``on_error`` takes it, calls ``recv`` again at once, which fails again, forever. Here the
first failure ends the thread and is reported once, so that the link can end what runs with
:class:`~uc2otad.errors.LinkLostError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import can

_LOGGER = logging.getLogger(__name__)


class BusReader:
    """Reads ``bus`` from :meth:`start` until :meth:`stop` or the first failure of the interface."""

    def __init__(
        self,
        bus: can.BusABC,
        listeners: Sequence[Callable[[can.Message], object]],
        on_failure: Callable[[Exception], None],
        *,
        timeout: float,
    ) -> None:
        """:param on_failure: called once, in the reader thread, with what ``bus.recv`` raised
        :param timeout: seconds each read blocks: bounds how long :meth:`stop` waits"""
        self._bus = bus
        self._listeners = tuple(listeners)
        self._on_failure = on_failure
        self._timeout = timeout
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"uc2otad CAN reader {bus.channel_info}")
        self._thread.daemon = True  # a bus that never returns from recv must not keep the daemon alive

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop reading; waits up to ``timeout`` seconds for the thread (it ends within a read)."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                message = self._bus.recv(self._timeout)
                if message is not None and not self._stopped.is_set():
                    self._deliver(message)
        except Exception as err:  # whatever the interface raises ends the reading
            if not self._stopped.is_set():
                self._on_failure(err)

    def _deliver(self, message: can.Message) -> None:
        for listener in self._listeners:
            try:
                listener(message)
            except Exception:  # a listener's bug is not the bus's failure: log it, read on
                _LOGGER.exception("CAN listener %r failed on %s", listener, message)
