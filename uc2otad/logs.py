"""Where the daemon's log lines go: the systemd journal when it is there, stderr otherwise.

In the journal each line keeps its structured fields: ``extra={"UC2_CAN_ID": 11, "UC2_JOB_ID": …,
"UC2_PHASE": …}`` become journal fields (journald keeps only UPPER_CASE names), so
``journalctl UC2_CAN_ID=11`` shows one board's story. Secrets are never passed to a log call at all;
there is nothing here to redact them.
"""

from __future__ import annotations

import logging
import os
import sys

from systemd.journal import JournalHandler

#: journald's native protocol socket; systemd-python's JournalHandler writes to exactly this path
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "uc2otad"
_STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> logging.Handler:
    """Send the root logger to the journal if its socket exists, else to stderr; return the handler."""
    handler: logging.Handler
    if os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler
