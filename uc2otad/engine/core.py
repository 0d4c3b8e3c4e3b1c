"""The engine: what the daemon knows and does, behind whatever API a client uses.

It owns the status store, the firmware repository, the WiFi credentials and the inhibitors, and reports
every change through one observer list: a board's status (``StatusChanged``) or a daemon property
(``PropertyChanged``). The D-Bus adapter only translates these into signals; nothing here knows D-Bus.
Update jobs (StartOTA and friends) join with the update engine proper.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as token
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uc2otad import __version__, secrets, settings
from uc2otad.engine.jobs import JobManager
from uc2otad.engine.master import MasterConnection, link_factory
from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.errors import (
    FirmwareError,
    InhibitedError,
    InvalidArgumentError,
    JobBusyError,
    LinkClosedError,
    UnknownCookieError,
)
from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.catalog import MASTER_CAN_ID, MAX_CAN_ID, Catalog, ResolvedImage
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.server import FirmwareServer, HttpSettings, normalize_server_url
from uc2otad.methods.can import CanStreamMethod
from uc2otad.methods.verify import VerifySettings
from uc2otad.retry import RetryPolicy
from uc2otad.settings import Settings

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusChanged:
    """A board's status dict changed (CONTRACT.md §2)."""

    can_id: int
    status: Mapping[str, Any]


@dataclass(frozen=True)
class PropertyChanged:
    """A daemon property changed; ``name`` is the D-Bus property name."""

    name: str
    value: Any


Event = StatusChanged | PropertyChanged
Observer = Callable[[Event], None]


@dataclass
class _Inhibitor:
    cookie: str
    reason: str
    owner: str


@dataclass
class Properties:
    """The daemon's read-only properties (CONTRACT.md §1), as plain values."""

    version: str = __version__
    firmware_server: str = ""
    wifi_ssid: str = ""
    master_connected: bool = False
    busy: bool = False
    inhibited: bool = False
    progress: int = 0
    last_error: str = ""


#: Properties field → D-Bus property name
PROPERTY_NAMES = {
    "version": "Version",
    "firmware_server": "FirmwareServer",
    "wifi_ssid": "WiFiSSID",
    "master_connected": "MasterConnected",
    "busy": "Busy",
    "inhibited": "Inhibited",
    "progress": "Progress",
    "last_error": "LastError",
}


#: seconds ScanDevices waits for the firmware server (after the bus scan) to fill in update_available
SCAN_UPDATE_INFO_TIMEOUT = 2.0


def idle_status(can_id: int) -> dict[str, Any]:
    """The status of a board no job ever touched."""
    return {"can_id": can_id, "status": "idle"}


def repository_for(config: Settings, server_url: str) -> FirmwareRepository:
    http = HttpSettings(
        connect_timeout=config.firmware_connect_timeout,
        read_timeout=config.firmware_read_timeout,
        transfer_timeout=config.firmware_transfer_timeout,
        retry=RetryPolicy(attempts=config.firmware_attempts),
    )
    return FirmwareRepository(
        FirmwareServer(server_url, settings=http),
        FirmwareCache(config.firmware_cache_dir),
        config.image_table(),
    )


class Engine:
    """The daemon's state and operations. ``start`` before use, ``stop`` at the end."""

    def __init__(
        self, config: Settings, persisted: Mapping[str, object], *, state_dir: Path | None = None
    ) -> None:
        """:param persisted: the values set over D-Bus so far (from :func:`settings.load`)"""
        self.config = config
        self.state_dir = state_dir or config.daemon_state_dir
        self.store = StatusStore(self.state_dir / "uc2otad.sqlite3")
        self.repository = repository_for(config, config.firmware_server)
        self.properties = Properties(firmware_server=self.repository.server.url, wifi_ssid=config.wifi_ssid)
        self._persisted = dict(persisted)
        self._observers: list[Observer] = []
        self._inhibitors: dict[str, _Inhibitor] = {}
        self._settings_lock = asyncio.Lock()
        self.master = (
            MasterConnection(
                link_factory(config.serial_port, config.serial_baud),
                config.serial_ownership,
                lambda connected: self._set_property("master_connected", connected),
            )
            if config.serial_port
            else None
        )
        self.jobs = JobManager(
            self.store,
            self._publish_status,
            inhibited=lambda: bool(self._inhibitors),
            retries=config.update_retries,
            retry_delay=config.update_retry_delay,
        )
        self.jobs.on_change(lambda: self._set_property("busy", self.jobs.busy))
        self._verify = VerifySettings(
            settle=config.update_verify_settle,
            window=config.update_verify_window,
            interval=config.update_verify_interval,
        )

    async def start(self) -> list[JobRecord]:
        """Open the store (reconciling interrupted jobs) and the cache.

        :returns: the jobs a crash had left running, now ``interrupted``
        """
        interrupted = await self.store.open()
        await self.repository.cache.open()
        if self.master is not None:
            await self.master.start()
        return interrupted

    async def stop(self) -> None:
        await self.jobs.stop()  # their rows stay "running": reconciled as interrupted at the next start
        if self.master is not None:
            await self.master.stop()
        await self.store.close()

    # ---- observers ----------------------------------------------------------------------------------

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` for every event; returns the function that unsubscribes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def _emit(self, event: Event) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not stop the engine or the other observers
                _LOGGER.exception("engine: observer %r failed on %r", observer, event)

    def _set_property(self, name: str, value: Any) -> None:
        if getattr(self.properties, name) == value:
            return
        setattr(self.properties, name, value)
        self._emit(PropertyChanged(PROPERTY_NAMES[name], value))

    # ---- status and history -------------------------------------------------------------------------

    async def get_status(self, can_id: int) -> dict[str, Any]:
        return await self.store.get_status(can_id) or idle_status(can_id)

    async def all_status(self) -> dict[int, dict[str, Any]]:
        return await self.store.all_status()

    async def history(self, can_id: int) -> list[JobRecord]:
        return await self.store.history(can_id)

    # ---- firmware -----------------------------------------------------------------------------------

    async def list_firmware(self) -> dict[str, Any]:
        """The document's ``listAvailableFirmware`` response."""
        catalog = await self.repository.catalog()
        return catalog.as_document()

    async def clear_firmware_cache(self) -> int:
        """:raises CacheBusyError: an update reads the cache"""
        return await self.repository.cache.clear()

    async def set_firmware_server(self, url: str) -> None:
        """Use ``url`` from now on and persist it.

        :raises ConfigError: not an http(s) URL
        """
        normalized = normalize_server_url(url)
        async with self._settings_lock:
            await self._persist({"firmware.server": normalized})
            self.repository = repository_for(self.config, normalized)
        self._set_property("firmware_server", normalized)
        _LOGGER.info("engine: firmware server set to %s", normalized)

    # ---- the bus -----------------------------------------------------------------------------------

    async def scan_devices(self) -> list[dict[str, Any]]:
        """Every board the master knows (itself first), with whether the server has a different image.

        ``update_available`` is left out when it cannot be known: the server unreachable, no image for
        the board, or a board or image that reports no version.

        :raises LinkClosedError: no master configured or connected
        :raises LinkBusyError: a stream holds the link
        :raises LinkError: the scan failed
        """
        if self.master is None:
            raise LinkClosedError("no serial port configured for the master CAN HAT (serial.port)", port="")
        # ask the firmware server while the bus is scanned; a slow or absent server costs at most
        # SCAN_UPDATE_INFO_TIMEOUT and only the update_available column
        catalog_task = asyncio.ensure_future(self.repository.catalog())
        try:
            async with self.master.use("scan") as link:
                scan = await link.scan()
        except BaseException:
            catalog_task.cancel()
            raise
        catalog: Catalog | None = None
        try:
            catalog = await asyncio.wait_for(catalog_task, SCAN_UPDATE_INFO_TIMEOUT)
        except (FirmwareError, TimeoutError) as err:
            _LOGGER.warning("engine: scan without update information: %s", err or "firmware server too slow")
        boards = []
        for node in ([scan.master] if scan.master else []) + list(scan.nodes):
            board: dict[str, Any] = {
                "can_id": node.can_id,
                "role": node.role,
                "reachable": node.reachable,
                "fw_version": node.fw_version,
                "build": node.build,
                "mac": node.mac,
            }
            if catalog is not None and node.fw_version:
                image = _image_for(catalog, node.can_id, node.fw_image)
                if image is not None and image.version:
                    board["update_available"] = image.version != node.fw_version
            boards.append(board)
        return boards

    # ---- updates ------------------------------------------------------------------------------------

    async def start_ota(self, can_id: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """Start updating slave ``can_id``; returns once the job is accepted (CONTRACT.md §1 StartOTA).

        The image is resolved first, so a missing one fails here without touching the board.

        :raises InvalidArgumentError: the master's id, or a method this daemon cannot use with its master
        :raises InhibitedError, JobBusyError: an inhibit is held; the board already has a job
        :raises FirmwareNotFoundError: no image for the board
        :raises LinkError: no master, or it did not answer
        """
        check_can_id(can_id)
        if can_id == MASTER_CAN_ID:
            raise InvalidArgumentError("CAN id 1 is the master CAN HAT: it is flashed over USB (FlashMaster)")
        if self.master is None:
            raise LinkClosedError("no serial port configured for the master CAN HAT (serial.port)", port="")
        if self._inhibitors:
            raise InhibitedError("updates are inhibited; see the Inhibited property")
        if self.jobs.running(can_id):
            raise JobBusyError(f"board {can_id} already has a running update")
        catalog = await self.repository.catalog()
        image = catalog.resolve(can_id, name=options.get("firmware"))
        async with self.master.use(f"checking board {can_id}") as link:
            method = _method_name(options.get("method", "auto"), link.identity)
            node = (await link.scan()).node(can_id)
        previous = node.fw_version if node is not None else None
        if not options.get("force") and previous and image.version and previous == image.version:
            return {"status": "success", "message": "already up to date", "can_id": can_id}
        repository = self.repository
        runner = CanStreamMethod(
            self.master.use, lambda: repository.obtain(can_id, name=image.name), self._verify
        )
        job = self.jobs.start(can_id, runner, options, firmware=image.name, previous_version=previous)
        _LOGGER.info(
            "engine: board %d update started method=%s image=%s", can_id, method, image.name,
            extra={"UC2_CAN_ID": can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "started"},
        )  # fmt: skip
        return {
            "status": "success",
            "message": f"OTA update initiated for device {can_id}",
            "can_id": can_id,
            "job_id": job.job_id,
            "command_response": {},
        }

    async def cancel(self, can_id: int) -> None:
        """:raises NoJobError, AlreadyCommittedError: see :meth:`JobManager.cancel`"""
        await self.jobs.cancel(check_can_id(can_id))

    async def _publish_status(self, can_id: int, status: dict[str, Any]) -> None:
        await self.store.put_status(can_id, status)
        self._emit(StatusChanged(can_id, status))

    # ---- WiFi credentials ---------------------------------------------------------------------------

    async def set_wifi_credentials(self, ssid: str, password: str) -> None:
        """Store the credentials the WiFi method sends to a slave; the password only in its 0600 file.

        :raises ConfigError: SSID not 1..31 bytes, password not empty or 8..63 bytes
        """
        settings.check_ssid(ssid)
        secrets.check_password(password)
        async with self._settings_lock:
            await asyncio.to_thread(secrets.write_password, self.state_dir, password)
            await self._persist({"wifi.ssid": ssid})
        self._set_property("wifi_ssid", ssid)
        _LOGGER.info("engine: WiFi credentials set ssid=%s password=%s", ssid, "set" if password else "none")

    async def wifi_password(self) -> str:
        return await asyncio.to_thread(secrets.read_password, self.state_dir)

    async def _persist(self, values: Mapping[str, object]) -> None:
        merged = {**self._persisted, **values}
        await asyncio.to_thread(settings.write_persisted, self.state_dir, merged)
        self._persisted = merged

    # ---- inhibit ------------------------------------------------------------------------------------

    def inhibit(self, reason: str, owner: str) -> str:
        """Hold off new jobs until :meth:`uninhibit` or until ``owner`` goes away; returns the cookie."""
        cookie = token.token_hex(8)
        self._inhibitors[cookie] = _Inhibitor(cookie, reason, owner)
        _LOGGER.info("engine: inhibited by %s: %s", owner, reason)
        self._set_property("inhibited", True)
        return cookie

    def uninhibit(self, cookie: str) -> None:
        """:raises UnknownCookieError: no inhibit with this cookie"""
        if self._inhibitors.pop(cookie, None) is None:
            raise UnknownCookieError(f"no inhibit with cookie {cookie!r}")
        self._set_property("inhibited", bool(self._inhibitors))

    def release_owner(self, owner: str) -> None:
        """Drop every inhibit held by ``owner`` (a D-Bus client that left the bus)."""
        for cookie in [c for c, held in self._inhibitors.items() if held.owner == owner]:
            _LOGGER.info("engine: %s left; its inhibit %r ends", owner, self._inhibitors[cookie].reason)
            del self._inhibitors[cookie]
        self._set_property("inhibited", bool(self._inhibitors))

    @property
    def inhibit_owners(self) -> set[str]:
        return {held.owner for held in self._inhibitors.values()}


def _method_name(asked: str, identity: Any) -> str:
    """The method for ``asked`` with this master: "auto" follows it (CANopen streams, legacy uses WiFi)."""
    canopen = identity is not None and identity.is_canopen
    method = ("can" if canopen else "wifi") if asked == "auto" else asked
    if method != "can":
        raise InvalidArgumentError(
            "the WiFi method is not available yet in this uc2otad; use a CANopen master"
        )
    if not canopen:
        raise InvalidArgumentError("this master runs legacy firmware: it cannot stream (method 'can')")
    return method


def _image_for(catalog: Catalog, can_id: int, reported: str | None) -> ResolvedImage | None:
    try:
        return (
            catalog.resolve_master()
            if can_id == MASTER_CAN_ID
            else catalog.resolve(can_id, reported_image=reported)
        )
    except FirmwareError:
        return None


def check_can_id(can_id: int, *, allow_all: bool = False) -> int:
    """:raises InvalidArgumentError: outside 1..127 (0 too, unless ``allow_all``: 0 = every board)"""
    low = 0 if allow_all else 1
    if not low <= can_id <= MAX_CAN_ID:
        raise InvalidArgumentError(f"CAN id must be {low}..{MAX_CAN_ID}, not {can_id}")
    return can_id
