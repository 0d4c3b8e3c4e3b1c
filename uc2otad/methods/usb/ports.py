"""Serial ports as the procedure document lists them, the port a flash goes to, and whether we may open it.

Port choice (CONTRACT.md §4): the port asked for; else the HAT link's port (the master is the board on
it); else the first port whose device, description, manufacturer, product or hwid contains ``match``
(case-insensitive, the document's "HAT"); else the first USB adapter of a known VID:PID.

Constraint: enumerating ports reads sysfs and checking access is a system call, both blocking: the
async functions here run them in a worker thread.
"""

from __future__ import annotations

import asyncio
import grp
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from serial.tools.list_ports import comports
from serial.tools.list_ports_common import ListPortInfo

from uc2otad.errors import NoSerialPortError, PortAccessError
from uc2otad.methods.usb.chips import chip_for_usb_id

#: pyserial's word for a field the OS does not know
_UNKNOWN = "n/a"


@dataclass(frozen=True)
class SerialPort:
    """One serial port, with the document's ``listSerialPorts`` fields."""

    device: str
    description: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    hwid: str | None = None
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None

    @classmethod
    def from_info(cls, info: ListPortInfo) -> SerialPort:
        def known(value: str | None) -> str | None:
            return None if value in (None, "", _UNKNOWN) else value

        return cls(
            device=info.device,
            description=known(info.description),
            manufacturer=known(info.manufacturer),
            product=known(info.product),
            hwid=known(info.hwid),
            vid=info.vid,
            pid=info.pid,
            serial_number=known(info.serial_number),
        )

    def as_dict(self) -> dict[str, Any]:
        """The document's fields; unknown ones are None (left out over D-Bus)."""
        return {
            "device": self.device,
            "description": self.description,
            "manufacturer": self.manufacturer,
            "product": self.product,
            "hwid": self.hwid,
            "vid": self.vid,
            "pid": self.pid,
            "serial_number": self.serial_number,
        }

    def matches(self, text: str) -> bool:
        """``text`` in any of the fields ImSwitch searches, ignoring case."""
        wanted = text.lower()
        fields = (self.device, self.description, self.manufacturer, self.product, self.hwid)
        return any(wanted in field.lower() for field in fields if field)


async def list_serial_ports(
    list_ports: Callable[[], Iterable[ListPortInfo]] = comports,
) -> list[SerialPort]:
    """Every serial port the OS lists, sorted by device."""
    infos = await asyncio.to_thread(lambda: list(list_ports()))
    return sorted((SerialPort.from_info(info) for info in infos), key=lambda port: port.device)


def choose_port(*, requested: str, hat_port: str, match: str, ports: Sequence[SerialPort]) -> str:
    """The port to flash, by the rules in the module docstring.

    :raises NoSerialPortError: nothing asked for, no HAT link, and no listed port matches
    """
    if requested:
        return requested
    if hat_port:
        return hat_port
    if match:
        for port in ports:
            if port.matches(match):
                return port.device
    for port in ports:
        if chip_for_usb_id(port.vid, port.pid) is not None:
            return port.device
    raise NoSerialPortError(
        f"no serial port to flash: none given, no HAT link configured, and none of ports={len(ports)} "
        f"matches match={match!r} or a known USB VID:PID"
    )


async def check_port_access(device: str) -> None:
    """Fail before esptool runs when the port is missing or this process may not open it.

    A pyserial URL (``socket://``, ``rfc2217://``) has nothing on the file system to check.

    :raises NoSerialPortError: the device does not exist (unplugged)
    :raises PortAccessError: it exists, but we may not read and write it
    """
    if "://" in device:
        return
    await asyncio.to_thread(_check_access, device)


def _check_access(device: str) -> None:
    try:
        group_id = os.stat(device).st_gid
    except FileNotFoundError:
        raise NoSerialPortError(f"port={device} does not exist: is the board plugged in?") from None
    except PermissionError as err:
        raise PortAccessError(f"port={device}: {err.strerror}") from err
    if not os.access(device, os.R_OK | os.W_OK, effective_ids=os.access in os.supports_effective_ids):
        try:
            group = grp.getgrgid(group_id).gr_name
        except KeyError:
            group = str(group_id)
        raise PortAccessError(
            f"port={device}: permission denied for uid={os.geteuid()}; "
            f"add the daemon's user to group {group!r}"
        )


async def usb_identity(device: str, ports: Sequence[SerialPort]) -> tuple[int | None, int | None]:
    """The VID:PID of ``device`` among ``ports`` (symlinks such as ``/dev/serial/by-id/…`` resolved);
    (None, None) for a URL or a port that is not a listed USB adapter."""
    if "://" in device:
        return None, None
    return await asyncio.to_thread(_usb_identity, device, ports)


def _usb_identity(device: str, ports: Sequence[SerialPort]) -> tuple[int | None, int | None]:
    real = os.path.realpath(device)
    for port in ports:
        if os.path.realpath(port.device) == real:
            return port.vid, port.pid
    return None, None
