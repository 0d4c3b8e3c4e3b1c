"""Benchmark: the walk of one StartOTA(11), from the D-Bus method to the moment the board is first touched.

Issue 16 asks, for its closing note, how many of our files and how deep a stack of our frames one
StartOTA call crosses, before and after the redesign: a reader follows that walk to learn the daemon, and
each file or frame more is one more place to hold in the head. This script measures it, on any tree.

The daemon runs as in the tests (``tests/daemon_process.py``: a private dbus-daemon, ``--session``,
READY=1), against the virtual microscope on a pty (the default firmware profile: a CANopen master, node
11 a motor) and the simulator's firmware server on 127.0.0.1 serving the motor image, but wrapped so that
``bench/walk_profiler.py`` is installed in its process before ``uc2otad.daemon`` is imported. Once the
master is connected and the daemon has settled, the script calls StartOTA(11) (method CAN, the
defaults) and waits for the update's success. The profiler records from the entry of the D-Bus handler
``start_ota`` (``uc2otad/api/interface.py``) to the link's first write that touches the board, the
``/ota_start`` command or a raw image chunk (``_write_in_order`` in ``uc2otad/links/base.py``):

- **files**: our source files (``uc2otad/``, ``uc2otad/sim/`` excepted) with a function called meanwhile;
- **max depth**: the deepest stack of our frames (a stack ends at a thread hop or an event-loop
  callback: the deepest chain within one task or thread);
- **functions**: the distinct functions of ours called (coroutines resumed count as called);
- **threads**: the threads that ran our code;
- **entries**: the functions of ours entered from outside our code (dbus_fast, the event loop's
  callbacks and task steps, a thread's start): how often a reader loses the thread of the walk.

The daemon's code comes from ``--tree`` (``LABEL=DIR``, repeatable: DIR is put first on the daemon's
``sys.path``, and the summary names the package that ran); everything else (the simulator, the bus, the
client) comes from this script's tree. Run from the repository root (about 10 s per run):

    .venv/bin/python bench/startota_walk.py --tree before=/tmp/walk-before --tree after=. [--runs 3]

It prints Markdown for ``docs/benchmarks.md``; ``--json FILE`` keeps every summary. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
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

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NODE = 11
IMAGE_NAME = "esp32_UC2_canopen_slave_motor_release_motX.bin"
#: small: the walk ends at the first chunk; the rest of the stream only makes the run longer
IMAGE_SIZE = 64 * 1024
#: seconds any one step may take before the run is given up
STEP_TIMEOUT = 120.0
#: the profiler's output (walk_profiler.OUT_ENV)
OUT_ENV = "UC2OTAD_WALK_OUT"
#: the daemon's program: the tree first on sys.path, the profiler, then ``python -m uc2otad.daemon``
WRAPPER = (
    "import sys; sys.path[:0] = [{tree!r}, {bench!r}]; import walk_profiler; walk_profiler.install(); "
    "import runpy; runpy.run_module('uc2otad.daemon', run_name='__main__', alter_sys=True)"
)


@dataclass
class Walk:
    label: str
    summary: dict[str, Any]
    #: StartOTA's call to the update's success, profiler on (a sanity check, not a timing to compare)
    update: float


class Watch:
    """The board's statuses, as OTAStatusChanged brings them."""

    def __init__(self, client: MessageBus) -> None:
        self.statuses: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        client.add_message_handler(self._on_message)

    def _on_message(self, message: Message) -> None:
        if message.member == "OTAStatusChanged" and message.body[0] == NODE:
            self.statuses.append(unwrap(message.body[1]))
            self._changed.set()

    async def success(self) -> None:
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                for status in self.statuses:
                    if status["upload_status"] == "failed":
                        raise RuntimeError(f"the update failed: {status}")
                    if status["upload_status"] == "success":
                        return
                self._changed.clear()
                await self._changed.wait()


async def call(client: MessageBus, member: str, signature: str = "", *body: Any, **where: str) -> Message:
    reply = await client.call(
        Message(
            destination=where.get("destination", names.BUS_NAME),
            path=where.get("path", names.OBJECT_PATH),
            interface=where.get("interface", names.INTERFACE),
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    return reply


async def master_connected(client: MessageBus) -> None:
    async with asyncio.timeout(STEP_TIMEOUT):
        while True:
            reply = await call(client, "Get", "ss", names.INTERFACE, "MasterConnected",
                               interface="org.freedesktop.DBus.Properties")  # fmt: skip
            if reply.body[0].value:
                return
            await asyncio.sleep(0.1)


async def one_walk(workdir: Path, label: str, tree: Path, image: bytes, settle: float) -> Walk:
    for folder in ("bus", "firmware", "daemon"):
        (workdir / folder).mkdir()
    (workdir / "firmware" / IMAGE_NAME).write_bytes(image)
    out = workdir / "walk.json"
    bus = PrivateBus(workdir / "bus")
    bus.start()
    config = SimConfig(nodes=(default_node(NODE),), serial_link=workdir / "ttyHAT", socket=False, ota_port=0,
                       firmware_dir=workdir / "firmware", log_noise=False)  # fmt: skip
    program = (sys.executable, "-c", WRAPPER.format(tree=str(tree), bench=str(BENCH)))
    daemon: DaemonProcess | None = None
    try:
        async with VirtualMicroscope(config) as scope:
            assert scope.firmware is not None
            flags = ("--serial-port", str(config.serial_link), "--firmware-server", scope.firmware.url)
            client = await MessageBus(bus_address=bus.address).connect()
            watch = Watch(client)
            await call(client, "AddMatch", "s", "type='signal',member='OTAStatusChanged'",
                       destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                       interface="org.freedesktop.DBus")  # fmt: skip
            daemon = DaemonProcess(workdir / "daemon", bus.address, args=flags, env={OUT_ENV: str(out)},
                                   program=program)  # fmt: skip
            await asyncio.to_thread(daemon.start)
            await master_connected(client)
            # the start's scan and status reads done: the walk is StartOTA's, not the start's
            await asyncio.sleep(settle)
            asked = time.monotonic()
            await call(client, "StartOTA", "ua{sv}", NODE, {})
            await watch.success()
            updated = time.monotonic()
            assert scope.master.slave(NODE).running_image == image
            client.disconnect()
        await asyncio.to_thread(daemon.close)
    except BaseException:
        if daemon is not None:
            print(daemon.log()[-4000:], file=sys.stderr)
        raise
    finally:
        if daemon is not None:
            await asyncio.to_thread(daemon.close)
        bus.stop()
    summary = json.loads(out.read_text())
    if not summary["touched"]:
        raise RuntimeError(f"{label}: the walk never reached the board's first write; {out}")
    return Walk(label, summary, updated - asked)


def build_image() -> bytes:
    drom, dram, iram = 0x4000, 0x2000, 0x4000
    overhead = len(espimage.build_app_image("esp32s3", segment_sizes=(drom, dram, iram, 4))) - 4
    return espimage.build_app_image(
        "esp32s3", version="v2026.3.0-walk", segment_sizes=(drom, dram, iram, IMAGE_SIZE - overhead)
    )


async def main_async(trees: list[tuple[str, Path]], runs: int, settle: float) -> list[Walk]:
    image = build_image()
    walks = []
    for label, tree in trees:
        for number in range(runs):
            with tempfile.TemporaryDirectory() as folder:
                walk = await one_walk(Path(folder), label, tree, image, settle)
            summary = walk.summary
            print(f"{label} run {number + 1}: {summary['file_count']} files, depth {summary['max_depth']}, "
                  f"{summary['function_count']} functions, {summary['thread_count']} threads, "
                  f"{summary['entry_count']} entries ({summary['package']})", file=sys.stderr)  # fmt: skip
            walks.append(walk)
    return walks


def tree_argument(text: str) -> tuple[str, Path]:
    label, _, folder = text.rpartition("=")
    path = Path(folder).resolve()
    if not (path / "uc2otad" / "daemon.py").is_file():
        raise argparse.ArgumentTypeError(f"{path} holds no uc2otad/daemon.py")
    return label or path.name, path


def spread(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def report(walks: list[Walk], runs: int) -> None:
    print(f"**Result** ({datetime.date.today()}, Python {platform.python_version()}, {platform.machine()}, "
          f"{runs} runs per tree; a range where the runs differ):\n")  # fmt: skip
    print("| tree | files | max depth | functions | threads | entries from outside |")
    print("|---|---:|---:|---:|---:|---:|")
    labels = list(dict.fromkeys(walk.label for walk in walks))
    for label in labels:
        mine = [walk.summary for walk in walks if walk.label == label]
        columns = ("file_count", "max_depth", "function_count", "thread_count", "entry_count")
        print(
            f"| {label} | " + " | ".join(spread([summary[key] for summary in mine]) for key in columns) + " |"
        )
    for label in labels:
        mine = [walk.summary for walk in walks if walk.label == label]
        first = mine[0]
        files = sorted(set().union(*(summary["files"] for summary in mine)))
        print(f"\n**{label}** (`{first['package']}`), ended by `{first['touch']}`.\n")
        print(f"Files ({len(files)} in all runs): " + ", ".join(f"`{file}`" for file in files) + ".\n")
        print(f"Threads: {', '.join(f'`{thread}`' for thread in first['threads'])}.\n")
        print("Deepest stack (outermost first): " + " → ".join(f"`{frame}`" for frame in first["deepest"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--tree", type=tree_argument, action="append", metavar="LABEL=DIR",
                        help="a tree whose uc2otad the daemon runs (repeatable; default: ours)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="runs per tree")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds between MasterConnected and StartOTA"
    )
    parser.add_argument("--json", type=Path, help="write every run's summary here")
    args = parser.parse_args()
    trees: list[tuple[str, Path]] = args.tree or [("current", ROOT)]
    walks = asyncio.run(main_async(trees, args.runs, args.settle))
    if args.json is not None:
        args.json.write_text(json.dumps([{"tree": walk.label, **walk.summary} for walk in walks], indent=1))
    report(walks, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
