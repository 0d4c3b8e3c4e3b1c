"""A private ``dbus-daemon``: the bus the tests, the demo and the installed-package check run uc2otad on.

Started the way the dbus-fast test suite starts one: a config file in a folder of the caller's, the
socket next to it, ``--print-address`` read from stdout (the bus is ready once it has printed it), and on
stop terminate → wait → kill. The default config is a session-type bus that lets its own user do
anything (own any name, eavesdrop); ``session_config(any_user=True)`` also lets every other user
connect, and a caller may pass a config of its own (the installed-package check writes a system-type
bus with Debian's default policy and the installed one).

Main constraint: only the standard library is imported. ``tests/installed/check_installed.py`` loads
this file by its path under the system's python3, next to the installed package, which holds no
``sim/`` (the simulator and the demo are not in the Debian package).
"""

from __future__ import annotations

import select
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import IO

#: seconds dbus-daemon may take to print its address
START_TIMEOUT = 10.0
#: seconds between SIGTERM and SIGKILL when it stops
STOP_TIMEOUT = 5.0

_SESSION_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">{any_user}
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class PrivateBusError(RuntimeError):
    """dbus-daemon is not installed, or it did not print its address in time.

    A built-in's child, not ``Uc2otadError``'s: this module imports nothing of uc2otad (see above).
    """


def session_config(socket: Path, *, any_user: bool = False) -> str:
    """A session-type bus on ``socket`` where anything goes; ``any_user``: other users may connect too."""
    return _SESSION_CONFIG.format(socket=socket, any_user='\n    <allow user="*"/>' if any_user else "")


class PrivateBus:
    """``dbus-daemon`` with its config and socket in ``folder``; ``address`` is its D-Bus address.

    :param folder: an existing folder; ``bus.conf`` and (for the default config) ``bus.socket`` go there
    :param config: the whole config file (default: :func:`session_config` on ``folder / "bus.socket"``)
    :param log: a file dbus-daemon's stderr is appended to (default: discarded)

    States: created → started (``start``) → stopped (``stop``; safe twice, and on a bus never started).
    """

    def __init__(self, folder: Path, *, config: str | None = None, log: Path | None = None) -> None:
        self.folder = folder
        self.address = ""
        self._config = config if config is not None else session_config(folder / "bus.socket")
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start dbus-daemon and return its address once it printed it.

        It runs in a session of its own, so a Ctrl-C on the caller's terminal does not reach it: the
        caller stops it, after the programs that use the bus.

        :raises PrivateBusError: dbus-daemon is not on PATH, or printed no address within START_TIMEOUT
        """
        program = shutil.which("dbus-daemon")
        if program is None:
            raise PrivateBusError("dbus-daemon is not installed")
        config = self.folder / "bus.conf"
        config.write_text(self._config)
        command = [program, f"--config-file={config}", "--nofork", "--print-address"]
        if self._log is None:
            self._process = self._popen(command, subprocess.DEVNULL)
        else:
            with self._log.open("ab") as log:
                self._process = self._popen(command, log)
        self.address = self._first_line(self._process)
        return self.address

    @staticmethod
    def _popen(command: list[str], stderr: int | IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )

    def _first_line(self, process: subprocess.Popen[bytes]) -> str:
        stream = process.stdout
        assert stream is not None  # stdout=PIPE above
        readable, _, _ = select.select([stream], [], [], START_TIMEOUT)
        address = stream.readline().decode().strip() if readable else ""
        if not address:
            status = process.poll()
            self.stop()
            raise PrivateBusError(f"dbus-daemon printed no address (exit status {status})")
        return address

    @property
    def pid(self) -> int:
        """dbus-daemon's process id (a test stops and continues it with SIGSTOP/SIGCONT)."""
        if self._process is None:
            raise PrivateBusError("dbus-daemon is not running")
        return self._process.pid

    def stop(self) -> None:
        """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL; close its pipe. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL; never leaves a zombie or an open pipe."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
