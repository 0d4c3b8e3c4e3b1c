"""The engine's side of flashing the master over USB (CONTRACT.md §1 FlashMaster, §4).

The job itself lives in :mod:`uc2otad.methods.usb.flash`; here it meets the engine: it takes the
master's port from the link, it waits for no slave job and under no inhibit, and it sets Busy. The
flasher and esptool's code load on the first FlashMaster or ListSerialPorts (idle memory,
docs/benchmarks.md); the status GetUSBFlashStatus reads is there from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from uc2otad.engine.config import EngineConfig
from uc2otad.engine.events import EventHub, USBFlashChanged
from uc2otad.engine.inhibit import Inhibitors
from uc2otad.engine.jobs import JobManager
from uc2otad.engine.master import MasterConnection
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.methods.usb.status import UsbFlashStatus

if TYPE_CHECKING:
    from uc2otad.methods.usb.flash import UsbFlasher


class MasterFlashing:
    """The USB flash of the master, beside the engine's jobs, inhibits and events."""

    def __init__(
        self,
        config: EngineConfig,
        events: EventHub,
        master: MasterConnection | None,
        *,
        repository: Callable[[], FirmwareRepository],
        jobs: JobManager,
        inhibitors: Inhibitors,
    ) -> None:
        """:param repository: the firmware repository now (SetFirmwareServer replaces it)"""
        self._config = config
        self._events = events
        self._master = master
        self._repository = repository
        self._jobs = jobs
        self._inhibitors = inhibitors
        self._flasher: UsbFlasher | None = None
        self.status = UsbFlashStatus(lambda status: events.emit(USBFlashChanged(status)))

    @property
    def flashing(self) -> bool:
        """The master is being flashed over USB: slave jobs must wait (they need its port)."""
        return self._flasher is not None and self._flasher.running

    async def list_serial_ports(self) -> list[dict[str, Any]]:
        """The document's ``listSerialPorts``: every serial port the OS lists."""
        from uc2otad.methods.usb.ports import list_serial_ports  # noqa: PLC0415 - on first use, as the flasher

        return [port.as_dict() for port in await list_serial_ports()]

    def flash_master(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Start flashing the master over USB; returns at once.

        :raises InvalidArgumentError: an option out of range
        :raises InhibitedError, JobBusyError: an inhibit is held; a flash or a slave job is running
        """
        from uc2otad.methods.usb.flash import FlashOptions  # noqa: PLC0415 - on first use, as the flasher

        return self._flasher_now().start(FlashOptions.from_mapping(options))

    async def port_for(self, requested: str) -> str:
        """The port a flash of the master would take (``requested``, else the HAT link's, else a known
        USB bridge; the flasher's own rule), checked to be there and openable: a batch with
        ``include_master`` plans the master only when it is.

        :raises InvalidArgumentError: ``requested`` is no serial device or pyserial URL
        :raises NoSerialPortError, PortAccessError: no such port, or this process may not open it
        """
        from uc2otad.methods.usb.flash import check_serial_port  # noqa: PLC0415 - on first use, as the flasher
        from uc2otad.methods.usb.ports import (  # noqa: PLC0415 - on first use, as the flasher
            check_port_access,
            choose_port,
            list_serial_ports,
        )

        if requested:
            check_serial_port(requested)
        hat = self._config.master
        ports = await list_serial_ports()
        port = choose_port(requested=requested, hat_port=hat.port if hat is not None else "", match="",
                           ports=ports)  # fmt: skip
        await check_port_access(port)
        return port

    def current(self) -> dict[str, Any]:
        """The document's ``getUSBFlashStatus``; ``status`` "idle" before any flash."""
        return dict(self.status.current)

    async def cancel(self) -> None:
        """:raises NoJobError: no flash is running"""
        await self._flasher_now().cancel()

    async def stop(self) -> None:
        if self._flasher is not None:
            await self._flasher.stop()

    def _flasher_now(self) -> UsbFlasher:
        """The flasher, built on first use with the esptool code it loads."""
        if self._flasher is None:
            from uc2otad.methods.usb.flash import UsbFlasher  # noqa: PLC0415 - on first use

            jobs, inhibitors, events = self._jobs, self._inhibitors, self._events
            hat = self._config.master
            self._flasher = UsbFlasher(
                settings=self._config.usb_flash(),  # loads esptool's code too
                master=self._master,
                hat_port=hat.port if hat is not None else "",
                repository=self._repository,
                status=self.status,
                slave_jobs_running=lambda: jobs.busy,
                inhibited=lambda: inhibitors.held,
                on_running=lambda running: events.set_property("busy", running or jobs.busy),
            )
        return self._flasher
