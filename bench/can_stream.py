"""Benchmark: streaming an 850 KB image through the master over CAN, and what the host adds per chunk.

Two runs of the same app image through the real pieces — our link on a real pty, the virtual CANopen
master, python-canopen's SDO block download over the virtual CAN bus, the simulated slave:

1. **Host overhead**, CAN instant (the rate model off): for every chunk after the first, the virtual
   master measures the time from writing ``{"ota_rx": N}`` to having the next chunk's last byte. That is
   the host's whole share of the pace — reading the acknowledgement, writing 4 KB — since the master
   waits for it before it does anything else. UC2-REST's streaming worker (it polls for the
   acknowledgement every 2 ms) runs against the same master for comparison.
2. **850 KB at 500 kbit/s**, the rate model on: every frame takes its bits (stuffing included) on the
   wire, with the firmware's delays (settle 500 ms, the slave's 1 ms answers). Next to it, the bus
   limit: the image's segment frames alone, back to back.

Run from the repository root (about a minute):

    .venv/bin/python bench/can_stream.py

It prints Markdown for ``docs/benchmarks.md``. Benchmarks measure; tests never assert timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import io
import logging
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

# the test helper that builds a real app image
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import espimage
from uc2rest.canota import CANOTA  # the host library compared with (a test extra)

from uc2otad.links.serial_hat import HatSettings, SerialHatLink
from uc2otad.sim.can_rate import CanRate, frame_bits
from uc2otad.sim.config import SimConfig
from uc2otad.sim.microscope import VirtualMicroscope
from uc2otad.sim.nodes import default_node
from uc2otad.sim.stream_ota import StreamStats
from uc2otad.sim.timing import MasterTiming

#: the procedure document's motor firmware, "~850 KB"
IMAGE_SIZE = 850 * 1024
NODE = 11
BITRATE = 500_000
#: the SDO request identifier of the node, and a block segment: 7 data bytes behind the sequence byte
SEGMENT_ID = 0x600 + NODE
#: segments per sub-block; the slave acknowledges each sub-block with one frame
BLOCK_SIZE = 127
#: an 8-byte standard frame without a stuff bit: 47 bits of frame and interframe space, 64 of data
UNSTUFFED_FRAME_BITS = 111
#: the master's UART: 10 bits per byte at 921600 baud; the pty has no such limit
UART_BAUD = 921_600
CHUNK = 4096
#: the firmware's delays, except those after the transfer (reboot), which the benchmark does not time
TIMING = MasterTiming(ota_reboot_delay=0.0, node_boot_time=0.05)


@dataclass(frozen=True)
class Run:
    name: str
    seconds: float
    stats: StreamStats
    #: time the simulated wire was busy (rate model on), every frame of the run
    wire_seconds: float


def build_image() -> bytes:
    """A valid ESP32-S3 app image of about IMAGE_SIZE bytes (its IROM segment takes up the rest)."""
    drom, dram, iram = 0x10000, 0x2000, 0x8000
    overhead = len(espimage.build_app_image("esp32s3", segment_sizes=(drom, dram, iram, 4))) - 4
    return espimage.build_app_image(
        "esp32s3", version="v2026.3.0-bench", segment_sizes=(drom, dram, iram, IMAGE_SIZE - overhead)
    )


async def microscope_run(name: str, image: bytes, rate: CanRate, client: str) -> Run:
    with tempfile.TemporaryDirectory() as folder:
        config = SimConfig(nodes=(default_node(NODE),), timing=TIMING, can=rate, log_noise=False,
                           serial_link=Path(folder) / "tty", socket=False, ota_port=0)  # fmt: skip
        async with VirtualMicroscope(config) as scope:
            started = time.perf_counter()
            if client == "uc2otad":
                await stream_with_link(scope, image)
            else:
                await asyncio.to_thread(stream_with_uc2rest, scope.pty.path, image)
            seconds = time.perf_counter() - started
            slave = scope.master.slave(NODE)
            await slave.wait_until(lambda booted: booted.running_image is not None)
            if slave.running_image != image:
                raise RuntimeError(f"{name}: the slave does not run the image it was sent")
            stats = scope.master.stream_stats
            if stats is None:
                raise RuntimeError(f"{name}: the master kept no statistics")
            return Run(name, seconds, stats, scope.master.can_bus.clock.busy_seconds)


async def stream_with_link(scope: VirtualMicroscope, image: bytes) -> None:
    link = SerialHatLink(scope.pty.url, settings=HatSettings())
    await link.open()
    try:
        await link.stream_ota(NODE, image)
    finally:
        await link.close()


def stream_with_uc2rest(device: str, image: bytes) -> None:
    """UC2-REST's own streaming worker (no parent client: see tests/test_uc2rest_ota.py)."""
    # it prints its preamble on stdout, where this script prints its tables
    with tempfile.NamedTemporaryFile(suffix=".bin") as firmware, contextlib.redirect_stdout(io.StringIO()):
        firmware.write(image)
        firmware.flush()
        if not CANOTA(parent=None).start_can_streaming_ota_blocking(
            NODE, firmware.name, port=device, baud=UART_BAUD
        ):
            raise RuntimeError("UC2-REST's stream failed")


def overhead_table(runs: list[Run]) -> str:
    lines = [
        "| host | chunks | mean | median | p95 | max | sum |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        gaps = [gap * 1000 for gap in run.stats.host_gaps]
        p95 = statistics.quantiles(gaps, n=20)[-1]
        lines.append(
            f"| {run.name} | {len(gaps)} | {statistics.mean(gaps):.2f} ms | {statistics.median(gaps):.2f} ms "
            f"| {p95:.2f} ms | {max(gaps):.2f} ms | {sum(gaps) / 1000:.2f} s |"
        )
    return "\n".join(lines)


def bus_limits(image: bytes) -> tuple[float, float]:
    """(seconds for the image's segments at 111 bits each, seconds with this image's stuff bits and the
    sub-block acknowledgements): the least time any master needs on a 500 kbit/s bus."""
    segments = [image[start : start + 7] for start in range(0, len(image), 7)]
    unstuffed = len(segments) * UNSTUFFED_FRAME_BITS / BITRATE
    ack = frame_bits(0x580 + NODE, bytes([0xA2, BLOCK_SIZE, BLOCK_SIZE, 0, 0, 0, 0, 0]))
    stuffed = sum(frame_bits(SEGMENT_ID, bytes([number % BLOCK_SIZE + 1]) + piece.ljust(7, b"\0"))
                  for number, piece in enumerate(segments))  # fmt: skip
    acks = -(-len(segments) // BLOCK_SIZE) * ack
    return unstuffed, (stuffed + acks) / BITRATE


def paced_table(run: Run, image: bytes) -> str:
    unstuffed, limit = bus_limits(image)
    uart = -(-len(image) // CHUNK) * CHUNK * 10 / UART_BAUD
    host = sum(run.stats.host_gaps)
    return "\n".join(
        [
            "| | time | throughput |",
            "|---|---:|---:|",
            f'| simulated stream, `/ota_start` to "success" | {run.seconds:.2f} s '
            f"| {len(image) / run.seconds / 1024:.1f} KiB/s |",
            f"| bus limit: the segments with this image's stuff bits, and the acknowledgements "
            f"| {limit:.2f} s | {len(image) / limit / 1024:.1f} KiB/s |",
            f"| bus limit without stuff bits (111-bit frames) | {unstuffed:.2f} s "
            f"| {len(image) / unstuffed / 1024:.1f} KiB/s |",
            f"| wire busy during the simulated stream (every frame) | {run.wire_seconds:.2f} s | |",
            "",
            f"Of the simulated time: forwarding {run.stats.forward_seconds:.2f} s, the host {host:.2f} s, "
            f"the rest ({run.seconds - run.stats.forward_seconds - host:.2f} s) the CRC and size writes, "
            f"the {TIMING.ota_settle * 1000:.0f} ms settle, the first chunk and the end of the transfer. "
            f"On hardware the 4 KB chunks also cross the UART at {UART_BAUD} baud before the master "
            f"forwards them: {uart:.1f} s more for this image.",
        ]
    )


async def run() -> tuple[bytes, list[Run], Run]:
    image = build_image()
    overhead = []
    for client in ("uc2otad", "UC2-REST 0.2.0.43"):
        result = await microscope_run(client, image, CanRate(), client)
        print(f"{client}, CAN instant: {result.seconds:.2f} s", file=sys.stderr)
        overhead.append(result)
    paced = await microscope_run("uc2otad", image, replace(CanRate(BITRATE), paced=True), "uc2otad")
    print(f"uc2otad, 500 kbit/s: {paced.seconds:.2f} s", file=sys.stderr)
    return image, overhead, paced


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    logging.basicConfig(level=logging.WARNING)
    image, overhead, paced = asyncio.run(run())
    print(
        f"Image {len(image)} bytes, {datetime.datetime.now(datetime.UTC):%Y-%m-%d}, "
        f"Python {platform.python_version()}, {platform.machine()} {platform.system()}\n"
    )
    print("Host overhead per 4 KB chunk (from the master's ota_rx to the next chunk's last byte):\n")
    print(overhead_table(overhead))
    print(f"\n{len(image)} bytes at {BITRATE // 1000} kbit/s:\n")
    print(paced_table(paced, image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
