"""The engine: what the daemon knows and does, behind whatever API a client uses.

It owns the status store, the firmware repository, the WiFi credentials and the inhibitors, and reports
every change through one observer list: a board's status (``StatusChanged``) or a daemon property
(``PropertyChanged``). The D-Bus adapter only translates these into signals; nothing here knows D-Bus.
Updates: StartOTA and StartMultipleOTA resolve everything a job needs (image, method, credentials,
whether the board is already current) before anything touches a board, then hand each board to the
job manager (:mod:`.jobs`), which owns retries, cancel and history.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as token
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uc2otad import __version__, secrets
from uc2otad.contract import StatusDict
from uc2otad.engine.batch import BatchGate, OverallProgress
from uc2otad.engine.config import EngineConfig, FirmwareSettings
from uc2otad.engine.jobs import JobContext, JobManager, Method
from uc2otad.engine.master import MasterConnection, link_factory
from uc2otad.engine.reconcile import CONFIRMED_MESSAGE, confirm_finished, confirmed_status, provable
from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.engine.usb_status import UsbFlashStatus
from uc2otad.errors import (
    ConfigError,
    FirmwareError,
    InhibitedError,
    InvalidArgumentError,
    JobBusyError,
    LinkClosedError,
    LinkError,
    UnknownCookieError,
)
from uc2otad.firmware.cache import FirmwareCache
from uc2otad.firmware.catalog import MASTER_CAN_ID, MAX_CAN_ID, Catalog, ResolvedImage
from uc2otad.firmware.repository import FirmwareRepository, VerifiedImage
from uc2otad.firmware.server import FirmwareServer, normalize_server_url
from uc2otad.links.commands import NodeInfo, ScanResult
from uc2otad.links.ota_wifi import DEFAULT_WINDOW_MS
from uc2otad.methods.verify import same_release

if TYPE_CHECKING:
    from uc2otad.engine.usb_flash import UsbFlasher
    from uc2otad.methods.wifi import WifiCredentials, WifiMethodSettings

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


@dataclass(frozen=True)
class USBFlashChanged:
    """The USB flash status of the master changed (CONTRACT.md §1 USBFlashStatusChanged)."""

    status: Mapping[str, Any]


Event = StatusChanged | PropertyChanged | USBFlashChanged
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


def repository_for(firmware: FirmwareSettings, server_url: str) -> FirmwareRepository:
    return FirmwareRepository(
        FirmwareServer(server_url, settings=firmware.http), FirmwareCache(firmware.cache_dir), firmware.images
    )


class Engine:
    """The daemon's state and operations. ``start`` before use, ``stop`` at the end."""

    def __init__(self, config: EngineConfig) -> None:
        """:param config: built by the composition root (:func:`uc2otad.compose.engine_config`)"""
        self.config = config
        self.state_dir = config.state_dir
        self.store = StatusStore(self.state_dir / "uc2otad.sqlite3")
        self.repository = repository_for(config.firmware, config.firmware.server)
        self.properties = Properties(firmware_server=self.repository.server.url, wifi_ssid=config.wifi_ssid)
        self._observers: list[Observer] = []
        self._inhibitors: dict[str, _Inhibitor] = {}
        self._settings_lock = asyncio.Lock()
        master = config.master
        self.master = (
            MasterConnection(
                link_factory(master.port, master.baud, master.link),
                master.ownership,
                lambda connected: self._set_property("master_connected", connected),
            )
            if master is not None
            else None
        )
        self.jobs = JobManager(
            self.store, self._publish_status, inhibited=lambda: bool(self._inhibitors), retry=config.retry
        )
        self.jobs.on_change(self._jobs_changed)
        # the flasher and its esptool code load on the first FlashMaster (idle memory, docs/benchmarks.md)
        self._usb_flasher: UsbFlasher | None = None
        #: asking the boards whether the updates a crash interrupted took (:meth:`start`): the jobs that did
        self.reconciling: asyncio.Task[list[JobRecord]] | None = None
        self._usb_status = UsbFlashStatus(lambda status: self._emit(USBFlashChanged(status)))
        self._progress = OverallProgress()
        self._verify = config.verify

    async def start(self) -> list[JobRecord]:
        """Open the store (reconciling interrupted jobs) and the cache.

        :returns: the jobs a crash had left running, now ``interrupted``
        """
        interrupted = await self.store.open()
        await self.repository.cache.open()
        if self.master is not None:
            await self.master.start()
            if any(map(provable, interrupted)):
                self.reconciling = asyncio.create_task(
                    self._confirm_finished(interrupted), name="asking boards about interrupted updates"
                )
        return interrupted

    async def _confirm_finished(self, interrupted: list[JobRecord]) -> list[JobRecord]:
        """Ask the boards whether the interrupted updates took (:mod:`.reconcile`; issue 15, D10); the
        jobs that did, now ``success``."""
        assert self.master is not None
        master = self.master
        confirmed: list[JobRecord] = []

        def found(job: JobRecord, node: NodeInfo) -> None:
            if self._confirmed(job, node):
                confirmed.append(job)

        async def scan() -> ScanResult:
            async with master.use("asking boards about interrupted updates") as link:
                return await link.scan()

        await master.wait_connected()  # exclusive mode: however long the master takes to come back
        try:
            await confirm_finished(interrupted, scan, found, self._verify)
        except LinkError as err:
            _LOGGER.warning("engine: cannot ask the boards about interrupted updates: %s", err)
        return confirmed

    def _confirmed(self, job: JobRecord, node: NodeInfo) -> bool:
        """Board ``job.can_id`` runs the image of its interrupted job: the job is a success after all,
        unless a newer job owns the board's status by now (False)."""
        status = self.store.get_status(job.can_id)
        if self.jobs.running(job.can_id) or status is None or status.get("job_id") != job.job_id:
            return False
        self.store.confirm_job(job, CONFIRMED_MESSAGE.format(version=node.fw_version))
        self._publish_status(job.can_id, confirmed_status(status, job))
        _LOGGER.info(
            "engine: board %d runs %s: job %s, interrupted, is a success after all",
            job.can_id, node.fw_version, job.job_id,
            extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "success"},
        )  # fmt: skip
        return True

    async def stop(self) -> None:
        if self.reconciling is not None:
            self.reconciling.cancel()
            await asyncio.wait({self.reconciling})
        if self._usb_flasher is not None:
            await self._usb_flasher.stop()  # a flash in progress is cancelled: esptool must not outlive us
        if self.master is not None:
            self.master.leave()  # a stream stopped now does not wait for the master (issue 15, D9)
        await self.jobs.stop()  # their rows stay "running": reconciled at the next start
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
        return self.store.get_status(can_id) or idle_status(can_id)

    async def all_status(self) -> dict[int, dict[str, Any]]:
        return self.store.all_status()

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
            self.repository = repository_for(self.config.firmware, normalized)
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
                    # as StartOTA decides "already up to date": a report cut by a buffer names it too
                    board["update_available"] = not same_release(node.fw_version, image.version)
            boards.append(board)
        return boards

    # ---- updates ------------------------------------------------------------------------------------

    async def start_ota(self, can_id: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """Start updating slave ``can_id``; returns once the job is accepted (CONTRACT.md §1 StartOTA).

        Everything is checked before the board is touched: the image exists, the method suits the
        master, WiFi credentials are there. For the WiFi method it returns once the master acknowledged
        the CAN command, with the master's reply as ``command_response``.

        :raises InvalidArgumentError: the master's id, a method the master cannot use, no WiFi credentials
        :raises InhibitedError, JobBusyError: an inhibit is held; the board already has a job
        :raises FirmwareNotFoundError: no image for the board
        :raises LinkError: no master, or it did not answer
        :raises Uc2otadError: the job failed before the master acknowledged its command
        """
        plan = await self._plan([can_id], options)
        if not plan.due:
            return {"status": "success", "message": "already up to date", "can_id": can_id}
        job = self._start_job(plan, can_id)
        response = await job.acceptance() if plan.method == "wifi" else {}
        return {
            "status": "success",
            "message": f"OTA update initiated for device {can_id}",
            "can_id": can_id,
            "job_id": job.job_id,
            "command_response": dict(response),
        }

    async def start_multiple_ota(
        self, can_ids: list[int], options: Mapping[str, Any], *, parallel: int, delay_between: float
    ) -> dict[str, Any]:
        """Update several slaves as one batch (CONTRACT.md §1 StartMultipleOTA); returns at once.

        Every board is checked before any starts; boards already current are left out (not with
        ``force``). Up to ``parallel`` WiFi boards run at once; streaming boards always one by one.

        :raises InvalidArgumentError: no ids, a repeated id, the master's id, …as :meth:`start_ota`
        """
        if not can_ids:
            raise InvalidArgumentError("no CAN ids given")
        if len(set(can_ids)) != len(can_ids):
            raise InvalidArgumentError("a CAN id is given twice")
        plan = await self._plan(can_ids, options)
        batch_id = token.token_hex(8)
        gate = BatchGate(
            parallel if plan.method == "wifi" else 1,
            delay_between,
            inhibited=lambda: bool(self._inhibitors),
            until_uninhibited=self._until_uninhibited,
        )
        job_ids = {
            str(can_id): self._start_job(plan, can_id, gate=gate, batch_id=batch_id).job_id
            for can_id in plan.due
        }
        current = len(can_ids) - len(job_ids)
        message = f"OTA update initiated for {len(job_ids)} devices" + (
            f"; {current} already up to date" if current else ""
        )
        return {"status": "success", "message": message, "batch_id": batch_id, "job_ids": job_ids}

    async def _until_uninhibited(self) -> None:
        """Until no inhibit is held (a queued batch board waits so: "no job starts"; issue 15, D7)."""
        if not self._inhibitors:
            return
        released = asyncio.get_running_loop().create_future()

        def watch(event: Event) -> None:
            if event == PropertyChanged("Inhibited", False) and not released.done():
                released.set_result(None)

        unsubscribe = self.subscribe(watch)
        try:
            await released
        finally:
            unsubscribe()

    async def _plan(self, can_ids: list[int], options: Mapping[str, Any]) -> _Plan:
        """What updating ``can_ids`` takes, checked before any board is touched."""
        for can_id in can_ids:
            check_can_id(can_id)
            if can_id == MASTER_CAN_ID:
                raise InvalidArgumentError(
                    "CAN id 1 is the master CAN HAT: it is flashed over USB (FlashMaster)"
                )
        if self.master is None:
            raise LinkClosedError("no serial port configured for the master CAN HAT (serial.port)", port="")
        self._check_can_start(can_ids)
        catalog = await self.repository.catalog()
        images = {can_id: catalog.resolve(can_id, name=options.get("firmware")) for can_id in can_ids}
        async with self.master.use("checking boards before an update") as link:
            method = _method_name(options.get("method", "auto"), link.identity)
            scan = await link.scan()
        credentials = await self._wifi_credentials(options) if method == "wifi" else None
        self._check_can_start(can_ids)  # again: the scan took a while
        due = [can_id for can_id in can_ids if options.get("force") or not _is_current(scan, images[can_id])]
        return _Plan(method, images, scan, credentials, due, int(options.get("timeout", DEFAULT_WINDOW_MS)))

    def _check_can_start(self, can_ids: list[int]) -> None:
        if self._inhibitors:
            raise InhibitedError("updates are inhibited; see the Inhibited property")
        if self.usb_flashing:
            raise JobBusyError("the master CAN HAT is being flashed over USB; update the boards after it")
        for can_id in can_ids:
            if self.jobs.running(can_id):
                raise JobBusyError(f"board {can_id} already has a running update")

    def _start_job(
        self, plan: _Plan, can_id: int, *, gate: BatchGate | None = None, **fields: Any
    ) -> JobContext:
        image = plan.images[can_id]
        node = plan.scan.node(can_id)
        previous = node.fw_version if node is not None else None
        job = self.jobs.start(
            can_id,
            self._method(plan, can_id),
            {},
            gate=gate.turn() if gate is not None else None,
            firmware=image.name,
            previous_version=previous,
            **fields,
        )
        self._progress.add(job.job_id)
        _LOGGER.info(
            "engine: board %d update started method=%s image=%s", can_id, plan.method, image.name,
            extra={"UC2_CAN_ID": can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "started"},
        )  # fmt: skip
        return job

    def _method(self, plan: _Plan, can_id: int) -> Method:
        assert self.master is not None  # checked by _plan
        repository, name = self.repository, plan.images[can_id].name

        def obtain() -> Awaitable[VerifiedImage]:
            return repository.obtain(can_id, name=name)

        # the methods load when the first job starts (idle memory, docs/benchmarks.md)
        if plan.method == "can":
            from uc2otad.methods.can import CanStreamMethod  # noqa: PLC0415 - on first use, see above

            return CanStreamMethod(self.master.use, obtain, self._verify, before=plan.scan.node(can_id))
        from uc2otad.methods.wifi import WifiMethod  # noqa: PLC0415 - on first use, see above

        assert plan.credentials is not None  # _plan asks for them with the WiFi method
        return WifiMethod(
            self.master.use,
            obtain,
            plan.credentials,
            self._wifi_settings(plan.window_ms),
            before=plan.scan.node(can_id),
        )

    def _wifi_settings(self, window_ms: int) -> WifiMethodSettings:
        return self.config.wifi(window_ms)  # loads the upload's code, as the method: on first use

    async def _wifi_credentials(self, options: Mapping[str, Any]) -> WifiCredentials:
        """From the call, else the stored ones (SetWiFiCredentials).

        :raises InvalidArgumentError: none anywhere, or ones the firmware cannot carry
        """
        from uc2otad.methods.wifi import WifiCredentials  # noqa: PLC0415 - as the method, on first use

        ssid = options.get("ssid") or self.properties.wifi_ssid
        if not ssid:
            raise InvalidArgumentError(
                "no WiFi credentials: pass ssid and password, or store them with SetWiFiCredentials"
            )
        if "password" in options:
            password = options["password"]
        else:  # the stored password belongs to the stored SSID only
            password = await self.wifi_password() if ssid == self.properties.wifi_ssid else ""
        try:
            secrets.check_ssid(ssid, key="ssid")
            secrets.check_password(password)
        except ConfigError as err:
            raise InvalidArgumentError(str(err)) from err
        return WifiCredentials(ssid, password)

    async def cancel(self, can_id: int) -> None:
        """:raises NoJobError, AlreadyCommittedError: see :meth:`JobManager.cancel`"""
        if check_can_id(can_id) == MASTER_CAN_ID and self.usb_flashing:
            await self.cancel_usb_flash()
            return
        await self.jobs.cancel(check_can_id(can_id))

    def _publish_status(self, can_id: int, status: StatusDict) -> None:
        """A board's new status: kept in memory and signalled at once; the store's writer persists it."""
        self.store.put_status(can_id, status)
        self._emit(StatusChanged(can_id, status))
        if self._progress.update(status):
            self._set_property("progress", self._progress.percent)

    def _jobs_changed(self) -> None:
        self._set_property("busy", self.jobs.busy)
        if not self.jobs.busy:  # idle again: the next batch counts from zero
            self._progress.clear()
            self._set_property("progress", 0)

    # ---- WiFi credentials ---------------------------------------------------------------------------

    async def set_wifi_credentials(self, ssid: str, password: str) -> None:
        """Store the credentials the WiFi method sends to a slave; the password only in its 0600 file.

        :raises ConfigError: SSID not 1..31 bytes, password not empty or 8..63 bytes
        """
        secrets.check_ssid(ssid)
        secrets.check_password(password)
        async with self._settings_lock:
            await asyncio.to_thread(secrets.write_password, self.state_dir, password)
            await self._persist({"wifi.ssid": ssid})
        self._set_property("wifi_ssid", ssid)
        _LOGGER.info("engine: WiFi credentials set ssid=%s password=%s", ssid, "set" if password else "none")

    async def wifi_password(self) -> str:
        return await asyncio.to_thread(secrets.read_password, self.state_dir)

    async def _persist(self, values: Mapping[str, object]) -> None:
        await asyncio.to_thread(self.config.saved.save, values)

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

    # ---- USB flashing ---------------------------------------------------------------------------------

    @property
    def usb_flashing(self) -> bool:
        """The master is being flashed over USB: slave jobs must wait (they need its port)."""
        return self._usb_flasher is not None and self._usb_flasher.running

    def _flasher(self) -> UsbFlasher:
        """The USB flasher, built on first use with the esptool code it loads (see ``__init__``)."""
        if self._usb_flasher is None:
            from uc2otad.engine.usb_flash import UsbFlasher  # noqa: PLC0415

            master = self.config.master
            self._usb_flasher = UsbFlasher(
                settings=self.config.usb_flash(),  # loads esptool's code too
                master=self.master,
                hat_port=master.port if master is not None else "",
                repository=lambda: self.repository,
                status=self._usb_status,
                slave_jobs_running=lambda: self.jobs.busy,
                inhibited=lambda: bool(self._inhibitors),
                on_running=lambda running: self._set_property("busy", running or self.jobs.busy),
            )
        return self._usb_flasher

    async def list_serial_ports(self) -> list[dict[str, Any]]:
        """The document's ``listSerialPorts``: every serial port the OS lists."""
        # loaded on first use, as the flasher (idle memory, docs/benchmarks.md)
        from uc2otad.methods.usb.ports import list_serial_ports  # noqa: PLC0415

        return [port.as_dict() for port in await list_serial_ports()]

    def flash_master(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Start flashing the master over USB; returns at once (CONTRACT.md §1 FlashMaster, §4).

        :raises InvalidArgumentError: an option out of range
        :raises InhibitedError, JobBusyError: an inhibit is held; a flash or a slave job is running
        """
        from uc2otad.engine.usb_flash import FlashOptions  # noqa: PLC0415 - on first use, as the flasher

        return self._flasher().start(FlashOptions.from_mapping(options))

    def usb_flash_status(self) -> dict[str, Any]:
        """The document's ``getUSBFlashStatus``; ``status`` "idle" before any flash."""
        return dict(self._usb_status.current)

    async def cancel_usb_flash(self) -> None:
        """:raises NoJobError: no flash is running"""
        await self._flasher().cancel()


def _method_name(asked: str, identity: Any) -> str:
    """The method for ``asked`` with this master: "auto" follows it (CANopen streams, legacy uses WiFi).

    :raises InvalidArgumentError: a method this master cannot carry out
    """
    canopen = identity is not None and identity.is_canopen
    method = ("can" if canopen else "wifi") if asked == "auto" else asked
    if method == "can" and not canopen:
        raise InvalidArgumentError("this master runs legacy firmware: it cannot stream (method 'can')")
    if method == "wifi" and canopen:
        raise InvalidArgumentError(
            "this master runs CANopen firmware, which has no WiFi OTA command (method 'wifi'); use 'can'"
        )
    return method


def _is_current(scan: ScanResult, image: ResolvedImage) -> bool:
    """The board reports the very version the image carries (unknown either side: not current)."""
    node = scan.node(image.can_id)
    return node is not None and same_release(node.fw_version, image.version)


@dataclass(frozen=True)
class _Plan:
    """An update of some boards, resolved before any of them is touched."""

    method: str
    images: Mapping[int, ResolvedImage]
    scan: ScanResult
    credentials: WifiCredentials | None
    #: the boards to update (not current, or forced), in the order given
    due: list[int]
    #: the WiFi window asked of the slaves, ms
    window_ms: int


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
