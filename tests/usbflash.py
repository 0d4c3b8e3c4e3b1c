"""Helpers for the USB flash tests: a watcher of USBFlashStatusChanged and the flash calls."""

from __future__ import annotations

from typing import Any

from dbus_client import add_match, call, unwrap
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from signals import SignalCollector

from uc2otad.api import names
from uc2otad.sim.rom_loader import RomLoader

#: seconds a flash may take to reach the status a test waits for (esptool starts in ~0.4 s per run)
FLASH_TIMEOUT = 20.0
#: the document's status table (progress, status, message), "{…}" filled in by the test
TABLE = {
    "disconnecting": (5, "disconnecting", "Disconnecting from ESP32..."),
    "downloading": (10, "downloading", "Downloading firmware from server..."),
    "downloaded": (20, "downloading", "Firmware downloaded: {firmware}"),
    "port": (25, "flashing", "Using port: {port}"),
    "erasing": (30, "erasing", "Erasing flash memory..."),
    "erased": (40, "flashing", "Flash erased successfully"),
    "writing": (45, "flashing", "Writing firmware to device..."),
    "written": (85, "flashing", "Firmware written successfully!"),
    "reconnecting": (90, "reconnecting", "Reconnecting to device..."),
    "success": (100, "success", "✅ Firmware flashed and reconnected!"),
}


def _flash_status(message: Message) -> dict[str, Any] | None:
    if message.member == "USBFlashStatusChanged":
        status: dict[str, Any] = unwrap(message.body[0])
        return status
    return None


class FlashSignals(SignalCollector[dict[str, Any]]):
    """USBFlashStatusChanged as it arrives; :meth:`until` waits for a status that matches."""

    def __init__(self, client: MessageBus) -> None:
        super().__init__(client, _flash_status)

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return self.items

    async def subscribe(self) -> FlashSignals:
        await add_match(
            self._client, f"type='signal',sender='{names.BUS_NAME}',member='USBFlashStatusChanged'"
        )
        return self

    async def until(self, *statuses: str, message: str | None = None) -> dict[str, Any]:
        """The first status whose ``status`` is one of ``statuses`` (and ``message``, if given)."""
        return await self.first(
            lambda status: status["status"] in statuses and message in (None, status["message"]),
            FLASH_TIMEOUT,
        )

    async def final(self) -> dict[str, Any]:
        return await self.until("success", "failed")

    def table_rows(self) -> list[tuple[int, str, str]]:
        """(progress, status, message) of every signal, the write progress steps left out."""
        return [
            (s["progress"], s["status"], s["message"]) for s in self.statuses if not (45 < s["progress"] < 85)
        ]


async def flash_master(client: MessageBus, **options: Any) -> dict[str, Any]:
    """FlashMaster with plain values (typed as the contract says); the reply, unwrapped."""
    types = {"port": "s", "match": "s", "baud": "u", "flash_offset": "u", "erase_flash": "b",
             "reconnect_after": "b", "firmware": "s", "chip": "s"}  # fmt: skip
    variants = {key: Variant(types[key], value) for key, value in options.items()}
    reply = await call(client, "FlashMaster", "a{sv}", variants)
    assert reply.message_type is MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return dict(unwrap(reply.body[0]))


def row(name: str, **values: str) -> tuple[int, str, str]:
    progress, status, message = TABLE[name]
    return progress, status, message.format(**values)


async def flash_merged_with_erase(
    client: MessageBus, loader: RomLoader, signals: FlashSignals, image: bytes, name: str, version: str
) -> dict[str, Any]:
    """FlashMaster with ``erase_flash`` through the simulator's ROM ``loader``: the merged ``image`` lands
    at 0, what was beyond it is erased, the steps are the document's table; the final status."""
    loader.flash.load(0x300000, b"old data")  # something the erase must remove
    await flash_master(client, port=loader.url, erase_flash=True)  # erase picks the merged image
    final = await signals.final()
    assert final["status"] == "success", final
    assert loader.flash.read(0, len(image)) == image
    assert loader.flash.read(0x300000, 8) == b"\xff" * 8
    assert signals.table_rows() == [
        row("disconnecting"), row("downloading"), row("downloaded", firmware=name),
        row("port", port=loader.url), row("erasing"), row("erased"), row("writing"), row("written"),
        row("reconnecting"), row("success"),
    ]  # fmt: skip
    assert (final["flash_offset"], final["firmware_version"]) == (0, version)
    return final
