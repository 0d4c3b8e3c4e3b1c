"""Benchmark: our streaming ArduinoOTA uploader against an espota-like stop-and-wait client.

Both upload the same 850 KB app image to the board simulator, in the same run, at network round trips
of 5 ms and 30 ms (an ESP32 in WiFi modem-sleep answers in tens of ms). The simulated board delays
everything it sends by the round trip without pausing its reading, and its flash takes 150 KiB/s. The
stop-and-wait client (espota's data phase: 1024 bytes, then wait for an answer) pays the round trip on
every KB; ours streams and pays it a few times per upload. The ceiling is what the simulated flash
allows: image size / the time the flash was busy.

Run from the repository root (about a minute):

    .venv/bin/python bench/arduino_ota.py

It prints a Markdown table for ``docs/benchmarks.md``. Benchmarks measure; tests never assert timings.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

# the test helpers: espimage builds a real app image, stop_and_wait is the espota-like peer
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import espimage
from stop_and_wait import CHUNK_SIZE as STOP_AND_WAIT_CHUNK
from stop_and_wait import stop_and_wait_upload

from uc2otad.methods.arduino_ota import ArduinoOtaUploader, UploadSettings
from uc2otad.sim.ota_board import BoardFaults, OtaBoard, OtaBoardConfig
from uc2otad.sim.ota_update import FlashTiming

BOARD_IP = "127.0.0.111"
HOST_IP = "127.0.0.1"
#: the procedure document's motor firmware, "~850 KB"
IMAGE_SIZE = 850 * 1024
ROUND_TRIPS = (0.005, 0.030)
#: flash at 150 KiB/s, split as typical SPI NOR datasheets do: a 64 KB block erase takes 150 ms, so each
#: of its sixteen 4 KB sector writes takes the rest of 64 KiB / (150 KiB/s); a 4 KB sector erase
#: (only at the tail of an image) 45 ms
FLASH_RATE = 150 * 1024
_BLOCK_ERASE = 0.150
FLASH = FlashTiming(
    block_erase=_BLOCK_ERASE,
    sector_write=(0x10000 / FLASH_RATE - _BLOCK_ERASE) / 16,
    sector_erase=0.045,
)

Client = Callable[[OtaBoard, bytes], Awaitable[None]]


@dataclass(frozen=True)
class Measurement:
    client: str
    round_trip: float
    seconds: float
    flash_seconds: float
    size: int

    @property
    def kib_per_second(self) -> float:
        return self.size / self.seconds / 1024

    @property
    def ceiling_kib_per_second(self) -> float:
        return self.size / self.flash_seconds / 1024


async def streaming(board: OtaBoard, image: bytes) -> None:
    uploader = ArduinoOtaUploader(BOARD_IP, port=board.port, settings=UploadSettings(host_ip=HOST_IP))
    await uploader.upload(image)


async def stop_and_wait(board: OtaBoard, image: bytes) -> None:
    await stop_and_wait_upload((BOARD_IP, board.port), image, host_ip=HOST_IP)


CLIENTS: dict[str, Client] = {"uc2otad streaming": streaming, "stop-and-wait (espota-like)": stop_and_wait}


def build_image() -> bytes:
    """A valid ESP32-S3 app image of about IMAGE_SIZE bytes (its IROM segment takes up the rest)."""
    drom, dram, iram = 0x10000, 0x2000, 0x8000
    overhead = len(espimage.build_app_image("esp32s3", segment_sizes=(drom, dram, iram, 4))) - 4
    return espimage.build_app_image(
        "esp32s3", version="v2026.3.0-bench", segment_sizes=(drom, dram, iram, IMAGE_SIZE - overhead)
    )


async def measure(name: str, client: Client, image: bytes, round_trip: float) -> Measurement:
    config = OtaBoardConfig(ip=BOARD_IP, port=0, reboot_time=0.0)
    async with OtaBoard(config, faults=BoardFaults(network_delay=round_trip, flash=FLASH)) as board:
        started = time.perf_counter()
        await client(board, image)
        seconds = time.perf_counter() - started
        await board.wait_until(lambda b: b.boots == 1)
        if board.running_image != image:
            raise RuntimeError(f"{name}: the board does not run the image it was sent")
        return Measurement(name, round_trip, seconds, board.counters.flash_seconds, len(image))


def table(results: list[Measurement]) -> str:
    lines = [
        "| round trip | client | time | throughput | vs stop-and-wait | of the ceiling |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for round_trip in ROUND_TRIPS:
        rows = [result for result in results if result.round_trip == round_trip]
        baseline = next(result for result in rows if result.client.startswith("stop-and-wait"))
        for result in rows:
            ratio = result.kib_per_second / baseline.kib_per_second
            share = result.kib_per_second / result.ceiling_kib_per_second
            lines.append(
                f"| {round_trip * 1000:.0f} ms | {result.client} | {result.seconds:.2f} s "
                f"| {result.kib_per_second:.1f} KiB/s | {ratio:.2f}x | {share:.1%} |"
            )
    first = results[0]
    lines.append("")
    lines.append(
        f"Ceiling (image size / simulated flash busy time): {first.ceiling_kib_per_second:.1f} KiB/s."
    )
    chunks = -(-first.size // STOP_AND_WAIT_CHUNK)
    for result in results:
        if result.client.startswith("stop-and-wait"):
            bound = chunks * result.round_trip + result.flash_seconds
            rtt_ms = result.round_trip * 1000
            lines.append(
                f"Stop-and-wait at {rtt_ms:.0f} ms cannot beat chunks x round trip + flash time = "
                f"{chunks} x {rtt_ms:.0f} ms + {result.flash_seconds:.2f} s = {bound:.2f} s "
                f"(measured {result.seconds:.2f} s)."
            )
    return "\n".join(lines)


async def run() -> list[Measurement]:
    image = build_image()
    results = []
    for round_trip in ROUND_TRIPS:
        for name, client in CLIENTS.items():
            result = await measure(name, client, image, round_trip)
            print(f"{name} at {round_trip * 1000:.0f} ms: {result.seconds:.2f} s", file=sys.stderr)
            results.append(result)
    return results


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(run())
    print(
        f"Image {results[0].size} bytes, flash {FLASH_RATE // 1024} KiB/s, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}, Python {platform.python_version()}, "
        f"{platform.machine()} {platform.system()}\n"
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
