"""A simulated ESP32 / ESP32-S3 serial bootloader on ``socket://127.0.0.1:P``, for real esptool.

Written from ``shared/specs/esptool-rom.md`` (the classic ESP32, which that spec does not cover, from
the chip numbers in :mod:`uc2otad.sim.esp_chips`). One loader stands for one board on USB, reached the
way a ser2net-style bridge exposes a serial port. esptool detects the chip, talks to the ROM
(``--no-stub``) or uploads its flasher stub, writes plain and compressed, checks the MD5, reads, erases
and leaves. The flash (:class:`~uc2otad.sim.spi_flash.SpiFlash`) keeps its contents across
connections, and after a flash the board boots what was written (:attr:`RomLoader.on_boot`).

What a socket cannot carry, and what stands in for it:

- DTR/RTS: over ``socket://`` esptool cannot reset the chip (it forces ``--before no-reset``, and its
  ``--after hard-reset`` toggles nothing). So a new connection *is* the reset into download mode, and
  the end of a connection is the reset after the run: the board boots its flash, as a real board does
  after esptool's default hard reset (``boot_on_close``; off, the board stays in the loader until
  :meth:`RomLoader.reset`). ``--after no-reset`` sends nothing, so on a socket it ends like any run.
- ``--after soft-reset`` (FLASH_END "run user code" to the ROM) leaves the loader while connected:
  the board boots at once and ignores the rest of the connection, as an app ignores SLIP.
- A reboot asked over the wire (FLASH_END "reboot"; esptool's ``--after no-reset`` sends it to the
  stub) lands in download mode again, waiting for SYNC: the host still holds the boot strap.
- Baud rates: CHANGE_BAUDRATE is answered and remembered (the ESP32's UART divider, which esptool
  reads to guess the crystal, follows it), and changes nothing on the socket.
- Like a serial port the loader has one user at a time: a second connection is closed at once.

Faults (:class:`LoaderFaults`, switchable at any time): the connection drops after N bytes of flash
data, SPI_FLASH_MD5 answers a wrong digest, SYNC is never answered.

The commands themselves are :mod:`uc2otad.sim.loader_session`'s. Main constraint: loopback only
(127.0.0.1), and nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType

from uc2otad.errors import ConfigError
from uc2otad.sim.esp_boot import BootResult, boot_from, stand_in_bootloader
from uc2otad.sim.esp_chips import ChipProfile, chip_profile
from uc2otad.sim.loader_session import FlashWrite, LoaderCounters, LoaderFaults, LoaderSession, LoaderState
from uc2otad.sim.spi_flash import DEFAULT_FLASH_SIZE, SpiFlash

__all__ = ["FlashWrite", "LoaderCounters", "LoaderFaults", "LoaderState", "RomLoader", "RomLoaderConfig"]

_LOGGER = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: locally administered; the virtual microscope gives its master's MAC instead
DEFAULT_MAC = "02:00:00:00:00:01"
#: the last flash writes kept for inspection
WRITES_KEPT = 32


@dataclass(frozen=True)
class RomLoaderConfig:
    """The simulated board; the defaults are the CAN HAT (classic ESP32, 4 MB flash)."""

    chip: str = "esp32"
    flash_size: int = DEFAULT_FLASH_SIZE
    mac: str = DEFAULT_MAC
    #: what the flash holds from the factory: ``(offset, bytes)`` pairs, e.g. a merged image at 0x0
    flash_image: tuple[tuple[int, bytes], ...] = ()
    #: a stand-in bootloader (no code) at the chip's bootloader offset, so an app alone at 0x10000
    #: boots; ``flash_image`` is laid over it
    factory_bootloader: bool = True
    #: the end of a connection resets the board into flash boot (see the module docstring)
    boot_on_close: bool = True
    #: TCP port; 0 picks a free one
    port: int = 0


class RomLoader:
    """One board's serial bootloader; use ``async with RomLoader(config) as loader``, then :attr:`url`.

    :param config: the board
    :param faults: how it misbehaves; :attr:`faults` may be replaced at any time
    :raises ConfigError: an unknown chip, a bad MAC, a factory image that does not fit
    :raises ValueError: a flash size that is not a power of two from 1 to 16 MB
    """

    def __init__(self, config: RomLoaderConfig | None = None, *, faults: LoaderFaults | None = None) -> None:
        self.config = config or RomLoaderConfig()
        self.chip: ChipProfile = chip_profile(self.config.chip)
        self.faults = faults or LoaderFaults()
        self.counters = LoaderCounters()
        self.flash = SpiFlash(self.config.flash_size)
        #: the last flash writes, oldest first
        self.writes: collections.deque[FlashWrite] = collections.deque(maxlen=WRITES_KEPT)
        #: boots from flash so far, and the last one's outcome
        self.boots = 0
        self.last_boot: BootResult | None = None
        #: called whenever the board boots from flash (``result.changed``: something was written)
        self.on_boot: Callable[[BootResult], None] | None = None
        #: called when a host connects and the board stops its app to enter download mode
        self.on_download: Callable[[], None] | None = None
        #: the factory MAC in the chip's eFuses
        self.mac = _parse_mac(self.config.mac)
        self._state = LoaderState.RUNNING
        self._written_since_boot = False
        self._port = self.config.port
        self._server: asyncio.Server | None = None
        self._session: LoaderSession | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._load_factory_contents()

    def __repr__(self) -> str:
        return f"RomLoader({self.chip.name}, {self.url}, state={self._state.value})"

    @property
    def state(self) -> LoaderState:
        return self._state

    @property
    def port(self) -> int:
        """The TCP port (the configured one, or the free port chosen for 0 at :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """What esptool takes as ``--port``."""
        return f"socket://{HOST}:{self._port}"

    def bootable(self) -> BootResult:
        """What the board would boot from its flash now (without booting it)."""
        result = boot_from(
            self.flash, bootloader_offset=self.chip.bootloader_offset, chip_id=self.chip.image_chip_id
        )
        return replace(result, changed=self._written_since_boot)

    async def start(self) -> None:
        """Listen on 127.0.0.1.

        :raises OSError: the port cannot be bound
        """
        self._server = await asyncio.start_server(self._serve, HOST, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        _LOGGER.info("%s: listening (%s, %d MB flash)", self, self.chip.name, self.flash.size >> 20)

    async def stop(self) -> None:
        """Drop any host and stop listening; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._drop_session()
        if server is not None:
            await server.wait_closed()

    async def reset(self) -> None:
        """Press EN: drop any host, and the board boots its flash."""
        boots = self.boots
        await self._drop_session()
        if self.boots == boots:  # the end of the connection did not boot it already
            self.boot()

    async def wait_idle(self) -> None:
        """Return once no host is connected (and the end of the last connection was handled)."""
        await self._idle.wait()

    async def __aenter__(self) -> RomLoader:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- what sessions call (loader_session.Board) -----------------------------------------

    def enter_state(self, state: LoaderState) -> None:
        if state is not self._state:
            _LOGGER.debug("%s: %s -> %s", self, self._state.value, state.value)
            self._state = state

    def note_flash_changed(self) -> None:
        self._written_since_boot = True

    def boot(self) -> None:
        """The board leaves the loader (or is reset) and boots from flash; :attr:`on_boot` hears of it."""
        result = self.bootable()
        self._written_since_boot = False
        self.boots += 1
        self.last_boot = result
        self.enter_state(LoaderState.RUNNING)
        if result.ok:
            _LOGGER.info(
                "%s: boots app=%d bytes version=%s changed=%s",
                self,
                len(result.app),
                result.version,
                result.changed,
            )
        else:  # a fresh flash that does not boot is news; an unflashed board is simply not simulated
            level = logging.WARNING if result.changed else logging.DEBUG
            _LOGGER.log(level, "%s: does not boot: %s changed=%s", self, result.reason, result.changed)
        if self.on_boot is not None:
            self.on_boot(result)

    # --- internals ---------------------------------------------------------------------------

    def _load_factory_contents(self) -> None:
        parts = list(self.config.flash_image)
        if self.config.factory_bootloader:
            parts.insert(0, (self.chip.bootloader_offset, stand_in_bootloader(self.chip.image_chip_id)))
        for offset, data in parts:
            if not self.flash.holds(offset, len(data)):
                raise ConfigError(
                    "flash_image", f"{len(data)} bytes at 0x{offset:x} do not fit {self.flash!r}"
                )
            self.flash.load(offset, data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._session is not None:
            self.counters.refused += 1
            _LOGGER.info("%s: refused a second host", self)
            writer.close()
            return
        self._idle.clear()
        self.counters.sessions += 1
        session = LoaderSession(self, reader, writer)
        self._session, self._session_task = session, asyncio.current_task()
        _LOGGER.info("%s: host connected; board reset into download mode", self)
        self.enter_state(LoaderState.WAITING_FOR_SYNC)
        if self.on_download is not None:
            self.on_download()
        try:
            await session.run()
        except ConnectionError as err:
            _LOGGER.debug("%s: connection failed: %s", self, err)
        finally:
            self._session, self._session_task = None, None
            writer.close()
            _LOGGER.info("%s: host left in state %s", self, self._state.value)
            if self._state is not LoaderState.RUNNING and self.config.boot_on_close:
                self.boot()
            self._idle.set()

    async def _drop_session(self) -> None:
        session, task = self._session, self._session_task
        if session is not None:
            session.abort()
        if task is not None and task is not asyncio.current_task():
            await asyncio.wait([task])  # unlike awaiting the task, this cannot swallow our own cancel


def _parse_mac(text: str) -> bytes:
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise ConfigError("mac", f"must be six hex bytes like 02:00:00:00:00:01, not {text!r}")
    return mac
