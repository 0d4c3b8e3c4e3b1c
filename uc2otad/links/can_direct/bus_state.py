"""The CAN controller's state from SocketCAN error frames (``linux/can/error.h``), and why the bus is lost.

Bus-off and error-passive end what runs on the direct link (:class:`~uc2otad.errors.LinkLostError`)
until the controller reports error-active again; an interface that failed (python-can-remote's server
gone, ``can0`` down) ends it until the link is reopened. python-can hands error frames over as messages
with ``is_error_frame`` set, the error classes in the identifier and the details in the data, as the
kernel delivers them; where the interface reports a state of its own (``bus.state``), that counts too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import can

from uc2otad.links.commands import BusHealth

_LOGGER = logging.getLogger(__name__)

# SocketCAN error frames (linux/can/error.h): error classes in the identifier, details in the data
CAN_ERR_CRTL = 0x004
CAN_ERR_BUSOFF = 0x040
CAN_ERR_RESTARTED = 0x100
CAN_ERR_CNT = 0x200
CAN_ERR_CRTL_RX_WARNING = 0x04
CAN_ERR_CRTL_TX_WARNING = 0x08
CAN_ERR_CRTL_RX_PASSIVE = 0x10
CAN_ERR_CRTL_TX_PASSIVE = 0x20
CAN_ERR_CRTL_ACTIVE = 0x40


@dataclass(frozen=True)
class BusError:
    """What an error frame said about the controller: its state and, when it sends them, its counters."""

    #: "bus_off", "error_passive", "error_warning", "error_active", "restarted", or None (no state news)
    state: str | None
    tx_errors: int | None = None
    rx_errors: int | None = None


def decode_error_frame(message: can.Message) -> BusError:
    """A SocketCAN error frame (``linux/can/error.h``) as the controller state it reports."""
    classes, data = message.arbitration_id, bytes(message.data)
    counters = (data[6], data[7]) if classes & CAN_ERR_CNT and len(data) >= 8 else (None, None)
    state: str | None = None
    if classes & CAN_ERR_BUSOFF:
        state = "bus_off"
    elif classes & CAN_ERR_CRTL and len(data) > 1:
        status = data[1]
        if status & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
            state = "error_passive"
        elif status & CAN_ERR_CRTL_ACTIVE:
            state = "error_active"
        elif status & (CAN_ERR_CRTL_RX_WARNING | CAN_ERR_CRTL_TX_WARNING):
            state = "error_warning"
    elif classes & CAN_ERR_RESTARTED:
        state = "restarted"
    return BusError(state, *counters)


class ControllerState:
    """What the link knows of its controller, written by the reader thread, the SDO worker and the loop.

    Plain attribute writes (atomic under the GIL); ``on_change`` tells the link, from whichever thread.
    """

    def __init__(self, name: str, on_lost: Callable[[], None], on_change: Callable[[], None]) -> None:
        """:param on_lost: the bus was just lost (any thread): wake what waits for an answer
        :param on_change: the state changed (any thread): wake what waits on the loop"""
        self._name = name
        self._on_lost = on_lost
        self._on_change = on_change
        self.reset()

    def reset(self) -> None:
        """The link (re)opened: error-active, nothing lost."""
        #: why commands are refused with LinkLostError; None while the bus is usable
        self.lost: str | None = None
        self._interface_failed = False
        self.bus_state = "error_active"
        self.tx_errors: int | None = None
        self.rx_errors: int | None = None
        self.bus_off_count = 0

    def error_frame(self, message: can.Message) -> None:
        """An error frame the reader heard: bus-off and error-passive lose the bus, error-active and a
        restart give it back (unless the interface failed: only reopening does)."""
        error = decode_error_frame(message)
        if error.tx_errors is not None:
            self.tx_errors, self.rx_errors = error.tx_errors, error.rx_errors
        if error.state in ("bus_off", "error_passive"):
            text = "bus-off" if error.state == "bus_off" else "error-passive"
            self._lose(
                error.state, f"the CAN controller went {text} (error frame 0x{message.arbitration_id:03X})"
            )
            return
        if error.state in ("error_active", "restarted"):
            self.bus_state = "error_active"
            if self.lost is not None and not self._interface_failed:
                _LOGGER.info("%s: the controller is error-active again", self._name)
                self.lost = None
        elif error.state == "error_warning":
            self.bus_state = error.state
        self._on_change()

    @property
    def failed(self) -> bool:
        """The interface failed: only reopening the link brings it back."""
        return self._interface_failed

    def interface_failed(self, err: Exception) -> None:
        """The interface failed to read or send (any thread): lost until the link is reopened."""
        if not self._interface_failed:
            self._interface_failed = True
            self._lose(None, f"the CAN interface failed: {type(err).__name__}: {err}")

    def poll(self, bus: can.BusABC) -> None:
        """The interface's own state, where it reports one (python-can's default says ACTIVE)."""
        try:
            state = bus.state
        except (can.CanError, NotImplementedError, OSError):
            return
        if state is can.BusState.ERROR and self.lost is None:
            self._lose("bus_off", "the interface reports the bus in ERROR state (bus-off)")

    def health(self) -> BusHealth:
        """The state as :class:`BusHealth`: ``node_id`` 0, the daemon has no node id, it is a client only."""
        return BusHealth(
            node_id=0,
            can_role=None,
            nmt_state=None,
            nmt_state_name=None,
            bus_state=self.bus_state,
            tx_errors=self.tx_errors,
            rx_errors=self.rx_errors,
            tx_failed=None,
            bus_off_count=self.bus_off_count,
        )

    def _lose(self, state: str | None, reason: str) -> None:
        if state == "bus_off":
            self.bus_off_count += 1
        if state is not None:
            self.bus_state = state
        self.lost = reason
        _LOGGER.error("%s: %s", self._name, reason)
        self._on_lost()
        self._on_change()
