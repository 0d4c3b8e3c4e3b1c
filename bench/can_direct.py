"""Benchmark: 850 KB at 500 kbit/s over the direct CAN link, against the bus limit and the master path.

The direct link (:class:`~uc2otad.links.can_direct.CanDirectLink`) puts the daemon on the bus as the
CANopen SDO client: no master, no UART. This bench streams the same app image as ``can_stream.py`` —
the same simulated slave, the CAN-rate model on at 500 kbit/s, the firmware's delays — in four runs:

1. **remote**: the simulator in a process of its own serves its bus with python-can-remote on
   127.0.0.1 and the link opens it as ``remote``, as the daemon reaches ``uc2otad-sim``. The slave's
   answers cross the WebSocket and the link's reader thread before the SDO client sees them, and the
   link's frames take their wire time in the server's connection thread, through the 10-frame
   transmit queue of a SocketCAN device (``SimCanBus.raw_bus()``).
2. **in-process**: the link on the simulator's own virtual channel, one process, through an interface
   of this file that paces the link's frames by the simulator's rule (python-can's plain ``virtual``
   bus would not pace them). No transport: what the link and canopen cost on their own.
3. **queue**: the same, but paced through a transmit queue, as a CAN controller sends and as the
   simulator paces a remote client (see :class:`PacedClientBus`): the sleep-per-frame pacing of run 2
   costs the wire idle time that hardware does not.
4. **master**: ``can_stream.py``'s paced run (pty → virtual master → SDO block download), to which the
   UART time of a real master is added by computation (4 KB chunks at 921600 baud, 10 bits a byte).

Each direct run is timed from the call of ``stream_ota`` (the CRC write, the node already heard) to its
return (success), and checks that the slave then runs the image byte for byte. The link uses the
firmware's settings (``CanSettings`` defaults: 250 ms SDO answers, 20 s size write, 500 ms settle,
15 s block timeout); nothing needs shrinking, since none of them runs out in a successful stream. Why
a run falls short of the bus limit: :class:`WireGaps` charges each idle stretch of the simulated wire
to the frame that ended it, and :class:`AnswerLog` times the link's turnaround after each sub-block.

Run from the repository root (about two and a half minutes; ``--only remote`` etc. for some runs):

    .venv/bin/python bench/can_direct.py

It prints Markdown for ``docs/benchmarks.md``. Benchmarks measure; tests never assert timings.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import multiprocessing
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar

import can
from can.interfaces.virtual import VirtualBus
from can_remote.client import RemoteBus
from can_stream import (
    BITRATE,
    CHUNK,
    NODE,
    TIMING,
    UART_BAUD,
    build_image,
    bus_limits,
    microscope_run,
)

from uc2otad.links.can_direct import CanDirectLink, CanSettings
from uc2otad.sim.can_rate import PACE_SLICE, BusClock, CanRate
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.timing import MasterTiming

#: the rate model of every run
RATE = replace(CanRate(BITRATE), paced=True)
#: ``can_stream.py``'s delays, but the slave reboots 2 s after the commit as the firmware's does
#: (``ota_reboot_delay``): the link reads 0x2F03 once more after the end of the transfer, and a node
#: already rebooting would cost that read its whole 250 ms timeout
DIRECT_TIMING = replace(TIMING, ota_reboot_delay=MasterTiming().ota_reboot_delay)
#: the link's SDO requests to the node (the segments among them), and the node's answers
SDO_REQUEST_ID = 0x600 + NODE
SDO_RESPONSE_ID = 0x580 + NODE
#: SDO server command bytes (CiA 301): block download initiate answer (CRC supported), a sub-block's
#: acknowledgement, the end of the block download
BLOCK_INITIATED = 0xA4
SUB_BLOCK_ACK = 0xA2
BLOCK_ENDED = 0xA1
#: frames a SocketCAN device queues for sending (``txqueuelen`` 10, the kernel's default for CAN)
TX_QUEUE = 10
#: python-can interface names of this file: the remote client and the in-process bus, each noting
#: when the node's SDO answers reach the link
REMOTE_INTERFACE = "uc2otad-bench-remote"
PACED_INTERFACE = "uc2otad-bench-paced"
#: seconds to wait for the simulator's process to start, and for the node to boot its new image
START_TIMEOUT = 60.0
BOOT_TIMEOUT = 10.0
#: a heartbeat period (1 s) and a margin: the link must have heard the node before the clock starts
HEARD_TIMEOUT = 3.0


class AnswerLog:
    """When the node's SDO answers reached the link, and how soon the link went on after each sub-block's
    acknowledgement.

    Filled in the link's threads from its bus's ``recv`` and ``send``, so it sees what the SDO client
    sees, transport included, without a hook into the link.
    """

    #: (``perf_counter()``, command byte) of each answer
    answers: ClassVar[list[tuple[float, int]]] = []
    #: seconds from a sub-block's acknowledgement received to the next sub-block's first segment sent:
    #: the link's reader thread, canopen's response queue, the worker thread
    reactions: ClassVar[list[float]] = []
    _acknowledged: ClassVar[float | None] = None

    @classmethod
    def clear(cls) -> None:
        cls.answers.clear()
        cls.reactions.clear()
        cls._acknowledged = None

    @classmethod
    def received(cls, message: can.Message | None) -> None:
        if message is not None and message.arbitration_id == SDO_RESPONSE_ID and message.data:
            now = time.perf_counter()
            cls.answers.append((now, message.data[0]))
            if message.data[0] == SUB_BLOCK_ACK:
                cls._acknowledged = now

    @classmethod
    def sent(cls, message: can.Message) -> None:
        acknowledged = cls._acknowledged
        if acknowledged is not None and message.arbitration_id == SDO_REQUEST_ID and message.data[0] == 1:
            cls.reactions.append(time.perf_counter() - acknowledged)
            cls._acknowledged = None


class LoggedRemoteBus(RemoteBus):  # type: ignore[misc]
    """python-can-remote's client, unchanged but for :class:`AnswerLog`."""

    def recv(self, timeout: float | None = None) -> can.Message | None:
        message: can.Message | None = super().recv(timeout)
        AnswerLog.received(message)
        return message

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        AnswerLog.sent(msg)
        super().send(msg, timeout)


class PacedClientBus(VirtualBus):
    """The link's bus in process: the virtual channel, its sends paced on the simulated wire.

    Two rules. The simulator's (``sim/can_bus.py``, for the master's SDO client and for a remote
    client's frames alike): book the frame on the wire clock and, once more than :data:`PACE_SLICE`
    ahead, sleep until it has been sent. A sleep ends late (0.1 ms on an idle machine, more with the
    slave's threads about), and the wire stands idle for that long: a cost of the model, since a real
    sender hands its frames to a queue that the controller empties back to back. Hence the second
    rule, a transmit queue of :data:`TX_QUEUE` frames (SocketCAN's ``txqueuelen`` for CAN devices):
    the sender blocks only while the queue is full, so the wire idles only if it wakes more than a
    queue's worth late. canopen sends from the link's worker thread, so sleeping holds back the stream
    only.
    """

    #: each channel's simulated wire and how far ahead of it a sender may run (None: the simulator's
    #: rule), registered before the link opens the channel
    channels: ClassVar[dict[str, tuple[BusClock, float | None]]] = {}

    def __init__(self, channel: str, **config: Any) -> None:
        super().__init__(channel=channel, **config)
        self._clock, self._queue = self.channels[channel]

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        AnswerLog.sent(msg)
        ahead = self._clock.book(msg.arbitration_id, bytes(msg.data))
        if self._queue is None:
            if ahead > PACE_SLICE:
                time.sleep(ahead)
        elif ahead > 2 * self._queue:  # sleep once per queue's worth, until it is half empty
            time.sleep(ahead - self._queue)
        super().send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        message, filtered = super()._recv_internal(timeout)
        AnswerLog.received(message)
        return message, filtered


def register_interfaces() -> None:
    """Make this file's buses known to ``can.Bus(interface=…)``, as the link opens any interface."""
    for name, cls in ((REMOTE_INTERFACE, LoggedRemoteBus), (PACED_INTERFACE, PacedClientBus)):
        can.interfaces.BACKENDS[name] = (__name__, cls.__name__)
    # python-can checks names against the set can.util imported at its own import
    vars(can.util)["VALID_INTERFACES"] = can.interfaces.VALID_INTERFACES | {REMOTE_INTERFACE, PACED_INTERFACE}


@dataclass(frozen=True)
class Timed:
    """One stream as the link saw it."""

    #: ``stream_ota`` called (CRC write) to returned (success)
    seconds: float
    #: the call to the block download initiate's answer: CRC and size writes, the settle, the initiate
    before_block: float
    #: the block download: the initiate's answer to the end's answer (which waits for the commit)
    block_seconds: float
    sub_blocks: int
    #: the link's reaction to an acknowledgement (:attr:`AnswerLog.reactions`): mean and 95th percentile
    reaction_mean: float
    reaction_p95: float


@dataclass(frozen=True)
class DirectRun:
    name: str
    timed: Timed
    #: time the simulated wire was busy, every frame of the run
    wire_seconds: float
    #: :attr:`WireGaps.seconds`
    idle: dict[str, float]


class WireGaps:
    """Where the simulated wire stood idle during the block download, by the frame that ended the gap.

    Each gap is charged to the frame booked after it: a segment in the middle of a sub-block (the
    sender woke late from its pacing sleep), a sub-block's first segment (the acknowledgement's way to
    the link and the link's way back), an acknowledgement (the slave's answer time), the end's answer
    (the slave's commit). Wraps the wire clock's ``book`` on the instance; the simulator is unchanged.
    """

    def __init__(self, clock: BusClock) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._free_at = 0.0
        self._phase = "before"
        book = clock.book

        def booked(can_id: int, data: bytes) -> float:
            with self._lock:
                now = time.monotonic()
                ahead = book(can_id, data)
                kind = self._kind(can_id, data)
                if kind is not None and now > self._free_at:
                    self.seconds[kind] = self.seconds.get(kind, 0.0) + now - self._free_at
                self._free_at = max(self._free_at, now + ahead)
                return ahead

        vars(clock)["book"] = booked  # shadows the method for every port holding this clock

    def _kind(self, can_id: int, data: bytes) -> str | None:
        """The gap's cause, None outside the block download."""
        if self._phase == "before":
            if can_id == SDO_RESPONSE_ID and data[0] == BLOCK_INITIATED:
                self._phase = "block"
            return None
        if self._phase == "after":
            return None
        if can_id == SDO_REQUEST_ID:
            return "sub-block start" if data[0] == 1 else "segment"
        if can_id == SDO_RESPONSE_ID and data[0] == SUB_BLOCK_ACK:
            return "acknowledgement"
        if can_id == SDO_RESPONSE_ID and data[0] == BLOCK_ENDED:
            self._phase = "after"
            return "end (commit)"
        return "other"


@dataclass
class SimReport:
    """What the simulator's process reports after the stream."""

    image_ok: bool
    wire_seconds: float
    #: :attr:`WireGaps.seconds`
    idle: dict[str, float]
    detail: str = field(default="")


def sim_config(folder: str, *, remote: bool) -> SimConfig:
    """``can_stream.py``'s microscope: node 11 alone, :data:`DIRECT_TIMING`, 500 kbit/s paced."""
    return SimConfig(nodes=(default_node(NODE),), timing=DIRECT_TIMING, can=RATE, log_noise=False,
                     serial_link=Path(folder) / "tty", socket=False, ota_port=0,
                     can_remote=remote)  # fmt: skip


async def slave_report(scope: VirtualMicroscope, image: bytes, gaps: WireGaps) -> SimReport:
    """Wait for the node to boot its new image and compare it with ``image``."""
    slave = scope.master.slave(NODE)
    busy = scope.master.can_bus.clock.busy_seconds
    try:
        async with asyncio.timeout(BOOT_TIMEOUT):
            await slave.wait_until(lambda booted: booted.running_image is not None)
    except TimeoutError:
        return SimReport(False, busy, gaps.seconds, "the node booted no new image")
    running = slave.running_image
    detail = "" if running == image else f"runs {len(running or b'')} bytes, not the {len(image)} sent"
    return SimReport(running == image, busy, gaps.seconds, detail)


def serve_simulator(conn: Connection) -> None:
    """The simulator's process: serve the bus, report where, wait for the stream, report the slave."""
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(conn))


async def _serve(conn: Connection) -> None:
    image: bytes = await asyncio.to_thread(conn.recv)
    with tempfile.TemporaryDirectory() as folder:
        async with VirtualMicroscope(sim_config(folder, remote=True)) as scope:
            if scope.can_server is None:
                raise RuntimeError("the simulator serves no CAN bus")
            gaps = WireGaps(scope.master.can_bus.clock)
            conn.send(scope.can_server.url)
            await asyncio.to_thread(conn.recv)  # the stream is over
            conn.send(await slave_report(scope, image, gaps))


@asynccontextmanager
async def simulator_process(image: bytes) -> AsyncIterator[tuple[str, Connection]]:
    """The simulator in a spawned process (a fresh interpreter, as ``uc2otad-sim`` is): its bus URL,
    and the pipe to tell it the stream is over and read its report."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve_simulator, args=(theirs,), name="uc2otad-sim (bench)")
    process.start()
    try:
        ours.send(image)
        if not await asyncio.to_thread(ours.poll, START_TIMEOUT):
            raise RuntimeError("the simulator's process did not start")
        url: str = ours.recv()
        yield url, ours
    finally:
        await asyncio.to_thread(process.join, BOOT_TIMEOUT + 5)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join)


async def timed_stream(link: CanDirectLink, image: bytes) -> Timed:
    """Stream ``image`` over the open ``link``, timed from the call to the return."""
    if not await link.wait_heard(NODE, HEARD_TIMEOUT):
        raise RuntimeError(f"{link.name}: node {NODE} not heard")
    AnswerLog.clear()
    started = time.perf_counter()
    await link.stream_ota(NODE, image)
    seconds = time.perf_counter() - started
    answers = list(AnswerLog.answers)
    initiated = next(at for at, command in answers if command == BLOCK_INITIATED)
    ended = next(at for at, command in answers if command == BLOCK_ENDED)
    sub_blocks = sum(command == SUB_BLOCK_ACK for _, command in answers)
    reactions = sorted(AnswerLog.reactions)
    return Timed(seconds, initiated - started, ended - initiated, sub_blocks,
                 statistics.mean(reactions), reactions[len(reactions) * 95 // 100])  # fmt: skip


async def direct_remote(image: bytes) -> DirectRun:
    """Run 1: the simulator in its own process, the link over python-can-remote."""
    async with simulator_process(image) as (url, pipe):
        settings = CanSettings(interface=REMOTE_INTERFACE, channel=url, bitrate=BITRATE)
        async with CanDirectLink(settings) as link:
            timed = await timed_stream(link, image)
        pipe.send("done")
        report: SimReport = await asyncio.to_thread(pipe.recv)
    if not report.image_ok:
        raise RuntimeError(f"direct, remote: {report.detail}")
    return DirectRun("direct link, remote (simulator in its own process)", timed,
                     report.wire_seconds, report.idle)  # fmt: skip


async def direct_in_process(image: bytes, *, queue: bool) -> DirectRun:
    """Runs 2 and 3: the link on the simulator's virtual channel, one process; its frames paced by the
    simulator's rule, or through a transmit queue (:class:`PacedClientBus`)."""
    with tempfile.TemporaryDirectory() as folder:
        async with VirtualMicroscope(sim_config(folder, remote=False)) as scope:
            bus = scope.master.can_bus
            gaps = WireGaps(bus.clock)
            lead = TX_QUEUE * RATE.frame_seconds(0x600 + NODE, bytes(8)) if queue else None
            with registered_channel(bus.channel, bus.clock, lead):
                settings = CanSettings(interface=PACED_INTERFACE, channel=bus.channel, bitrate=BITRATE)
                async with CanDirectLink(settings) as link:
                    timed = await timed_stream(link, image)
            report = await slave_report(scope, image, gaps)
    name = (
        f"direct link, in process, a {TX_QUEUE}-frame transmit queue"
        if queue
        else "direct link, in process (the simulator's pacing)"
    )
    if not report.image_ok:
        raise RuntimeError(f"{name}: {report.detail}")
    return DirectRun(name, timed, report.wire_seconds, report.idle)


@contextmanager
def registered_channel(channel: str, clock: BusClock, lead: float | None) -> Iterator[None]:
    PacedClientBus.channels[channel] = (clock, lead)
    try:
        yield
    finally:
        del PacedClientBus.channels[channel]


def uart_seconds(image: bytes) -> float:
    """A real master's UART: every 4 KB chunk crosses it before the master forwards it (ACK pacing
    keeps the two from overlapping), 10 bits a byte at 921600 baud."""
    return -(-len(image) // CHUNK) * CHUNK * 10 / UART_BAUD


def results_table(image: bytes, direct: list[DirectRun], master_seconds: float, master_wire: float) -> str:
    unstuffed, limit = bus_limits(image)
    uart = uart_seconds(image)
    hardware = master_seconds + uart
    kib = len(image) / 1024

    def row(name: str, seconds: float, block: str = "", wire: str = "") -> str:
        return (f"| {name} | {seconds:.2f} s | {kib / seconds:.1f} KiB/s | {limit / seconds:.1%} "
                f"| {block} | {wire} |")  # fmt: skip

    lines = [
        "| run | stream start to success | throughput | bus limit / time | block download | wire busy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in direct:
        lines.append(
            row(r.name, r.timed.seconds, f"{r.timed.block_seconds:.2f} s", f"{r.wire_seconds:.2f} s")
        )
    lines += [
        row("master path, simulated (pty, no UART)", master_seconds, "", f"{master_wire:.2f} s"),
        row(f"master path + UART computed ({uart:.2f} s)", hardware),
        row("bus limit: segments with their stuff bits, and the acknowledgements", limit),
        row("bus limit without stuff bits (111-bit frames)", unstuffed),
        "",
    ]
    for r in direct:
        timed = r.timed
        above = timed.block_seconds - limit
        after = timed.seconds - timed.before_block - timed.block_seconds
        idle = ", ".join(f"{kind} {seconds:.3f} s" for kind, seconds in sorted(r.idle.items()))
        lines.append(
            f"- {r.name}: {timed.seconds / hardware:.1%} of the master path's time with its UART "
            f"({hardware - timed.seconds:.1f} s saved), {timed.seconds / master_seconds:.1%} of the "
            f"simulated master path. Before the block download {timed.before_block:.2f} s, "
            f"after it {after:.3f} s; "
            f"the block download {above:.2f} s above the bus limit, "
            f"{above / max(timed.sub_blocks, 1) * 1000:.2f} ms per sub-block ({timed.sub_blocks} "
            f"acknowledged; the slave's {DIRECT_TIMING.ota_commit_time * 1000:.0f} ms commit included); the "
            f"link's reaction to an acknowledgement {timed.reaction_mean * 1000:.2f} ms on average, "
            f"{timed.reaction_p95 * 1000:.2f} ms at the 95th percentile. The wire idle in the block "
            f"download, by the frame that ended the gap: {idle}"
        )
    return "\n".join(lines)


async def run(which: set[str]) -> tuple[bytes, list[DirectRun], tuple[float, float] | None]:
    image = build_image()
    register_interfaces()
    direct = []
    if "remote" in which:
        direct.append(await direct_remote(image))
        print(f"direct, remote: {direct[-1].timed}", file=sys.stderr)
    for queue in (False, True):
        if ("queue" if queue else "in-process") in which:
            direct.append(await direct_in_process(image, queue=queue))
            print(f"{direct[-1].name}: {direct[-1].timed}", file=sys.stderr)
    master = None
    if "master" in which:
        paced = await microscope_run("uc2otad", image, RATE, "uc2otad")
        print(f"master path: {paced.seconds:.2f} s", file=sys.stderr)
        master = (paced.seconds, paced.wire_seconds)
    return image, direct, master


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    choices = ("remote", "in-process", "queue", "master")
    parser.add_argument("--only", choices=choices, action="append", help="run only these (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    image, direct, master = asyncio.run(run(set(args.only or choices)))
    print(
        f"Image {len(image)} bytes, {datetime.datetime.now(datetime.UTC):%Y-%m-%d}, "
        f"Python {platform.python_version()}, {platform.machine()} {platform.system()}, "
        f"bench {time.perf_counter() - started:.0f} s\n"
    )
    if master is None:
        for r in direct:
            print(f"| {r.name} | {r.timed} |")
        return 0
    print(f"{len(image)} bytes at {BITRATE // 1000} kbit/s:\n")
    print(results_table(image, direct, *master))
    return 0


if __name__ == "__main__":
    sys.exit(main())
