"""Stand in for journald on its native socket, to see the fields the daemon sends.

Only where no journald runs (CI containers): the socket path is fixed (systemd-python writes to
``/run/systemd/journal/socket``), so the test binds exactly that path and removes it afterwards.
Entries use the native protocol: ``KEY=value`` lines, or for values with a newline ``KEY\\n`` +
64-bit little-endian length + value + ``\\n``.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def parse_entry(datagram: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    position = 0
    while position < len(datagram):
        line_end = datagram.index(b"\n", position)
        line = datagram[position:line_end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            position = line_end + 1
        else:
            key = line
            (length,) = struct.unpack_from("<Q", datagram, line_end + 1)
            start = line_end + 1 + 8
            value = datagram[start : start + length]
            position = start + length + 1
        fields[key.decode()] = value.decode(errors="replace")
    return fields


class JournalSocket:
    """A datagram socket at journald's path; ``entries`` reads what arrived."""

    def __init__(self) -> None:
        self._created_dir = not JOURNAL_SOCKET.parent.exists()
        JOURNAL_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(JOURNAL_SOCKET))

    def wait_for(self, field: str, value: str, timeout: float = 10.0) -> dict[str, str]:
        """The first entry whose ``field`` equals ``value``."""
        self._socket.settimeout(timeout)
        while True:
            entry = parse_entry(self._socket.recv(65536))
            if entry.get(field) == value:
                return entry

    def close(self) -> None:
        self._socket.close()
        JOURNAL_SOCKET.unlink(missing_ok=True)
        if self._created_dir:
            JOURNAL_SOCKET.parent.rmdir()
