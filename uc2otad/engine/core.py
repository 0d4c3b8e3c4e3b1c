"""The engine: what the daemon knows and does, behind whatever API a client uses.

This facade holds the parts and answers the API's calls; each part has its own module: the status store
(:mod:`.store`), the events and properties (:mod:`.events`), inhibits (:mod:`.inhibit`), planning an
update (:mod:`.planning`), the jobs (:mod:`.jobs`), the master's port (:mod:`.master`), asking the boards
after a crash (:mod:`.reconcile`). StartOTA and StartMultipleOTA plan everything a job needs before any
board is touched, then hand each board to the job manager, which owns retries, cancel and history.
Nothing here knows D-Bus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import secrets as token
from collections.abc import Callable, Mapping
from typing import Any

from uc2otad import secrets
from uc2otad.contract import StatusDict
from uc2otad.engine.batch import BatchGate, OverallProgress
from uc2otad.engine.batch_plan import (
    FLASH_MASTER,
    PlanEntry,
    check_roles,
    master_entry,
    role_boards,
    slave_entry,
)
from uc2otad.engine.checking import BoardCheck
from uc2otad.engine.config import EngineConfig, FirmwareSettings
from uc2otad.engine.direct import DirectConnection
from uc2otad.engine.events import (
    Event,
    EventHub,
    Observer,
    Properties,
    PropertyChanged,
    StatusChanged,
    USBFlashChanged,
)
from uc2otad.engine.inhibit import Inhibitors
from uc2otad.engine.jobs import JobContext, JobManager
from uc2otad.engine.master import MasterConnection, link_factory
from uc2otad.engine.planning import Plan, Planner, Route, check_can_id, wifi_credentials
from uc2otad.engine.reconcile import ask_the_boards, provable
from uc2otad.engine.rollback import (
    REQUESTED,
    UNHEALTHY,
    LastKnownGood,
    RollbackReason,
    cached_of,
    check_kept,
    record_of,
    slave_image,
)
from uc2otad.engine.scanning import scan_boards, scan_devices
from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.engine.usb import MasterFlashing
from uc2otad.errors import (
    CacheError,
    InhibitedError,
    InvalidArgumentError,
    JobBusyError,
    JobError,
    LinkClosedError,
    Uc2otadError,
    UnhealthyError,
)
from uc2otad.firmware.cache import CachedImage, FirmwareCache
from uc2otad.firmware.catalog import MASTER_CAN_ID
from uc2otad.firmware.directory import FirmwareFolder
from uc2otad.firmware.known_good import KnownGoodImages, KnownGoodRecord
from uc2otad.firmware.repository import IMPORTED_FOLDER, FirmwareRepository
from uc2otad.firmware.signing import SignedManifest
from uc2otad.firmware.source import normalize_source_url, open_source
from uc2otad.methods.base import WifiCredentials

__all__ = [
    "Engine",
    "Event",
    "Observer",
    "PropertyChanged",
    "StatusChanged",
    "USBFlashChanged",
    "check_can_id",
]

_LOGGER = logging.getLogger(__name__)


def idle_status(can_id: int) -> StatusDict:
    """The status of a board no job ever touched."""
    return {"can_id": can_id, "status": "idle"}


def _slave_entries(plan: Plan) -> list[PlanEntry]:
    """The plan's slaves in its order, each "update" when due, else "skip" with why."""
    entries = []
    for can_id, route in plan.routes.items():
        node = route.before
        entries.append(
            slave_entry(
                can_id,
                node.role if node is not None else None,
                route.link,
                plan.states[can_id],
                due=can_id in plan.due,
                newer=plan.not_downgraded.get(can_id),
            )
        )
    return entries


def _master_reply(entry: PlanEntry) -> dict[str, Any]:
    """The reply's ``master``: whether the batch flashes it, with the port, or why not."""
    if entry.action == FLASH_MASTER:
        return {"included": True, "port": entry.port, "state": entry.state}
    return {"included": False, "reason": entry.reason, "state": entry.state}


def _dry_run_message(entries: list[PlanEntry]) -> str:
    acting = [entry for entry in entries if entry.action != "skip"]
    return f"dry run: {len(acting)} of {len(entries)} boards would be updated; nothing was started"


def _without_none(reply: dict[str, Any]) -> dict[str, Any]:
    """D-Bus has no null: unknown values are left out."""
    return {key: value for key, value in reply.items() if value is not None}


def repository_for(firmware: FirmwareSettings, server_url: str) -> FirmwareRepository:
    cache = FirmwareCache(firmware.cache_dir)
    return FirmwareRepository(
        open_source(server_url, firmware.http),
        cache,
        firmware.images,
        channel=firmware.channel,
        signing=firmware.signing,
        imported=FirmwareFolder(str(cache.directory / IMPORTED_FOLDER)),
    )


class Engine:
    """The daemon's state and operations. ``start`` before use, ``stop`` at the end."""

    def __init__(self, config: EngineConfig) -> None:
        """:param config: built by the composition root (:func:`uc2otad.compose.engine_config`)"""
        self.config = config
        self.state_dir = config.state_dir
        self.store = StatusStore(self.state_dir / "uc2otad.sqlite3")
        self.repository = repository_for(config.firmware, config.firmware.server)
        self.events = EventHub(
            Properties(firmware_server=self.repository.server.url, wifi_ssid=config.wifi_ssid)
        )
        self.properties = self.events.properties
        self.inhibitors = Inhibitors(lambda held: self.events.set_property("inhibited", held))
        self._settings_lock = asyncio.Lock()
        master = config.master
        self.master = (
            MasterConnection(
                link_factory(master.port, master.baud, master.link),
                master.ownership,
                lambda connected: self.events.set_property("master_connected", connected),
            )
            if master is not None
            else None
        )
        self.direct = (
            DirectConnection(
                config.can_link, lambda connected: self.events.set_property("can_connected", connected)
            )
            if config.can_link is not None
            else None
        )
        #: the images boards ran after their verified updates, for Rollback (issue 20)
        self.known_good = LastKnownGood(self.store, KnownGoodImages(self.repository.cache.directory))
        self.jobs = JobManager(
            self.store,
            self._publish_status,
            inhibited=lambda: self.inhibitors.held,
            retry=config.retry,
            on_success=self._keep_image,
        )
        self.jobs.on_change(self._jobs_changed)
        self.planner = Planner(
            self.master,
            lambda: self.repository,
            self._check_can_start,
            self._wifi_credentials,
            verify=config.verify,
            wifi_settings=config.wifi,
            direct=self.direct,
            health=config.health,
            installed=self._installed,
        )
        #: asking the boards whether the updates a crash interrupted took (:meth:`start`): the jobs that did
        self.reconciling: asyncio.Task[list[JobRecord]] | None = None
        self.usb = MasterFlashing(
            config,
            self.events,
            self.master,
            repository=lambda: self.repository,
            jobs=self.jobs,
            inhibitors=self.inhibitors,
            store=self.store,
            on_success=self._keep_master_image,
        )
        self._progress = OverallProgress()
        #: batches' master flashes waiting for their slaves (``include_master``), and the checks after
        #: updates (``update.rollback_on_unhealthy``)
        self._after_batches: set[asyncio.Task[None]] = set()
        #: images being kept for a rollback (:meth:`_keep_image`): finished, not cancelled, at stop
        self._keeping: set[asyncio.Task[None]] = set()

    async def start(self) -> list[JobRecord]:
        """Open the store (closing what a crash left running) and the cache, start on the master, and
        in the background ask the boards about interrupted updates (:mod:`.reconcile`).

        :returns: the jobs a crash had left running, now ``interrupted``
        """
        interrupted = await self.store.open()
        self.usb.restore()  # the last flash's status, kept by the store (it exists only now)
        await self.repository.cache.open()
        if self.direct is not None:
            await self.direct.start()
        if self.master is not None:
            await self.master.start()
        witness = self.direct or self.master
        if witness is not None and any(map(provable, interrupted)):
            asking = ask_the_boards(
                interrupted,
                witness,
                self.store,
                running=self.jobs.running,
                publish=self._publish_status,
                settings=self.config.verify,
            )
            self.reconciling = asyncio.create_task(asking, name="asking boards about interrupted updates")
        return interrupted

    async def stop(self) -> None:
        if self.reconciling is not None:
            self.reconciling.cancel()
            await asyncio.wait({self.reconciling})
        for waiting in list(self._after_batches):
            waiting.cancel()
        if self._after_batches:
            await asyncio.wait(self._after_batches)
        await self.usb.stop()  # a flash in progress is cancelled: esptool must not outlive us
        if self.master is not None:
            self.master.leave()  # a stream stopped now does not wait for the master (issue 15, D9)
        await self.jobs.stop()  # their rows stay "running": reconciled at the next start
        if self._keeping:
            await asyncio.wait(self._keeping)  # a second or so: the image is on disk before we go
        if self.master is not None:
            await self.master.stop()
        if self.direct is not None:
            await self.direct.stop()
        await self.store.close()

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` for every event; returns the function that unsubscribes it."""
        return self.events.subscribe(observer)

    # ---- status and history -------------------------------------------------------------------------

    async def get_status(self, can_id: int) -> Mapping[str, Any]:
        return self.store.get_status(can_id) or idle_status(can_id)

    async def all_status(self) -> dict[int, dict[str, Any]]:
        return self.store.all_status()

    async def history(self, can_id: int) -> list[JobRecord]:
        return await self.store.history(can_id)

    async def _installed(self, can_id: int) -> str | None:
        """The sha256 of the image the newest successful update installed on the board, if any
        (:mod:`.checking`: what shows that a board without a release string is current)."""
        jobs = await self.store.history(can_id)
        return next((job.sha256 for job in jobs if job.state == "success"), None)

    def _publish_status(self, can_id: int, status: StatusDict) -> None:
        """A board's new status: kept in memory and signalled at once; the store's writer persists it."""
        self.store.put_status(can_id, status)
        self.events.emit(StatusChanged(can_id, status))
        if self._progress.update(status):
            self.events.set_property("progress", self._progress.percent)

    def _jobs_changed(self) -> None:
        self.events.set_property("busy", self.jobs.busy)
        if not self.jobs.busy:  # idle again: the next batch counts from zero
            self._progress.clear()
            self.events.set_property("progress", 0)

    # ---- firmware -----------------------------------------------------------------------------------

    async def list_firmware(self) -> dict[str, Any]:
        """The document's ``listAvailableFirmware`` response."""
        catalog = await self.repository.catalog()
        return catalog.as_document()

    async def clear_firmware_cache(self, *, include_known_good: bool = False) -> dict[str, int]:
        """Delete the cached images; the images kept for a rollback too with ``include_known_good``.

        :raises CacheBusyError: an update reads the cache
        """
        deleted = await self.repository.cache.clear()
        images = self.known_good.images  # the cache's folder: SetFirmwareServer does not move it
        known_good = await images.clear() if include_known_good else 0
        return {
            "deleted": deleted,
            "known_good_deleted": known_good,
            "known_good_kept": len(await images.kept()),
        }

    async def set_firmware_server(self, url: str) -> None:
        """Use ``url`` from now on and persist it: a server, or a folder laid out like one.

        :raises ConfigError: neither an http(s) URL nor an absolute folder
        """
        normalized = normalize_source_url(url)
        async with self._settings_lock:
            await self._persist({"firmware.server": normalized})
            self.repository = repository_for(self.config.firmware, normalized)
        self.events.set_property("firmware_server", normalized)
        _LOGGER.info("engine: firmware server set to %s", normalized)

    # ---- the bus and updates ------------------------------------------------------------------------

    async def scan_devices(self) -> list[dict[str, Any]]:
        """:func:`.scanning.scan_devices`; :raises LinkClosedError: no link configured or connected"""
        if self.master is None and self.direct is None:
            raise LinkClosedError("no serial port configured for the master CAN HAT (serial.port)", port="")
        return await scan_devices(self.master, self.direct, self.repository, self._installed)

    async def check_updates(self) -> list[dict[str, Any]]:
        """Every board the links know, the master first, with its state against the server's image
        (:mod:`.checking`); nothing is installed.

        :raises LinkClosedError: no link configured or connected
        :raises LinkError: as :meth:`scan_devices`
        :raises FirmwareError: the firmware server's listing or manifest could not be had
        """
        return [check.as_dict() for check in await self._checks()]

    async def start_ota(self, can_id: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """Start updating slave ``can_id``; returns once the job is accepted (CONTRACT.md §1 StartOTA):
        for a method the master acknowledges, once it did, with its reply as ``command_response``.

        :raises InvalidArgumentError, InhibitedError, JobBusyError, FirmwareNotFoundError, LinkError:
            see :meth:`Planner.plan`
        :raises Uc2otadError: the job failed before the master acknowledged its command
        """
        plan = await self.planner.plan([can_id], options)
        if can_id in plan.not_downgraded:  # as fwupd refuses an older version without --allow-older
            image = plan.images[can_id]
            raise InvalidArgumentError(
                f"board {can_id} runs {plan.not_downgraded[can_id]}, newer than {image.version} of "
                f"{image.name}: pass allow_downgrade to install it anyway"
            )
        if not plan.due:
            return {"status": "success", "message": "already up to date", "can_id": can_id}
        job = self._start_job(plan, can_id)
        response = await job.acceptance() if plan.routes[can_id].method.acknowledged_by_master else {}
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
        ``force``), and so are boards that run a newer build (not with ``allow_downgrade``): the reply's
        ``not_downgraded`` names them with what they run. Up to ``parallel`` boards run at once where
        the method allows it, else one by one. The boards are the ids given, then those of ``roles``
        by CAN id; the reply's ``plan`` lists each with its action (:mod:`.batch_plan`), the master
        last with ``include_master``. With ``stop_on_failure`` (the default for more than one board)
        a failed board ends the batch: the boards not yet started end "skipped" (:mod:`.batch`).
        With ``dry_run`` the plan is answered and nothing starts.

        :raises InvalidArgumentError: no boards, a repeated id, the master's id, an unknown role,
            …as :meth:`start_ota`
        """
        if len(set(can_ids)) != len(can_ids):
            raise InvalidArgumentError("a CAN id is given twice")
        roles = check_roles(options.get("roles", ()))
        include_master = bool(options.get("include_master"))
        checks = await self._checks() if roles or include_master else []
        can_ids = can_ids + role_boards(checks, roles, can_ids)
        if not can_ids and not include_master:
            raise InvalidArgumentError(
                f"no board of role {', '.join(roles)} in the scan" if roles else "no CAN ids given"
            )
        plan = await self.planner.plan(can_ids, options) if can_ids else None
        entries = _slave_entries(plan) if plan is not None else []
        if include_master:
            entries.append(await self._master_entry(checks, options))
        flashing_master = bool(entries) and entries[-1].action == FLASH_MASTER
        due = plan.due if plan is not None else []
        stop_on_failure = bool(options.get("stop_on_failure", len(due) + flashing_master > 1))
        reply: dict[str, Any] = {"status": "success", "plan": [entry.as_dict() for entry in entries],
                                 "stop_on_failure": stop_on_failure}  # fmt: skip
        if include_master:
            reply["master"] = _master_reply(entries[-1])
        newer = plan.not_downgraded if plan is not None else {}
        if newer:
            reply["not_downgraded"] = {str(can_id): running for can_id, running in newer.items()}
        if options.get("dry_run"):
            return {**reply, "dry_run": True, "job_ids": {}, "message": _dry_run_message(entries)}
        batch_id = token.token_hex(8)
        gate = BatchGate(
            parallel if plan is None or plan.parallel else 1,
            delay_between,
            inhibited=lambda: self.inhibitors.held,
            until_uninhibited=lambda: self.events.until_property("inhibited", False),
            stop_on_failure=stop_on_failure,
        )
        job_ids = (
            {}
            if plan is None
            else {
                str(can_id): self._start_job(plan, can_id, gate=gate, batch_id=batch_id).job_id
                for can_id in due
            }
        )
        if flashing_master:
            self._flash_master_after(gate, due, str(entries[-1].port), stop_on_failure=stop_on_failure)
        current = len(can_ids) - len(job_ids) - len(newer)
        message = f"OTA update initiated for {len(job_ids)} devices" + (
            f"; {current} already up to date" if current else ""
        )
        if newer:
            boards = ", ".join(f"CAN {can_id} ({running})" for can_id, running in newer.items())
            message += f"; not downgraded (newer firmware, no allow_downgrade): {boards}"
        if flashing_master:
            message += "; then the master over USB"
        return {**reply, "message": message, "batch_id": batch_id, "job_ids": job_ids}

    async def _checks(self) -> list[BoardCheck]:
        """CheckUpdates' view of the boards (also what a batch's ``roles`` select from and the master's
        state for ``include_master``).

        :raises LinkClosedError, LinkError, FirmwareError: as :meth:`check_updates`
        """
        if self.master is None and self.direct is None:
            raise LinkClosedError("no serial port configured for the master CAN HAT (serial.port)", port="")
        return await scan_boards(
            self.master, self.direct, self.repository, self._installed, server_timeout=None
        )

    async def _master_entry(self, checks: list[BoardCheck], options: Mapping[str, Any]) -> PlanEntry:
        """The master's place in the plan: flashed when its check says so and its port is there.

        :raises InvalidArgumentError: ``master_port`` is no serial device or URL
        """
        check = next((c for c in checks if c.node.can_id == MASTER_CAN_ID), None)
        port, problem = "", None
        try:
            port = await self.usb.port_for(str(options.get("master_port", "")))
        except InvalidArgumentError:
            raise
        except Uc2otadError as err:
            problem = str(err)
        return master_entry(check, force=bool(options.get("force")), port=port, port_problem=problem)

    def _flash_master_after(
        self, gate: BatchGate, can_ids: list[int], port: str, *, stop_on_failure: bool
    ) -> None:
        """Flash the master over USB on ``port`` once the batch's boards have ended: when every one
        succeeded, or whatever they did without ``stop_on_failure``. Last, because the slaves are
        updated through it (a master flashed first would have to come back before any of them)."""

        async def after_batch() -> None:
            for can_id in can_ids:
                await self.jobs.wait(can_id)
            failed = sorted(set(can_ids) - gate.succeeded)
            try:
                if stop_on_failure and failed:
                    boards = ", ".join(map(str, failed))
                    raise JobError(
                        f"board(s) {boards} of the batch did not succeed, so the master was not flashed"
                    )
                self.usb.flash_master({"port": port})
            except Uc2otadError as err:
                _LOGGER.warning(
                    "engine: the master's flash after the batch did not start: %s", err,
                    extra={"UC2_CAN_ID": MASTER_CAN_ID, "UC2_PHASE": "failed"},
                )  # fmt: skip
                self.usb.status.skipped(str(err))  # seen by whoever follows the master's flash

        task = asyncio.create_task(after_batch(), name="flash the master after a batch")
        self._after_batches.add(task)
        task.add_done_callback(self._after_batches.discard)

    async def import_firmware(self, descriptor: int) -> dict[str, Any]:
        """Import the release bundle open as ``descriptor`` (taken over: closed here) into the offline
        folder that serves when the firmware source cannot be reached (:mod:`uc2otad.firmware.imports`).

        :raises BundleError: the bundle breaks a rule: refused whole, the previous import kept
        :raises SignatureInvalidError: signatures are enforced and it is not signed by a trusted key
        :raises CacheError: the offline folder cannot be written
        """
        from uc2otad.firmware.imports import import_bundle  # noqa: PLC0415 - zipfile, tarfile: on first use

        def work() -> dict[str, Any]:
            with os.fdopen(descriptor, "rb", closefd=True) as source:
                try:
                    imported = import_bundle(
                        source, self.repository.cache.directory, self.config.firmware.signing
                    )
                except OSError as err:
                    raise CacheError(
                        f"the imported firmware cannot be written: {err.strerror or err}"
                    ) from err
            return imported.as_dict()

        return await asyncio.to_thread(work)

    # ---- rollback (issue 20) --------------------------------------------------------------------------

    async def rollback(self, can_id: int, *, reason: RollbackReason = REQUESTED) -> dict[str, Any]:
        """Put back the image board ``can_id`` ran before its current one (:mod:`.rollback`), by the
        board's method (the master over USB), verified like any update; returns once the job is
        accepted, as StartOTA does. The history row says ``rollback`` (``reason``).

        :raises NoRollbackImageError: no earlier image of the board is kept
        :raises InvalidArgumentError, InhibitedError, JobBusyError, LinkError: as :meth:`start_ota`
        """
        kept = await self.known_good.previous(check_can_id(can_id))
        await asyncio.to_thread(check_kept, kept, self.config.firmware.signing)
        record = kept.record
        reply = {"status": "success", "can_id": can_id, "firmware": record.name, "sha256": record.sha256,
                 "firmware_version": record.version}  # fmt: skip
        message = (
            f"rollback of device {can_id} to {record.name} ({record.version or record.sha256[:12]}) initiated"
        )
        if can_id == MASTER_CAN_ID:
            # where the image it replaces went, if that flash went well; else the flash's own rule
            last = self.usb.current()
            port = str(last.get("port", "")) if last.get("status") == "success" else ""
            started = self.usb.flash_master({"port": port}, image=cached_of(kept), rollback=reason)
            return _without_none({**reply, "message": message, "job_id": started.get("job_id")})
        options: dict[str, Any] = {"force": True, "allow_downgrade": True}
        if reason == UNHEALTHY:  # the counters that climbed are why it goes back: they must not stop it
            options["skip_checks"] = ["errors"]
        image = await asyncio.to_thread(slave_image, can_id, kept)
        plan = await self.planner.plan([can_id], options, pinned={can_id: image})
        job = self._start_job(plan, can_id, rollback=reason)
        response = await job.acceptance() if plan.routes[can_id].method.acknowledged_by_master else {}
        _LOGGER.info(
            "engine: board %d rollback started reason=%s image=%s sha256=%s", can_id, reason, record.name,
            record.sha256, extra={"UC2_CAN_ID": can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "started"},
        )  # fmt: skip
        return _without_none({**reply, "message": message, "job_id": job.job_id,
                              "command_response": dict(response)})  # fmt: skip

    async def _keep_image(self, job: JobContext) -> None:
        """A slave's job succeeded: keep its image for a later rollback (never raises)."""
        image = job.image
        if image is not None:
            source = None if image.resolved.source == "known_good" else self.repository.server.url
            self._keep(job.can_id, record_of(image, image.version, source), image.data, image.resolved.signed)

    async def _keep_master_image(
        self, image: CachedImage, version: str | None, signed: SignedManifest | None
    ) -> None:
        """The master was flashed: keep its image for a later rollback (never raises)."""
        source = None if image.verified_by == "known_good" else self.repository.server.url
        self._keep(MASTER_CAN_ID, record_of(image, version, source), image.data, signed)

    def _keep(
        self, can_id: int, record: KnownGoodRecord, data: bytes, signed: SignedManifest | None = None
    ) -> None:
        """Keep an image beside the job rather than in it, so that the board is free again as soon as
        its success is published (the next update does not find it busy)."""
        keeping = self.known_good.remember(can_id, record, data, signed)
        task = asyncio.create_task(keeping, name=f"keep the image of board {can_id}")
        self._keeping.add(task)
        task.add_done_callback(self._keeping.discard)

    def _check_after(self, job: JobContext, route: Route) -> None:
        """With ``update.rollback_on_unhealthy``: once the job has ended well, run the checks before an
        update again (the node answers, the bus is running, its error counters below the limit); when
        one fails, put the board's earlier image back. A failed job, its verification's included, is
        never rolled back: the board still runs the image it had."""

        async def check() -> None:
            await self.jobs.wait(job.can_id)
            status = self.store.get_status(job.can_id) or {}
            if status.get("job_id") != job.job_id or status.get("status") != "success":
                return
            try:
                await self.planner.check_board(job.can_id, route, frozenset())
                return
            except UnhealthyError as err:
                problem = str(err)
            except Uc2otadError as err:  # the link could not be asked: nothing proves the board unwell
                _LOGGER.warning(
                    "engine: board %d: the check after its update could not run: %s", job.can_id, err
                )
                return
            _LOGGER.warning(
                "engine: board %d is unhealthy after its update (%s); putting its earlier image back",
                job.can_id, problem,
                extra={"UC2_CAN_ID": job.can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "unhealthy"},
            )  # fmt: skip
            try:
                await self.rollback(job.can_id, reason=UNHEALTHY)
            except Uc2otadError as err:
                _LOGGER.error(
                    "engine: board %d: the rollback after an unhealthy update did not start: %s",
                    job.can_id, err, extra={"UC2_CAN_ID": job.can_id, "UC2_PHASE": "failed"},
                )  # fmt: skip

        task = asyncio.create_task(check(), name=f"check board {job.can_id} after its update")
        self._after_batches.add(task)
        task.add_done_callback(self._after_batches.discard)

    def _check_can_start(self, can_ids: list[int]) -> None:
        if self.inhibitors.held:
            raise InhibitedError("updates are inhibited; see the Inhibited property")
        if self.usb.flashing:
            raise JobBusyError("the master CAN HAT is being flashed over USB; update the boards after it")
        for can_id in can_ids:
            if self.jobs.running(can_id):
                raise JobBusyError(f"board {can_id} already has a running update")

    def _start_job(
        self, plan: Plan, can_id: int, *, gate: BatchGate | None = None, **fields: Any
    ) -> JobContext:
        """Hand board ``can_id`` of ``plan`` to the job manager (in a batch: its turn at ``gate``,
        which learns how it ended)."""
        image, route = plan.images[can_id], plan.routes[can_id]
        node = route.before
        job = self.jobs.start(
            can_id,
            self.planner.job(plan, can_id, recheck=gate is not None),  # a batch board: checked at its turn
            {},
            gate=gate.turn() if gate is not None else None,
            on_end=functools.partial(gate.ended, can_id) if gate is not None else None,
            firmware=image.name,
            previous_version=node.fw_version if node is not None else None,
            link=route.link,
            **fields,
        )
        self._progress.add(job.job_id)
        if self.config.health.rollback_on_unhealthy and "rollback" not in fields:
            self._check_after(job, route)
        _LOGGER.info(
            "engine: board %d update started method=%s link=%s image=%s",
            can_id, route.method.name, route.link, image.name,
            extra={"UC2_CAN_ID": can_id, "UC2_JOB_ID": job.job_id, "UC2_PHASE": "started"},
        )  # fmt: skip
        return job

    async def cancel(self, can_id: int) -> None:
        """:raises NoJobError, AlreadyCommittedError: see :meth:`JobManager.cancel`"""
        if check_can_id(can_id) == MASTER_CAN_ID and self.usb.flashing:
            await self.usb.cancel()
            return
        await self.jobs.cancel(check_can_id(can_id))

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
        self.events.set_property("wifi_ssid", ssid)
        _LOGGER.info("engine: WiFi credentials set ssid=%s password=%s", ssid, "set" if password else "none")

    async def wifi_password(self) -> str:
        return await asyncio.to_thread(secrets.read_password, self.state_dir)

    async def set_ota_password(self, password: str) -> None:
        """Store the ArduinoOTA password the WiFi method answers a board's challenge with, only in its
        0600 file; "" clears it. Logged as "set" or "cleared", never itself.

        :raises ConfigError: not empty and not 1..64 bytes, or with control characters
        """
        secrets.check_ota_password(password)
        async with self._settings_lock:
            await asyncio.to_thread(secrets.write_ota_password, self.state_dir, password)
        _LOGGER.info("engine: OTA password %s", "set" if password else "cleared")

    async def ota_password(self) -> str:
        """The stored OTA password; "" when none is stored."""
        return await asyncio.to_thread(secrets.read_ota_password, self.state_dir)

    async def _wifi_credentials(self, options: Mapping[str, Any]) -> WifiCredentials:
        """The call's WiFi credentials with the stored OTA password, read now: a job planned after
        SetOTAPassword uses the new one."""
        credentials = await wifi_credentials(options, self.properties.wifi_ssid, self.wifi_password)
        return dataclasses.replace(credentials, ota_password=await self.ota_password() or None)

    async def _persist(self, values: Mapping[str, object]) -> None:
        await asyncio.to_thread(self.config.saved.save, values)
