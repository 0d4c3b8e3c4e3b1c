"""The OTA password of the WiFi method end to end (issue 20): a slave whose ArduinoOTA asks for a password.

The openUC2 firmware sets none (``can_controller.cpp:2395-2463`` @14fa3e3), so the protected board is a
lab's build with ``ArduinoOTA.setPassword``: the simulated slave's ``NodeSpec.ota_password``. With the
password stored by SetOTAPassword the update goes through; with a wrong one, or none, it ends
``ota_auth_failed`` at once (retrying would send the same password) and the board keeps its image. The
password is in no reply, no signal, no log line and no file but its own 0600 ``ota-password``.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import DaemonFactory
from daemon_process import DaemonProcess
from dbus_client import add_match, call, unwrap
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from signals import SignalCollector, StatusSignals, any_signal
from test_daemon_wifi import IMAGE, NODE, daemon_config, legacy_scope, served  # noqa: F401 - a fixture

from uc2otad.api import names
from uc2otad.engine.status import ERROR_ROWS
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

#: the board's ArduinoOTA password (a lab's build)
OTA_PASSWORD = "lab-OTA-Passw0rd-20"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def every_signal(client: MessageBus) -> AsyncIterator[SignalCollector[Message]]:
    """Every signal the daemon sends, from before the first call."""
    collector = SignalCollector(client, any_signal)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}'")
    yield collector
    collector.close()


@pytest.fixture
async def statuses(client: MessageBus, every_signal: SignalCollector[Message]) -> StatusSignals:
    return StatusSignals(client, NODE)  # the match rule is every_signal's


def protected_scope(tmp_path: Path) -> VirtualMicroscope:
    return legacy_scope(tmp_path, replace(default_node(NODE), ota_password=OTA_PASSWORD))


async def update_with(
    start_daemon: DaemonFactory, client: MessageBus, scope: VirtualMicroscope, server: str, stored: str
) -> tuple[DaemonProcess, list[Message]]:
    """Start the daemon (one retry allowed, so that a retried failure would show attempt 2), store the
    credentials and ``stored`` as the OTA password ("": none), start the update; the replies."""
    daemon = await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", server,
                                config=daemon_config(scope.config.ota_port, retries=1))  # fmt: skip
    replies = [await call(client, "SetWiFiCredentials", "ss", DEFAULT_SSID, DEFAULT_PASSWORD)]
    if stored:
        replies.append(await call(client, "SetOTAPassword", "s", stored))
    replies.append(await call(client, "StartOTA", "ua{sv}", NODE, {}))
    assert all(reply.message_type is MessageType.METHOD_RETURN for reply in replies), replies[-1].body
    return daemon, replies


async def test_a_protected_board_takes_the_update_with_the_stored_password(
    start_daemon: DaemonFactory,
    client: MessageBus,
    every_signal: SignalCollector[Message],
    statuses: StatusSignals,
    served: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    async with protected_scope(tmp_path) as scope:
        daemon, replies = await update_with(start_daemon, client, scope, served, OTA_PASSWORD)
        final = await statuses.until("success")
        running = scope.master.slave(NODE).running_image
        replies.append(await call(client, "GetStatus", "u", NODE))
        replies.append(await call(client, "GetHistory", "u", NODE))
        replies.append(
            await call(client, "GetAll", "s", names.INTERFACE, interface="org.freedesktop.DBus.Properties")
        )

    assert (final["upload_status"], final["attempt"]) == ("success", 1), final.get("upload_error")
    assert running == IMAGE
    await asyncio.to_thread(daemon.stop)
    assert all(OTA_PASSWORD not in repr(message.body) for message in [*replies, *every_signal])
    await asyncio.to_thread(assert_only_in_its_file, daemon)


def assert_only_in_its_file(daemon: DaemonProcess) -> None:
    """The password file is 0600 and holds it; no other file of the state and cache dirs, nor the log."""
    secret = daemon.state_dir / "ota-password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_text() == OTA_PASSWORD
    for folder in (daemon.state_dir, daemon.cache_dir):
        for path in folder.rglob("*"):
            if path != secret and path.is_file():
                assert OTA_PASSWORD.encode() not in path.read_bytes(), path
    assert OTA_PASSWORD not in daemon.log()
    assert "OTA password set" in daemon.log()  # what the log says instead


@pytest.mark.parametrize(
    ("stored", "words"),
    [("wrong-" + OTA_PASSWORD, "refused the stored OTA password"), ("", "none is stored")],
    ids=["wrong-password", "none-stored"],
)
async def test_a_refused_password_fails_at_once_naming_the_authentication(
    start_daemon: DaemonFactory,
    client: MessageBus,
    every_signal: SignalCollector[Message],
    statuses: StatusSignals,
    served: str,  # noqa: F811 - the fixture
    tmp_path: Path,
    stored: str,
    words: str,
) -> None:
    async with protected_scope(tmp_path) as scope:
        daemon, replies = await update_with(start_daemon, client, scope, served, stored)
        final = await statuses.until_final()
        kept_old_image = scope.master.slave(NODE).running_image is None
        (job,) = unwrap((await call(client, "GetHistory", "u", NODE)).body[0])

    assert (final["upload_status"], final["error_code"], final["attempt"]) == ("failed", "ota_auth_failed", 1)
    assert "retry_in" not in final and {status["attempt"] for status in statuses.statuses} == {1}
    assert final["message"] == f"❌ {ERROR_ROWS['ota_auth_failed']}"
    assert "authentication" in final["message"] and "set-ota-password" in final["message"]
    assert final["upload_error"].startswith("ArduinoOTA authentication failed"), final["upload_error"]
    assert words in final["upload_error"]
    assert kept_old_image
    assert (job["state"], job["error_code"], job["attempt"]) == ("failed", "ota_auth_failed", 1)
    await asyncio.to_thread(daemon.stop)
    log = await asyncio.to_thread(daemon.log)
    for secret in filter(None, (stored, OTA_PASSWORD)):
        assert secret not in log
        assert all(secret not in repr(message.body) for message in [*replies, *every_signal])
