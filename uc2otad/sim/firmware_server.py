"""A small firmware server for the virtual microscope: a folder served the way the UC2 Caddy serves it.

The UC2 firmware server is Caddy with ``handle_path /firmware/* { file_server browse }`` (``uc2-stack.md``
§4.1). What clients see of it, and what this server reproduces (checked against Caddy 2.6.2):

- ``GET /firmware/`` with ``Accept: application/json``: a JSON array of ``{"name", "size", "url":
  "./<name>", "mod_time" (RFC 3339, nanoseconds, UTC), "mode" (Go's numeric FileMode), "is_dir",
  "is_symlink"}``, folders first and named with a trailing slash; without that header, an HTML page;
- ``GET /firmware/<name>``: the file, with Caddy's ``Etag`` (``"<mtime base 36><size base 36>"``) and
  ``Last-Modified``, answering ``If-None-Match``/``If-Modified-Since`` with 304; 404 for anything else;
- ``GET /firmware`` without the slash, and any other path: an empty 200, because ``handle_path
  /firmware/*`` does not match and the site has no other handler.

Constraint: loopback only; the standard library's threaded HTTP server runs in its own threads, so
reading files never touches the event loop. Written from the spec, not from ``uc2otad.firmware``.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import json
import logging
import os
import posixpath
import stat
import threading
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_LOGGER = logging.getLogger(__name__)

HOST = "127.0.0.1"
BASE_PATH = "/firmware"
#: Go's ``fs.ModeDir`` and ``fs.ModeSymlink`` bits, as Caddy's "mode" field carries them
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
_CHUNK = 64 * 1024


class SimFirmwareServer:
    """Serves ``root`` at ``http://127.0.0.1:<port>/firmware/``; ``port`` 0 picks a free one."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients use (no trailing slash, as configured in uc2otad)."""
        if self._server is None:
            raise RuntimeError("firmware server is not running")
        return f"http://{HOST}:{self._server.server_address[1]}{BASE_PATH}"

    async def start(self) -> None:
        self._server = await asyncio.to_thread(self._bind)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="sim firmware server"
        )
        self._thread.start()
        _LOGGER.info("firmware server: %s serves %s", self.url, self.root)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _bind(self) -> ThreadingHTTPServer:
        root = self.root.resolve()

        class Handler(_CaddyLikeHandler):
            served_root = root

        server = ThreadingHTTPServer((HOST, self._requested_port), Handler)
        server.daemon_threads = True
        return server


class _CaddyLikeHandler(BaseHTTPRequestHandler):
    served_root: Path
    server_version = "uc2otad-sim"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        _LOGGER.debug("firmware server: " + format, *args)

    def _answer(self, *, send_body: bool) -> None:
        raw = unquote(urlsplit(self.path).path)
        # Caddy cleans the path before matching ("/firmware/../firmware/x" is "/firmware/x")
        path = posixpath.normpath(raw) + ("/" if raw.endswith("/") and raw != "/" else "")
        if path == BASE_PATH + "/":
            self._listing(send_body)
        elif path.startswith(BASE_PATH + "/"):
            self._file(path[len(BASE_PATH) + 1 :], send_body)
        else:  # outside handle_path /firmware/*: no handler, and Caddy answers an empty 200
            self._send(HTTPStatus.OK, b"", {}, send_body)

    def _listing(self, send_body: bool) -> None:
        entries = sorted(
            (_entry(item) for item in self.served_root.iterdir() if not item.name.startswith(".")),
            key=lambda entry: (not entry["is_dir"], entry["name"]),
        )
        if "application/json" in self.headers.get("Accept", ""):
            body = json.dumps(entries, separators=(",", ":")).encode()
            content_type = "application/json; charset=utf-8"
        else:
            links = "".join(
                f'<li><a href="{html.escape(entry["url"])}">{html.escape(entry["name"])}</a></li>'
                for entry in entries
            )
            body = f"<!DOCTYPE html><html><body><ul>{links}</ul></body></html>".encode()
            content_type = "text/html; charset=utf-8"
        self._send(HTTPStatus.OK, body, {"Content-Type": content_type}, send_body)

    def _file(self, name: str, send_body: bool) -> None:
        if not name or "/" in name or name in (".", "..") or name.startswith("."):
            self._send(HTTPStatus.NOT_FOUND, b"", {}, send_body)
            return
        path = self.served_root / name
        try:
            info = path.stat()
        except OSError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            self._send(HTTPStatus.NOT_FOUND, b"", {}, send_body)
            return
        etag = f'"{_base36(int(info.st_mtime))}{_base36(info.st_size)}"'
        headers = {"Etag": etag, "Last-Modified": email.utils.formatdate(info.st_mtime, usegmt=True)}
        if _not_modified(
            self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since"), etag, info
        ):
            self._send(HTTPStatus.NOT_MODIFIED, b"", headers, send_body=False)
            return
        if name.endswith(".json"):
            headers["Content-Type"] = "application/json"
        self.send_response(HTTPStatus.OK)
        for key, value in {**headers, "Content-Length": str(info.st_size)}.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            with path.open("rb") as source:
                while chunk := source.read(_CHUNK):
                    self.wfile.write(chunk)

    def _send(self, status: HTTPStatus, body: bytes, headers: dict[str, str], send_body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if status is not HTTPStatus.NOT_MODIFIED:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _entry(item: Path) -> dict[str, Any]:
    """One listing entry as Caddy's ``browse`` writes it."""
    info = item.lstat()
    is_symlink = stat.S_ISLNK(info.st_mode)
    target = item.stat() if is_symlink else info
    is_dir = stat.S_ISDIR(target.st_mode)
    mode = (
        stat.S_IMODE(info.st_mode) | (GO_MODE_DIR if is_dir else 0) | (GO_MODE_SYMLINK if is_symlink else 0)
    )
    name = item.name + ("/" if is_dir else "")
    return {
        "name": name,
        "size": target.st_size,
        "url": "./" + name,
        "mod_time": _rfc3339_nano(target.st_mtime_ns),
        "mode": mode,
        "is_dir": is_dir,
        "is_symlink": is_symlink,
    }


def _rfc3339_nano(mtime_ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: fractional seconds without trailing zeros."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def _not_modified(
    if_none_match: str | None, if_modified_since: str | None, etag: str, info: os.stat_result
) -> bool:
    if if_none_match is not None:
        return etag in (tag.strip() for tag in if_none_match.split(",")) or if_none_match.strip() == "*"
    if if_modified_since is not None:
        try:
            since = email.utils.parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        return int(info.st_mtime) <= since.timestamp()
    return False


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if number == 0:
            return text
