"""uc2otad as an unprivileged user, for the "Port access denied" row: a bus and a daemon as ``nobody``.

The test suite may run as root, and root opens any port; the document's case is a daemon user outside
the ``dialout`` group. So, as root, the daemon runs as ``nobody`` (``setpriv``) on a bus of its own that
lets every user connect, in a folder everyone can reach. Not root already: the caller's own user is
unprivileged and the ordinary fixtures do.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from processes import terminate

from uc2otad.sim.private_bus import PrivateBus, session_config

NOBODY = "nobody"


def can_switch_user() -> bool:
    return (
        os.geteuid() == 0 and shutil.which("setpriv") is not None and shutil.which("dbus-daemon") is not None
    )


class NobodyDaemon:
    """A dbus-daemon any user may use, and uc2otad on it as ``nobody``; ``folder`` is world-readable."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="uc2otad-nobody-"))
        self.folder.chmod(0o755)
        self.address = ""
        self._bus = PrivateBus(self.folder, config=session_config(self.folder / "bus.socket", any_user=True))
        self._daemon: subprocess.Popen[bytes] | None = None
        self.log_path = self.folder / "daemon.log"

    def start_bus(self) -> str:
        self.address = self._bus.start()
        return self.address

    def start_daemon(self, *args: str) -> None:
        """Start uc2otad as nobody; the caller waits for its bus name (no notify socket for nobody)."""
        user = pwd.getpwnam(NOBODY)
        work = self.folder / "work"
        for folder in (work, work / "state", work / "cache"):
            folder.mkdir(exist_ok=True)
            os.chown(folder, user.pw_uid, user.pw_gid)
        config = work / "uc2otad.toml"
        config.write_text("")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DBUS_SESSION_BUS_ADDRESS": self.address,
            "HOME": str(work),
        }
        command = [
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--",
            sys.executable, "-m", "uc2otad.daemon", "--session", "--config", str(config),
            "--state-dir", str(work / "state"), "--cache-dir", str(work / "cache"), "--log-level", "debug",
            *args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._daemon = subprocess.Popen(
                command,
                cwd=Path(__file__).parent.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self._daemon is not None:
            terminate(self._daemon)
        self._daemon = None
        self._bus.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
