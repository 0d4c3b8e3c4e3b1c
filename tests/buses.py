"""A private dbus-daemon for the tests: a session-type bus in a temporary folder.

Started as the dbus-fast test suite does: a config file in the folder, ``--print-address`` read from
stdout (the bus is ready once it has printed it), terminate → wait → kill on teardown.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from processes import terminate

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """``dbus-daemon`` on a unix socket in ``folder``; ``address`` is its D-Bus address."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.address = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        program = shutil.which("dbus-daemon")
        if program is None:
            raise FileNotFoundError("dbus-daemon")
        config = self.folder / "bus.conf"
        config.write_text(_CONFIG.format(socket=self.folder / "bus.socket"))
        self._process = subprocess.Popen(
            [program, f"--config-file={config}", "--nofork", "--print-address"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._process.stdout is not None
        self.address = self._process.stdout.readline().strip()
        if not self.address:
            self.stop()
            raise RuntimeError("dbus-daemon printed no address")

    @property
    def pid(self) -> int:
        """dbus-daemon's process id (a test stops and continues it with SIGSTOP/SIGCONT)."""
        if self._process is None:
            raise RuntimeError("dbus-daemon is not running")
        return self._process.pid

    def stop(self) -> None:
        if self._process is None:
            return
        terminate(self._process)
        self._process = None
