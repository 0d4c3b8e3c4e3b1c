"""Run ``uc2otad`` as a real subprocess on a private bus, as systemd would (with ``NOTIFY_SOCKET``).

Readiness is the daemon's own READY=1 on the notify socket, never a sleep: the test can call it as
soon as ``start`` returns, as a unit ordered after uc2otad.service could.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from processes import terminate

READY_TIMEOUT = 20.0


class DaemonProcess:
    """One daemon: ``workdir`` holds its config, state, cache, log and notify socket."""

    def __init__(
        self,
        workdir: Path,
        bus_address: str,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        program: tuple[str, ...] = (sys.executable, "-m", "uc2otad.daemon"),
    ) -> None:
        """:param program: how to run uc2otad (an installed ``/usr/bin/uc2otad``, for a benchmark)"""
        self.program = program
        self.workdir = workdir
        self.bus_address = bus_address
        self.args = args
        self.extra_env = env or {}
        self.config = workdir / "uc2otad.toml"
        self.state_dir = workdir / "state"
        self.cache_dir = workdir / "cache"
        self.log_path = workdir / "daemon.log"
        self.notifications: list[str] = []
        self._notify_path = workdir / "notify.socket"
        self._notify: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        if not self.config.exists():
            self.config.write_text("")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("uc2otad is not running")
        return self._process.pid

    def start(self) -> None:
        """Start and return once the daemon said READY=1."""
        self.notifications.clear()
        if self._notify is not None:
            self._notify.close()
        self._notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self._notify_path))
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.bus_address, **self.extra_env}
        env["NOTIFY_SOCKET"] = str(self._notify_path)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    *self.program,
                    "--session",
                    "--config",
                    str(self.config),
                    "--state-dir",
                    str(self.state_dir),
                    "--cache-dir",
                    str(self.cache_dir),
                    "--log-level",
                    "debug",
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        self.wait_for_notification("READY=1", READY_TIMEOUT)

    def wait_for_notification(self, line: str, timeout: float = READY_TIMEOUT) -> list[str]:
        """Read notify datagrams until one has ``line``; returns that message's lines."""
        assert self._notify is not None
        self._notify.settimeout(timeout)
        while True:
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                raise TimeoutError(
                    f"no {line!r} from uc2otad within {timeout}s; log:\n{self.log()}"
                ) from None
            self.notifications.append(message)
            if line in message.split("\n"):
                return message.split("\n")

    def wait(self, timeout: float) -> int | None:
        """Its exit status once it has ended by itself; None if it still runs after ``timeout`` s."""
        if self._process is None:
            raise RuntimeError("uc2otad is not running")
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        if self._process is None:
            return 0
        status = terminate(self._process)
        self._process = None
        return status

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a power cut would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        self.stop()
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
