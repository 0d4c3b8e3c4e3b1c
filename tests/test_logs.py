"""Journal entries as journald reads them: fields, multi-line values, no lower-case internals."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from journal_socket import parse_entry

from uc2otad.logs import JournalHandler


def test_an_entry_carries_the_uc2_fields_and_survives_newlines(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(path)
        handler = JournalHandler(path)
        logger = logging.getLogger("uc2otad.test.journal")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            try:
                raise ValueError("board said:\nMD5 Check Failed")
            except ValueError:
                logger.exception(
                    "upload failed", extra={"UC2_CAN_ID": 11, "UC2_PHASE": "uploading", "lower": "x"}
                )
        finally:
            logger.removeHandler(handler)
            handler.close()
        entry = parse_entry(journald.recv(65536))
    assert entry["UC2_CAN_ID"] == "11" and entry["UC2_PHASE"] == "uploading"
    assert entry["PRIORITY"] == "3" and entry["SYSLOG_IDENTIFIER"] == "uc2otad"
    assert entry["MESSAGE"].startswith("upload failed\nTraceback")
    assert "MD5 Check Failed" in entry["MESSAGE"]
    assert "lower" not in entry and "LOWER" not in entry
