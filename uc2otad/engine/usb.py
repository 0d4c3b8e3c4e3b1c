"""The engine's side of flashing the master over USB (CONTRACT.md §1 FlashMaster, §4).

The job itself lives in :mod:`uc2otad.methods.usb.flash`; here it meets the engine: it takes the
master's port from the link, it waits for no slave job and under no inhibit, and it sets Busy. The
flasher and esptool's code load on the first FlashMaster or ListSerialPorts (idle memory,
docs/benchmarks.md); the status GetUSBFlashStatus reads is there from the start.

Every flash is a history row (:mod:`.usb_history`), and every status change is kept in the status store
beside the boards' (written behind: the status never waits for the disk), so that a restarted daemon
answers GetUSBFlashStatus with the last flash's status (:meth:`MasterFlashing.restore`, after the store
opened: a flash a crash cut short reads "failed", ``interrupted``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from uc2otad.engine.config import EngineConfig
from uc2otad.engine.events import EventHub, USBFlashChanged
from uc2otad.engine.inhibit import Inhibitors
from uc2otad.engine.jobs import JobManager
from uc2otad.engine.master import MasterConnection
from uc2otad.engine.store import StatusStore
from uc2otad.engine.usb_history import UsbFlashHistory
from uc2otad.firmware.cache import CachedImage
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.methods.usb.status import UsbFlashStatus

if TYPE_CHECKING:
    from uc2otad.methods.usb.flash import OnSuccess, UsbFlasher


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
        store: StatusStore,
        on_success: OnSuccess | None = None,
    ) -> None:
        """
        :param repository: the firmware repository now (SetFirmwareServer replaces it)
        :param store: where each flash's history row and the last status are kept (opened later:
            :meth:`restore` reads it once it is open)
        :param on_success: awaited after each successful flash, before its task ends, with the image
            written and its version; what it raises is logged and never fails the flash
        """
        self._config = config
        self._events = events
        self._master = master
        self._repository = repository
        self._jobs = jobs
        self._inhibitors = inhibitors
        self._store = store
        self._on_success = on_success
        self._flasher: UsbFlasher | None = None
        self.status = UsbFlashStatus(
            lambda status: events.emit(USBFlashChanged(status)), keep=store.put_usb_status
        )

    def restore(self) -> None:
        """Show the last flash's status, as the status store kept it (call once it is open)."""
        kept = self._store.usb_status()
        if kept is not None:
            self.status.restore(kept)

    @property
    def flashing(self) -> bool:
        """The master is being flashed over USB: slave jobs must wait (they need its port)."""
        return self._flasher is not None and self._flasher.running

    async def list_serial_ports(self) -> list[dict[str, Any]]:
        """The document's ``listSerialPorts``: every serial port the OS lists."""
        from uc2otad.methods.usb.ports import list_serial_ports  # noqa: PLC0415 - on first use, as the flasher

        return [port.as_dict() for port in await list_serial_ports()]

    def flash_master(
        self, options: Mapping[str, Any], *, image: CachedImage | None = None, rollback: str | None = None
    ) -> dict[str, Any]:
        """Start flashing the master over USB; returns at once (with the flash's ``job_id``).

        :param image: the image to write instead of the server's (a rollback's); the steps are the same
        :param rollback: why the flash puts back an earlier image, for its history row; None: an update
        :raises InvalidArgumentError: an option out of range
        :raises InhibitedError, JobBusyError: an inhibit is held; a flash or a slave job is running
        """
        from uc2otad.methods.usb.flash import FlashOptions  # noqa: PLC0415 - on first use, as the flasher

        return self._flasher_now().start(FlashOptions.from_mapping(options), image=image, rollback=rollback)

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

    def _master_version(self) -> str | None:
        """The master's version as its link learnt it on opening (no question asked: the flash must not
        wait for a master that may not answer); None if not connected, or it reports none."""
        link = self._master.link if self._master is not None else None
        identity = link.identity if link is not None else None
        return identity.version if identity is not None and identity.version else None

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
                history=UsbFlashHistory(
                    self._store, timeout=jobs.history_timeout, previous_version=self._master_version
                ),
                on_success=self._on_success,
            )
        return self._flasher
