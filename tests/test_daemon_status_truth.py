"""Issue 15, "the status tells the truth": arguments refused by name, and a flash status that is current.

D11: SetFirmwareServer validates the whole URL (a broken one is ``InvalidArgument``, never "internal
error"), and every string argument has a cap checked before it is stored or logged. D14: FlashMaster
takes only serial devices and ``socket://``/``rfc2217://`` URLs, refusing anything else before the HAT
link is released, and a new flash's status starts fresh.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonFactory
from dbus_client import call, properties, unwrap, wait_for_property
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus
from usbflash import FlashSignals, flash_master

from uc2otad.api import names
from uc2otad.errors import UsbFlashError
from uc2otad.methods.usb.status import UsbFlashStatus, UsbStep
from uc2otad.sim.config import SimConfig
from uc2otad.sim.master import MasterTiming
from uc2otad.sim.microscope import VirtualMicroscope

SERVER = "http://127.0.0.1:9/firmware"
FAST = MasterTiming(sdo_time=0.001, sdo_timeout=0.05, legacy_scan_wait=0.05, restart_delay=0.01,
                    node_boot_time=0.05, master_boot_time=0.05)  # fmt: skip


def refused(reply: Any) -> str:
    """The InvalidArgument message of ``reply`` (fails the test for any other answer)."""
    assert (reply.message_type, reply.error_name) == (MessageType.ERROR, names.INVALID_ARGUMENT), (
        reply.error_name,
        reply.body[:1] and str(reply.body[0])[:300],
    )
    return str(reply.body[0])


def _persisted_urls(state_dir: Path) -> list[str]:
    """Firmware server URLs in the state directory's settings.json files."""
    return [p.read_text() for p in state_dir.rglob("settings.json") if "firmware" in p.read_text()]


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://127.0.0.1:99999/firmware",
        "http://127.0.0.1/firmware\nuc2otad: engine: firmware server set to http://evil",
        "http://127.0.0.1/fw\rX",
        "http://127.0.0.1/" + "a" * 2048,
        "http://127.0.0.1/" + "a" * 10_000_000,
    ],
    ids=["unclosed-ipv6", "port-99999", "newline", "carriage-return", "over-2048", "10-MB"],
)
async def test_a_bad_firmware_server_url_is_invalid_argument_and_not_stored(
    start_daemon: DaemonFactory, client: MessageBus, url: str
) -> None:
    """D11: a broken, out-of-range, multi-line or huge URL is InvalidArgument; nothing stored or logged."""
    daemon = await start_daemon("--firmware-server", SERVER)

    message = refused(await call(client, "SetFirmwareServer", "s", url))

    assert len(message) < 400 and "\n" not in message and "\r" not in message, message[:400]
    assert (await properties(client))["FirmwareServer"] == SERVER
    assert not await asyncio.to_thread(_persisted_urls, daemon.state_dir)
    assert "firmware server set to" not in await asyncio.to_thread(daemon.log)


async def test_a_good_firmware_server_url_with_a_port_is_taken(
    start_daemon: DaemonFactory, client: MessageBus
) -> None:
    """D11: validation does not refuse what is fine (IPv6 host, explicit port, https)."""
    await start_daemon("--firmware-server", SERVER)
    for url in ("http://[::1]:8080/firmware", "https://firmware.example.org/uc2"):
        reply = await call(client, "SetFirmwareServer", "s", url)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        assert (await properties(client))["FirmwareServer"] == url


@pytest.mark.parametrize(
    ("member", "signature", "body"),
    [
        ("SetWiFiCredentials", "ss", ["s" * 1_000_000, "password"]),
        ("SetWiFiCredentials", "ss", ["lab", "p" * 1_000_000]),
        ("Inhibit", "s", ["r" * 1_000_000]),
        ("StartOTA", "ua{sv}", [11, {"firmware": Variant("s", "f" * 1_000_000)}]),
        ("StartOTA", "ua{sv}", [11, {"method": Variant("s", "m\n" * 500_000)}]),
        ("StartOTA", "ua{sv}", [11, {"ssid": Variant("s", "s" * 1_000_000)}]),
        ("FlashMaster", "a{sv}", [{"firmware": Variant("s", "f" * 1_000_000)}]),
        ("FlashMaster", "a{sv}", [{"port": Variant("s", "/dev/" + "p" * 1_000_000)}]),
        ("FlashMaster", "a{sv}", [{"k" * 1_000_000: Variant("s", "x")}]),
    ],
    ids=["ssid", "password", "reason", "firmware", "method", "ota-ssid", "flash-firmware", "port", "key"],
)
async def test_every_string_argument_is_capped_and_not_echoed_whole(
    start_daemon: DaemonFactory, client: MessageBus, member: str, signature: str, body: list[Any]
) -> None:
    """D11: a megabyte string argument is InvalidArgument with a short, single-line message."""
    await start_daemon("--firmware-server", SERVER)

    message = refused(await call(client, member, signature, *body))

    assert len(message) < 400 and "\n" not in message, message[:400]


# --------------------------------------------------------------------------- D14


@pytest.fixture
async def microscope(tmp_path: Path) -> Any:
    config = SimConfig(timing=FAST, serial_link=tmp_path / "ttyHAT", socket=False, master_chip="esp32")
    async with VirtualMicroscope(config) as scope:
        yield scope


@pytest.mark.parametrize(
    "port",
    ["/etc/passwd", "/dev/null", "/tmp", "http://127.0.0.1:9", "socket://", "socket://127.0.0.1:99999",
     "rfc2217://host"],
)  # fmt: skip
async def test_a_port_that_is_not_a_serial_device_is_refused_before_the_link_is_released(
    start_daemon: DaemonFactory, client: MessageBus, microscope: VirtualMicroscope, port: str
) -> None:
    """D14: FlashMaster port="/etc/passwd" is InvalidArgument; the HAT link stays, no flash status."""
    await start_daemon("--serial-port", str(microscope.config.serial_link), "--firmware-server", SERVER)
    await wait_for_property(client, "MasterConnected", True)
    signals = await FlashSignals(client).subscribe()

    refused(await call(client, "FlashMaster", "a{sv}", {"port": Variant("s", port)}))

    await asyncio.sleep(0.3)
    assert signals.statuses == []
    assert (await properties(client))["MasterConnected"] is True
    assert unwrap((await call(client, "GetUSBFlashStatus")).body[0])["status"] == "idle"
    boards = unwrap((await call(client, "ScanDevices")).body[0])
    assert boards[0]["can_id"] == 1  # the link was never released


async def _silent_server() -> tuple[asyncio.Server, str]:
    """A firmware server that accepts and never answers: a flash waits in "downloading"."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/firmware"


async def test_a_new_flash_does_not_show_the_last_ones_failure(
    start_daemon: DaemonFactory, client: MessageBus
) -> None:
    """D14: after FlashMaster answered "started", GetUSBFlashStatus no longer says the last "failed"."""
    server, url = await _silent_server()
    async with server:
        await start_daemon("--firmware-server", url)  # no HAT link
        signals = await FlashSignals(client).subscribe()
        await flash_master(client, port="/dev/ttyUC2-unplugged-0")
        first = await signals.final()
        assert (first["status"], first["message"]) == ("failed", "No serial ports found")

        started = await flash_master(client, port="socket://127.0.0.1:9")
        now = unwrap((await call(client, "GetUSBFlashStatus")).body[0])

        assert started["status"] == "started"
        assert now["status"] != "failed", now
        assert "error_code" not in now and "details" not in now, now
        assert (await call(client, "Cancel", "u", 1)).message_type is MessageType.METHOD_RETURN


def test_a_new_flash_starts_from_a_fresh_status() -> None:
    """D14: UsbFlashStatus.begin() replaces the last flash's "failed" with a fresh "started"."""
    published: list[dict[str, Any]] = []
    status = UsbFlashStatus(published.append)
    status.begin(firmware="a.bin")
    status.step(UsbStep.DOWNLOADING)
    status.fail(UsbFlashError("cable"))
    assert status.current["status"] == "failed"

    status.begin(erase_flash=False, firmware=None)

    assert status.current["status"] == "started", status.current
    assert status.current["progress"] == 0
    assert "details" not in status.current and "error_code" not in status.current
    assert "firmware" not in status.current  # the last flash's facts are gone
