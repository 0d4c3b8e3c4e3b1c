"""Record every byte on the master link to a JSON-lines file, for the day a real microscope is at hand.

A capture is what a user sends in when an update fails on hardware we do not have: ``uc2otad-sim
--replay FILE`` answers the daemon from it (``docs/simulator.md``). One JSON object per line::

    {"t": 1234.5678, "dir": "open", "port": "/dev/ttyUSB0"}        the link opened the port
    {"t": 1234.5701, "dir": "tx", "text": "{\\"task\\":\\"/state_get\\",\\"qid\\":1}\\n"}
    {"t": 1234.5712, "dir": "rx", "text": "++\\n{…}\\n--\\n"}
    {"t": 1234.9000, "dir": "tx", "size": 4096, "sha256": "…"}       a chunk of the firmware image
    {"t": 1235.0000, "dir": "rx", "hex": "e9f0…"}                    bytes that are not UTF-8 (wrong baud)

``t`` is ``time.monotonic()``: it orders the records and measures gaps, and no wall-clock step can
make it run backwards. The bytes are the port's, unparsed, so a framing problem shows as it happened;
received bytes are cut into records at line ends only (a partial line waits for its end, or for the
next write), so that a secret a master's log line echoes is never split where redaction cannot see it.

What is left out, and why:

- **the firmware image.** A binary write (:meth:`LinkCapture.record_tx` with ``raw=True``: the image
  streamed after ``/ota_start`` was answered "ready") is recorded as its size and SHA-256 only. The
  image is megabytes, it may be a lab's own build, and the lab's firmware server has it anyway; the
  replay only needs to know that the same bytes came;
- **the WiFi password** (``{"task":"/can_act","ota":{…,"password":"…"}}``): every ``"password"``
  value is ``***`` (:mod:`uc2otad.links.redact`). SSIDs and the boards' MAC addresses stay: the file is
  created 0600.

Writes and reads happen on worker threads (the link's writer and reader), never on the event loop,
so each record is appended at once (open, append, close: the file may be deleted or moved meanwhile,
and nothing needs closing at shutdown). A file that cannot be written is warned about once and
capturing stops: the update it would have recorded goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from uc2otad.links.redact import redacted_text

_LOGGER = logging.getLogger(__name__)

#: the capture holds SSIDs and MAC addresses: only its owner may read it
FILE_MODE = 0o600
#: received bytes held back waiting for a line end, at most; the firmware's lines are shorter (8 KiB)
MAX_PARTIAL_LINE = 16 * 1024


class LinkCapture:
    """Appends the records of one or more links (one at a time) to ``path``; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._partial = bytearray()
        #: when the last of ``_partial`` arrived
        self._partial_t = 0.0
        self._failed = False

    def __repr__(self) -> str:
        return f"LinkCapture({str(self.path)!r})"

    @property
    def active(self) -> bool:
        """False once writing the file failed."""
        return not self._failed

    def record_open(self, port: str) -> None:
        """The link opened ``port``; what the old port had left unfinished is written first."""
        with self._lock:
            self._flush_partial()
            self._append({"t": time.monotonic(), "dir": "open", "port": port})

    def record_tx(self, data: bytes, *, raw: bool = False) -> None:
        """Bytes about to be written: a command (text, redacted) or, with ``raw``, image bytes."""
        if raw:
            payload: dict[str, Any] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        else:
            payload = _payload(data)
        with self._lock:
            self._flush_partial()  # what was received before this write comes before it in the file
            self._append({"t": time.monotonic(), "dir": "tx", **payload})

    def record_rx(self, data: bytes) -> None:
        """Bytes read from the port; recorded up to the last line end (or when too much has waited)."""
        with self._lock:
            self._partial += data
            self._partial_t = time.monotonic()
            end = self._partial.rfind(b"\n") + 1
            if end == 0 and len(self._partial) > MAX_PARTIAL_LINE:
                end = len(self._partial)
            if end:
                complete = bytes(self._partial[:end])
                del self._partial[:end]
                self._append({"t": self._partial_t, "dir": "rx", **_payload(complete)})

    def flush(self) -> None:
        """Write what was received without a line end yet (the link is closing its port)."""
        with self._lock:
            self._flush_partial()

    def _flush_partial(self) -> None:
        if self._partial:
            data = bytes(self._partial)
            self._partial.clear()
            self._append({"t": self._partial_t, "dir": "rx", **_payload(data)})

    def _append(self, record: dict[str, Any]) -> None:
        if self._failed:
            return
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as err:
            self._failed = True
            self._partial.clear()
            _LOGGER.warning(
                "capture: cannot write %s (%s); capturing stops, the link goes on", self.path, err
            )


def _payload(data: bytes) -> dict[str, str]:
    """``text`` (passwords masked) for UTF-8, ``hex`` for anything else (garbage at the wrong baud)."""
    try:
        return {"text": redacted_text(data.decode())}
    except UnicodeDecodeError:
        return {"hex": data.hex()}
