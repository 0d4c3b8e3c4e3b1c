"""Issue 14, D1: a burst of read-only calls must not knock the daemon off the bus for good.

Callers that send many calls and never read their replies make dbus-daemon fall behind in reading what
the daemon sends, and the daemon's socket fills up. dbus-fast's writer took the socket's EAGAIN for a
broken connection and dropped it, and the daemon kept running without its bus name (or, with Debian's
dbus-fast, deaf on a connection it no longer read): systemd saw nothing to restart. Now the writer
waits for the socket (uc2otad/api/compat_bus.py), and a daemon that loses its connection all the same
exits non-zero so that ``Restart=on-failure`` brings it back (uc2otad/daemon.py).

How far dbus-daemon falls behind depends on the machine; the tests make it certain. They stop the
daemon (SIGSTOP) while the callers' calls are routed to it, then stop dbus-daemon and let the daemon
answer the calls that reached it into a socket nobody drains, for :data:`ANSWER_WINDOW`: its replies
(~13 KiB each) pass its socket buffer many times over, as when dbus-daemon is slow on a busy Raspberry
Pi. The rest of the calls reach it once dbus-daemon runs again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

from conftest import DaemonFactory
from daemon_process import DaemonProcess
from dbus_client import call
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from processes import paused

from uc2otad.api import names
from uc2otad.engine.store import StatusStore
from uc2otad.sim.private_bus import PrivateBus

#: dbus-daemon's default limit of calls a connection may have waiting for replies (max_replies_per_connection)
CALLS_PER_CALLER = 128
#: seconds the daemon answers while dbus-daemon is stopped: dbus-fast's own writer gave up within a
#: few milliseconds of it; this only has to be long enough for that
ANSWER_WINDOW = 1.0
#: seconds a caller waits for dbus-daemon to have routed its calls; a fresh call waits for its reply;
#: a daemon that lost its bus has to end
SYNC_TIMEOUT = 10.0
ANSWER_TIMEOUT = 10.0
EXIT_TIMEOUT = 15.0
#: what the daemon logs when it ends because its bus connection is gone
LOST_LINE = "lost its D-Bus connection"
#: the boards of a well-equipped microscope: motors, lasers, LEDs, galvos
BOARDS = (*range(10, 16), *range(20, 25), 30, 31, 40, 41, 42)
_DRIVER = "org.freedesktop.DBus"
_DRIVER_PATH = "/org/freedesktop/DBus"
#: a name nobody owns: the bus's "no such name" error for it marks the end of a caller's calls
_SENTINEL = "org.openuc2.OTA1.Test.NoSuchName"


def full_status(can_id: int) -> dict[str, object]:
    """A board's status after an update, every field of CONTRACT.md §2 filled (about 0.8 KiB on the bus)."""
    return {
        "can_id": can_id, "status": "success", "upload_status": "success", "upload_progress": 100,
        "message": "✅ Firmware uploaded successfully", "timestamp": "2026-01-01T14:30:00+00:00",
        "ip": "192.168.4.23", "hostname": "UC2-CAN-B.local", "statusMsg": "ok", "upload_error": "",
        "upload_timestamp": "2026-01-01T14:30:00+00:00", "success": True, "method": "wifi",
        "job_id": f"job-{can_id}-0123456789abcdef", "batch_id": "fedcba9876543210", "attempt": 1,
        "firmware": "esp32_UC2_canopen_slave_motor_release_motX.bin", "firmware_version": "v2026.2.0",
        "previous_version": "v2026.1.0", "verification": "version", "error_code": "",
    }  # fmt: skip


async def seed_status(state_dir: Path) -> None:
    """Give every board of :data:`BOARDS` a full status, so that each GetAllStatus reply is ~13 KiB."""
    store = StatusStore(state_dir / "uc2otad.sqlite3")
    await store.open()
    for can_id in BOARDS:
        store.put_status(can_id, full_status(can_id))
    await store.close()


class SilentCaller:
    """A client that sends method calls and never reads their replies: a bare socket on the bus."""

    def __init__(self, address: str) -> None:
        path = address.removeprefix("unix:path=").split(",")[0]
        self._serial = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(SYNC_TIMEOUT)
        self.sock.connect(path)
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        answer = self.sock.recv(4096)
        assert answer.startswith(b"OK "), answer
        self.sock.sendall(b"BEGIN\r\n")
        self.send(Message(destination=_DRIVER, path=_DRIVER_PATH, interface=_DRIVER, member="Hello"))

    def send(self, message: Message) -> None:
        self._serial += 1
        message.serial = self._serial
        self.sock.sendall(bytes(message._marshall(False)))

    def send_calls(self, member: str, count: int) -> None:
        for _ in range(count):
            self.send(Message(destination=names.BUS_NAME, path=names.OBJECT_PATH, interface=names.INTERFACE,
                              member=member))  # fmt: skip

    def sync(self) -> None:
        """Return once dbus-daemon has routed every call sent so far (it handles a connection's messages
        in order, so its answer to a later call of its own comes after them). Reads only while the
        daemon is stopped: nothing of the daemon's is read."""
        self.send(Message(destination=_DRIVER, path=_DRIVER_PATH, interface=_DRIVER,
                          member="GetNameOwner", signature="s", body=[_SENTINEL]))  # fmt: skip
        received = b""
        while _SENTINEL.encode() not in received:
            chunk = self.sock.recv(65536)
            assert chunk, "dbus-daemon closed the connection"
            received += chunk

    def close(self) -> None:
        self.sock.close()


def burst(bus: PrivateBus, daemon: DaemonProcess, callers: int) -> list[SilentCaller]:
    """``callers`` x 128 GetAllStatus, answered while nobody reads: the callers stay open, unread."""
    opened = [SilentCaller(bus.address) for _ in range(callers)]
    with paused(daemon.pid):
        for caller in opened:
            caller.send_calls("GetAllStatus", CALLS_PER_CALLER)
        for caller in opened:
            caller.sync()
        with paused(bus.pid):
            os.kill(daemon.pid, signal.SIGCONT)
            time.sleep(ANSWER_WINDOW)
    return opened


async def name_owner(client: MessageBus) -> str | None:
    reply = await client.call(
        Message(destination=_DRIVER, path=_DRIVER_PATH, interface=_DRIVER, member="GetNameOwner",
                signature="s", body=[names.BUS_NAME])
    )  # fmt: skip
    assert reply is not None
    return str(reply.body[0]) if reply.message_type is MessageType.METHOD_RETURN else None


async def answers(client: MessageBus) -> bool:
    """Whether the daemon answers a fresh GetStatus (within :data:`ANSWER_TIMEOUT`)."""
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT):
            reply = await call(client, "GetStatus", "u", 11)
    except TimeoutError:
        return False
    return reply.message_type is MessageType.METHOD_RETURN


async def test_d1_a_read_burst_leaves_the_daemon_on_the_bus_and_answering(
    start_daemon: DaemonFactory, client: MessageBus, private_bus: PrivateBus, tmp_path: Path
) -> None:
    """D1: 2 callers x 128 GetAllStatus that never read their replies. The daemon keeps its name, still
    answers, and still stops cleanly."""
    await seed_status(tmp_path / "daemon" / "state")
    daemon = await start_daemon()
    owner = await name_owner(client)
    callers = await asyncio.to_thread(burst, private_bus, daemon, 2)
    try:
        answered = await answers(client)
        log = "" if answered else await asyncio.to_thread(daemon.log)
        assert answered, f"no answer after the burst; log:\n{log[-4000:]}"
        assert await name_owner(client) == owner
    finally:
        for caller in callers:
            caller.close()
    assert await asyncio.to_thread(daemon.stop) == 0
    assert LOST_LINE not in await asyncio.to_thread(daemon.log)


async def test_d1_a_bigger_burst_is_answered_or_ends_the_daemon_never_leaves_it_nameless(
    start_daemon: DaemonFactory, client: MessageBus, private_bus: PrivateBus, tmp_path: Path
) -> None:
    """D1: 10 callers x 128 GetAllStatus. The daemon may give its connection up (past the backlog it
    keeps, compat_bus.MAX_UNSENT_BYTES), but then the process ends with a non-zero status, for systemd
    to restart it: a daemon alive without its bus name fails."""
    await seed_status(tmp_path / "daemon" / "state")
    daemon = await start_daemon()
    owner = await name_owner(client)
    callers = await asyncio.to_thread(burst, private_bus, daemon, 10)
    try:
        if await answers(client):
            assert await name_owner(client) == owner
            assert await asyncio.to_thread(daemon.wait, 0) is None
        else:
            status = await asyncio.to_thread(daemon.wait, EXIT_TIMEOUT)
            log = await asyncio.to_thread(daemon.log)
            assert status is not None, f"the daemon neither answers nor ends; log:\n{log[-4000:]}"
            assert status != 0
            assert LOST_LINE in log
    finally:
        for caller in callers:
            caller.close()


async def test_d1_losing_the_bus_ends_the_daemon_with_a_failure_status(
    start_daemon: DaemonFactory, private_bus: PrivateBus
) -> None:
    """D1, the consequence: dbus-daemon goes away under a running daemon (stopped, restarted, killed).
    The daemon ends at once with a non-zero status and an error line, so that systemd restarts it."""
    daemon = await start_daemon()
    started = time.monotonic()
    await asyncio.to_thread(private_bus.stop)
    status = await asyncio.to_thread(daemon.wait, EXIT_TIMEOUT)
    log = await asyncio.to_thread(daemon.log)
    assert status is not None, f"the daemon outlived its bus; log:\n{log[-4000:]}"
    assert status != 0
    assert time.monotonic() - started < 5.0
    assert LOST_LINE in log
    assert any(" ERROR " in line and LOST_LINE in line for line in log.splitlines())
