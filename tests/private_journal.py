"""A journald stand-in that only one program sees: its own mount namespace, its own journal socket.

libsystemd (systemd-python's ``systemd.journal.send``) writes to the fixed path
``/run/systemd/journal/socket``. :meth:`PrivateJournal.command` wraps a command so that it runs in a
private mount namespace (``unshare --mount --propagation private``) where a fresh tmpfs covers ``/run``
and the test's folder is bind-mounted on ``/run/systemd/journal``: the socket the test bound in that
folder is journald's socket for that program, and for nobody else. The host's ``/run`` and a real
journald, if one runs, are untouched. Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
from journal_socket import parse_entry

#: run inside the new namespace: ``$0`` is the folder holding the test's socket, ``$@`` the command
_MOUNT_AND_EXEC = (
    "set -e; mount -t tmpfs -o mode=0755 uc2otad-test /run; mkdir -p /run/systemd/journal; "
    'mount --bind "$0" /run/systemd/journal; exec "$@"'
)


def require_mount_namespace() -> None:
    """Skip locally without root (or unshare); fail under CI=true, which runs as root."""
    if os.geteuid() == 0 and shutil.which("unshare") is not None:
        return
    message = "a private mount namespace for journald's socket needs root and unshare (util-linux)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI runs as root")
    pytest.skip(message)


class PrivateJournal:
    """Binds ``folder/socket`` and keeps every entry that arrives, read by a thread as journald would.

    Reading all the time matters: a datagram socket with 10 unread entries blocks its sender.
    """

    def __init__(self, folder: Path) -> None:
        require_mount_namespace()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict[str, str]] = []
        self._changed = threading.Condition()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(folder / "socket"))
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def command(self, *argv: str) -> tuple[str, ...]:
        """``argv`` run where ``/run/systemd/journal/socket`` is this journal."""
        return ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _MOUNT_AND_EXEC,
                str(self.folder), *argv)  # fmt: skip

    def wait_for(self, field: str, value: str, timeout: float = 10.0) -> dict[str, str]:
        """The first entry whose ``field`` equals ``value``."""
        with self._changed:
            found: list[dict[str, str]] = []

            def match() -> bool:
                found[:] = [entry for entry in self.entries if entry.get(field) == value][:1]
                return bool(found)

            if not self._changed.wait_for(match, timeout):
                raise TimeoutError(f"no journal entry with {field}={value} in {timeout}s: {self.entries}")
            return found[0]

    def _receive(self) -> None:
        while True:
            try:
                datagram = self._socket.recv(1 << 20)
            except OSError:
                return
            if not datagram:
                return
            with self._changed:
                self.entries.append(parse_entry(datagram))
                self._changed.notify_all()

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)
