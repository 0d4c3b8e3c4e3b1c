"""Issue 20: the USB flashes of the master in GetHistory, and the last flash's status across restarts.

End to end as ``test_daemon_usb.py``: the daemon a subprocess on a private bus, the virtual microscope's
ROM loader, the real esptool and Caddy. A restart is the daemon stopped (SIGTERM) or killed (SIGKILL)
and started again on the same state folder; the tests synchronise on the daemon's status signals, never
on time.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonFactory
from daemon_process import DaemonProcess
from dbus_client import call, unwrap, wait_for_property
from dbus_fast.aio import MessageBus
from test_ctl import ctl
from test_daemon_usb import APP, APP_NAME, FAST_USB, NEW_VERSION, microscope, server, signals  # noqa: F401
from usbflash import FlashSignals, flash_master

from uc2otad.methods.usb.status import INTERRUPTED_MESSAGE
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.private_bus import PrivateBus
from uc2otad.sim.rom_loader import LoaderFaults

if importlib.util.find_spec("esptool") is None:
    pytest.skip("esptool is not installed (pip install -e .[test])", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)

#: the fields of the USB flash status a client follows a flash by
FOLLOWED = ("status", "progress", "message", "firmware", "job_id", "error_code")


async def start(start_daemon: DaemonFactory, scope: VirtualMicroscope, server: str) -> DaemonProcess:  # noqa: F811
    return await start_daemon(
        "--serial-port", str(scope.config.serial_link), "--firmware-server", server, config=FAST_USB
    )


async def usb_status(client: MessageBus) -> dict[str, Any]:
    status: dict[str, Any] = unwrap((await call(client, "GetUSBFlashStatus")).body[0])
    return status


async def history(client: MessageBus, can_id: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = unwrap((await call(client, "GetHistory", "u", can_id)).body[0])
    return rows


async def restarted(
    daemon: DaemonProcess,
    start_daemon: DaemonFactory,
    scope: VirtualMicroscope,
    server: str,  # noqa: F811
) -> DaemonProcess:
    await asyncio.to_thread(daemon.stop)
    return await start(start_daemon, scope, server)


def followed(status: dict[str, Any]) -> dict[str, Any]:
    return {key: status.get(key) for key in FOLLOWED}


async def test_a_flash_is_a_usb_row_of_the_master_and_its_status_outlives_a_restart(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,  # noqa: F811
    server: str, private_bus: PrivateBus,  # noqa: F811
) -> None:  # fmt: skip
    daemon = await start(start_daemon, microscope, server)
    await wait_for_property(client, "MasterConnected", True)  # the master's version is known before
    before = microscope.master.identity.version

    started = await flash_master(client, port=microscope.rom_loader.url)
    final = await signals.final()

    assert final["status"] == "success", final
    assert final["job_id"] == started["job_id"]
    (row,) = await history(client, 1)
    assert row == {
        "job_id": final["job_id"], "can_id": 1, "method": "usb", "state": "success", "attempt": 1,
        "firmware": APP_NAME, "sha256": hashlib.sha256(APP).hexdigest(), "firmware_version": NEW_VERSION,
        "previous_version": before, "message": final["message"],
        "started": row["started"], "finished": row["finished"],
    }  # fmt: skip
    assert row in await history(client, 0)
    code, text, stderr = await ctl(private_bus, "history", "1")
    assert code == 0, stderr
    assert any("usb" in line and "success" in line and APP_NAME in line for line in text.splitlines()), text

    await restarted(daemon, start_daemon, microscope, server)

    assert await usb_status(client) == final  # status, progress, message, firmware, job_id: all of it
    assert await history(client, 1) == [row]


async def test_a_failed_write_is_a_failed_row_and_stays_the_status_after_a_restart(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,  # noqa: F811
    server: str,  # noqa: F811
) -> None:  # fmt: skip
    daemon = await start(start_daemon, microscope, server)
    microscope.rom_loader.faults = LoaderFaults(drop_after_data_bytes=0x4000)  # the cable breaks mid-image

    await flash_master(client, port=microscope.rom_loader.url)
    final = await signals.final()

    assert (final["status"], final["error_code"]) == ("failed", "write_failed"), final
    (row,) = await history(client, 1)
    assert (row["job_id"], row["method"], row["state"], row["error_code"]) == (
        final["job_id"], "usb", "failed", "write_failed",
    )  # fmt: skip
    assert row["message"].startswith("Write failed: ")
    assert row["sha256"] == hashlib.sha256(APP).hexdigest()  # it had its image when the write failed

    await restarted(daemon, start_daemon, microscope, server)

    again = await usb_status(client)
    assert followed(again) == followed(final) and again == final
    assert await history(client, 1) == [row]


async def test_a_kill_mid_flash_leaves_it_interrupted_in_the_status_and_the_row(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, microscope: VirtualMicroscope,  # noqa: F811
    server: str,  # noqa: F811
) -> None:  # fmt: skip
    daemon = await start(start_daemon, microscope, server)
    microscope.rom_loader.faults = LoaderFaults(ignore_sync=True)  # esptool keeps trying to connect
    port = microscope.rom_loader.url

    started = await flash_master(client, port=port)
    under_way = await signals.until("flashing", message=f"Using port: {port}")
    await asyncio.to_thread(daemon.kill)
    microscope.rom_loader.faults = LoaderFaults()
    await start(start_daemon, microscope, server)

    status = await usb_status(client)
    assert (status["status"], status["message"], status["error_code"]) == (
        "failed", INTERRUPTED_MESSAGE, "interrupted",
    )  # fmt: skip
    # the steps are written behind: the file has the flash at least as FlashMaster began it (its row's
    # write waited for that), at most as far as the step the kill followed
    assert status["job_id"] == started["job_id"] and status["progress"] <= under_way["progress"]
    assert "flash it again" in status["details"]
    (row,) = await history(client, 1)
    assert (row["job_id"], row["method"], row["state"], row["error_code"]) == (
        started["job_id"], "usb", "failed", "interrupted",
    )  # fmt: skip


async def test_a_flash_that_fails_before_its_image_still_leaves_a_failed_row(
    start_daemon: DaemonFactory, client: MessageBus, signals: FlashSignals, tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    await start_daemon(config=f'[usb]\nesptool = "{tmp_path / "no" / "esptool"}"\n')

    started = await flash_master(client, port="socket://127.0.0.1:9")
    final = await signals.final()

    assert (final["status"], final["error_code"]) == ("failed", "esptool_not_available"), final
    (row,) = await history(client, 1)
    assert (row["job_id"], row["method"], row["state"], row["error_code"]) == (
        started["job_id"], "usb", "failed", "esptool_not_available",
    )  # fmt: skip
    assert "firmware" not in row and "sha256" not in row  # no image was asked for, none was had
