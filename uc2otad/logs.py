"""Where the daemon's log lines go: the systemd journal when it is there, stderr otherwise.

In the journal each line keeps its structured fields: ``extra={"UC2_CAN_ID": 11, "UC2_JOB_ID": …,
"UC2_PHASE": …}`` become journal fields, so ``journalctl UC2_CAN_ID=11`` shows one board's story.
Only UPPER_CASE extras are sent (journald drops other names anyway, and lower-case attributes of a log
record are Python internals). Secrets are never passed to a log call at all.

systemd-python (``systemd.journal.send``, libsystemd's sd_journal_send) speaks the journal's native
protocol to ``/run/systemd/journal/socket``. Its own ``JournalHandler`` sends every attribute of a
record, Python internals and ``exc_info`` included, so the handler here picks the fields itself. The
module is imported only when the journal is used.
"""

from __future__ import annotations

import logging
import os
import re
import sys

#: journald's native protocol socket (libsystemd's fixed path: only its existence is checked here)
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "uc2otad"
_STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: journal field names: upper case, digits, underscore, not starting with an underscore or a digit
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def _priority(levelno: int) -> int:
    """logging level → syslog priority (3 err, 4 warning, 6 info, 7 debug; 2 crit)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class JournalHandler(logging.Handler):
    """Sends each record to journald with its UPPER_CASE extras as fields, through systemd-python."""

    def __init__(self, identifier: str = SYSLOG_IDENTIFIER) -> None:
        from systemd.journal import send  # noqa: PLC0415 - only a daemon that logs to the journal loads it

        super().__init__()
        self._send = send
        self._identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, object] = {
                key: str(value) for key, value in vars(record).items() if _FIELD_NAME.fullmatch(key)
            }
            fields.update(
                MESSAGE=self.format(record),
                PRIORITY=str(_priority(record.levelno)),
                SYSLOG_IDENTIFIER=self._identifier,
                LOGGER=record.name,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,  # systemd-python wants an int here
                CODE_FUNC=record.funcName,
                THREAD_NAME=record.threadName or "",
            )
            self._send(**fields)
        except Exception:
            self.handleError(record)


def setup_logging(level: str) -> logging.Handler:
    """Send the root logger to the journal if its socket exists, else to stderr; return the handler."""
    handler: logging.Handler
    if os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler
