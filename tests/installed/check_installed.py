"""Check the INSTALLED uc2otad package: files and modes, the bus policy, who may do what, where secrets go.

Run as root with the system's interpreter, after ``apt-get install ./uc2otad_*.deb`` (tests/installed/run
does both)::

    /usr/bin/python3 tests/installed/check_installed.py --sim .venv/bin/uc2otad-sim \
        --sim-python .venv/bin/python --esptool .venv/bin/esptool --release 12

(``--esptool ""`` and ``--release 13`` in tests/installed/trixie's Debian 13 chroot: Debian's esptool.)

It starts a private system-type dbus-daemon whose policy is the default one of Debian's system bus plus
the installed ``/usr/share/dbus-1/system.d/org.openuc2.OTA1.conf``, the virtual microscope (a legacy
master, so that an update takes the WiFi method and the WiFi password travels), and the installed
``/usr/bin/uc2otad`` against both, as root, with the unit's UMask and the real /var/lib and /var/cache
folders. Then, as users it creates: an unprivileged user reads the status but is refused every other
method with ``org.freedesktop.DBus.Error.AccessDenied``; a member of group ``uc2ota`` stores WiFi
credentials and the board's OTA password (board 11 is a lab's build whose ArduinoOTA asks for one) and
updates a board through ``uc2otactl``; neither password is found in any reply, property, signal, log
line, journal entry or file the unprivileged user can read; the member flashes the master
(FlashMaster) through the simulator's ROM loader with ``--esptool``; the scheduled update's ExecStart,
run as its unit's user ``uc2otad-update`` (group ``uc2ota``), updates exactly the boards that have an
update available, and exits 2 when run again; the compat probe finds the
marshaller of the release's python3-dbus-fast broken (Debian 12) or fixed (13); the direct CAN link runs
as the unit runs it, with the package's private canopen and Debian's python-can, on python-can's virtual
interface (can_direct_probe.py), and without the unit's environment no canopen is found. And a burst
of reads the unprivileged user may send (2 connections x 128 GetAllStatus that never read their replies,
answered while dbus-daemon is not reading either) leaves the daemon on the bus and answering (issue 14,
D1).

Not collected by pytest (no ``test_`` prefix): it needs root, the installed package and Debian's
python3-dbus-fast. The same file is the client the other users run (``client …`` sub-commands), so
each check is one real D-Bus connection with that user's credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import importlib.util
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uc2otad.sim.private_bus import PrivateBus

BUS_NAME = "org.openuc2.OTA1"
OBJECT_PATH = "/org/openuc2/OTA1"
INSTALLED_POLICY = Path("/usr/share/dbus-1/system.d/org.openuc2.OTA1.conf")
INSTALLED_ACTIVATION = Path("/usr/share/dbus-1/system-services/org.openuc2.OTA1.service")
INSTALLED_INTERFACE = Path("/usr/share/dbus-1/interfaces/org.openuc2.OTA1.xml")
INSTALLED_UNIT = Path("/lib/systemd/system/uc2otad.service")
#: the scheduled update (docs/deployment.md "Scheduled updates"), started by uc2otad-update.timer
INSTALLED_UPDATE_UNIT = Path("/lib/systemd/system/uc2otad-update.service")
#: the package's drop-in: PYTHONPATH with the vendored canopen (debian/rules, docs/can-direct.md)
INSTALLED_DROP_IN = Path("/lib/systemd/system/uc2otad.service.d/vendor.conf")
VENDOR = Path("/usr/lib/uc2otad/vendor")
#: run with the daemon's interpreter and the unit's environment: the direct CAN link on a virtual bus
CAN_PROBE = Path(__file__).resolve().parent / "can_direct_probe.py"
DAEMON = Path("/usr/bin/uc2otad")
CTL = Path("/usr/bin/uc2otactl")
SITE_PACKAGES = "/usr/lib/python3/dist-packages/"
STATE_DIR = Path("/var/lib/uc2otad")
CACHE_DIR = Path("/var/cache/uc2otad")
CONFIG_DIR = Path("/etc/uc2otad")
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
GROUP = "uc2ota"
#: the users this check creates (and removes again if it created them)
READER = "uc2o-reader"
OPERATOR = "uc2o-operator"
#: methods everyone may call (docs/security.md); every other method of the interface is for uc2ota and root
PUBLIC_METHODS = frozenset(
    {
        "GetStatus",
        "GetAllStatus",
        "GetHistory",
        "ListFirmware",
        "ScanDevices",
        "CheckUpdates",
        "ListSerialPorts",
        "GetUSBFlashStatus",
    }
)
#: one well-typed call of each restricted method: (member, signature, JSON arguments)
RESTRICTED_CALLS: tuple[tuple[str, str, list[Any]], ...] = (
    ("StartOTA", "ua{sv}", [11, {}]),
    ("StartMultipleOTA", "aua{sv}", [[11, 20], {}]),
    ("Cancel", "u", [11]),
    ("FlashMaster", "a{sv}", [{}]),
    ("SetWiFiCredentials", "ss", ["intruder-net", "intruder-pass"]),
    ("SetOTAPassword", "s", ["intruder-ota"]),
    ("SetFirmwareServer", "s", ["http://127.0.0.1:9/firmware"]),
    ("ClearFirmwareCache", "", []),
    ("ClearFirmwareCacheWithOptions", "a{sv}", [{}]),
    ("Rollback", "u", [11]),
    ("ImportFirmware", "h", [None]),
    ("Inhibit", "s", ["not allowed"]),
    ("Uninhibit", "s", ["0"]),
)
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
#: uc2otactl update's per-board results that are failures (ctl/update.py)
FAILED_RESULTS = frozenset({"failed", "cancelled", "running", "pending"})
#: owner, group, mode of what the package installs or creates (docs/security.md "Files")
EXPECTED_MODES: dict[Path, tuple[str, str, int]] = {
    CONFIG_DIR: ("root", "root", 0o755),
    CONFIG_DIR / "uc2otad.toml": ("root", "root", 0o644),
    STATE_DIR: ("root", "root", 0o700),
    CACHE_DIR: ("root", "root", 0o700),
    INSTALLED_POLICY: ("root", "root", 0o644),
    INSTALLED_ACTIVATION: ("root", "root", 0o644),
    INSTALLED_INTERFACE: ("root", "root", 0o644),
    INSTALLED_UNIT: ("root", "root", 0o644),
    INSTALLED_UPDATE_UNIT: ("root", "root", 0o644),
    INSTALLED_UPDATE_UNIT.with_suffix(".timer"): ("root", "root", 0o644),
    INSTALLED_DROP_IN: ("root", "root", 0o644),
    VENDOR / "canopen" / "__init__.py": ("root", "root", 0o644),
    Path("/usr/lib/sysusers.d/uc2otad.conf"): ("root", "root", 0o644),
    Path("/usr/lib/tmpfiles.d/uc2otad.conf"): ("root", "root", 0o644),
    DAEMON: ("root", "root", 0o755),
    CTL: ("root", "root", 0o755),
}
#: seconds a program may take to say it is ready (bus address, simulator line, READY=1)
START_TIMEOUT = 30.0
#: seconds a whole update of one small image on the fast virtual microscope may take
UPDATE_TIMEOUT = 90.0
#: seconds one client call may take
CALL_TIMEOUT = 30.0
#: WATCHDOG_USEC given to the daemon: it must ping every second (half of it)
WATCHDOG_USEC = 2_000_000
#: the read burst: connections x GetAllStatus calls each (dbus-daemon allows 128 pending calls per
#: connection), and the seconds the daemon answers while dbus-daemon does not read
BURST_CONNECTIONS = 2
BURST_CALLS = 128
BURST_WINDOW = 1.0
#: a name nobody owns: the bus's error for it tells a burst client that its calls have all been routed
BURST_SENTINEL = "org.openuc2.OTA1.Check.NoSuchName"
CAN_ID = 11
SSID = "uc2-check"
#: the master's own CAN id: sim_firmware.py writes its custom image (id_1_…), which FlashMaster takes
MASTER_CAN_ID = 1
#: seconds FlashMaster may take, esptool's runs included (the image is small; the loader is local)
FLASH_TIMEOUT = 120.0
#: whether the compat probe (uc2otad/api/compat_bus.py) must find dbus-fast's string marshaller fixed:
#: Debian 12's python3-dbus-fast 1.84 has the bug, Debian 13's 2.44 has the fix
MARSHALLER_FIXED = {12: False, 13: True}

#: the default policy of Debian's /usr/share/dbus-1/system.conf, with our policy file included
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


class CheckFailedError(Exception):
    """One check failed; the message says what was expected and what was found."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailedError(message)


def passed(message: str) -> None:
    print(f"ok   {message}", flush=True)


# ---- the client side: run as the user under test ------------------------------------------------------


def _to_dbus(signature: str, value: Any) -> Any:
    """JSON → dbus-fast values for the few signatures the checks use."""
    from dbus_fast import Variant  # noqa: PLC0415 - the root side must not need dbus-fast before it checks

    kinds = {bool: "b", int: "u", str: "s"}
    if signature == "a{sv}":
        return {key: Variant(kinds[type(item)], item) for key, item in value.items()}
    if signature == "v":
        return Variant(kinds[type(value)], value)
    return value


def _split_signature(signature: str) -> list[str]:
    """'ua{sv}' → ['u', 'a{sv}'] (only the forms the checks use)."""
    return re.findall(r"a\{sv\}|au|as|[usbvh]", signature)


def _plain(value: Any) -> Any:
    """dbus-fast values → JSON values."""
    from dbus_fast import Variant  # noqa: PLC0415

    if isinstance(value, Variant):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


async def _client_call(interface: str, member: str, signature: str, arguments: list[Any]) -> dict[str, Any]:
    from dbus_fast import BusType, Message, MessageType  # noqa: PLC0415
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    destination, path = BUS_NAME, OBJECT_PATH
    if interface.startswith("org.freedesktop.DBus") and member in {"BecomeMonitor", "GetNameOwner"}:
        destination, path = "org.freedesktop.DBus", "/org/freedesktop/DBus"
    body = [_to_dbus(kind, value) for kind, value in zip(_split_signature(signature), arguments, strict=True)]
    # "h" (ImportFirmware): the argument is an open file, /dev/null, passed as fd number 0 of the message
    unix_fds = [os.open("/dev/null", os.O_RDONLY)] if signature == "h" else []
    body = [0] if unix_fds else body
    bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=bool(unix_fds)).connect()
    try:
        reply = await asyncio.wait_for(
            bus.call(
                Message(
                    destination=destination,
                    path=path,
                    interface=interface,
                    member=member,
                    signature=signature,
                    body=body,
                    unix_fds=unix_fds,
                )
            ),
            CALL_TIMEOUT,
        )
    finally:
        bus.disconnect()
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        return {"error": reply.error_name, "message": _plain(reply.body)}
    return {"ok": _plain(reply.body)}


async def _client_listen() -> list[dict[str, Any]]:
    """Every signal of the daemon until stdin closes; prints "ready" once subscribed."""
    from dbus_fast import BusType, Message, MessageType  # noqa: PLC0415
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    received: list[dict[str, Any]] = []

    def on_message(message: Message) -> None:
        if message.message_type is MessageType.SIGNAL and message.path == OBJECT_PATH:
            received.append({"member": message.member, "body": _plain(message.body)})

    bus.add_message_handler(on_message)
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[f"type='signal',path='{OBJECT_PATH}'"],
        )
    )
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    bus.disconnect()
    return received


def _client_burst(connections: int, calls: int) -> dict[str, int]:
    """``connections`` bare connections that send ``calls`` GetAllStatus each and never read a reply.

    Prints "ready" once the bus has routed every call (it answers a last call to itself after them),
    then keeps the connections open, still unread, until stdin closes.
    """
    from dbus_fast import Message  # noqa: PLC0415

    path = os.environ["DBUS_SYSTEM_BUS_ADDRESS"].removeprefix("unix:path=").split(",")[0]

    def to_bus(member: str, serial: int, body: list[Any]) -> Message:
        return Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                       interface="org.freedesktop.DBus", member=member, signature="s" * len(body),
                       body=body, serial=serial)  # fmt: skip

    opened: list[socket.socket] = []
    for _ in range(connections):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CALL_TIMEOUT)
        sock.connect(path)
        sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        expect(sock.recv(4096).startswith(b"OK "), "the bus refused the burst client's authentication")
        sock.sendall(b"BEGIN\r\n")
        messages = [to_bus("Hello", 1, [])]
        messages += [
            Message(destination=BUS_NAME, path=OBJECT_PATH, interface=BUS_NAME, member="GetAllStatus",
                    serial=2 + number)
            for number in range(calls)
        ]  # fmt: skip
        messages.append(to_bus("GetNameOwner", calls + 2, [BURST_SENTINEL]))
        sock.sendall(b"".join(bytes(message._marshall(False)) for message in messages))
        opened.append(sock)
    for sock in opened:  # only the bus's own answers arrive while the daemon is stopped
        received = b""
        while BURST_SENTINEL.encode() not in received:
            chunk = sock.recv(65536)
            expect(bool(chunk), "the bus closed a burst connection")
            received += chunk
    print("ready", flush=True)
    sys.stdin.read()
    for sock in opened:
        sock.close()
    return {"connections": connections, "calls": calls}


def _client_files(paths: list[str]) -> dict[str, list[str]]:
    """What this user can open under ``paths``, and which of those hold the secret (read from stdin)."""
    secret = sys.stdin.read().encode()
    found: dict[str, list[str]] = {"readable": [], "denied": [], "secret_in": []}
    for top in paths:
        for path in _walk(Path(top), found["denied"]):
            try:
                data = path.read_bytes()
            except PermissionError:
                found["denied"].append(str(path))
                continue
            except OSError:  # a socket, a vanished file
                continue
            found["readable"].append(str(path))
            if secret in data:
                found["secret_in"].append(str(path))
    return found


def _walk(top: Path, denied: list[str]) -> Iterator[Path]:
    if top.is_symlink() or not top.exists():
        return
    if not top.is_dir():
        yield top
        return
    try:
        children = sorted(top.iterdir())
    except PermissionError:
        denied.append(str(top))
        return
    for child in children:
        yield from _walk(child, denied)


def client_main(argv: list[str]) -> int:
    command, *rest = argv
    result: Any
    if command == "call":
        interface, member, signature, arguments = rest
        result = asyncio.run(_client_call(interface, member, signature, json.loads(arguments)))
    elif command == "listen":
        result = asyncio.run(_client_listen())
    elif command == "burst":
        result = _client_burst(*(int(number) for number in rest))
    elif command == "files":
        result = _client_files(rest)
    else:
        raise SystemExit(f"unknown client command {command!r}")
    print(json.dumps(result), flush=True)
    return 0


# ---- the root side: set up, run the checks as other users, clean up ------------------------------------


@dataclass
class User:
    name: str
    created: bool


@dataclass
class Setup:
    """Everything started or created, so that it can be stopped and removed whatever happens."""

    folder: Path
    bus_address: str = ""
    bus: PrivateBus | None = None
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    journal: JournalCapture | None = None
    daemon: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    notifications: list[str] = field(default_factory=list)


class JournalCapture:
    """Stands in for journald on a machine without it (CI): binds its native socket, keeps every entry.

    The daemon picks the journal when the socket exists, so this sees what journald would store.
    """

    def __init__(self, path: Path, log_path: Path) -> None:
        self.path = path
        self.log_path = log_path
        self.entries: list[dict[str, str]] = []
        self.raw = bytearray()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                datagram = self._socket.recv(1 << 20)
            except OSError:
                return
            if not datagram:
                return
            self.raw += datagram
            try:
                entry = parse_journal_entry(datagram)
            except (ValueError, struct.error) as err:  # keep receiving: a stalled reader blocks the daemon
                entry = {"MESSAGE": f"(unparsable entry: {err})"}
            self.entries.append(entry)
            with self.log_path.open(
                "a"
            ) as log:  # for a person reading a failure (the password is never there)
                log.write(f"{entry.get('PRIORITY')} {entry.get('LOGGER')}: {entry.get('MESSAGE')}\n")

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)
        self.path.unlink(missing_ok=True)


def parse_journal_entry(datagram: bytes) -> dict[str, str]:
    """The journal's native protocol: ``KEY=value\\n``, or ``KEY\\n`` + little-endian u64 length + value."""
    fields: dict[str, str] = {}
    offset = 0
    while offset < len(datagram):
        end = datagram.index(b"\n", offset)
        line = datagram[offset:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            offset = end + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", datagram, end + 1)
            value = datagram[end + 9 : end + 9 + size]
            offset = end + 9 + size + 1
        fields[key.decode()] = value.decode(errors="replace")
    return fields


def run_as(
    user: str, *args: str, stdin: str = "", timeout: float = CALL_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``args`` as ``user`` with that user's groups (setpriv), on the private bus, in ``/``."""
    command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *args]
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env=_user_env(user),
        check=False,
    )


def _user_env(user: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "USER": user,
        "LANG": "C.UTF-8",
        "DBUS_SYSTEM_BUS_ADDRESS": os.environ["DBUS_SYSTEM_BUS_ADDRESS"],
    }


def client(user: str, *args: str, stdin: str = "") -> Any:
    """Run this file's client mode as ``user``; its JSON answer."""
    result = run_as(
        user, "/usr/bin/python3", "-I", str(Path(__file__).resolve()), "client", *args, stdin=stdin
    )
    expect(result.returncode == 0, f"client {args} as {user} exited {result.returncode}: {result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def call(
    user: str, interface: str, member: str, signature: str = "", arguments: list[Any] | None = None
) -> Any:
    return client(user, "call", interface, member, signature, json.dumps(arguments or []))


# ---- set-up steps --------------------------------------------------------------------------------------


def ensure_user(name: str, groups: list[str]) -> User:
    try:
        pwd.getpwnam(name)
        created = False
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
        )
        created = True
    if groups:
        subprocess.run(["usermod", "--append", "--groups", ",".join(groups), name], check=True)
    return User(name, created)


def private_bus_module() -> ModuleType:
    """The tests' and the demo's bus launcher, ``uc2otad/sim/private_bus.py`` of this checkout.

    Loaded by its path: the package holds no ``sim/``, and importing ``uc2otad`` from the checkout would
    hide the installed files this check is about. The module imports only the standard library.
    """
    path = Path(__file__).resolve().parents[2] / "uc2otad" / "sim" / "private_bus.py"
    spec = importlib.util.spec_from_file_location("uc2otad_private_bus", path)
    expect(spec is not None and spec.loader is not None, f"cannot load {path}")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_bus(setup: Setup) -> None:
    config = BUS_CONFIG.format(socket=setup.folder / "system_bus_socket", policy=INSTALLED_POLICY)
    bus: PrivateBus = private_bus_module().PrivateBus(
        setup.folder, config=config, log=setup.folder / "bus.log"
    )
    setup.bus = bus
    setup.bus_address = bus.start()
    expect(bool(setup.bus_address), "dbus-daemon printed no address")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = setup.bus_address


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_microscope(
    setup: Setup, args: argparse.Namespace, secret: str, ota_port: int, ota_secret: str
) -> dict[str, Any]:
    """A legacy master (WiFi method) with boards 11 and 20, and a firmware folder newer than they run;
    board 11's ArduinoOTA asks for ``ota_secret`` (a lab's build with ``ArduinoOTA.setPassword``)."""
    private = setup.folder / "private"
    private.mkdir(mode=0o700)
    firmware = setup.folder / "firmware"
    subprocess.run(
        [
            args.sim_python,
            str(Path(__file__).with_name("sim_firmware.py")),
            str(firmware),
            str(CAN_ID),
            "20",
            str(MASTER_CAN_ID),
        ],
        check=True,
    )
    config = private / "microscope.toml"
    config.write_text(
        f'profile = "legacy"\n[wifi]\nssid = "{SSID}"\npassword = "{secret}"\nota_port = {ota_port}\n'
        "[timing]\nnode_boot_time = 0.1\nwifi_join_time = 0.05\nlegacy_scan_wait = 0.05\n"
        # the chip of sim_firmware.py's images, so that FlashMaster's image fits the master's ROM loader
        'restart_delay = 0.1\n[master]\nchip = "esp32s3"\n'
        f'[[nodes]]\nid = {CAN_ID}\nota_password = "{ota_secret}"\n'
    )
    log = (setup.folder / "microscope.log").open("ab")
    process = subprocess.Popen(
        [
            args.sim,
            "--config",
            str(config),
            "--nodes",
            f"{CAN_ID},20",
            "--firmware-dir",
            str(firmware),
            "--serial-link",
            str(setup.folder / "ttyHAT"),
            "--quiet-master",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    setup.processes.append(process)
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    expect(bool(line), f"uc2otad-sim did not start; see {setup.folder / 'microscope.log'}")
    ready: dict[str, Any] = json.loads(line)
    return ready


def unit_umask() -> int:
    """The UMask= of the installed unit: the daemon runs with it here as under systemd."""
    match = re.search(r"^UMask=([0-7]+)$", INSTALLED_UNIT.read_text(), re.MULTILINE)
    expect(match is not None, f"{INSTALLED_UNIT} sets no UMask=")
    assert match is not None
    return int(match.group(1), 8)


def start_daemon(setup: Setup, microscope: dict[str, Any], ota_port: int, esptool: str = "") -> None:
    """The installed daemon as root, as the unit starts it (plus test timings and the simulator's ports)."""
    config = setup.folder / "uc2otad.toml"
    config.write_text(
        "[update]\nverify_settle = 0.3\nverify_interval = 0.1\nverify_window = 15.0\nretries = 0\n"
        "[firmware]\nattempts = 1\n"
        f"[wifi]\nota_port = {ota_port}\njoin_timeout = 5.0\ninvite_timeout = 1.0\nchunk_timeout = 5.0\n"
        'host_ip = "127.0.0.1"\n'
        "[usb]\nreboot_wait = 0.1\nreconnect_window = 15.0\n"
        + (f"esptool = {json.dumps(esptool)}\n" if esptool else "")
    )
    notify_path = setup.folder / "notify.socket"
    setup.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    setup.notify.bind(str(notify_path))
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "DBUS_SYSTEM_BUS_ADDRESS": setup.bus_address,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    umask = unit_umask()
    log = (setup.folder / "uc2otad.stderr").open("ab")
    setup.daemon = subprocess.Popen(
        [
            str(DAEMON),
            "--system",
            "--config",
            str(config),
            "--serial-port",
            microscope["serial_link"],
            "--firmware-server",
            microscope["firmware_server"],
            "--log-level",
            "debug",
        ],
        # the unit's UMask: set in the child before exec (this process runs only the journal thread then)
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        cwd="/",
        preexec_fn=lambda: os.umask(umask),  # noqa: PLW1509
    )
    wait_for_notification(setup, "READY=1")
    wait_for_notification(setup, "WATCHDOG=1")
    # from now on read every notification, as systemd does: an unread socket fills up after 10 datagrams
    threading.Thread(target=_drain_notifications, args=(setup,), daemon=True).start()


def _drain_notifications(setup: Setup) -> None:
    assert setup.notify is not None
    setup.notify.settimeout(None)
    while True:
        try:
            message = setup.notify.recv(4096).decode()
        except OSError:
            return
        if not message:
            return
        setup.notifications.append(message)


def wait_for_notification(setup: Setup, line: str) -> None:
    assert setup.notify is not None
    setup.notify.settimeout(START_TIMEOUT)
    while True:
        try:
            message = setup.notify.recv(4096).decode()
        except TimeoutError:
            raise CheckFailedError(
                f"no {line} from uc2otad within {START_TIMEOUT}s; log: {setup.folder / 'uc2otad.stderr'}"
            ) from None
        if line in message.split("\n"):
            return


def stop_daemon(setup: Setup) -> int:
    if setup.daemon is None:
        return 0
    setup.daemon.terminate()
    try:
        status = setup.daemon.wait(START_TIMEOUT)
    except subprocess.TimeoutExpired:
        setup.daemon.kill()
        status = setup.daemon.wait()
    setup.daemon = None
    return status


def tear_down(setup: Setup) -> None:
    stop_daemon(setup)
    for process in reversed(setup.processes):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
    if setup.bus is not None:
        setup.bus.stop()
    if setup.notify is not None:
        with contextlib.suppress(OSError):
            setup.notify.shutdown(socket.SHUT_RDWR)
        setup.notify.close()
    if setup.journal is not None:
        setup.journal.close()
    for user in setup.users:
        if user.created:
            subprocess.run(["userdel", user.name], check=False)


# ---- the checks ----------------------------------------------------------------------------------------


def check_files() -> None:
    for path, (owner, group, mode) in EXPECTED_MODES.items():
        info = path.lstat()
        found = (
            pwd.getpwuid(info.st_uid).pw_name,
            grp.getgrgid(info.st_gid).gr_name,
            stat.S_IMODE(info.st_mode),
        )
        expect(
            found == (owner, group, mode),
            f"{path}: owner, group, mode {found[0]}, {found[1]}, {found[2]:04o}; documented "
            f"{owner}, {group}, {mode:04o}",
        )
    passed(f"{len(EXPECTED_MODES)} installed files and folders have the documented owner, group and mode")
    gid = grp.getgrnam(GROUP).gr_gid
    expect(gid < 1000, f"group {GROUP} has gid {gid}, not a system group")
    passed(f"group {GROUP} exists (gid {gid}, from sysusers.d)")


def check_code(release: int) -> None:
    """The daemon imports from the package's folder, with Debian's libraries; the simulator is not there.
    The compat probe finds the string marshaller of this release's dbus-fast as it is (fixed from 2.10)."""
    import importlib.util  # noqa: PLC0415

    import dbus_fast  # noqa: PLC0415

    import uc2otad  # noqa: PLC0415

    expect(
        uc2otad.__file__ is not None and uc2otad.__file__.startswith(SITE_PACKAGES),
        f"uc2otad imported from {uc2otad.__file__}, not {SITE_PACKAGES}",
    )
    expect(importlib.util.find_spec("uc2otad.sim") is None, "the package ships uc2otad.sim")
    dbus_fast_file = dbus_fast.__file__ or ""
    expect(dbus_fast_file.startswith(SITE_PACKAGES), f"dbus_fast imported from {dbus_fast_file}")
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "python3-dbus-fast"], capture_output=True, text=True, check=True
    ).stdout
    passed(
        f"/usr/bin/python3 {sys.version.split()[0]} runs uc2otad {uc2otad.__version__} from {SITE_PACKAGES} "
        f"with Debian's python3-dbus-fast {version}; no simulator in the package"
    )
    from uc2otad.api.compat_bus import marshals_utf8  # noqa: PLC0415

    fixed = marshals_utf8()
    expect(
        fixed is MARSHALLER_FIXED[release],
        f"compat probe on Debian {release}: python3-dbus-fast {version}'s marshaller found "
        f"{'fixed' if fixed else 'broken'}, expected {'fixed' if MARSHALLER_FIXED[release] else 'broken'}",
    )
    passed(
        f"compat probe (uc2otad/api/compat_bus.py): python3-dbus-fast {version} marshals a non-ASCII "
        f"string's UTF-8 size {'right: the work-around is off' if fixed else 'wrong: the work-around is on'}"
    )


def unit_environment() -> dict[str, str]:
    """Environment= of the installed unit and its drop-ins, in systemd's order (later ones win)."""
    drop_ins = sorted(INSTALLED_UNIT.with_name(INSTALLED_UNIT.name + ".d").glob("*.conf"))
    environment: dict[str, str] = {}
    for path in [INSTALLED_UNIT, *drop_ins]:
        for line in path.read_text().splitlines():
            if line.startswith("Environment="):
                for assignment in shlex.split(line.removeprefix("Environment=")):
                    key, _, value = assignment.partition("=")
                    environment[key] = value
    return environment


def check_can_direct() -> None:
    """The direct CAN link as the unit runs the daemon: canopen from the package's private folder (the
    unit's PYTHONPATH), python-can from python3-can; a CanDirectLink on python-can's virtual interface
    opens, scans a CANopen node and closes (tests/installed/can_direct_probe.py). Without the unit's
    environment the system's Python finds no canopen: the copy stays private."""
    expect(
        importlib.util.find_spec("canopen") is None,
        "/usr/bin/python3 finds canopen without the unit's environment: the package's copy is not private",
    )
    environment = unit_environment()
    expect(
        environment.get("PYTHONPATH") == str(VENDOR),
        f"the installed unit and drop-ins set PYTHONPATH={environment.get('PYTHONPATH')}, not {VENDOR}",
    )
    interpreter = DAEMON.read_text().splitlines()[0].removeprefix("#!").split()
    result = subprocess.run(
        [*interpreter, str(CAN_PROBE)],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **environment},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )
    expect(result.returncode == 0, f"{CAN_PROBE.name} exited {result.returncode}: {result.stderr.strip()}")
    found = json.loads(result.stdout.splitlines()[-1])
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "python3-can"], capture_output=True, text=True, check=True
    ).stdout
    passed(
        f"direct CAN link as the unit runs it ({' '.join(interpreter)}, PYTHONPATH={VENDOR}): canopen "
        f"{found['canopen']} from {VENDOR}, python-can {found['can']} (python3-can {version}) from "
        f"{SITE_PACKAGES}; {found['link']} opened, scanned node {found['node']['can_id']} "
        f"({found['node']['fw_version']}) and closed in {found['seconds']}s; no canopen without the unit"
    )


def check_policy_covers_interface() -> None:
    """Every method of the installed interface is either public or restricted by the installed policy."""
    methods = {node.get("name", "") for node in ET.parse(INSTALLED_INTERFACE).iter("method")}
    policy = ET.parse(INSTALLED_POLICY).getroot()
    public = {
        rule.get("send_member", "")
        for context in policy.iter("policy")
        if context.get("context") == "default"
        for rule in context.iter("allow")
        if rule.get("send_interface") == BUS_NAME
    }
    restricted = {name for name, _, _ in RESTRICTED_CALLS}
    expect(public == set(PUBLIC_METHODS), f"the policy lets everyone call {sorted(public)}")
    expect(
        methods == public | restricted,
        f"interface methods {sorted(methods)} != public + restricted {sorted(public | restricted)}",
    )
    activation = INSTALLED_ACTIVATION.read_text()
    for line in ("Name=org.openuc2.OTA1", "User=root", "SystemdService=uc2otad.service"):
        expect(line in activation.splitlines(), f"{INSTALLED_ACTIVATION} lacks {line}")
    passed(
        f"policy: {len(public)} methods public, {len(restricted)} for root and {GROUP}; activation file "
        "names uc2otad.service"
    )


def check_reader(secret: str, ota_secret: str) -> None:
    """The unprivileged user: everything that reads works, everything else is AccessDenied by the bus."""
    reads: list[tuple[str, str, str, list[Any]]] = [
        (BUS_NAME, "GetStatus", "u", [CAN_ID]),
        (BUS_NAME, "GetAllStatus", "", []),
        (BUS_NAME, "GetHistory", "u", [0]),
        (BUS_NAME, "ListFirmware", "", []),
        (BUS_NAME, "ScanDevices", "", []),
        (BUS_NAME, "CheckUpdates", "", []),
        (BUS_NAME, "ListSerialPorts", "", []),
        (BUS_NAME, "GetUSBFlashStatus", "", []),
        ("org.freedesktop.DBus.Properties", "GetAll", "s", [BUS_NAME]),
        ("org.freedesktop.DBus.Properties", "Get", "ss", [BUS_NAME, "WiFiSSID"]),
        ("org.freedesktop.DBus.Introspectable", "Introspect", "", []),
        ("org.freedesktop.DBus.Peer", "Ping", "", []),
    ]
    for interface, member, signature, arguments in reads:
        answer = call(READER, interface, member, signature, arguments)
        expect("ok" in answer, f"{READER}: {member} refused: {answer}")
        expect(secret not in json.dumps(answer), f"{READER}: {member}'s reply holds the WiFi password")
        expect(ota_secret not in json.dumps(answer), f"{READER}: {member}'s reply holds the OTA password")
    passed(f"{READER} (no groups): {len(reads)} reading calls answered, none with the WiFi or OTA password")
    boards = call(READER, BUS_NAME, "ScanDevices")["ok"][0]
    expect({CAN_ID, 20} <= {board["can_id"] for board in boards}, f"{READER}: ScanDevices found {boards}")
    for member, signature, arguments in RESTRICTED_CALLS:
        answer = call(READER, BUS_NAME, member, signature, arguments)
        expect(
            answer.get("error") == ACCESS_DENIED, f"{READER}: {member} answered {answer}, not {ACCESS_DENIED}"
        )
    answer = call(READER, "org.freedesktop.DBus.Properties", "Set", "ssv", [BUS_NAME, "WiFiSSID", "x"])
    expect(answer.get("error") == ACCESS_DENIED, f"{READER}: Properties.Set answered {answer}")
    passed(
        f"{READER}: all {len(RESTRICTED_CALLS)} other methods and Properties.Set refused with {ACCESS_DENIED}"
    )
    answer = call(READER, "org.freedesktop.DBus.Monitoring", "BecomeMonitor", "asu", [[], 0])
    expect(answer.get("error") == ACCESS_DENIED, f"{READER}: BecomeMonitor answered {answer}")
    passed(f"{READER} cannot monitor the bus (BecomeMonitor refused), so cannot see other users' calls")
    status = run_as(READER, str(CTL), "status")
    expect(status.returncode == 0, f"{READER}: uc2otactl status exited {status.returncode}: {status.stderr}")
    update = run_as(READER, str(CTL), "update", str(CAN_ID), "--no-wait")
    expect(
        update.returncode == 4 and ACCESS_DENIED in update.stderr,
        f"{READER}: uc2otactl update exited {update.returncode}: {update.stderr}",
    )
    passed(f"{READER}: uc2otactl status exits 0, uc2otactl update exits 4 (not permitted)")


def check_operator(setup: Setup, secret: str, ota_secret: str) -> list[dict[str, Any]]:
    """The uc2ota member stores credentials and the OTA password, and updates a board over WiFi while the
    reader listens."""
    stored = run_as(OPERATOR, str(CTL), "set-wifi", SSID, stdin=secret + "\n")
    expect(
        stored.returncode == 0, f"{OPERATOR}: uc2otactl set-wifi exited {stored.returncode}: {stored.stderr}"
    )
    passed(f"{OPERATOR} (group {GROUP}): SetWiFiCredentials accepted (password on stdin)")
    stored = run_as(OPERATOR, str(CTL), "set-ota-password", stdin=ota_secret + "\n")
    expect(
        stored.returncode == 0 and ota_secret not in stored.stdout + stored.stderr,
        f"{OPERATOR}: uc2otactl set-ota-password exited {stored.returncode}: {stored.stderr}",
    )
    passed(f"{OPERATOR} (group {GROUP}): SetOTAPassword accepted (password on stdin)")
    answer = call(OPERATOR, BUS_NAME, "StartOTA", "ua{sv}", [99, {}])
    expect(
        answer.get("error", "").startswith("org.openuc2.OTA1.Error."),
        f"{OPERATOR}: StartOTA(99) answered {answer}, not the daemon's own error",
    )
    passed(f"{OPERATOR}: StartOTA reaches the daemon (CAN 99 → {answer['error']})")

    listen_command = ["/usr/bin/python3", "-I", str(Path(__file__).resolve()), "client", "listen"]
    listener = subprocess.Popen(
        ["setpriv", f"--reuid={READER}", f"--regid={READER}", "--init-groups", *listen_command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
        env=_user_env(READER),
    )
    setup.processes.append(listener)
    assert listener.stdin is not None and listener.stdout is not None
    expect(listener.stdout.readline().strip() == "ready", f"{READER}'s signal listener did not start")
    update = run_as(
        OPERATOR, str(CTL), "--json", "update", str(CAN_ID), "--method", "wifi", timeout=UPDATE_TIMEOUT
    )
    listener.stdin.close()
    signals: list[dict[str, Any]] = json.loads(listener.stdout.read().splitlines()[-1])
    listener.wait(START_TIMEOUT)
    expect(
        update.returncode == 0,
        f"{OPERATOR}: uc2otactl update exited {update.returncode}: {update.stdout}{update.stderr}; "
        f"logs in {setup.folder}",
    )
    result = json.loads(update.stdout)
    board = result["boards"][str(CAN_ID)]
    expect(board["result"] == "success" and board["status"]["status"] == "success", f"{OPERATOR}: {result}")
    expect(ota_secret not in update.stdout + update.stderr, f"{OPERATOR}: uc2otactl update shows the OTA one")
    passed(f"{OPERATOR}: uc2otactl update {CAN_ID} --method wifi (StartOTA) updated the protected board")
    expect(
        any(entry["member"] == "OTAStatusChanged" for entry in signals),
        f"{READER} received no status signals",
    )
    expect(secret not in json.dumps(signals), f"a signal {READER} received holds the WiFi password")
    expect(ota_secret not in json.dumps(signals), f"a signal {READER} received holds the OTA password")
    passed(f"{READER} received {len(signals)} signals during the update; none holds the WiFi or OTA password")
    # the inhibit ends when its caller leaves the bus (this client, at once): Uninhibit then finds no cookie
    cookie = call(OPERATOR, BUS_NAME, "Inhibit", "s", ["installed package check"])
    expect("ok" in cookie, f"{OPERATOR}: Inhibit answered {cookie}")
    released = call(OPERATOR, BUS_NAME, "Uninhibit", "s", cookie["ok"])
    expect(
        "ok" in released or released.get("error") == "org.openuc2.OTA1.Error.NotFound",
        f"{OPERATOR}: Uninhibit answered {released}",
    )
    passed(f"{OPERATOR}: Inhibit and Uninhibit accepted")
    return signals


def check_scheduled_update() -> None:
    """The scheduled update's ExecStart, run as its unit runs it (User=, its groups: initgroups plus
    SupplementaryGroups=uc2ota): the bus lets it start updates, it starts a job for exactly the boards
    ScanDevices calls update_available, and a second run finds nothing due (exit 2)."""
    unit = INSTALLED_UPDATE_UNIT.read_text().splitlines()
    expect(
        {f"SupplementaryGroups={GROUP}", "SuccessExitStatus=2"} <= set(unit),
        f"{INSTALLED_UPDATE_UNIT}: not in {GROUP}, or exit 2 is a failure",
    )
    (user,) = [line.removeprefix("User=") for line in unit if line.startswith("User=")]
    (command,) = [
        shlex.split(line.removeprefix("ExecStart=")) for line in unit if line.startswith("ExecStart=")
    ]
    account = pwd.getpwnam(user)  # created by the package (sysusers.d), a member of uc2ota there too
    expect(account.pw_uid < 1000, f"{user} has uid {account.pw_uid}, not a system user")
    expect(user in grp.getgrnam(GROUP).gr_mem, f"{user} is not a member of {GROUP} in /etc/group")
    runs: list[tuple[set[int], subprocess.CompletedProcess[str]]] = []
    for _ in range(2):
        boards = call(READER, BUS_NAME, "ScanDevices")["ok"][0]
        due = {
            board["can_id"]
            for board in boards
            if board.get("update_available") and board.get("reachable") and board["can_id"] != MASTER_CAN_ID
        }
        run = run_as(user, *command, timeout=UPDATE_TIMEOUT)
        expect(
            run.returncode == (0 if due else 2),
            f"{user}: {shlex.join(command)} exited {run.returncode} with {sorted(due)} due: "
            f"{run.stdout}{run.stderr}",
        )
        document = json.loads(run.stdout)
        started = {int(can_id) for can_id, board in document["boards"].items() if board.get("job_id")}
        expect(started == due, f"{shlex.join(command)} started jobs for {sorted(started)}, not {sorted(due)}")
        expect(
            all(
                board["result"] == "success" if board.get("job_id") else board["result"] not in FAILED_RESULTS
                for board in document["boards"].values()
            ),
            f"{shlex.join(command)}: {document}",
        )
        runs.append((due, run))
    expect(not runs[-1][0], f"after the scheduled update, still due: {sorted(runs[-1][0])}")
    # with nothing due, uc2otactl starts nothing: that the bus lets this user start updates is shown here
    cookie = call(user, BUS_NAME, "Inhibit", "s", ["installed package check: the scheduled update's user"])
    expect("ok" in cookie, f"{user}: Inhibit (a method for root and {GROUP} only) answered {cookie}")
    passed(
        f"{user} (uid {account.pw_uid}, group {GROUP}): {shlex.join(command)} started jobs for CAN "
        f"{sorted(runs[0][0])}, the boards with update_available (exit {runs[0][1].returncode}); "
        f"run again, nothing was due (exit 2); {user} may call the methods for {GROUP} (Inhibit)"
    )


def check_flash_master(microscope: dict[str, Any], esptool: str) -> None:
    """The uc2ota member flashes the master (FlashMaster) through the simulator's ROM loader with the
    esptool this release has (Debian 13: its own 4.7; Debian 12: the documented venv's), and the master
    comes back running the new image."""
    port = microscope["rom_loader"]
    started = call(OPERATOR, BUS_NAME, "FlashMaster", "a{sv}", [{"port": port}])
    expect("ok" in started and started["ok"][0].get("status") == "started", f"FlashMaster answered {started}")
    deadline = time.monotonic() + FLASH_TIMEOUT
    while True:
        status = call(READER, BUS_NAME, "GetUSBFlashStatus")["ok"][0]
        if status.get("status") in {"success", "failed"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expect(status.get("status") == "success", f"FlashMaster ended {status}")
    which = esptool or "python3 -m esptool (the system's)"
    passed(
        f"{OPERATOR}: FlashMaster through the ROM loader at {port} with {which}: {status['firmware']} at "
        f"{status['flash_offset']:#x} on the {status['chip']}; the master came back on its link"
        + (f" running {status['firmware_version']}" if status.get("firmware_version") else "")
    )


@contextlib.contextmanager
def paused(process: subprocess.Popen[Any] | PrivateBus) -> Iterator[None]:
    """SIGSTOP ``process`` for the block, SIGCONT after it (also when the block fails)."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def check_read_burst(setup: Setup) -> None:
    """Issue 14, D1: a burst of reads any user may send. dbus-fast's own writer took the full socket
    for a broken connection and left the daemon without its name or deaf; it must keep both.

    The daemon is stopped while the calls are routed to it, then answers those that reached it while
    dbus-daemon is stopped: its replies pass its socket buffer, as when dbus-daemon falls behind. With
    dbus-fast 1.84's writer the daemon kept its name but answered nothing more (GetStatus timed out)."""
    assert setup.daemon is not None and setup.bus is not None
    owner = call(READER, "org.freedesktop.DBus", "GetNameOwner", "s", [BUS_NAME])
    expect("ok" in owner, f"nobody owns {BUS_NAME} before the burst: {owner}")
    command = ["/usr/bin/python3", "-I", str(Path(__file__).resolve()), "client", "burst"]
    with paused(setup.daemon):
        burst = subprocess.Popen(
            ["setpriv", f"--reuid={READER}", f"--regid={READER}", "--init-groups", *command,
             str(BURST_CONNECTIONS), str(BURST_CALLS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/", env=_user_env(READER),
        )  # fmt: skip
        setup.processes.append(burst)
        assert burst.stdin is not None and burst.stdout is not None
        expect(burst.stdout.readline().strip() == "ready", f"{READER}'s burst client did not start")
        with paused(setup.bus):
            setup.daemon.send_signal(signal.SIGCONT)
            time.sleep(BURST_WINDOW)
    try:
        answer = call(READER, BUS_NAME, "GetStatus", "u", [CAN_ID])
        expect("ok" in answer, f"after the burst GetStatus answered {answer}")
        after = call(READER, "org.freedesktop.DBus", "GetNameOwner", "s", [BUS_NAME])
        expect(after == owner, f"after the burst the owner of {BUS_NAME} is {after}, was {owner}")
        expect(setup.daemon.poll() is None, f"uc2otad exited {setup.daemon.returncode} after the burst")
    finally:
        burst.stdin.close()
        burst.wait(START_TIMEOUT)
    passed(
        f"{READER}: {BURST_CONNECTIONS} connections x {BURST_CALLS} GetAllStatus never reading their "
        "replies, answered while dbus-daemon was stopped: uc2otad kept its name and answers"
    )


def check_secret_at_rest(setup: Setup, secret: str, ota_secret: str) -> None:
    password_file = STATE_DIR / "wifi-password"
    ota_file = STATE_DIR / "ota-password"
    for path, value in ((password_file, secret), (ota_file, ota_secret)):
        info = path.stat()
        expect(path.read_text() == value, f"{path} does not hold the password set")
        expect(
            (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600),
            f"{path}: uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}",
        )
    for folder in (STATE_DIR, CACHE_DIR):
        for path in folder.rglob("*"):
            mode = stat.S_IMODE(path.lstat().st_mode)
            expect(
                path.lstat().st_uid == 0 and mode & 0o077 == 0,
                f"{path}: uid {path.lstat().st_uid}, {mode:04o}",
            )
            if path.is_file() and path != password_file:
                expect(secret.encode() not in path.read_bytes(), f"{path} holds the WiFi password")
            if path.is_file() and path != ota_file:
                expect(ota_secret.encode() not in path.read_bytes(), f"{path} holds the OTA password")
    passed(
        f"{password_file} and {ota_file} are root's, 0600; every file in {STATE_DIR} and {CACHE_DIR} is "
        "root's with no group or other bits; neither password is in another file there"
    )
    places = [str(STATE_DIR), str(CACHE_DIR), str(CONFIG_DIR), str(setup.folder), "/tmp", "/run"]
    found = client(READER, "files", *places, stdin=secret)
    expect(not found["secret_in"], f"{READER} can read the WiFi password in {found['secret_in']}")
    found_ota = client(READER, "files", *places, stdin=ota_secret)
    expect(not found_ota["secret_in"], f"{READER} can read the OTA password in {found_ota['secret_in']}")
    expect(str(STATE_DIR) in found["denied"], f"{READER} can list {STATE_DIR}")
    passed(
        f"{READER} reads {len(found['readable'])} files under {', '.join(places)}: none holds the WiFi "
        f"or OTA password; {STATE_DIR} is closed to it"
    )
    assert setup.daemon is not None
    for name in ("cmdline", "environ"):
        data = Path(f"/proc/{setup.daemon.pid}/{name}").read_bytes()
        expect(secret.encode() not in data, f"the daemon's {name} holds the WiFi password")
        expect(ota_secret.encode() not in data, f"the daemon's {name} holds the OTA password")
    passed("neither password is in the daemon's command line or its environment")


def check_logs(setup: Setup, secret: str, ota_secret: str) -> None:
    stderr = (setup.folder / "uc2otad.stderr").read_bytes()
    expect(secret.encode() not in stderr, "the daemon's stderr holds the WiFi password")
    expect(ota_secret.encode() not in stderr, "the daemon's stderr holds the OTA password")
    if setup.journal is not None:
        entries = setup.journal.entries
        expect(bool(entries), "the daemon sent nothing to the journal socket")
        expect(secret.encode() not in setup.journal.raw, "a journal entry holds the WiFi password")
        expect(ota_secret.encode() not in setup.journal.raw, "a journal entry holds the OTA password")
        board = [entry for entry in entries if entry.get("UC2_CAN_ID") == str(CAN_ID)]
        expect(bool(board), f"no journal entry has UC2_CAN_ID={CAN_ID}")
        expect(all(entry.get("SYSLOG_IDENTIFIER") == "uc2otad" for entry in entries), "SYSLOG_IDENTIFIER")
        fields = sorted({key for entry in board for key in entry if key.startswith("UC2_")})
        passed(
            f"journal (debug level): {len(entries)} entries, {len(board)} with UC2_CAN_ID={CAN_ID} "
            f"(fields {', '.join(fields)}); none holds the WiFi or OTA password"
        )
    else:
        assert setup.daemon is not None
        journal = subprocess.run(
            ["journalctl", "--output=export", f"_PID={setup.daemon.pid}"], capture_output=True, check=False
        ).stdout
        expect(secret.encode() not in journal, "the journal holds the WiFi password")
        expect(ota_secret.encode() not in journal, "the journal holds the OTA password")
        passed("journald's entries of the daemon: none holds the WiFi or OTA password")


def check_all(setup: Setup, args: argparse.Namespace) -> None:
    check_files()
    check_code(args.release)
    check_can_direct()
    check_policy_covers_interface()
    setup.users += [ensure_user(READER, []), ensure_user(OPERATOR, [GROUP])]
    secret = secrets.token_urlsafe(24)
    ota_secret = secrets.token_urlsafe(24)  # board 11's ArduinoOTA password (SetOTAPassword)
    if not JOURNAL_SOCKET.exists():
        setup.journal = JournalCapture(JOURNAL_SOCKET, setup.folder / "journal.log")
    start_bus(setup)
    ota_port = free_udp_port()
    microscope = start_microscope(setup, args, secret, ota_port, ota_secret)
    start_daemon(setup, microscope, ota_port, args.esptool)
    passed(
        "the installed uc2otad owns org.openuc2.OTA1 on a system bus with the installed policy; "
        "READY=1 and WATCHDOG=1 arrived"
    )
    check_reader(secret, ota_secret)
    check_operator(setup, secret, ota_secret)
    check_flash_master(microscope, args.esptool)
    check_scheduled_update()
    check_reader(secret, ota_secret)  # again, now that the passwords are stored and a board was updated
    check_secret_at_rest(setup, secret, ota_secret)
    check_read_burst(setup)
    status = stop_daemon(setup)
    expect(status == 0, f"uc2otad exited {status} on SIGTERM")
    expect(any("STOPPING=1" in message.split("\n") for message in setup.notifications), "no STOPPING=1")
    passed("uc2otad sent STOPPING=1 and exited 0 on SIGTERM")
    check_logs(setup, secret, ota_secret)


class TerminatedError(Exception):
    """SIGTERM arrived."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise TerminatedError("terminated (SIGTERM)")


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["client"]:
        return client_main(arguments[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", required=True, help="uc2otad-sim (the repository's .venv/bin/uc2otad-sim)")
    parser.add_argument("--sim-python", required=True, help="a Python with the repository's uc2otad")
    parser.add_argument(
        "--esptool", default="", help="the daemon's [usb] esptool (default: python3 -m esptool, the system's)"
    )
    parser.add_argument(
        "--release", type=int, choices=sorted(MARSHALLER_FIXED), default=12, help="Debian release (12, 13)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) afterwards")
    args = parser.parse_args(arguments)
    if os.geteuid() != 0 or not DAEMON.exists() or shutil.which("setpriv") is None:
        print("check_installed: needs root, the installed package and setpriv", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout) ends the checks like a failure: the users, sockets and programs are removed
    signal.signal(signal.SIGTERM, _raise_terminated)
    folder = Path(tempfile.mkdtemp(prefix="uc2otad-installed-"))
    folder.chmod(0o755)  # the other users reach the bus socket in here
    setup = Setup(folder)
    try:
        check_all(setup, args)
    except (CheckFailedError, subprocess.TimeoutExpired, TerminatedError) as err:
        print(f"FAIL {err}", file=sys.stderr)
        for log in sorted(folder.glob("*.log")) + sorted(folder.glob("*.stderr")):
            with contextlib.suppress(OSError):
                print(
                    f"---- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-30:]),
                    file=sys.stderr,
                )
        return 1
    finally:
        tear_down(setup)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print("check_installed: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
