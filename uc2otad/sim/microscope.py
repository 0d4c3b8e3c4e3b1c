"""The whole virtual microscope: the master with its nodes, its ports, and optionally a firmware server.

What ``uc2otad-sim`` runs and what tests start in-process. Starting acquires the parts one by one and
undoes what it got when a later part fails; stopping releases everything it created — the pty, the
symlink, the private folder, the sockets — so nothing outlives the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from uc2otad.sim.config import SimConfig
from uc2otad.sim.esp_boot import BootResult
from uc2otad.sim.firmware_server import SimFirmwareServer
from uc2otad.sim.master import MasterIdentity, VirtualMaster
from uc2otad.sim.profiles import PROFILES
from uc2otad.sim.pty_port import PtyPort
from uc2otad.sim.remote_bus import RemoteBusServer
from uc2otad.sim.rom_loader import RomLoader, RomLoaderConfig
from uc2otad.sim.socket_port import SocketPort
from uc2otad.sim.wifi_ota import WifiNetwork

_LOGGER = logging.getLogger(__name__)

#: the stable symlink's name inside the simulator's private folder
SERIAL_LINK_NAME = "ttyUC2HAT"


class VirtualMicroscope:
    """Start with ``async with VirtualMicroscope(config) as scope:``; see :meth:`ready_info`."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        config = self.config
        identity = MasterIdentity(
            profile=PROFILES[config.master_profile or config.profile],
            version=config.master_version,
            build=config.master_build,
        )
        nodes = tuple(replace(node, profile=node.profile or config.profile) for node in config.nodes)
        self.master = VirtualMaster(
            nodes,
            identity=identity,
            baud=self.config.baud,
            timing=self.config.timing,
            log_noise=self.config.log_noise,
            network=WifiNetwork(self.config.ssid, self.config.password),
            can_rate=self.config.can,
            ota_port=self.config.ota_port,
        )
        #: the master's serial bootloader for esptool, on its own ``socket://`` port
        self.rom_loader = RomLoader(RomLoaderConfig(chip=self.config.master_chip, mac=identity.mac))
        # the master and its ROM loader are one board: in the loader the app is silent, and once esptool
        # lets go the board runs whatever is in its flash now
        self.rom_loader.on_download = lambda: self.master.set_muted(True)
        self.rom_loader.on_boot = self._master_booted
        self._pty: PtyPort | None = None
        self.socket: SocketPort | None = None
        self.firmware: SimFirmwareServer | None = None
        #: the CAN bus served to other processes (``[can] remote``)
        self.can_server: RemoteBusServer | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        """Bring everything up; on failure, what was started is stopped again.

        :raises OSError: a pty, folder or socket could not be created
        """
        async with contextlib.AsyncExitStack() as stack:
            link = self.config.serial_link
            if link is None:
                workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="uc2otad-sim-"))
                stack.push_async_callback(asyncio.to_thread, shutil.rmtree, workdir, True)
                link = workdir / SERIAL_LINK_NAME
            self._pty = PtyPort(link, baud=self.master.baud)
            self.master.attach(self._pty)
            await self._pty.open()
            stack.push_async_callback(self._pty.close)
            if self.config.socket:
                self.socket = SocketPort()
                self.master.attach(self.socket)
                await self.socket.open()
                stack.push_async_callback(self.socket.close)
            if self.config.firmware_dir is not None:
                self.firmware = SimFirmwareServer(self.config.firmware_dir)
                await self.firmware.start()
                stack.push_async_callback(self.firmware.stop)
            await self.rom_loader.start()
            stack.push_async_callback(self.rom_loader.stop)
            await self.master.start()
            stack.push_async_callback(self.master.stop)
            if self.config.can_remote:  # after the slaves are on the bus, stopped before they leave it
                self.can_server = RemoteBusServer(self.master.can_bus)
                await self.can_server.start()
                stack.push_async_callback(self.can_server.stop)
            self._stack = stack.pop_all()
        _LOGGER.info("virtual microscope ready on %s", self._pty.path)

    def _master_booted(self, result: BootResult) -> None:
        """The master left its ROM loader: a new app reports itself; a board that cannot boot stays silent."""
        if not result.ok:
            _LOGGER.warning("virtual master does not boot: %s", result.reason)
            return
        if result.changed:
            identity = self.master.identity
            self.master.identity = replace(
                identity, version=result.version or identity.version, build=result.build or identity.build
            )
            _LOGGER.info("virtual master boots its new image: version=%s", self.master.identity.version)
        self.master.set_muted(False)

    @property
    def pty(self) -> PtyPort:
        """The master's serial port.

        :raises RuntimeError: not started
        """
        if self._pty is None:
            raise RuntimeError("the virtual microscope is not running")
        return self._pty

    async def stop(self) -> None:
        """Stop everything started; safe to call twice."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
            _LOGGER.info("virtual microscope stopped")

    async def __aenter__(self) -> VirtualMicroscope:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def ready_info(self) -> dict[str, Any]:
        """The line ``uc2otad-sim`` prints when ready (``CONTRACT.md`` §5), plus where else to connect.

        Beyond the contract: ``serial_link`` (a path that follows the pty when the port vanishes and
        returns), ``serial_socket`` (the master over TCP), ``master`` ("canopen" or "legacy") and the
        firmware ``profile`` of the master and of each node, and ``can``: how another process joins the
        CAN bus (``can.Bus(interface=…, channel=…)``), its ``bitrate`` and whether it is ``paced``; None
        with ``[can] remote = false``.
        """
        return {
            "serial_port": self.pty.path,
            "baud": self.master.baud,
            "firmware_server": self.firmware.url if self.firmware is not None else None,
            "rom_loader": self.rom_loader.url,
            "wifi": {"ssid": self.config.ssid},
            "nodes": {
                str(node.can_id): {
                    "role": node.role,
                    "ip": node.ip,
                    "version": node.version,
                    "profile": self.master.slave(node.can_id).profile.name.value,
                }
                for node in self.config.nodes
            },
            "serial_link": self.pty.url,
            "serial_socket": self.socket.url if self.socket is not None else None,
            "master": self.master.kind.value,
            "profile": self.master.identity.profile.name.value,
            "can": self.can_server.client_config() if self.can_server is not None else None,
        }
