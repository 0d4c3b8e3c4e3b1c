"""Benchmark: a daemon killed mid-stream, restarted at once: when READY=1 comes, when the master is back.

Issue 14, D2. The daemon streams an image to node 11 of the virtual microscope (over a real pty), is
killed with SIGKILL once it reports uploading ≥ 30 %, and is started again on the same state folder at
once, as systemd would. The master is still in binary mode; the new daemon says READY=1, recovers the
master in the background (a pty has no modem lines: silence past the master's 30 s ``rx_timeout``) and
then updates the board again. Every setting is the default, the daemon's and the simulator's.

Run from the repository root (about 45 s per run):

    .venv/bin/python bench/stuck_master.py [--runs 3]

It prints Markdown for ``docs/benchmarks.md``. Benchmarks measure; tests never assert timings.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import espimage
from daemon_process import DaemonProcess
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from uc2otad.api import names
from uc2otad.ctl.client import unwrap
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.private_bus import PrivateBus

NODE = 11
IMAGE_NAME = "esp32_UC2_canopen_slave_motor_release_motX.bin"
#: large enough that the kill lands mid-stream: 256 KiB, 64 chunks
IMAGE_SIZE = 256 * 1024
#: seconds any one step may take before the run is given up
STEP_TIMEOUT = 120.0
_RECOVERED = re.compile(r"master back (\d+\.\d+)s after the recovery began")


@dataclass
class Run:
    #: the restarted daemon's start to its READY=1
    start_to_ready: float
    #: the kill to MasterConnected = true
    kill_to_connected: float
    #: READY=1 to MasterConnected = true
    ready_to_connected: float
    #: the recovery itself, as the daemon logs it (silence until the master's last word, then /state_get)
    recovery: float
    #: StartOTA to "success" of the update after the recovery
    update: float


class Watch:
    """The board's statuses and MasterConnected, each with when it arrived."""

    def __init__(self, client: MessageBus) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.connected: list[tuple[float, bool]] = []
        self._changed = asyncio.Event()
        client.add_message_handler(self._on_message)

    def _on_message(self, message: Message) -> None:
        if message.member == "OTAStatusChanged" and message.body[0] == NODE:
            self.statuses.append(unwrap(message.body[1]))
        elif message.member == "PropertiesChanged":
            changed = unwrap(message.body[1])
            if "MasterConnected" in changed:
                self.connected.append((time.monotonic(), changed["MasterConnected"]))
        self._changed.set()

    async def until(self, found: Any) -> Any:
        async with asyncio.timeout(STEP_TIMEOUT):
            while (value := found()) is None:
                self._changed.clear()
                await self._changed.wait()
            return value

    def status(self, upload_status: str, percent: int = 0) -> dict[str, Any] | None:
        for status in self.statuses:
            if status["upload_status"] == "failed":
                raise RuntimeError(f"the update failed: {status}")
            if status["upload_status"] == upload_status and status["upload_progress"] >= percent:
                return status
        return None

    def connected_since(self, since: float) -> float | None:
        return next((at for at, value in self.connected if value and at >= since), None)


async def call(client: MessageBus, member: str, signature: str = "", *body: Any) -> Message:
    reply = await client.call(
        Message(
            destination=names.BUS_NAME,
            path=names.OBJECT_PATH,
            interface=names.INTERFACE,
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    return reply


async def one_run(workdir: Path, image: bytes) -> Run:
    (workdir / "bus").mkdir()
    (workdir / "firmware").mkdir()
    (workdir / "daemon").mkdir()
    (workdir / "firmware" / IMAGE_NAME).write_bytes(image)
    bus = PrivateBus(workdir / "bus")
    bus.start()
    config = SimConfig(nodes=(default_node(NODE),), serial_link=workdir / "ttyHAT", socket=False, ota_port=0,
                       firmware_dir=workdir / "firmware", log_noise=False)  # fmt: skip
    daemons: list[DaemonProcess] = []
    try:
        async with VirtualMicroscope(config) as scope:
            assert scope.firmware is not None
            flags = ("--serial-port", str(config.serial_link), "--firmware-server", scope.firmware.url)
            client = await MessageBus(bus_address=bus.address).connect()
            watch = Watch(client)
            for member in ("OTAStatusChanged", "PropertiesChanged"):
                await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                          interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                          body=[f"type='signal',member='{member}'"]))  # fmt: skip
            first = DaemonProcess(workdir / "daemon", bus.address, args=flags)
            daemons.append(first)
            await asyncio.to_thread(first.start)
            await call(client, "StartOTA", "ua{sv}", NODE, {})
            await watch.until(lambda: watch.status("uploading", 30))
            await asyncio.to_thread(first.kill)
            killed = time.monotonic()

            second = DaemonProcess(workdir / "daemon", bus.address, args=flags)
            daemons.append(second)
            started = time.monotonic()
            await asyncio.to_thread(second.start)
            ready = time.monotonic()
            connected = await watch.until(lambda: watch.connected_since(killed))
            watch.statuses.clear()
            asked = time.monotonic()
            await call(client, "StartOTA", "ua{sv}", NODE, {})
            await watch.until(lambda: watch.status("success"))
            updated = time.monotonic()
            assert scope.master.slave(NODE).running_image == image
            client.disconnect()
        log = await asyncio.to_thread(second.log)
    finally:
        for daemon in daemons:
            await asyncio.to_thread(daemon.close)
        bus.stop()
    recovered = _RECOVERED.findall(log)
    return Run(
        start_to_ready=ready - started,
        kill_to_connected=connected - killed,
        ready_to_connected=connected - ready,
        recovery=float(recovered[-1]) if recovered else float("nan"),
        update=updated - asked,
    )


def build_image() -> bytes:
    drom, dram, iram = 0x10000, 0x2000, 0x8000
    overhead = len(espimage.build_app_image("esp32s3", segment_sizes=(drom, dram, iram, 4))) - 4
    return espimage.build_app_image(
        "esp32s3", version="v2026.3.0-bench", segment_sizes=(drom, dram, iram, IMAGE_SIZE - overhead)
    )


async def main_async(runs: int) -> list[Run]:
    image = build_image()
    results = []
    for number in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            result = await one_run(Path(folder), image)
        print(f"run {number + 1}: {result}", file=sys.stderr)
        results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(main_async(args.runs))
    print(f"**Result** ({datetime.date.today()}, Python {platform.python_version()}, {platform.machine()}, "
          f"{args.runs} runs, median (min-max)):\n")  # fmt: skip
    print("| measure | time |")
    print("|---|---:|")
    rows = (
        ("restarted daemon: start to READY=1", "start_to_ready"),
        ("READY=1 to MasterConnected (the recovery runs in between)", "ready_to_connected"),
        (
            "the recovery, as logged (silence until the master's `rx_timeout` line, then `/state_get`)",
            "recovery",
        ),
        ("SIGKILL to MasterConnected", "kill_to_connected"),
        ("then StartOTA to success (256 KiB, default verification)", "update"),
    )
    for label, name in rows:
        values = [getattr(run, name) for run in results]
        print(f"| {label} | {statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
