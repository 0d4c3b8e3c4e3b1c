"""Run the real Caddy as the firmware server, configured like the UC2 firmware container.

The UC2 container's Caddyfile is ``handle_path /firmware/* { root * /srv; file_server browse }``; this
one is the same on 127.0.0.1 with a temporary root, plus a JSON access log so tests can see exactly
which requests reached the server and how many body bytes each one carried.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import STOP_TIMEOUT, terminate

#: seconds for Caddy to report "serving initial configuration"; it takes ~50 ms on a Raspberry Pi 4
START_TIMEOUT = 20.0
#: seconds for an access-log line to appear after its response reached us
LOG_TIMEOUT = 5.0
#: tries with a fresh port when another process took ours first
START_ATTEMPTS = 3


class _PortTakenError(Exception):
    pass


@dataclass(frozen=True)
class AccessLogEntry:
    method: str
    uri: str
    status: int
    #: body bytes Caddy sent
    size: int
    request_headers: dict[str, list[str]]


class CaddyServer:
    """``caddy run`` on a free loopback port, serving ``root`` under ``/firmware/``.

    With ``tls``, over https with a certificate from Caddy's own local CA (``ca_file``).
    """

    def __init__(self, workdir: Path, *, tls: bool = False) -> None:
        self.workdir = workdir
        self.tls = tls
        self.root = workdir / "srv"
        self.root.mkdir()
        self._log_path = workdir / "access.log"
        self._port = _free_port()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._stderr_lines: list[str] = []
        self._sentinel = 0

    @property
    def url(self) -> str:
        return f"{self._origin}/firmware"

    @property
    def _origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    @property
    def ca_file(self) -> Path:
        """Caddy's local root CA, which signed the https certificate."""
        return self.workdir / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def start(self) -> None:
        """Start Caddy; a port that another process took between our probe and Caddy's bind gets a
        fresh one (a few tries)."""
        for _ in range(START_ATTEMPTS):
            try:
                self._start_once()
                return
            except _PortTakenError:
                self._port = _free_port()
        raise RuntimeError(f"caddy found no free port in {START_ATTEMPTS} tries")

    def _start_once(self) -> None:
        caddy = shutil.which("caddy")
        if caddy is None:
            raise FileNotFoundError("caddy")
        self._stderr_lines.clear()
        caddyfile = self.workdir / "Caddyfile"
        global_options = (
            "\tauto_https disable_redirects\n\tskip_install_trust\n" if self.tls else "\tauto_https off\n"
        )
        caddyfile.write_text(
            f"{{\n\tadmin off\n{global_options}}}\n"
            f"{self._origin} {{\n"
            + ("\ttls internal\n" if self.tls else "")
            + "\tbind 127.0.0.1\n"  # loopback only, not every interface
            + f"\tlog {{\n\t\toutput file {self._log_path}\n\t\tformat json\n\t}}\n"
            f"\thandle_path /firmware/* {{\n\t\troot * {self.root}\n\t\tfile_server browse\n\t}}\n"
            "}\n"
        )
        # Caddy keeps state under $HOME/.config and $HOME/.local/share: give it the temporary folder
        env = {**os.environ, "HOME": str(self.workdir), "XDG_CONFIG_HOME": str(self.workdir / "config"),
               "XDG_DATA_HOME": str(self.workdir / "data")}  # fmt: skip
        self._process = subprocess.Popen(
            [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = threading.Event()
        # the process is handed over: stop() forgets self._process once this thread has read to the end
        self._reader = threading.Thread(target=self._read_stderr, args=(self._process, ready), daemon=True)
        self._reader.start()
        if not ready.wait(START_TIMEOUT) or self._process.poll() is not None:
            self.stop()
            if any("address already in use" in line for line in self._stderr_lines):
                raise _PortTakenError
            raise RuntimeError("caddy did not start:\n" + "".join(self._stderr_lines[-20:]))

    def _read_stderr(self, process: subprocess.Popen[str], ready: threading.Event) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._stderr_lines.append(line)
            # with tls, the certificate is issued just after the configuration is served
            if ("certificate obtained successfully" if self.tls else "serving initial configuration") in line:
                ready.set()
        ready.set()  # exited: let start() see it

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(STOP_TIMEOUT)
        if self._reader is not None:  # its pipe ends with the process: read to the end before it is closed
            self._reader.join(STOP_TIMEOUT)
        terminate(self._process)
        self._process = None

    def requests_for(self, name: str) -> list[AccessLogEntry]:
        """Logged requests of ``/firmware/<name>``, oldest first, up to now.

        Caddy writes a log line once it has handled a request, which can be a moment after the client
        has the response; so this first sends a request of its own and waits for that line: every
        request that finished before this call is then in the log.
        """
        self._sentinel += 1
        marker = f"/firmware/.sentinel-{self._sentinel}"
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self._origin}{marker}", context=context):
            pass
        deadline = time.monotonic() + LOG_TIMEOUT
        while not any(entry.uri == marker for entry in self._read_log()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"caddy did not log {marker} within {LOG_TIMEOUT}s")
            time.sleep(0.01)
        return [entry for entry in self._read_log() if entry.uri == f"/firmware/{name}"]

    def _read_log(self) -> list[AccessLogEntry]:
        try:
            lines = self._log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [_entry(json.loads(line)) for line in lines if line.strip()]


def _entry(record: dict[str, Any]) -> AccessLogEntry:
    request = record["request"]
    return AccessLogEntry(
        method=request["method"],
        uri=request["uri"],
        status=int(record["status"]),
        size=int(record["size"]),
        request_headers=request.get("headers", {}),
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
