"""The USB flash job: the master CAN HAT flashed with esptool, safely, while the daemon owns its port.

One flash at a time, never while a slave job runs (both ways: the engine asks :attr:`UsbFlasher.running`
before a slave job). The steps follow the procedure document's workflow and status table
(:mod:`.status`):

1. before touching anything: esptool runnable, the port chosen (CONTRACT.md §4) and openable, and
   which esptool it is (its spelling, its flasher stub: ``esptool.detect``);
2. the master link released (closed, reconnecting suspended), the image fetched into the cache; the
   flash holds the bytes the cache verified, and esptool reads a private copy of them, so a
   ClearFirmwareCache during the flash takes the cache's file, never the image being written;
3. the board probed (chip from the adapter's VID:PID, else esptool's detection; flash size), the image
   rules checked (:mod:`uc2otad.methods.usb.rules`) — a refused image is never written;
4. erase (merged images only, when asked), write with esptool's progress in 45-85;
5. the board's reboot awaited, the link reopened, and ``/state_get`` must show the new image.

A failure ends ``failed`` with the document's USB error row; cancel stops esptool (terminate, then kill).

Every flash is a history row (:class:`FlashHistory`, the engine's GetHistory): begun first thing, before
the port is even chosen, so that a flash that fails early (no port, no esptool) is recorded too and a
crash at any later point leaves a ``running`` row for the next start to close as ``interrupted``; the
row learns the image (name, sha256, version) before anything is written, and ends with the status.

The job lives with the USB method, as the slave methods live in this room: the methods own how an image
reaches a board, the master included. It imports nothing from the engine (api → engine → methods →
links); what it needs of the daemon's hold on the master is :class:`MasterAccess`, which the engine's
``MasterConnection`` (``engine/master.py``) fulfils.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from uc2otad.errors import (
    CacheError,
    CacheFullError,
    ConfigError,
    InhibitedError,
    InvalidArgumentError,
    JobBusyError,
    LinkError,
    NoJobError,
    ReconnectError,
    Uc2otadError,
)
from uc2otad.firmware.cache import CachedImage
from uc2otad.firmware.catalog import MASTER_CAN_ID
from uc2otad.firmware.chips import normalize_chip_name
from uc2otad.firmware.names import check_file_name
from uc2otad.firmware.repository import FirmwareRepository
from uc2otad.firmware.signing import SignedManifest
from uc2otad.links.commands import MasterIdentity
from uc2otad.links.protocol import UpdateLink
from uc2otad.methods.usb.chips import chip_for_usb_id
from uc2otad.methods.usb.esptool import Esptool, EsptoolSettings
from uc2otad.methods.usb.ports import (
    SerialPort,
    check_port_access,
    choose_port,
    list_serial_ports,
    usb_identity,
)
from uc2otad.methods.usb.rules import APP_OFFSET, MERGED_OFFSET, FlashPlan, plan_flash
from uc2otad.methods.usb.status import CANCELLED_MESSAGE, STARTED_MESSAGE, UsbFlashStatus, UsbStep

_LOGGER = logging.getLogger(__name__)

# REBOOT_WAIT and RECONNECT_WINDOW are also the defaults of the usb.reboot_wait and usb.reconnect_window
# settings; the composition root (uc2otad/compose.py) reads them only on the first FlashMaster, so that
# this module and esptool's stay unloaded while the daemon is idle (docs/benchmarks.md)
#: seconds the board takes to boot after esptool's hard reset (document, Phase 4: "Wait for device
#: reboot (1 second)")
REBOOT_WAIT = 1.0
#: seconds the master has to answer ``/state_get`` again after the flash: an ESP32 boots in about 1 s;
#: the link's reconnect backoff (0.5, 1, 2, 4, 8 s) has had five tries by then
RECONNECT_WINDOW = 30.0
#: seconds between tries to confirm the master within the window, when a try fails at once
CONFIRM_RETRY_DELAY = 0.5
#: the document's flashMasterFirmwareUSB defaults (CONTRACT.md §4)
DEFAULT_BAUD = 921600
DEFAULT_MATCH = "HAT"
#: baud rates esptool can ask of a USB-serial adapter; the ROM starts at 115200
MIN_BAUD, MAX_BAUD = 9600, 4_000_000
#: esptool's last lines kept for the journal summary of a failure
TAIL_LINES = 20
#: the longest ``match`` text: it is compared with port descriptions
MAX_MATCH_LENGTH = 64
#: the longest port: PATH_MAX for a device path (a URL is far shorter)
MAX_PORT_LENGTH = 4096
#: pyserial URLs esptool can flash through (the simulator's ROM loader is a socket://)
PORT_URL_SCHEMES = ("socket", "rfc2217")
#: characters of a refused value quoted in an error message
QUOTE_LENGTH = 60
#: the private folder esptool reads the image from: made by :func:`tempfile.mkdtemp` (0700) in the
#: daemon's temporary folder, which the unit makes its own (PrivateTmp=yes)
FLASH_COPY_PREFIX = "uc2otad-flash-"


class MasterAccess(Protocol):
    """What the flash needs of the daemon's hold on the master (``engine/master.py``'s ``MasterConnection``).

    The port is given up for the flash (esptool needs it to itself), then the link is awaited and borrowed
    once more to ask the master which image it runs.
    """

    def released(self, purpose: str) -> AbstractAsyncContextManager[None]:
        """Close the link and leave the port alone while the block runs; reconnecting resumes after it.

        :raises LinkBusyError: already released
        """

    async def wait_connected(self) -> None:
        """Return once the link is open again (at once when it is opened per use); bound it with a timeout."""

    def use(self, purpose: str) -> AbstractAsyncContextManager[UpdateLink]:
        """The open link for ``purpose``.

        :raises LinkError: it is not connected, or cannot be opened now
        """


class FlashHistory(Protocol):
    """Where each flash is recorded: the daemon's history (``engine/usb_history.py``), one row a flash."""

    async def begin(self, job_id: str, *, firmware: str | None, rollback: str | None) -> None:
        """Record flash ``job_id`` as running; returns once it is kept. Called first thing, before the
        link is released or the board touched: a crash from then on leaves a row to close.

        :param firmware: the image asked for (None: the catalog's, not known yet)
        :raises StoreError: it could not be kept in time (the flash fails; nothing was touched)
        """

    def image(self, job_id: str, image: CachedImage, version: str | None) -> None:
        """The flash has its image, and ``version`` (its app descriptor's) is what it installs; called
        before anything is erased or written."""

    def end(self, job_id: str, *, success: bool, error_code: str = "", message: str = "",
            firmware_version: str | None = None) -> None:  # fmt: skip
        """Flash ``job_id`` ended (``firmware_version``: what the master reported after it, if asked)."""


class _NoHistory:
    """A flasher without a history (scripts, unit tests)."""

    async def begin(self, job_id: str, *, firmware: str | None, rollback: str | None) -> None:
        return None

    def image(self, job_id: str, image: CachedImage, version: str | None) -> None:
        return None

    def end(self, job_id: str, *, success: bool, error_code: str = "", message: str = "",
            firmware_version: str | None = None) -> None:  # fmt: skip
        return None


#: told of each successful flash, before its task ends: the image written, its version, and the signed
#: manifest that listed it (None: unsigned, or an image given by the caller)
OnSuccess = Callable[[CachedImage, str | None, SignedManifest | None], Awaitable[None]]


@dataclass(frozen=True)
class _Flashed:
    """What a flash that succeeded wrote: the image and its version (app descriptor, else reported), and
    the signed manifest it came with (kept with the image for a rollback, issue 21)."""

    image: CachedImage
    version: str | None
    signed: SignedManifest | None = None


@dataclass(frozen=True)
class UsbFlashSettings:
    """Timeouts and how esptool runs; tests shrink them."""

    esptool: EsptoolSettings = field(default_factory=EsptoolSettings)
    reboot_wait: float = REBOOT_WAIT
    reconnect_window: float = RECONNECT_WINDOW


@dataclass(frozen=True)
class FlashOptions:
    """FlashMaster's options (CONTRACT.md §4), checked."""

    port: str = ""
    match: str = DEFAULT_MATCH
    baud: int = DEFAULT_BAUD
    #: None: the image's own offset
    flash_offset: int | None = None
    erase_flash: bool = False
    reconnect_after: bool = True
    #: a file name on the firmware server; None: the master image the catalog chooses
    firmware: str | None = None
    #: "auto" or a chip as esptool names it
    chip: str = "auto"

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> FlashOptions:
        """:raises InvalidArgumentError: a value out of range or of the wrong kind (the message names it)"""
        try:
            values = cls(**options)
        except TypeError as err:  # an option this class does not have
            raise InvalidArgumentError(f"unknown FlashMaster option: {err}") from err
        if values.port:
            check_serial_port(values.port)
        if len(values.match) > MAX_MATCH_LENGTH or not values.match.isprintable():
            raise InvalidArgumentError(f"match must be up to {MAX_MATCH_LENGTH} printable characters")
        if not MIN_BAUD <= values.baud <= MAX_BAUD:
            raise InvalidArgumentError(f"baud must be {MIN_BAUD}..{MAX_BAUD}, not {values.baud}")
        if values.flash_offset not in (None, MERGED_OFFSET, APP_OFFSET):
            raise InvalidArgumentError(
                f"flash_offset must be 0x0 (merged image) or 0x10000 (app image), not {values.flash_offset}"
            )
        if values.erase_flash and values.flash_offset == APP_OFFSET:
            raise InvalidArgumentError("erase_flash needs a merged image at 0x0, not flash_offset 0x10000")
        if values.firmware is not None:
            try:
                check_file_name(values.firmware)
            except ValueError as err:
                raise InvalidArgumentError(str(err)) from err
        if values.chip != "auto":
            try:
                normalize_chip_name(values.chip)
            except ConfigError as err:
                raise InvalidArgumentError(f"chip must be auto or an ESP chip name: {err.reason}") from err
        return values


def check_serial_port(port: str) -> str:
    """``port`` names a serial device, or a ``socket://host:port`` / ``rfc2217://host:port`` URL.

    Checked when FlashMaster is called, before the HAT link is released: esptool pointed at a file or at
    ``/dev/null`` would only fail after the link was given up, as "Write failed … check the USB cable".
    A serial device is a character device under ``/dev`` (``/dev/serial/by-id/…`` links resolve there)
    of the kernel's tty class when sysfs tells (pseudo-terminals have no sysfs entry and are let through).
    A path that does not exist or that the daemon may not open is left to the flash, whose first step
    reports it as "No serial ports found" or "Port access denied", also before the link is released.

    :raises InvalidArgumentError: anything else (the value is quoted, cut short)
    """
    shown = repr(port[:QUOTE_LENGTH]) + ("…" if len(port) > QUOTE_LENGTH else "")
    if len(port) > MAX_PORT_LENGTH or not port.isprintable():
        raise InvalidArgumentError(f"port must be up to {MAX_PORT_LENGTH} printable characters")
    if "://" in port:
        try:
            parts = urlsplit(port)
            number = parts.port
        except ValueError:
            raise InvalidArgumentError(f"port {shown} is not a valid URL (port 1..65535)") from None
        if parts.scheme not in PORT_URL_SCHEMES:
            raise InvalidArgumentError(
                f"port must be a serial device or a socket:// or rfc2217:// URL, not {shown}"
            )
        if not parts.hostname or not number:
            raise InvalidArgumentError(f"port {shown} must name a host and a port 1..65535")
        return port
    if not port.startswith("/"):
        raise InvalidArgumentError(
            f"port must be a device path or a socket:// or rfc2217:// URL, not {shown}"
        )
    try:
        info = os.stat(port)
    except OSError:  # missing (unplugged) or not reachable: the flash reports its row
        return port
    if not os.access(port, os.R_OK | os.W_OK, effective_ids=os.access in os.supports_effective_ids):
        return port  # the flash reports "Port access denied"; nothing could be written to it anyway
    real = os.path.realpath(port)
    if not stat.S_ISCHR(info.st_mode) or not real.startswith("/dev/") or not _is_tty(info.st_rdev):
        raise InvalidArgumentError(f"port {shown} is not a serial device (a tty character device under /dev)")
    return port


def _is_tty(device: int) -> bool:
    """The kernel's class of character device ``device`` is tty (True when sysfs does not say)."""
    subsystem = Path(f"/sys/dev/char/{os.major(device)}:{os.minor(device)}/subsystem")
    try:
        return Path(os.path.realpath(subsystem, strict=True)).name == "tty"
    except OSError:
        return True


@contextlib.asynccontextmanager
async def private_copy(data: bytes, name: str) -> AsyncIterator[Path]:
    """``data`` as the file ``name`` in a new private folder, removed with the folder when the block ends.

    esptool reads the image it writes by path. Handing it the cache's file would let a ClearFirmwareCache
    between the fetch and esptool's open delete the image under the flash (issue 15, D4), and a fetch of
    the same name in that window could swap it for other bytes than those checked. A copy of the verified
    bytes in a folder only this flash knows (0700, named by :func:`tempfile.mkdtemp`, created with
    ``O_EXCL``) is read by esptool and nothing else. It keeps the image's name, so esptool's command line
    in the journal still says which image it writes.

    :raises CacheFullError: the disk of the temporary folder is full (``disk_full``)
    :raises CacheError: the copy cannot be written
    """
    try:
        folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=FLASH_COPY_PREFIX))
    except OSError as err:
        raise _copy_error(Path(tempfile.gettempdir()), err) from err
    try:
        path = folder / check_file_name(name)
        try:
            await asyncio.to_thread(_write_new_file, path, data)
        except OSError as err:
            raise _copy_error(folder, err) from err
        yield path
    finally:
        # a thread cannot be stopped: even if this wait is cancelled, the folder goes
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)


def _write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, which must not exist yet (0600: nobody else needs to read it)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as sink:
        sink.write(data)


def _copy_error(folder: Path, err: OSError) -> CacheError:
    """The flash's error when the image cannot be copied for esptool: ``disk_full`` if there is no room."""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return CacheFullError(
            f"disk full: no room for the image to flash in {folder} ({err.strerror}); free space on that disk"
        )
    return CacheError(f"cannot copy the image to flash into {folder}: {err.strerror}")


@dataclass(frozen=True)
class _FlashJob:
    """One FlashMaster: its history row's id, its options, and a rollback's image and reason."""

    job_id: str
    options: FlashOptions
    #: the image to write, given by the caller (not fetched); None: fetched as ``options`` say
    image: CachedImage | None = None
    rollback: str | None = None

    @property
    def firmware(self) -> str | None:
        """The image's name as far as it is known at the start."""
        return self.image.name if self.image is not None else self.options.firmware


class UsbFlasher:
    """The daemon's one USB flash: start, status, cancel."""

    def __init__(
        self,
        *,
        settings: UsbFlashSettings,
        master: MasterAccess | None,
        hat_port: str,
        repository: Callable[[], FirmwareRepository],
        status: UsbFlashStatus,
        slave_jobs_running: Callable[[], bool],
        inhibited: Callable[[], bool],
        on_running: Callable[[bool], None],
        history: FlashHistory | None = None,
        on_success: OnSuccess | None = None,
    ) -> None:
        """
        :param history: where each flash is recorded (None: nowhere)
        :param on_success: told of each successful flash, before its task ends; what it raises is
            logged and never fails the flash
        :param master: the master link to release while flashing; None without a HAT link
        :param hat_port: the HAT link's configured port ("" without one): the default port to flash
        :param repository: the firmware repository in use now (it changes with SetFirmwareServer)
        :param status: the daemon's one USB flash status (it exists before the flasher: the idle status)
        :param on_running: told True when a flash starts and False when it ends
        """
        self._settings = settings
        self._master = master
        self._hat_port = hat_port
        self._repository = repository
        self._slave_jobs_running = slave_jobs_running
        self._inhibited = inhibited
        self._on_running = on_running
        self._history: FlashHistory = history if history is not None else _NoHistory()
        self._on_success = on_success
        self.status = status
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """A flash is in progress: slave jobs must not start (they need the master's port)."""
        return self._task is not None and not self._task.done()

    def start(
        self, options: FlashOptions, *, image: CachedImage | None = None, rollback: str | None = None
    ) -> dict[str, Any]:
        """Start flashing the master and return at once; the result arrives as status changes.

        :param image: the image to write, already verified (a rollback's known-good image): it is not
            fetched from the server; the status steps are the same ("Firmware downloaded: <name>")
        :param rollback: why this flash puts back an earlier image ("requested", "unhealthy"), for its
            history row; None for an update
        :raises InhibitedError: an inhibit is held
        :raises JobBusyError: a flash or a slave job is running
        """
        if self._inhibited():
            raise InhibitedError("updates are inhibited; see the Inhibited property")
        if self.running:
            raise JobBusyError("the master is already being flashed over USB")
        if self._slave_jobs_running():
            raise JobBusyError("a slave update is running through the master; flash the master after it")
        job_id = secrets.token_hex(8)
        requested = image.name if image is not None else options.firmware
        self.status.begin(erase_flash=options.erase_flash, firmware=requested, job_id=job_id)
        job = _FlashJob(job_id, options, image, rollback)
        self._task = asyncio.get_running_loop().create_task(self._run(job), name=f"usb flash {job_id}")
        self._on_running(True)
        self._task.add_done_callback(lambda _task: self._on_running(False))
        _LOGGER.info(
            "usb: flash of the master started port=%s firmware=%s erase=%s rollback=%s",
            options.port or "(auto)", requested or "(catalog)", options.erase_flash, rollback or "-",
            extra={"UC2_CAN_ID": MASTER_CAN_ID, "UC2_JOB_ID": job_id, "UC2_PHASE": "started"},
        )  # fmt: skip
        return {
            "status": "started",
            "message": STARTED_MESSAGE,
            "job_id": job_id,
            "port": options.port or None,
            "firmware": requested,
            "baud": options.baud,
            "erase_flash": options.erase_flash,
            "reconnect_after": options.reconnect_after,
        }

    async def cancel(self) -> None:
        """Stop the flash at once (esptool is terminated); the status ends "failed", "Flash cancelled".

        :raises NoJobError: no flash is running
        """
        task = self._task
        if task is None or task.done():
            raise NoJobError("no USB flash of the master is running")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop(self) -> None:
        """Daemon shutdown: a running flash is cancelled."""
        with contextlib.suppress(NoJobError):
            await self.cancel()

    # ---- the job ------------------------------------------------------------------------------------

    async def _run(self, job: _FlashJob) -> None:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        history, job_id = self._history, job.job_id
        flashed: _Flashed | None = None
        try:
            await history.begin(job_id, firmware=job.firmware, rollback=job.rollback)
            flashed = await self._flash(job, tail)
        except asyncio.CancelledError:
            _LOGGER.warning("usb: flash of the master cancelled", extra={"UC2_CAN_ID": MASTER_CAN_ID})
            self.status.cancelled()
            history.end(job_id, success=False, error_code="cancelled", message=CANCELLED_MESSAGE)
            raise
        except Uc2otadError as err:
            _LOGGER.warning(
                "usb: flash of the master failed: %s: %s", type(err).__name__, err,
                extra={"UC2_CAN_ID": MASTER_CAN_ID, "UC2_JOB_ID": job_id, "UC2_PHASE": "failed"},
            )  # fmt: skip
            if tail:
                _LOGGER.debug("usb: esptool's last lines:\n%s", "\n".join(tail))
            self._failed(job_id, err)
        except Exception as err:  # a bug: the status must still end, and the traceback be seen
            _LOGGER.exception("usb: flash of the master: unexpected error")
            self._failed(job_id, Uc2otadError(f"internal error: {type(err).__name__}"))
        if flashed is not None:  # out of the try: a cancel while ``on_success`` runs is no failed flash
            history.end(job_id, success=True, message=self.status.current["message"],
                        firmware_version=flashed.version)  # fmt: skip
            await self._succeeded(flashed)

    def _failed(self, job_id: str, error: Uc2otadError) -> None:
        self.status.fail(error)
        message = f"{self.status.current['message']}: {error}"
        self._history.end(job_id, success=False, error_code=self.status.current.get("error_code", "failed"),
                          message=message)  # fmt: skip

    async def _succeeded(self, flashed: _Flashed) -> None:
        """Tell ``on_success`` of the flash (its errors are the journal's, never the flash's)."""
        if self._on_success is None:
            return
        try:
            await self._on_success(flashed.image, flashed.version, flashed.signed)
        except Exception:  # the flash succeeded whatever the listener does; CancelledError goes on
            _LOGGER.exception(
                "usb: after the flash of the master: the success listener failed",
                extra={"UC2_CAN_ID": MASTER_CAN_ID},
            )

    async def _flash(self, job: _FlashJob, tail: deque[str]) -> _Flashed:
        options = job.options
        # 1. everything that can fail without touching the board or the link
        ports = await list_serial_ports()
        port = choose_port(requested=options.port, hat_port=self._hat_port, match=options.match, ports=ports)
        tool = Esptool(port, baud=options.baud, settings=self._settings.esptool, on_line=tail.append)
        await tool.check_available()
        await check_port_access(port)
        await tool.detect()  # which esptool: how to spell its command lines, whether it has its stub
        self.status.learn(port=port)
        self.status.step(UsbStep.DISCONNECTING)
        async with self._released():
            # 2. the image
            self.status.step(UsbStep.DOWNLOADING)
            image, signed = (job.image, None) if job.image is not None else await self._obtain(options)
            name = image.name
            self.status.learn(firmware=name)
            self.status.step(UsbStep.DOWNLOADED, firmware=name)
            self.status.step(UsbStep.USING_PORT, port=port)
            # the copy esptool reads is made before the board is touched: a disk that cannot take it
            # fails the flash before an erase, never between the erase and the write
            async with private_copy(image.data, name) as path:
                # 3. the board, and the rules
                plan = await self._plan(tool, options, ports, image.data, name)
                self._history.image(job.job_id, image, plan.version)  # before the first byte is written
                # 4. erase and write
                if plan.erase:
                    self.status.step(UsbStep.ERASING)
                    await tool.erase(plan.chip)
                    self.status.step(UsbStep.ERASED)
                self.status.step(UsbStep.WRITING)
                await tool.write(plan, path, self.status.write_progress)
                self.status.step(UsbStep.WRITTEN)
            _LOGGER.info(
                "usb: master written port=%s image=%s offset=0x%x size=%d version=%s",
                port, name, plan.offset, plan.size, plan.version or "-",
                extra={"UC2_CAN_ID": MASTER_CAN_ID, "UC2_PHASE": "written"},
            )  # fmt: skip
            await asyncio.sleep(self._settings.reboot_wait)  # the board boots before the link looks
        # 5. the link back, and proof of the new image
        if not options.reconnect_after:
            self.status.step(UsbStep.FLASHED)
            return _Flashed(image, plan.version, signed)
        self.status.step(UsbStep.RECONNECTING)
        identity = await self._confirm(plan)
        self.status.learn(firmware_version=identity.version)
        self.status.step(UsbStep.SUCCESS)
        _LOGGER.info(
            "usb: master runs its new image version=%s build=%s",
            identity.version or "-", identity.build_date,
            extra={"UC2_CAN_ID": MASTER_CAN_ID, "UC2_PHASE": "success"},
        )  # fmt: skip
        return _Flashed(image, plan.version or identity.version, signed)

    @contextlib.asynccontextmanager
    async def _released(self) -> AsyncIterator[None]:
        if self._master is None:
            yield
            return
        async with self._master.released("USB flashing of the master"):
            yield

    async def _obtain(self, options: FlashOptions) -> tuple[CachedImage, SignedManifest | None]:
        """The master image: named, or the catalog's (merged when erasing; CONTRACT.md §4), with the bytes
        the cache verified. The flash uses only those bytes from here on, never the cache's file, which a
        ClearFirmwareCache (or a later fetch replacing it) may delete or change meanwhile (issue 15, D4).

        :raises FirmwareError: not on the server, not downloadable
        """
        repository = self._repository()
        catalog = await repository.catalog()
        resolved = catalog.resolve_master(name=options.firmware, merged=options.erase_flash)
        cached = await repository.cache.fetch(
            repository.origin_of(catalog), resolved.file, resolved.promise, signed=resolved.signed is not None
        )
        _LOGGER.info("usb: master image=%s source=%s size=%d", cached.name, resolved.source, cached.size)
        return cached, resolved.signed

    async def _plan(
        self, tool: Esptool, options: FlashOptions, ports: list[SerialPort], data: bytes, name: str
    ) -> FlashPlan:
        """Probe the board, then check the image against it (no byte is written before this returns).

        :param data: the image's verified bytes (:meth:`_obtain`), the very bytes esptool writes
        :raises ImageRefusedError: a rule is broken, or the board is not the chip its adapter says
        """

        def check(board_chip: str | None, flash_size: int | None) -> FlashPlan:
            return plan_flash(
                data,
                name=name,
                board_chip=board_chip,
                flash_size=flash_size,
                flash_offset=options.flash_offset,
                erase_flash=options.erase_flash,
            )

        await asyncio.to_thread(check, None, None)  # what the image alone decides: before the board is asked
        chip = None if options.chip == "auto" else normalize_chip_name(options.chip)
        if chip is None:
            chip = chip_for_usb_id(*await usb_identity(tool.port, ports))
        probe = await tool.probe(chip)
        self.status.learn(chip=probe.chip)
        plan = await asyncio.to_thread(check, probe.chip, probe.flash_size)
        self.status.learn(flash_offset=plan.offset)
        return plan

    async def _confirm(self, plan: FlashPlan) -> MasterIdentity:
        """Wait for the master link and ask ``/state_get`` until the new image answers, within the window.

        :raises ReconnectError: no master answered in time, or it runs another image
        """
        if self._master is None:
            raise ReconnectError("no HAT link is configured (serial.port): nothing to reconnect to")
        window = self._settings.reconnect_window
        last: Exception | None = None
        try:
            async with asyncio.timeout(window):
                while True:
                    try:
                        await self._master.wait_connected()
                        async with self._master.use("confirming the new master image") as link:
                            identity = await link.get_identity()
                        break
                    except LinkError as err:
                        last = err
                        await asyncio.sleep(CONFIRM_RETRY_DELAY)
        except TimeoutError as err:
            reason = f" (last: {last})" if last else ""
            raise ReconnectError(f"the master did not answer /state_get within {window}s{reason}") from err
        if plan.version and identity.version and identity.version != plan.version:
            raise ReconnectError(
                f"the master answers, running version={identity.version}, not {plan.version}"
            )
        if not plan.version and plan.build and identity.build_date != plan.build:
            raise ReconnectError(f"the master answers, built {identity.build_date}, not {plan.build}")
        return identity
