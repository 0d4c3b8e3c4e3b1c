"""Journal entries as journald reads them: fields, multi-line values, no lower-case internals.

The logging runs in a child process whose ``/run/systemd/journal/socket`` is the test's own socket
(private_journal.py): libsystemd, which systemd-python sends through, knows no other path.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_journal import PrivateJournal

#: what the daemon's main does, then one failure with the fields a job logs
LOGGING_CHILD = """
import logging, sys
from uc2otad.logs import JournalHandler, setup_logging
handler = setup_logging("debug")
assert isinstance(handler, JournalHandler), handler
assert "systemd.journal" in sys.modules
try:
    raise ValueError("board said:\\nMD5 Check Failed")
except ValueError:
    logging.getLogger("uc2otad.test.journal").exception(
        "upload failed", extra={"UC2_CAN_ID": 11, "UC2_PHASE": "uploading", "lower": "x"}
    )
"""

#: without the socket: stderr, and systemd.journal is never loaded
STDERR_CHILD = """
import logging, sys
from uc2otad.logs import setup_logging
handler = setup_logging("info")
assert type(handler) is logging.StreamHandler, handler
assert "systemd.journal" not in sys.modules
logging.getLogger("uc2otad.test.stderr").warning("to stderr", extra={"UC2_CAN_ID": 11})
"""


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[PrivateJournal]:
    sink = PrivateJournal(tmp_path / "journal")
    yield sink
    sink.close()


def test_an_entry_carries_the_uc2_fields_and_survives_newlines(journal: PrivateJournal) -> None:
    subprocess.run(journal.command(sys.executable, "-c", LOGGING_CHILD), check=True, timeout=20)
    entry = journal.wait_for("LOGGER", "uc2otad.test.journal")
    assert entry["UC2_CAN_ID"] == "11" and entry["UC2_PHASE"] == "uploading"
    assert entry["PRIORITY"] == "3" and entry["SYSLOG_IDENTIFIER"] == "uc2otad"
    assert entry["MESSAGE"].startswith("upload failed\nTraceback")
    assert "MD5 Check Failed" in entry["MESSAGE"]
    assert entry["CODE_FUNC"] == "<module>" and entry["CODE_LINE"] == "10"
    assert entry["THREAD_NAME"] == "MainThread"
    assert not [key for key in entry if not key.isupper()]  # no "lower", no record internals
    assert "LOWER" not in entry and "EXCEPTION_INFO" not in entry


def test_without_the_socket_the_lines_go_to_stderr(journal: PrivateJournal) -> None:
    (journal.folder / "socket").rename(journal.folder / "elsewhere")
    child = subprocess.run(
        journal.command(sys.executable, "-c", STDERR_CHILD),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert "WARNING uc2otad.test.stderr: to stderr" in child.stderr
