"""Find the CAN HAT's USB serial port again after it was unplugged and came back under another name.

A HAT configured as ``/dev/ttyUSB0`` may return as ``/dev/ttyUSB1``. Its USB identity (VID:PID and
serial number, as ``serial.tools.list_ports`` reads them from sysfs) does not change, so the link
remembers it while the port works and looks for it when the path fails. Paths under
``/dev/serial/by-id/`` do not need this; they follow the device.

Constraint: enumerating ports (``serial.tools.list_ports.comports()``) reads sysfs, which blocks:
the link does it in its worker thread and hands the result in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from serial.tools.list_ports_common import ListPortInfo


@dataclass(frozen=True)
class PortIdentity:
    """What identifies a USB serial adapter across re-plugging."""

    vid: int | None
    pid: int | None
    serial_number: str | None
    description: str | None

    def matches(self, info: ListPortInfo) -> bool:
        """Same VID:PID and, when known, serial number; without a VID, the same description."""
        if self.vid is None:
            return self.description is not None and info.description == self.description
        if (info.vid, info.pid) != (self.vid, self.pid):
            return False
        return self.serial_number is None or info.serial_number == self.serial_number


def identify_port(device: str, ports: Iterable[ListPortInfo]) -> PortIdentity | None:
    """The identity of ``device`` among ``ports`` (symlinks such as ``/dev/serial/by-id/…`` resolved).

    None when it is not listed, or listed without anything that would recognise it again.
    """
    real = os.path.realpath(device)
    for info in ports:
        if os.path.realpath(info.device) == real:
            if info.vid is None and info.description in (None, "n/a"):
                return None
            return PortIdentity(info.vid, info.pid, info.serial_number, info.description)
    return None


def find_port(identity: PortIdentity, ports: Iterable[ListPortInfo]) -> str | None:
    """The device path of the first of ``ports`` with ``identity``, or None."""
    return next((info.device for info in ports if identity.matches(info)), None)
