"""One slave board on the virtual CAN bus: a CANopen node that takes firmware, reboots, and misbehaves.

Written from ``uc2-stack.md`` §3.1-§3.3 and §2.3. The node listens on its SDO request identifier
(0x600 + id) and on its own id (the legacy firmware's ISO-TP). It

- runs the firmware generation of its profile (:mod:`~uc2otad.sim.profiles`), and another one once it
  boots an image of the other CANopen generation: what it reports (0x2500, 0x2508, 0x2501) and whether
  its size write erases before it answers follow the profile;
- sends its heartbeat every ``heartbeat_interval`` while it runs (CANopen profiles; ``OD.c:38``
  @063e5a6), which is how the master keeps counting it reachable;
- serves its object dictionary (:mod:`~uc2otad.sim.slave_objects`) through one SDO server
  (:mod:`~uc2otad.sim.sdo_server`), answering each request after ``sdo_time`` and after the flash work
  the request caused (the size write's erase);
- commits a streamed image, then reboots ``ota_reboot_delay`` later into it; a write of 1 to 0x2507
  reboots it after ``restart_delay``; every boot takes ``node_boot_time`` and ends with the boot-up
  message (0x700 + id), which is how the master learns the node is there;
- resets a half-finished OTA as FW-main's watchdog task does (``CanOpenOTA.cpp:102-119`` @063e5a6):
  looking every ``ota_watchdog_period`` since its boot, once more than ``ota_idle_reset`` passed since
  the OTA's last activity — the end of the size write, stamped after the erase (``:223-225``), or the
  last flash write of image data (``:270-273``); status reads and other frames do not count;
- aborts an SDO transfer whose client went quiet for ``sdo_server_timeout``, and acknowledges a
  sub-block that got no segment for 0.7 of it (CANopenNode's sub-block timeout, :mod:`.sdo_block`);
- on ``OTA_START`` joins WiFi and serves ArduinoOTA (:mod:`~uc2otad.sim.wifi_ota`) — blocking its CAN
  dispatch meanwhile, as FW-legacy does — and reboots into what it received.

Faults (:class:`~uc2otad.sim.nodes.NodeFaults`, replaceable at any time through :attr:`faults`) and
:meth:`set_online` (an unplugged cable: it keeps running but neither hears nor sends).

Main constraint: python-can reads the bus in a thread; every frame is handled here on the event loop,
one at a time, as the board's single CAN task does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import can

from uc2otad.sim.app_desc import app_version, module_build
from uc2otad.sim.can_bus import CanPort, SimCanBus
from uc2otad.sim.isotp import RECEIVER_FLOW_CONTROL, Reassembler, frames_of
from uc2otad.sim.nodes import NodeFaults, NodeSpec
from uc2otad.sim.ota_board import ARDUINO_OTA_PORT
from uc2otad.sim.ota_objects import OtaReceiver, OtaStatus
from uc2otad.sim.profiles import (
    DEFAULT_PROFILE,
    PROFILES,
    UNVERSIONED,
    FirmwareProfile,
    generation_of,
    release_of,
)
from uc2otad.sim.sdo_block import BLOCK_TIMEOUT_SHARE, BlockDownload
from uc2otad.sim.sdo_server import SdoServer
from uc2otad.sim.sdo_wire import BOOT_UP, HEARTBEAT_BASE, SDO_REQUEST_BASE, SDO_RESPONSE_BASE
from uc2otad.sim.slave_objects import Reported, SlaveObjects
from uc2otad.sim.timing import MasterTiming
from uc2otad.sim.wifi_ota import MASTER_NODE_ID, OtaStart, WifiNetwork, WifiOtaService

_LOGGER = logging.getLogger(__name__)

#: the heartbeat's NMT state byte: operational (CiA 301)
HEARTBEAT_OPERATIONAL = b"\x05"


class CanOpenSlave:
    """The slave described by ``spec``; :meth:`start` puts it on ``bus``.

    :param network: the virtual WiFi it can join
    :param ota_port: the UDP port of its ArduinoOTA service (0: a free one, see ``wifi.board.port``)
    """

    def __init__(
        self,
        spec: NodeSpec,
        bus: SimCanBus,
        *,
        timing: MasterTiming,
        network: WifiNetwork,
        ota_port: int = ARDUINO_OTA_PORT,
        profile: FirmwareProfile | None = None,
    ) -> None:
        """:param profile: the firmware it runs (default: the node's own, else the newest generation)"""
        self.spec = spec
        self.timing = timing
        #: the firmware generation it runs now
        self.profile = profile or PROFILES[spec.profile or DEFAULT_PROFILE]
        #: the image the board runs; None: the one it was configured with (``spec.version``)
        self.running_image: bytes | None = None
        #: boots since the simulation started (restarts, updates, brown-outs)
        self.boots = 0
        #: its CAN task is held up (erasing flash, or stalled by a fault): frames wait
        self.busy = False
        self._bus = bus
        self._online = spec.online
        self._booting = False
        #: wall-clock time since which it is on the bus: frames sent before then never reached it
        self._on_bus_since = time.time()
        #: an image committed to the boot partition, booted at the next boot
        self._boot_partition: bytes | None = None
        self._erased_since_boot = False
        self._restart_requested = False
        self._ota = OtaReceiver(corrupt_offset=spec.faults.corrupt_offset)
        self._faults = spec.faults
        self._objects = SlaveObjects(
            self._reported,
            self._ota,
            on_reboot=self._on_reboot_command,
            erase_seconds=self._erase_seconds,
            commit_seconds=lambda: self.timing.ota_commit_time,
        )
        self._sdo = SdoServer(self._objects)
        self._isotp = Reassembler()
        self.wifi = WifiOtaService(
            spec.can_id,
            spec.ip,
            network,
            timing,
            ota_port=ota_port,
            ota_password=spec.ota_password,
            on_finished=self._after_wifi_ota,
            on_fault_struck=self._transfer_fault_struck,
        )
        self._reader = can.AsyncBufferedReader()
        self._port: CanPort | None = None
        self._serving: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_frame = 0.0
        #: loop time of the OTA's last activity (``s_lastChunkMillis``), and when the watchdog task
        #: started looking (at boot, ``CanOpenOTA.cpp:408``)
        self._ota_fed_at = 0.0
        self._watchdog_since = 0.0
        #: loop time the sub-block timeout counts from: the last frame, or its last acknowledgement
        self._sub_block_since = 0.0
        #: the transfer that has had its stall (a stall fault strikes once per transfer)
        self._stalled: BlockDownload | None = None
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"CanOpenSlave({self.can_id}, {self.spec.role})"

    @property
    def can_id(self) -> int:
        return self.spec.can_id

    @property
    def reachable(self) -> bool:
        """On the bus and running: it hears frames and answers."""
        return self._online and not self._booting

    @property
    def disturbs_bus(self) -> bool:
        """It runs the image its faults name as disturbing the bus (``NodeFaults.disturbing_image``)."""
        disturbing = self.faults.disturbing_image
        image = self.running_image
        return bool(disturbing) and image is not None and hashlib.sha256(image).hexdigest() == disturbing

    @property
    def transferring(self) -> bool:
        """An SDO transfer is open on it: frames of an abandoned one may still be on their way."""
        return self._sdo.busy

    @property
    def faults(self) -> NodeFaults:
        """How the node misbehaves; replace it at any time (it applies from the next frame)."""
        return self._faults

    @faults.setter
    def faults(self, faults: NodeFaults) -> None:
        self._faults = faults
        self._ota.corrupt_offset = faults.corrupt_offset
        self.wifi.apply_faults(faults)

    @property
    def ota_status(self) -> OtaStatus:
        """0x2F03 now."""
        return self._ota.status

    async def start(self) -> None:
        """Connect to the bus and boot (the boot-up message goes out at once)."""
        loop = asyncio.get_running_loop()
        self._port = self._bus.open_port(
            [self._reader], filters=[SDO_REQUEST_BASE + self.can_id, self.can_id], loop=loop
        )
        self._serving = loop.create_task(self._serve(), name=repr(self))
        if self.profile.canopen:
            self._heartbeat = loop.create_task(self._beat(), name=f"{self!r} heartbeat")
        if self._online:
            self._come_up()

    async def stop(self) -> None:
        """Power off for good."""
        tasks = [task for task in (self._serving, self._restarting, self._heartbeat) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self.wifi.stop()
        if self._port is not None:
            await self._port.close()
            self._port = None

    def set_online(self, online: bool) -> None:
        """Plug the node's cable in or out; it keeps running either way."""
        self._online = online
        if online:
            self._on_bus_since = time.time()
        self._notify()

    async def wait_until(self, predicate: Callable[[CanOpenSlave], bool]) -> None:
        """Return once ``predicate(slave)`` holds; checked after every boot, OTA status, busy, SDO transfer
        and cable change."""
        while True:
            changed = self._changed
            if predicate(self):
                return
            await changed.wait()

    # ---- what the node reports ------------------------------------------------------------------------

    def _reported(self) -> Reported:
        """The SYSTEM objects as its firmware fills them at start-up (``populateSystemOD``,
        ``CANopenModule.cpp:1243-1254`` @063e5a6): FW-main the fixed version string and its module's
        build; 2026-09 the image's release string (from documentation); legacy firmware has no such
        objects."""
        spec, profile, image = self.spec, self.profile, self.running_image
        if not profile.canopen:
            return Reported(version=None, build=None, mac=None, image=None)
        if image is None:  # the firmware it was configured with
            release, build = spec.version, spec.build
        else:
            release = release_of(image) or app_version(image) or UNVERSIONED
            build = module_build(image) or ""
        return Reported(
            version=release if profile.release_strings else UNVERSIONED,
            build=build,
            mac=spec.mac,
            image=(spec.image or None) if profile.scan_reads_image else None,
        )

    def _erase_seconds(self) -> float:
        """The size write's flash work: on firmware that erases before it answers, the partition the first
        time after a boot (blank sectors erase fast when the host retries, see ``partition_erase_time``)."""
        first, self._erased_since_boot = not self._erased_since_boot, True
        full = first and self.profile.erases_before_size_answer
        return self.timing.partition_erase_time if full else self.timing.size_write_time

    async def _beat(self) -> None:
        """The heartbeat producer: every ``heartbeat_interval`` while the app runs and the cable is in."""
        while True:
            await asyncio.sleep(self.timing.heartbeat_interval)
            if not self.busy:  # the CAN task is held up: CANopenNode's process does not run either
                self._send(HEARTBEAT_BASE + self.can_id, HEARTBEAT_OPERATIONAL)

    # ---- the CAN task ---------------------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline()):
                    message = await self._reader.get_message()
            except TimeoutError:
                self._on_timer(loop.time())
                continue
            if not self.reachable or message.timestamp < self._on_bus_since or message.is_error_frame:
                continue
            # the watchdog is a task of its own: a frame that waited out flash work finds it has struck
            self._watch_ota(loop.time())
            self._last_frame = self._sub_block_since = loop.time()
            try:
                await self._on_frame(message.arbitration_id, bytes(message.data))
            except Exception:  # a bug of the simulator: say so loudly, keep serving as a watchdog would
                _LOGGER.exception("%r: handling a frame failed", self)

    def _deadline(self) -> float | None:
        """When the SDO server timeout or the OTA watchdog strikes next, if one can."""
        deadlines = []
        if self._sdo.busy:
            deadlines.append(self._last_frame + self.timing.sdo_server_timeout)
        if self._sdo.in_sub_block:
            deadlines.append(self._sub_block_since + self._sub_block_timeout)
        watchdog = self._watchdog_deadline()
        if watchdog is not None:
            deadlines.append(watchdog)
        return min(deadlines, default=None)

    def _watchdog_deadline(self) -> float | None:
        """The watchdog's first look at which the OTA has been idle for more than ``ota_idle_reset``
        (``(now - last) > OTA_INACTIVITY_TIMEOUT_MS``, ``CanOpenOTA.cpp:110``), if one runs
        (``s_otaStarted``: begun, not yet complete or failed, ``:105``)."""
        if self._ota.status is not OtaStatus.RECEIVING:
            return None
        due = self._ota_fed_at + self.timing.ota_idle_reset
        period = self.timing.ota_watchdog_period
        if period <= 0:
            return due
        # looks at _watchdog_since + k * period; the first one strictly after ``due`` resets
        return self._watchdog_since + (math.floor((due - self._watchdog_since) / period) + 1) * period

    def _watch_ota(self, now: float) -> None:
        """The watchdog's reset, when it is due (``resetOtaState``, ``CanOpenOTA.cpp:116, 125-145``:
        idle, 0 bytes, no error — a new size write is all the next attempt needs)."""
        deadline = self._watchdog_deadline()
        if deadline is not None and now >= deadline:
            _LOGGER.info("%r: OTA idle for more than %ss, reset", self, self.timing.ota_idle_reset)
            self._ota.reset()
            self._notify()

    def _on_timer(self, now: float) -> None:
        if self._sdo.busy and now >= self._last_frame + self.timing.sdo_server_timeout:
            _LOGGER.info("%r: SDO transfer timed out", self)
            self._send(SDO_RESPONSE_BASE + self.can_id, self._sdo.on_timeout())
            self._notify()
        if self._sdo.in_sub_block and now >= self._sub_block_since + self._sub_block_timeout:
            _LOGGER.info("%r: sub-block timed out, acknowledging what came", self)
            feeds = self._ota.feeds
            self._send(SDO_RESPONSE_BASE + self.can_id, self._sdo.on_block_timeout())
            self._sub_block_since = now  # "reset block_timeoutTimer, but not SDO->timeoutTimer" (:1468)
            if self._ota.feeds != feeds:
                self._ota_fed_at = now
            self._notify()
        self._watch_ota(now)

    @property
    def _sub_block_timeout(self) -> float:
        """CANopenNode's sub-block timeout: 0.7 of the SDO server timeout (``CO_SDOserver.c:338``)."""
        return BLOCK_TIMEOUT_SHARE * self.timing.sdo_server_timeout

    async def _on_frame(self, can_id: int, data: bytes) -> None:
        if can_id == self.can_id:
            await self._on_isotp(data)
            return
        status, transferring, feeds = self._ota.status, self._sdo.busy, self._ota.feeds
        response = self._sdo.on_request(data)
        busy = self._objects.take_busy_seconds()
        if busy:
            await self._hold_up(busy)  # the flash work blocks the board's CAN task
        if self._ota.feeds != feeds:  # stamped once the flash work is done (CanOpenOTA.cpp:223-225, 273)
            self._ota_fed_at = asyncio.get_running_loop().time()
        if response is not None:
            if self.timing.sdo_time:
                await asyncio.sleep(self.timing.sdo_time)
            self._send(SDO_RESPONSE_BASE + self.can_id, response)
        if self._restart_requested:  # after the answer: the command is acknowledged before the reboot
            self._restart_requested = False
            self._restart(self.timing.restart_delay)
        if self._ota.committed is not None and self._boot_partition is not self._ota.committed:
            self._boot_partition = self._ota.committed
            _LOGGER.info("%r: image committed, rebooting in %ss", self, self.timing.ota_reboot_delay)
            self._restart(self.timing.ota_reboot_delay)
        if self._ota.status is not status or self._sdo.busy is not transferring:
            self._notify()
        block = self._sdo.block_download
        if block is not None:
            await self._strike(block)

    async def _strike(self, block: BlockDownload) -> None:
        """The transfer faults, once their share of the image has arrived; a stall once per transfer."""
        if not block.size:
            return
        percent = block.received * 100 / block.size
        faults = self.faults
        if faults.drop_at_percent is not None and percent >= faults.drop_at_percent:
            _LOGGER.info("%r: brown-out at %d bytes (fault)", self, block.received)
            if self._restarting is not None:
                self._restarting.cancel()  # whatever reboot was planned, this one comes first
            self._go_down()  # at once: not one more frame is heard
            self._restarting = _spawn(self._boot())
            self._transfer_fault_struck()
        elif self._stalled is not block and percent >= (faults.stall_at_percent or math.inf):
            self._stalled = block
            _LOGGER.info("%r: stalls at %d bytes for %ss (fault)", self, block.received, faults.stall_seconds)
            self._transfer_fault_struck()
            await self._hold_up(faults.stall_seconds)

    def _transfer_fault_struck(self) -> None:
        if self.faults.transfer_faults_once:
            _LOGGER.info("%r: transfer faults cleared after striking once", self)
            self.faults = self.faults.without_transfer_faults()

    async def _hold_up(self, seconds: float) -> None:
        """The CAN task does nothing else for ``seconds`` (inf: until the node is stopped)."""
        self.busy = True
        self._notify()
        try:
            if math.isinf(seconds):
                await asyncio.get_running_loop().create_future()
            await asyncio.sleep(seconds)
        finally:
            self.busy = False
            self._notify()

    async def _on_isotp(self, data: bytes) -> None:
        message, flow_control = self._isotp.feed(data)
        if flow_control:
            self._send(self.can_id, RECEIVER_FLOW_CONTROL)
        request = OtaStart.decode(message) if message else None
        if request is None:
            return
        # FW-legacy joins WiFi inside its CAN dispatch: this task hears nothing until it is done
        ack = await self.wifi.start(request, self.faults, self.running_image or b"")
        self._send(MASTER_NODE_ID, frames_of(ack.encode())[0])
        # and only then mDNS and ArduinoOTA, still in the dispatch (wifi_ota.py; :2377 vs :2451 @14fa3e3)
        await self.wifi.listen()
        self._notify()

    def _send(self, can_id: int, frame: bytes | None) -> None:
        if frame is not None and self._port is not None and self.reachable:
            self._port.send(can_id, frame)

    # ---- reboots ---------------------------------------------------------------------------------------

    def _on_reboot_command(self) -> None:
        _LOGGER.info("%r: reboot command, restarting in %ss", self, self.timing.restart_delay)
        self._restart_requested = True

    def _after_wifi_ota(self, image: bytes | None) -> None:
        if image is not None:
            self._boot_partition = image
        self._restart(0.0)

    def _restart(self, delay: float) -> None:
        if self._restarting is not None and not self._restarting.done():
            return  # already on its way down
        self._restarting = _spawn(self._reboot(delay))

    async def _reboot(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._go_down()
        await self._boot()

    def _go_down(self) -> None:
        """Reset: RAM is gone — open transfers, a half-finished OTA, ISO-TP state; off the bus."""
        self._booting = True
        self._sdo.reset()
        self._ota.reset()
        self._ota.committed = None
        self._isotp = Reassembler()
        self._notify()

    async def _boot(self) -> None:
        await self.wifi.stop()
        await asyncio.sleep(self.timing.node_boot_time)
        self._come_up()

    def _come_up(self) -> None:
        """The app runs: the boot partition's image, and the boot-up message on the bus."""
        if self._boot_partition is not None and self.faults.boots_old_image:
            _LOGGER.info("%r: the new image fails its first boot, rolled back (fault)", self)
            self._boot_partition = None
        if self._boot_partition is not None:
            self.running_image, self._boot_partition = self._boot_partition, None
            generation = generation_of(self.running_image)
            if generation is not None and self.profile.canopen and generation is not self.profile.name:
                _LOGGER.info("%r: boots firmware of generation %s", self, generation)
                self.profile = PROFILES[generation]
        self._booting = False
        self._erased_since_boot = False
        self._watchdog_since = asyncio.get_running_loop().time()  # its task starts with the app
        self.boots += 1
        self._on_bus_since = time.time()
        _LOGGER.info("%r: booted reports=%s", self, self._reported())
        self._send(HEARTBEAT_BASE + self.can_id, BOOT_UP)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(work)
