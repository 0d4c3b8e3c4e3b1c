"""The daemon as clients see it: a subprocess on a private bus, called by a second real D-Bus client."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call, properties, unwrap
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from espimage import build_app_image
from journal_socket import JOURNAL_SOCKET, JournalSocket
from signals import SignalCollector, any_signal, property_changes

from uc2otad.api import names
from uc2otad.engine.store import JobRecord, StatusStore

XML_FILE = Path(__file__).parent.parent / "dbus" / "org.openuc2.OTA1.xml"
PASSWORD = "secret-Lab-Passw0rd"


def interface_shape(xml: str) -> dict[str, Any]:
    """Methods, signals and properties of org.openuc2.OTA1 as comparable data.

    Out-argument and signal-argument names are left out: they are documentation in our XML, and
    dbus-fast does not publish names for them.
    """
    root = ET.fromstring(xml)
    interface = next(node for node in root.iter("interface") if node.get("name") == names.INTERFACE)
    shape: dict[str, Any] = {}
    for member in interface:
        args = [
            (
                arg.get("name") if arg.get("direction") == "in" else None,
                arg.get("direction", "out"),
                arg.get("type"),
            )
            for arg in member.iter("arg")
        ]
        if member.tag == "property":
            shape[f"property {member.get('name')}"] = (member.get("type"), member.get("access"))
        else:
            shape[f"{member.tag} {member.get('name')}"] = args
    return shape


async def test_introspection_equals_the_shipped_xml(start_daemon: DaemonFactory, client: MessageBus) -> None:
    await start_daemon()
    live = await client.introspect(names.BUS_NAME, names.OBJECT_PATH)
    shipped = await asyncio.to_thread(XML_FILE.read_text)
    assert interface_shape(live.tostring()) == interface_shape(shipped)


async def test_methods_answer_with_the_contract_types(
    start_daemon: DaemonFactory, client: MessageBus
) -> None:
    daemon = await start_daemon()
    assert daemon.notifications and "READY=1" in daemon.notifications[-1].split("\n")

    status = await call(client, "GetStatus", "u", 11)
    assert (status.message_type, status.signature) == (MessageType.METHOD_RETURN, "a{sv}")
    assert status.body[0]["can_id"] == Variant("u", 11)
    assert status.body[0]["status"] == Variant("s", "idle")

    every = await call(client, "GetAllStatus")
    assert (every.signature, every.body) == ("a{sa{sv}}", [{}])
    history = await call(client, "GetHistory", "u", 0)
    assert (history.signature, history.body) == ("aa{sv}", [[]])

    props = await properties(client)
    assert props["MasterConnected"] is False
    assert props["Progress"] == 0
    assert props["FirmwareServer"] == "http://localhost/firmware"

    cookie = await call(client, "Inhibit", "s", "lab course until 16:00")
    assert cookie.signature == "s" and cookie.body[0]
    assert (await properties(client))["Inhibited"] is True
    assert (await call(client, "Uninhibit", "s", cookie.body[0])).message_type is MessageType.METHOD_RETURN
    assert (await properties(client))["Inhibited"] is False


async def test_list_firmware_has_the_document_shape(
    start_daemon: DaemonFactory, client: MessageBus, caddy: CaddyServer
) -> None:
    image = build_app_image("esp32s3", version="v2026.1.0")
    await asyncio.to_thread(
        (caddy.root / "esp32_UC2_canopen_slave_motor_release_motX.bin").write_bytes, image
    )
    await start_daemon("--firmware-server", caddy.url)
    reply = await call(client, "ListFirmware")
    assert reply.signature == "a{sv}", reply.body
    listing = unwrap(reply.body[0])
    assert listing["status"] == "success"
    assert listing["firmware_server"] == caddy.url
    assert listing["firmware_count"] == 1
    assert reply.body[0]["firmware_count"].signature == "u"
    entry = listing["firmware"]["11"]
    assert entry["filename"] == "esp32_UC2_canopen_slave_motor_release_motX.bin"
    assert entry["size"] == len(image)
    assert reply.body[0]["firmware"].value["11"].value["can_id"] == Variant("u", 11)


#: dbus-fast answers a call whose argument types match no method with UnknownMethod ("… with signature
#: "s" could not be found"), before any of our code runs
WRONG_SIGNATURE = "org.freedesktop.DBus.Error.UnknownMethod"

BAD_CALLS: list[tuple[str, str, tuple[Any, ...], str]] = [
    ("GetStatus", "u", (0,), names.INVALID_ARGUMENT),
    ("GetStatus", "u", (128,), names.INVALID_ARGUMENT),
    ("GetStatus", "u", (2**32 - 1,), names.INVALID_ARGUMENT),
    ("GetStatus", "s", ("11",), WRONG_SIGNATURE),
    ("GetHistory", "u", (128,), names.INVALID_ARGUMENT),
    ("SetWiFiCredentials", "ss", ("x" * 32, PASSWORD), names.INVALID_ARGUMENT),
    ("SetWiFiCredentials", "ss", ("", PASSWORD), names.INVALID_ARGUMENT),
    ("SetWiFiCredentials", "ss", ("lab\n", PASSWORD), names.INVALID_ARGUMENT),
    ("SetWiFiCredentials", "ss", ("lab", "7 bytes"), names.INVALID_ARGUMENT),
    ("SetWiFiCredentials", "ss", ("lab", "p" * 64), names.INVALID_ARGUMENT),
    ("SetWiFiCredentials", "s", ("lab",), WRONG_SIGNATURE),
    ("SetOTAPassword", "s", ("p" * 65,), names.INVALID_ARGUMENT),
    ("SetOTAPassword", "s", (PASSWORD + "\n",), names.INVALID_ARGUMENT),
    ("SetOTAPassword", "u", (1,), WRONG_SIGNATURE),
    ("SetFirmwareServer", "s", ("ftp://lab/firmware",), names.INVALID_ARGUMENT),
    ("SetFirmwareServer", "s", ("not a url",), names.INVALID_ARGUMENT),
    ("SetFirmwareServer", "s", ("http://user:pw@lab/firmware",), names.INVALID_ARGUMENT),
    ("SetFirmwareServer", "s", ("http://lab/firmware?x=1",), names.INVALID_ARGUMENT),
    ("SetFirmwareServer", "u", (1,), WRONG_SIGNATURE),
    ("Inhibit", "s", ("",), names.INVALID_ARGUMENT),
    ("Inhibit", "s", ("x" * 300,), names.INVALID_ARGUMENT),
    ("Uninhibit", "s", ("no-such-cookie",), names.NOT_FOUND),
    ("StartOTA", "ua{sv}", (11, {"bogus": Variant("s", "x")}), names.INVALID_ARGUMENT),
    ("StartOTA", "ua{sv}", (11, {"force": Variant("s", "yes")}), names.INVALID_ARGUMENT),
    ("StartOTA", "ua{sv}", (11, {"method": Variant("s", "usb")}), names.INVALID_ARGUMENT),
    ("StartOTA", "ua{sv}", (11, {"timeout": Variant("u", 10)}), names.INVALID_ARGUMENT),
    ("StartOTA", "ua{sv}", (1, {}), names.INVALID_ARGUMENT),
    ("StartOTA", "ua{sv}", (11, {}), names.NOT_CONNECTED),
    ("Cancel", "u", (11,), names.NOT_FOUND),
    ("StartMultipleOTA", "aua{sv}", ([], {}), names.INVALID_ARGUMENT),
    ("StartMultipleOTA", "aua{sv}", ([11, 11], {}), names.INVALID_ARGUMENT),
    ("StartMultipleOTA", "aua{sv}", ([11, 1], {}), names.INVALID_ARGUMENT),
    ("StartMultipleOTA", "aua{sv}", ([11], {"parallel": Variant("u", 9)}), names.INVALID_ARGUMENT),
    ("StartMultipleOTA", "aua{sv}", ([11], {"parallel": Variant("u", 0)}), names.INVALID_ARGUMENT),
    ("StartMultipleOTA", "aua{sv}", ([11], {"delay_between": Variant("u", 601)}), names.INVALID_ARGUMENT),
    ("StartMultipleOTA", "aua{sv}", ([11], {"delay_between": Variant("s", "2")}), names.INVALID_ARGUMENT),
    ("StartMultipleOTA", "aua{sv}", ([11], {}), names.NOT_CONNECTED),
]


async def test_bad_input_gets_the_right_error_and_changes_nothing(
    start_daemon: DaemonFactory, client: MessageBus
) -> None:
    daemon = await start_daemon()
    assert (
        await call(client, "SetWiFiCredentials", "ss", "uc2-lab", PASSWORD)
    ).message_type is MessageType.METHOD_RETURN
    before = (await properties(client), unwrap((await call(client, "GetAllStatus")).body))
    persisted_before = await asyncio.to_thread(lambda: sorted(p.name for p in daemon.state_dir.iterdir()))

    for member, signature, body, error_name in BAD_CALLS:
        reply = await call(client, member, signature, *body)
        assert (member, reply.message_type, reply.error_name) == (member, MessageType.ERROR, error_name), (
            reply.body
        )
        assert reply.body and reply.body[0], f"{member}: an error needs a message in plain words"

    after = (await properties(client), unwrap((await call(client, "GetAllStatus")).body))
    assert after == before
    assert (
        await asyncio.to_thread(lambda: sorted(p.name for p in daemon.state_dir.iterdir()))
        == persisted_before
    )
    assert PASSWORD not in await asyncio.to_thread(daemon.log)


async def test_settings_survive_a_restart_and_flags_win(
    start_daemon: DaemonFactory, client: MessageBus, tmp_path: Path
) -> None:
    daemon = await start_daemon()
    await call(client, "SetWiFiCredentials", "ss", "uc2-lab", PASSWORD)
    await call(client, "SetFirmwareServer", "s", "https://fw.lab.example/firmware/")
    assert await asyncio.to_thread(daemon.stop) == 0
    await asyncio.to_thread(daemon.wait_for_notification, "STOPPING=1", 5)

    await asyncio.to_thread(daemon.start)
    props = await properties(client)
    assert props["WiFiSSID"] == "uc2-lab"
    assert props["FirmwareServer"] == "https://fw.lab.example/firmware"
    await asyncio.to_thread(daemon.stop)

    flagged = await start_daemon("--firmware-server", "http://127.0.0.1:9/firmware")
    assert (await properties(client))["FirmwareServer"] == "http://127.0.0.1:9/firmware"  # flag > D-Bus
    assert flagged.state_dir == daemon.state_dir


async def test_the_password_is_kept_only_in_its_private_file(
    start_daemon: DaemonFactory, client: MessageBus
) -> None:
    daemon = await start_daemon()
    signals = SignalCollector(client, any_signal)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}'")
    replies = [await call(client, "SetWiFiCredentials", "ss", "uc2-lab", PASSWORD)]
    replies.append(
        await call(client, "GetAll", "s", names.INTERFACE, interface="org.freedesktop.DBus.Properties")
    )
    replies.append(await call(client, "GetStatus", "u", 11))
    await asyncio.to_thread(daemon.stop)
    await asyncio.to_thread(lambda: assert_password_only_in_its_file(daemon.state_dir, daemon.log()))
    assert all(PASSWORD not in repr(message.body) for message in [*replies, *signals])
    assert any(message.member == "PropertiesChanged" for message in signals)  # the SSID change was signalled


def assert_password_only_in_its_file(state_dir: Path, log: str) -> None:
    password_file = state_dir / "wifi-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.read_text() == PASSWORD
    for path in state_dir.rglob("*"):
        if path != password_file and path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in log


async def test_an_inhibit_ends_when_its_caller_leaves_the_bus(
    start_daemon: DaemonFactory, client: MessageBus, private_bus: Any
) -> None:
    await start_daemon()
    holder = await MessageBus(bus_address=private_bus.address).connect()
    reply = await holder.call(
        Message(destination=names.BUS_NAME, path=names.OBJECT_PATH, interface=names.INTERFACE,
                member="Inhibit", signature="s", body=["microscope in use"])
    )  # fmt: skip
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
    assert (await properties(client))["Inhibited"] is True

    released = SignalCollector(client, property_changes("Inhibited"))
    await add_match(client, "type='signal',member='PropertiesChanged'")
    holder.disconnect()
    assert await released.first(lambda inhibited: inhibited is False, 5) is False
    assert (await properties(client))["Inhibited"] is False


async def test_watchdog_pings_only_when_systemd_asks(start_daemon: DaemonFactory) -> None:
    quiet = await start_daemon()
    assert not any("WATCHDOG=1" in message for message in quiet.notifications)
    await asyncio.to_thread(quiet.close)
    watched = await start_daemon(env={"WATCHDOG_USEC": "200000"})
    await asyncio.to_thread(watched.wait_for_notification, "WATCHDOG=1", 5)


async def test_invalid_configuration_names_the_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "uc2otad.toml"
    await asyncio.to_thread(config.write_text, '[serial]\nownership = "shared"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uc2otad.daemon", "--session",
        "--config", str(config), "--state-dir", str(tmp_path / "state"),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"serial.ownership" in stderr


def test_the_xml_names_every_member_once() -> None:
    interface = ET.fromstring(XML_FILE.read_text()).find("interface")
    assert interface is not None
    members = [f"{member.tag} {member.get('name')}" for member in interface]
    assert len(members) == len(set(members))
    assert "method GetStatus" in members and "signal OTAStatusChanged" in members


@pytest.fixture
def journal() -> Iterator[JournalSocket]:
    if JOURNAL_SOCKET.exists():
        pytest.skip("a journald runs here: its socket cannot be borrowed")
    if os.geteuid() != 0:
        pytest.skip("binding /run/systemd/journal/socket needs root")
    sink = JournalSocket()
    yield sink
    sink.close()


async def test_journal_entries_carry_the_uc2_fields_and_interrupted_jobs_are_reconciled(
    start_daemon: DaemonFactory, client: MessageBus, journal: JournalSocket, tmp_path: Path
) -> None:
    # a job row left "running", as a daemon killed with SIGKILL mid-update leaves it
    store = StatusStore(tmp_path / "daemon" / "state" / "uc2otad.sqlite3")
    await store.open()
    store.put_status(11, {"can_id": 11, "status": "initiated", "upload_status": "uploading"})
    await store.begin_job(JobRecord(job_id="job-killed", can_id=11, method="wifi"))
    await store.close()

    await start_daemon()
    entry = await asyncio.to_thread(journal.wait_for, "UC2_JOB_ID", "job-killed")
    assert entry["UC2_CAN_ID"] == "11"
    assert entry["UC2_PHASE"] == "interrupted"
    assert entry["SYSLOG_IDENTIFIER"] == "uc2otad"
    assert entry["PRIORITY"] == "4"  # warning
    assert "interrupted" in entry["MESSAGE"]

    history = unwrap((await call(client, "GetHistory", "u", 11)).body[0])
    assert [(job["job_id"], job["state"], job["error_code"]) for job in history] == [
        ("job-killed", "failed", "interrupted")
    ]
    status = unwrap((await call(client, "GetStatus", "u", 11)).body[0])
    assert (status["status"], status["error_code"]) == ("failed", "interrupted")
