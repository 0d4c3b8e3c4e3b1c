"""The daemon's journal entries and sd_notify messages go out through systemd-python (libsystemd).

The journal test runs the daemon itself in a private mount namespace whose
``/run/systemd/journal/socket`` is the test's socket (private_journal.py), and reads the entries of a
real operation: the reconciliation of a job a killed daemon left "running". That the daemon sent them
through libsystemd, not through code of its own, shows in its memory map: systemd-python's extension
modules are loaded.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_process import DaemonProcess
from private_journal import PrivateJournal

from uc2otad.engine.store import JobRecord, StatusStore
from uc2otad.notify import notify, watchdog_interval
from uc2otad.sim.private_bus import PrivateBus


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[PrivateJournal]:
    sink = PrivateJournal(tmp_path / "journal")
    yield sink
    sink.close()


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "daemon"
    folder.mkdir()
    return folder


async def test_the_daemons_structured_fields_reach_journalds_socket(
    private_bus: PrivateBus, journal: PrivateJournal, daemon_dir: Path
) -> None:
    # a job row left "running", as a daemon killed with SIGKILL mid-update leaves it
    store = StatusStore(daemon_dir / "state" / "uc2otad.sqlite3")
    await store.open()
    store.put_status(11, {"can_id": 11, "status": "initiated", "upload_status": "uploading"})
    await store.begin_job(JobRecord(job_id="job-killed", can_id=11, method="wifi"))
    await store.close()

    def run_daemon() -> tuple[dict[str, str], dict[str, str], str, int, str]:
        daemon = DaemonProcess(
            daemon_dir, private_bus.address, program=journal.command(sys.executable, "-m", "uc2otad.daemon")
        )
        try:
            daemon.start()
            entry = journal.wait_for("UC2_JOB_ID", "job-killed")
            ready = journal.wait_for("CODE_FUNC", "run")
            maps = mapped_files(daemon.pid)
        finally:
            status = daemon.stop()
            daemon.close()
        return entry, ready, maps, status, daemon.log()

    entry, ready, maps, status, log = await asyncio.to_thread(run_daemon)
    assert status == 0, log
    assert entry["UC2_CAN_ID"] == "11"
    assert entry["UC2_PHASE"] == "interrupted"
    assert entry["PRIORITY"] == "4"  # warning
    assert entry["SYSLOG_IDENTIFIER"] == "uc2otad"
    assert "interrupted" in entry["MESSAGE"]
    assert entry["LOGGER"].startswith("uc2otad.") and entry["CODE_FILE"].endswith(".py")
    assert ready["MESSAGE"].startswith("uc2otad ") and "ready" in ready["MESSAGE"]
    assert ready["PRIORITY"] == "6" and ready["CODE_FILE"].endswith("uc2otad/daemon.py")
    assert all(key.isupper() for item in journal.entries for key in item)
    assert "systemd/_journal" in maps and "libsystemd.so" in maps
    assert "Traceback" not in log  # the journal had every line; nothing fell back to stderr


def test_ready_status_watchdog_and_stopping_arrive_through_systemd_daemon(
    private_bus: PrivateBus, daemon_dir: Path
) -> None:
    # half of 1 s: a ping now and then; the first one comes right after READY=1
    daemon = DaemonProcess(daemon_dir, private_bus.address, env={"WATCHDOG_USEC": "1000000"})
    try:
        daemon.start()
        ready = daemon.notifications[-1].split("\n")
        daemon.wait_for_notification("WATCHDOG=1")
        maps = mapped_files(daemon.pid)
    finally:
        status = daemon.stop()
    stopping = daemon.wait_for_notification("STOPPING=1", 5.0)
    daemon.close()
    assert status == 0, daemon.log()
    assert ready == ["READY=1", "STATUS=idle; 0 interrupted job(s) reconciled"]
    assert stopping == ["STOPPING=1"]
    assert "systemd/_daemon" in maps


def test_notify_reaches_an_abstract_socket_and_is_a_no_op_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"uc2otad-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notify("READY=1", "STATUS=idle")
        assert manager.recv(4096) == b"READY=1\nSTATUS=idle"
    monkeypatch.delenv("NOTIFY_SOCKET")
    notify("STOPPING=1")  # no manager: nothing happens, nothing is raised


def test_the_watchdog_interval_is_half_of_what_systemd_asks_and_only_for_us(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None
