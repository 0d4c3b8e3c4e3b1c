"""``uc2otad-sim --replay FILE``: a master CAN HAT that answers from a capture of a real one.

A capture (``[serial] capture`` or ``uc2otad --capture FILE``) holds every byte the daemon wrote to
the master and read from it, as JSON lines (``docs/simulator.md`` says what each record is). Here it
becomes a list of exchanges: each request the daemon wrote — a JSON command, cut out of the written
text by the firmware's own brace counting (:class:`~uc2otad.sim.wire.CommandReader`), or a chunk of a
firmware image, known by its size and SHA-256 — with the bytes the master sent after it, until the
next request, as its reply. The replay serves a pty as the virtual microscope does and answers each
request with its recorded reply, byte for byte: frames, bare lines and log lines alike.

Matching. A command is compared as a JSON object without its ``qid``, and with every ``"password"`` as
``***`` (the capture never holds the WiFi password). The ``qid`` a reply echoes is rewritten to the one
of the request it answers now. Image bytes written after an ``/ota_start`` are gathered until the
recorded chunk's size and compared by hash (the newline after the preamble is dropped, as the firmware
drops it). How often the daemon polls depends on timing (verification rescans until the board is
back), so a request is accepted, in this order, when it is the next one recorded, the one answered
last (its reply again), one recorded later (the ones between are skipped), or one recorded earlier (the
replay goes on from there). Anything else is a divergence: it is logged with what was expected, the
pty is closed and the process exits 1.

What it cannot reproduce: the board's timing. Every reply goes out at once when its request is
complete, so the time the real board took to answer (a slave's erase, its CRC check before "success",
a WiFi join) is not kept; the pauses between a reply and the next request are the daemon's own and
happen again by themselves, so no recorded gap is replayed. Nothing beyond the serial line is replayed
either: a WiFi update's ArduinoOTA upload goes from the daemon to the board over the network, so
against a replay it fails after the master's part; a CAN update is replayed whole. The baud rate is
not checked. The pty keeps 64 KiB its client has not read: of a longer reply the tail is lost.

Written, as all of ``uc2otad/sim``, without ``uc2otad.links``: the capture's format is read here from
the file, not from the code that writes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uc2otad.sim import wire
from uc2otad.sim.pty_port import PtyPort

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
#: a request the recording does not have
EXIT_DIVERGED = 1
#: the stable symlink's name in the replay's private folder (as the virtual microscope's)
SERIAL_LINK_NAME = "ttyUC2HAT"
MASK = "***"
_LINE_END = b"\r\n"
#: bytes per write to the pty (see :func:`_write_in_pieces`)
PIECE = 4096


class RecordingError(ValueError):
    """The capture file cannot be read as one."""


@dataclass
class Exchange:
    """One request of the recording and the bytes the master sent after it."""

    index: int
    #: the command as compared (no qid, passwords masked); None for image bytes
    command: dict[str, Any] | None = None
    #: the qid the command carried when recorded
    qid: int | None = None
    #: (size, sha256) of a chunk of image bytes
    chunk: tuple[int, str] | None = None
    reply: bytearray = field(default_factory=bytearray)

    def describe(self) -> str:
        if self.chunk is not None:
            return f"#{self.index} {self.chunk[0]} image bytes (sha256 {self.chunk[1][:16]}…)"
        return f"#{self.index} {json.dumps(self.command, separators=(',', ':'))}"


def load_recording(path: Path) -> list[Exchange]:
    """The exchanges of a capture file, in order.

    :raises RecordingError: unreadable, not JSON lines, or a record without what its direction needs
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RecordingError(f"{path}: cannot be read: {err}") from err
    exchanges: list[Exchange] = []
    reader = wire.CommandReader()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            direction = record.get("dir")
            if direction == "tx" and "size" in record:
                exchanges.append(Exchange(len(exchanges), chunk=(int(record["size"]), str(record["sha256"]))))
            elif direction == "tx":
                for received in reader.feed(_data(record)):
                    command = received.command if received.command is not None else {"?": received.problem}
                    qid = wire.request_qid(command) if "qid" in command else None
                    exchanges.append(Exchange(len(exchanges), command=comparable(command), qid=qid))
            elif direction == "rx" and exchanges:  # what came before the first request answers nothing
                exchanges[-1].reply += _data(record)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise RecordingError(f"{path}:{number}: not a capture record: {err}") from err
    return exchanges


def _data(record: dict[str, Any]) -> bytes:
    if "hex" in record:
        return bytes.fromhex(record["hex"])
    text = record["text"]
    if not isinstance(text, str):
        raise TypeError("text must be a string")
    return text.encode()


def comparable(value: Any) -> Any:
    """``value`` as requests are compared: the top-level qid removed, every password masked."""
    if isinstance(value, dict):
        return {key: _masked(key, item) for key, item in value.items() if key != "qid"}
    return value


def _masked(key: str, value: Any) -> Any:
    if key.lower() == "password":
        return MASK
    if isinstance(value, dict):
        return {inner: _masked(inner, item) for inner, item in value.items()}
    if isinstance(value, list):
        return [_masked("", item) for item in value]
    return value


class Replayer:
    """Answers what a client writes from ``exchanges``; ``on_diverged(message)`` when it cannot."""

    def __init__(
        self, exchanges: list[Exchange], send: Callable[[bytes], None], on_diverged: Callable[[str], None]
    ) -> None:
        self._exchanges = exchanges
        self._send = send
        self._on_diverged = on_diverged
        self._reader = wire.CommandReader()
        #: the next exchange expected, and the one answered last
        self._next = 0
        self._last: int | None = None
        #: recorded qid → the qid of the request answered now
        self._qids: dict[int, int] = {}
        # image bytes being gathered: the exchange they must match, their hash, how many came
        self._chunk: Exchange | None = None
        self._hash = hashlib.sha256()
        self._count = 0
        self._preamble_end = False
        self.diverged = False

    def feed(self, data: bytes) -> None:
        """Bytes the client wrote."""
        while data and not self.diverged:
            if self._chunk is not None:
                data = self._feed_chunk(data)
                continue
            for received in self._reader.feed(data):
                self._on_command(received)
                if self.diverged or self._chunk is not None:
                    # the rest is image bytes (or nothing more counts): read it in the new mode
                    data = data[received.end :]
                    self._reader = wire.CommandReader()
                    break
            else:
                data = b""

    def _on_command(self, received: wire.Received) -> None:
        command = received.command if received.command is not None else {"?": received.problem}
        wanted = comparable(command)
        found = self._find(lambda exchange: exchange.command == wanted)
        if found is None:
            self._diverge(f"request {json.dumps(wanted, separators=(',', ':'))}")
            return
        if found.qid is not None:
            self._qids[found.qid] = wire.request_qid(command)
        self._answer(found)

    def _feed_chunk(self, data: bytes) -> bytes:
        chunk = self._chunk
        assert chunk is not None and chunk.chunk is not None
        if self._preamble_end:
            data = data.lstrip(_LINE_END)  # the newline after /ota_start is no image byte
            if not data:
                return data
            self._preamble_end = False
        size, sha256 = chunk.chunk
        take = data[: size - self._count]
        self._hash.update(take)
        self._count += len(take)
        if self._count == size:
            self._chunk = None
            if self._hash.hexdigest() != sha256:
                self._diverge(f"{size} image bytes with sha256 {self._hash.hexdigest()[:16]}…", chunk)
            else:
                self._answer(chunk)
        return data[len(take) :]

    def _find(self, matches: Callable[[Exchange], bool]) -> Exchange | None:
        """The exchange a request is: next, last again, later (skipping), earlier (going back)."""
        exchanges = self._exchanges
        order = [self._next] if self._next < len(exchanges) else []
        if self._last is not None:
            order.append(self._last)
        order += range(self._next + 1, len(exchanges))
        order += range(self._next - 1, -1, -1)
        for index in order:
            if exchanges[index].chunk is None and matches(exchanges[index]):
                return exchanges[index]
        return None

    def _answer(self, exchange: Exchange) -> None:
        if exchange.index > self._next:
            _LOGGER.info("replay: skipping %d recorded request(s)", exchange.index - self._next)
        _LOGGER.debug("replay: answering %s", exchange.describe())
        self._last, self._next = exchange.index, exchange.index + 1
        if exchange.reply:
            self._send(self._with_qids(bytes(exchange.reply)))
        following = self._exchanges[self._next] if self._next < len(self._exchanges) else None
        if following is not None and following.chunk is not None:
            self._preamble_end = exchange.chunk is None
            self._chunk, self._hash, self._count = following, hashlib.sha256(), 0

    def _diverge(self, came: str, expected: Exchange | None = None) -> None:
        self.diverged = True
        if expected is None and self._next < len(self._exchanges):
            expected = self._exchanges[self._next]
        wanted = expected.describe() if expected is not None else "nothing more (the recording has ended)"
        message = f"replay: the client diverged from the recording: expected {wanted}, came {came}"
        _LOGGER.error("%s", message)
        self._on_diverged(message)

    def _with_qids(self, reply: bytes) -> bytes:
        """``reply`` with each echoed recorded qid replaced by the one asked with now (not int replies)."""
        if not self._qids:
            return reply
        lines = reply.split(b"\n")
        for number, line in enumerate(lines):
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict) or message.keys() == {"qid", "success"}:
                continue
            qid = message.get("qid")
            if isinstance(qid, int) and qid in self._qids and self._qids[qid] != qid:
                pattern = rb'("qid"\s*:\s*)' + str(qid).encode() + rb"\b"
                lines[number] = re.sub(pattern, rb"\g<1>" + str(self._qids[qid]).encode(), line, count=1)
        return b"\n".join(lines)


def _write_in_pieces(port: PtyPort, data: bytes) -> None:
    """The port keeps at most 64 KiB the client has not read and drops a write that does not fit: in
    pieces, a long reply (a master that logged a lot between two commands) loses its tail only."""
    for start in range(0, len(data), PIECE):
        port.write(data[start : start + PIECE])


async def serve(recording: Path, *, serial_link: Path | None = None, baud: int | None = None) -> int:
    """Serve ``recording`` on a pty until SIGTERM/SIGINT (0) or a divergence (1); prints the ready line.

    :raises RecordingError: the file is no capture
    """
    exchanges = await asyncio.to_thread(load_recording, recording)
    if not exchanges:
        raise RecordingError(f"{recording}: no request in it")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    workdir: Path | None = None
    if serial_link is None:
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="uc2otad-replay-"))
        serial_link = workdir / SERIAL_LINK_NAME
    port = PtyPort(serial_link, baud=baud)
    replayer = Replayer(exchanges, lambda data: _write_in_pieces(port, data), lambda _message: stopping.set())
    port.on_data = replayer.feed
    try:
        await port.open()
        ready = {
            "serial_port": port.path,
            "serial_link": port.url,
            "baud": baud,
            "replay": str(recording),
            "requests": len(exchanges),
        }
        print(json.dumps(ready), flush=True)  # the one line a caller waits for; a short write, once
        await stopping.wait()
    finally:
        await port.close()
        if workdir is not None:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
    return EXIT_DIVERGED if replayer.diverged else EXIT_OK
