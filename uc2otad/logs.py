"""Where the daemon's log lines go: the systemd journal when it is there, stderr otherwise.

In the journal each line keeps its structured fields: ``extra={"UC2_CAN_ID": 11, "UC2_JOB_ID": …,
"UC2_PHASE": …}`` become journal fields, so ``journalctl UC2_CAN_ID=11`` shows one board's story.
Only UPPER_CASE extras are sent (journald drops other names anyway, and lower-case attributes of a log
record are Python internals). Secrets are never passed to a log call at all.

The journal's native protocol is a datagram of ``KEY=value`` lines, or ``KEY\\n`` + 64-bit length +
value for values with a newline (systemd.io/JOURNAL_NATIVE_PROTOCOL). Speaking it takes a few lines;
systemd-python would add 2.5 MiB to an idle daemon and a C build to every install.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Iterable

#: journald's native protocol socket
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "uc2otad"
_STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: journal field names: upper case, digits, underscore, not starting with an underscore or a digit
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
#: a datagram larger than this is refused by the kernel's default socket buffer; cut the message
_MAX_DATAGRAM = 200 * 1024


def _priority(levelno: int) -> int:
    """logging level → syslog priority (3 err, 4 warning, 6 info, 7 debug; 2 crit)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


def encode_entry(fields: Iterable[tuple[str, str]]) -> bytes:
    """Fields in the journal's native format."""
    parts = []
    for key, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key.encode() + b"=" + data + b"\n")
    return b"".join(parts)


class JournalHandler(logging.Handler):
    """Sends each record to journald with its UPPER_CASE extras as fields."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = SYSLOG_IDENTIFIER) -> None:
        super().__init__()
        self._path = path
        self._identifier = identifier
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields = [
                ("MESSAGE", message[:_MAX_DATAGRAM]),
                ("PRIORITY", str(_priority(record.levelno))),
                ("SYSLOG_IDENTIFIER", self._identifier),
                ("LOGGER", record.name),
                ("CODE_FILE", record.pathname),
                ("CODE_LINE", str(record.lineno)),
                ("CODE_FUNC", record.funcName),
                ("THREAD_NAME", record.threadName or ""),
            ]
            fields += [(key, str(value)) for key, value in vars(record).items() if _FIELD_NAME.fullmatch(key)]
            self._socket.sendto(encode_entry(fields), self._path)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._socket.close()
        super().close()


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
