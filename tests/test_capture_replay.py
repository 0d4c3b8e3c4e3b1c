"""Capturing the master link and replaying it (issue 13, item 4).

A daemon with ``--capture`` updates a board of the virtual microscope; the capture it writes is then
the microscope: ``uc2otad-sim --replay`` (a real process) serves it on a pty, and a fresh daemon runs
the same update against it to "success"; so does a capture of the whole demo session (``uc2otad-demo
--capture``: scan, seven boards updated, scan). A recording the daemon's requests do not match makes the
replay exit 1. The capture holds both directions in order, image chunks as size and hash, and no WiFi
password.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import stat
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from caddy import CaddyServer
from conftest import DaemonFactory
from dbus_client import add_match, call
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus
from signals import StatusSignals
from test_ctl import ctl
from test_daemon_update import FAST_UPDATE, microscope_for
from test_daemon_wifi import IMAGE as WIFI_IMAGE
from test_daemon_wifi import IMAGE_NAME as WIFI_IMAGE_NAME
from test_daemon_wifi import credentials, daemon_config, legacy_scope
from test_demo import DEMO_BOARDS, DEMO_TIMEOUT
from test_link_ota_stream import IMAGE, NODE

from uc2otad import demo, settings
from uc2otad.api import names
from uc2otad.errors import ConfigError
from uc2otad.links.capture import LinkCapture
from uc2otad.sim.private_bus import PrivateBus
from uc2otad.sim.replay import Exchange, Replayer, load_recording
from uc2otad.sim.wifi_ota import DEFAULT_PASSWORD, DEFAULT_SSID

#: seconds for the replay to print its ready line, and to exit once it diverged
REPLAY_TIMEOUT = 10.0
CHUNK = 4096


@pytest.fixture
async def signals(client: MessageBus) -> AsyncIterator[StatusSignals]:
    watcher = StatusSignals(client, NODE)
    await add_match(client, f"type='signal',sender='{names.BUS_NAME}',member='OTAStatusChanged'")
    yield watcher


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def update(client: MessageBus, signals: StatusSignals) -> dict[str, Any]:
    signals.statuses.clear()
    reply = await call(client, "StartOTA", "ua{sv}", NODE, {})
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return await signals.until("success")


async def capture_update(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, server: str, tmp_path: Path
) -> Path:
    """A streaming update of one board with ``--capture``; the daemon is stopped after it."""
    capture = tmp_path / "capture.jsonl"
    async with await microscope_for(tmp_path) as scope:
        daemon = await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server",
                                    server, "--capture", str(capture), config=FAST_UPDATE)  # fmt: skip
        final = await update(client, signals)
        assert final["upload_status"] == "success", final
        await asyncio.to_thread(daemon.stop)
    return capture


@asynccontextmanager
async def replay(recording: Path, tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m uc2otad.sim --replay recording``: the process and its stable serial link."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uc2otad.sim", "--replay", str(recording),
        "--serial-link", str(tmp_path / "ttyREPLAY"), "--log-level", "debug",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(REPLAY_TIMEOUT):
            line = await process.stdout.readline()
        assert line, "the replay printed no ready line"
        yield process, json.loads(line)["serial_link"]
    finally:
        if process.returncode is None:
            process.terminate()
        _, stderr = await process.communicate()
        print(stderr.decode(), file=sys.stderr)  # what it answered and skipped: shown when a test fails


async def fresh_daemon(
    start_daemon: DaemonFactory, tmp_path: Path, port: str, server: str, config: str = FAST_UPDATE
) -> None:
    """A daemon with a new state folder and cache, so nothing of the captured run helps it."""
    await start_daemon("--serial-port", port, "--firmware-server", server,
                       "--state-dir", str(tmp_path / "state-2"), "--cache-dir", str(tmp_path / "cache-2"),
                       config=config)  # fmt: skip


async def test_a_captured_update_replays_and_the_same_update_passes_against_it(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    capture = await capture_update(start_daemon, client, signals, served_image, tmp_path)

    records = await asyncio.to_thread(read_records, capture)
    assert stat.S_IMODE((await asyncio.to_thread(capture.stat)).st_mode) == 0o600
    assert {record["dir"] for record in records} == {"open", "tx", "rx"}
    times = [record["t"] for record in records]
    assert times == sorted(times) and times[-1] > times[0]
    sent = [json.loads(record["text"]) for record in records if record["dir"] == "tx" and "text" in record]
    assert {"task": "/ota_start", "ota": {"nodeId": NODE, "size": len(IMAGE)}} in [
        {"task": command["task"], "ota": {k: v for k, v in command["ota"].items() if k != "crc32"}}
        for command in sent
        if command["task"] == "/ota_start"
    ]
    chunks = [(record["size"], record["sha256"]) for record in records if "sha256" in record]
    assert chunks == [
        (len(IMAGE[at : at + CHUNK]), hashlib.sha256(IMAGE[at : at + CHUNK]).hexdigest())
        for at in range(0, len(IMAGE), CHUNK)
    ]
    received = "".join(record.get("text", "") for record in records if record["dir"] == "rx")
    assert '"ota_status":"ready"' in received and '{"ota_status":"success"}' in received

    async with replay(capture, tmp_path) as (process, port):
        await fresh_daemon(start_daemon, tmp_path, port, served_image)
        final = await update(client, signals)
        assert process.returncode is None  # every request was in the recording
    assert final["upload_status"] == "success", final
    assert process.returncode == 0  # SIGTERM


def replay_config(daemon_toml: str) -> str:
    """The demo's daemon settings, with verification's settle and interval shrunk: a replay answers
    at once."""
    update_settings = {**tomllib.loads(daemon_toml)["update"], "verify_settle": 0.05, "verify_interval": 0.05}
    return "[update]\n" + "".join(f"{key} = {value}\n" for key, value in update_settings.items())


@pytest.mark.timeout(2 * DEMO_TIMEOUT)
async def test_a_capture_of_the_demo_replays_and_the_demos_update_passes_against_it(
    start_daemon: DaemonFactory, private_bus: PrivateBus, caddy: CaddyServer, tmp_path: Path
) -> None:
    workdir, capture = tmp_path / "demo", tmp_path / "demo.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uc2otad.demo", "--workdir", str(workdir), "--capture", str(capture),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(DEMO_TIMEOUT):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.terminate()  # the demo stops what it started
            await process.wait()
    assert process.returncode == 0, (stdout + stderr).decode()
    assert "7 updated" in stdout.decode()

    # the demo's firmware folder (images and version.json) on a server of our own
    await asyncio.to_thread(shutil.copytree, workdir / "firmware", caddy.root, dirs_exist_ok=True)
    async with replay(capture, tmp_path) as (replayer, port):
        await fresh_daemon(start_daemon, tmp_path, port, caddy.url, replay_config(demo.DAEMON_TOML))
        # the demo's session: scan, update every board, scan
        for command in (("scan",), ("update", "--all", "--delay", str(demo.BATCH_DELAY)), ("scan",)):
            code, out, err = await ctl(private_bus, *command)
            assert code == 0, out + err
            if command[0] == "update":
                assert "7 updated" in out
        code, out, err = await ctl(private_bus, "status", "--json")
        assert code == 0, err
        statuses = json.loads(out)
        assert replayer.returncode is None  # every request was in the recording
    assert set(statuses) == DEMO_BOARDS
    assert {status["status"] for status in statuses.values()} == {"success"}
    assert replayer.returncode == 0  # SIGTERM


async def test_a_request_the_recording_does_not_have_makes_the_replay_exit_1(
    start_daemon: DaemonFactory, client: MessageBus, signals: StatusSignals, served_image: str, tmp_path: Path
) -> None:
    capture = await capture_update(start_daemon, client, signals, served_image, tmp_path)
    # the recorded /ota_start asked for another size: the daemon's will not match it
    records = await asyncio.to_thread(read_records, capture)
    (preamble,) = [
        record for record in records if record["dir"] == "tx" and "/ota_start" in record.get("text", "")
    ]
    command = json.loads(preamble["text"])
    command["ota"]["size"] += 1
    preamble["text"] = json.dumps(command, separators=(",", ":")) + "\n"
    edited = tmp_path / "edited.jsonl"
    await asyncio.to_thread(edited.write_text, "".join(json.dumps(record) + "\n" for record in records))

    async with replay(edited, tmp_path) as (process, port):
        await fresh_daemon(start_daemon, tmp_path, port, served_image)
        reply = await call(client, "StartOTA", "ua{sv}", NODE, {})
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        async with asyncio.timeout(REPLAY_TIMEOUT):
            returncode = await process.wait()
        assert process.stderr is not None
        stderr = (await process.stderr.read()).decode()
    assert returncode == 1
    assert "diverged from the recording" in stderr and f'"size":{len(IMAGE) + 1}' in stderr


async def test_a_wifi_updates_capture_holds_the_ssid_but_never_the_password(
    start_daemon: DaemonFactory,
    client: MessageBus,
    signals: StatusSignals,
    caddy: CaddyServer,
    tmp_path: Path,
) -> None:
    await asyncio.to_thread((caddy.root / WIFI_IMAGE_NAME).write_bytes, WIFI_IMAGE)
    capture = tmp_path / "wifi.jsonl"
    async with legacy_scope(tmp_path) as scope:
        config = daemon_config(scope.config.ota_port) + f'[serial]\ncapture = "{capture}"\n'
        await start_daemon("--serial-port", str(scope.config.serial_link), "--firmware-server", caddy.url,
                           config=config)  # fmt: skip
        reply = await call(client, "StartOTA", "ua{sv}", NODE, credentials())
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        final = await signals.until("success")
    assert final["upload_status"] == "success", final

    text = await asyncio.to_thread(capture.read_text)
    assert DEFAULT_PASSWORD not in text
    (trigger,) = [
        json.loads(record["text"])
        for record in map(json.loads, text.splitlines())
        if record["dir"] == "tx" and '"ota"' in record.get("text", "")
    ]
    assert trigger["ota"]["ssid"] == DEFAULT_SSID and trigger["ota"]["password"] == "***"


# ---- the parts on their own ---------------------------------------------------------------------------


def test_the_capture_masks_passwords_even_split_across_reads_and_keeps_image_bytes_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "capture.jsonl"
    capture = LinkCapture(path)
    capture.record_open("/dev/ttyUSB0")
    capture.record_tx(b'{"task":"/can_act","ota":{"canid":11,"ssid":"lab","password":"s3cret"},"qid":7}\n')
    capture.record_rx(b'[D][SerialProcess.cpp:1] got {"password":"s3')  # a log line echoing the command
    capture.record_rx(b'cret"}\n++\n{"qid":7,"su')
    capture.record_tx(b"\xe9\x05image", raw=True)
    capture.record_rx(b"\xff\xfe garbage at the wrong baud\n")
    capture.flush()

    text = path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert "s3cret" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [record["dir"] for record in records] == ["open", "tx", "rx", "rx", "tx", "rx"]
    assert [record["t"] for record in records] == sorted(record["t"] for record in records)
    assert (
        records[1]["text"] == '{"task":"/can_act","ota":{"canid":11,"ssid":"lab","password":"***"},"qid":7}\n'
    )
    assert records[2]["text"] == '[D][SerialProcess.cpp:1] got {"password":"***"}\n++\n'
    assert records[3]["text"] == '{"qid":7,"su'  # the unfinished line went out before the next write
    assert (records[4]["size"], records[4]["sha256"]) == (7, hashlib.sha256(b"\xe9\x05image").hexdigest())
    assert bytes.fromhex(records[5]["hex"]) == b"\xff\xfe garbage at the wrong baud\n"


def test_a_capture_that_cannot_be_written_warns_once_and_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    capture = LinkCapture(tmp_path / "no-such-folder" / "capture.jsonl")
    with caplog.at_level(logging.WARNING):
        capture.record_tx(b'{"task":"/state_get","qid":1}\n')
        capture.record_rx(b"++\n{}\n--\n")
    assert not capture.active
    assert [record.levelno for record in caplog.records] == [logging.WARNING]


def _recording(tmp_path: Path, *records: dict[str, Any]) -> list[Exchange]:
    path = tmp_path / "recording.jsonl"
    path.write_text(
        "".join(json.dumps({"t": number, **record}) + "\n" for number, record in enumerate(records))
    )
    return load_recording(path)


def tx(text: str) -> dict[str, Any]:
    return {"dir": "tx", "text": text + "\n"}


def rx(text: str) -> dict[str, Any]:
    return {"dir": "rx", "text": text}


def chunk(data: bytes) -> dict[str, Any]:
    return {"dir": "tx", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


SCAN_OLD = '++\n{"scan":[{"canId":11,"fwVersion":"v1"}],"qid":2}\n--\n'
SCAN_NEW = '++\n{"scan":[{"canId":11,"fwVersion":"v2"}],"qid":5}\n--\n'
RECORDING = (
    {"dir": "rx", "text": "boot noise before any request\n"},
    tx('{"task":"/state_get","qid":1}'),
    rx('[I][SerialProcess.cpp:391] /state_get\n++\n{"state":{},"qid":1}\n--\n'),
    tx('{"task":"/can_act","scan":true,"qid":2}'), rx(SCAN_OLD),
    tx('{"task":"/can_act","ota":{"canid":11,"ssid":"lab","password":"***","timeout":300000},"qid":3}'),
    rx('++\n{"qid":1,"success":1}\n--\n'),
    tx('{"task":"/ota_start","ota":{"nodeId":11,"size":8}}'), rx('++\n{"ota_status":"ready"}\n--\n'),
    chunk(b"abcde"), rx('{"ota_rx":5}\n'),
    chunk(b"fgh"), rx('{"ota_rx":8}\n{"ota_status":"flashing"}\n'), rx('{"ota_status":"success"}\n'),
    tx('{"task":"/can_act","scan":true,"qid":5}'), rx(SCAN_NEW),
)  # fmt: skip


class Client:
    """Feeds a Replayer as a client's writes arrive and keeps what it answers."""

    def __init__(self, exchanges: list[Exchange]) -> None:
        self.received = bytearray()
        self.diverged: list[str] = []
        self.replayer = Replayer(exchanges, self.received.extend, self.diverged.append)

    def write(self, *pieces: bytes) -> bytes:
        self.received.clear()
        for piece in pieces:
            self.replayer.feed(piece)
        return bytes(self.received)


def test_the_replay_answers_with_the_recorded_bytes_and_the_qids_asked_now(tmp_path: Path) -> None:
    client = Client(_recording(tmp_path, *RECORDING))
    assert client.write(b'{"task":"/state_get","qid":41}\n') == (
        b'[I][SerialProcess.cpp:391] /state_get\n++\n{"state":{},"qid":41}\n--\n'
    )
    assert (
        client.write(b'{"task":"/can_act",', b'"scan":true,"qid":42}\n')
        == SCAN_OLD.replace("2}", "42}").encode()
    )
    assert (
        client.write(b'{"task":"/can_act","scan":true,"qid":43}\n') == SCAN_OLD.replace("2}", "43}").encode()
    )
    ota = b'{"task":"/can_act","ota":{"canid":11,"ssid":"lab","password":"pw","timeout":300000},"qid":44}\n'
    assert client.write(ota) == b'++\n{"qid":1,"success":1}\n--\n'  # an int reply: its qid is no echo
    # the preamble, its newline and the image, however the port splits them
    assert (
        client.write(b'{"task":"/ota_start","ota":{"nodeId":11,"size":8}}\r')
        == b'++\n{"ota_status":"ready"}\n--\n'
    )
    assert client.write(b"\nab", b"cd") == b""
    assert (
        client.write(b"efg", b"h")
        == b'{"ota_rx":5}\n{"ota_rx":8}\n{"ota_status":"flashing"}\n{"ota_status":"success"}\n'
    )
    assert (
        client.write(b'{"task":"/can_act","scan":true,"qid":45}\n') == SCAN_NEW.replace("5}", "45}").encode()
    )
    assert (
        client.write(b'{"task":"/can_act","scan":true,"qid":46}\n') == SCAN_NEW.replace("5}", "46}").encode()
    )
    assert not client.replayer.diverged and client.diverged == []


def test_the_replay_skips_requests_the_client_does_not_make(tmp_path: Path) -> None:
    client = Client(_recording(tmp_path, *RECORDING))
    assert client.write(b'{"task":"/ota_start","ota":{"nodeId":11,"size":8}}\n')
    assert client.write(b"abcde") == b'{"ota_rx":5}\n'
    assert not client.replayer.diverged


@pytest.mark.parametrize(
    ("writes", "came"),
    [
        ((b'{"task":"/can_act","scan":true,"probeRange":[1,127],"qid":1}\n',), '"probeRange"'),
        ((b'{"task":"/ota_start","ota":{"nodeId":11,"size":8}}\n', b"abcdX"), "5 image bytes"),
        ((b'{"task":"/state_get",}\n',), "Failed to parse JSON"),
    ],
    ids=["another-command", "other-image-bytes", "broken-json"],
)
def test_a_request_not_in_the_recording_is_a_divergence(
    tmp_path: Path, writes: tuple[bytes, ...], came: str
) -> None:
    client = Client(_recording(tmp_path, *RECORDING))
    answered = client.write(*writes[:-1])
    client.write(writes[-1], b'{"task":"/state_get","qid":1}\n')  # nothing counts after a divergence
    assert client.replayer.diverged
    (message,) = client.diverged
    assert "expected #" in message and came in message
    assert answered == (b'++\n{"ota_status":"ready"}\n--\n' if len(writes) > 1 else b"")


def test_the_capture_setting_is_an_absolute_path_that_a_flag_overrides_or_turns_off(tmp_path: Path) -> None:
    config = tmp_path / "uc2otad.toml"
    config.write_text('[serial]\ncapture = "/var/lib/uc2otad/capture.jsonl"\n')
    state = {"daemon.state_dir": str(tmp_path)}
    assert settings.load(config, state)[0].serial_capture == Path("/var/lib/uc2otad/capture.jsonl")
    assert settings.load(config, {**state, "serial.capture": "/tmp/c.jsonl"})[0].serial_capture == Path(
        "/tmp/c.jsonl"
    )
    assert settings.load(config, {**state, "serial.capture": ""})[0].serial_capture is None
    assert settings.Settings().serial_capture is None
    with pytest.raises(ConfigError, match=r"serial\.capture"):
        settings.load(config, {**state, "serial.capture": "capture.jsonl"})
